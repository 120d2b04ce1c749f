"""Certified-accuracy analysis with Polars lazy scans (no torch, no Ray).

Definitions (Cohen et al. 2019, Section 4), over the inputs of one configuration (one run, by default):
* every selected input is in the denominator: a row that failed (``status != "ok"``) or abstained
  counts as not certified and not correct, and so does a selected input without a row (its unit never
  committed; from the run's selection record, ``pipeline/analysis/missing.py``);
* certified accuracy at radius r = share of inputs with ``correct`` and ``radius >= r``;
* the smoothed classifier's accuracy = certified accuracy at r = 0 (for PREDICT rows: share correct);
* average certified radius (ACR) = mean over inputs of ``radius`` if correct, else 0; only for fixed
  sampling: a sequential row's radius is the table cell its stopping rule settled, not an estimate of
  the radius fixed sampling would give, so ACR is null for sequential configurations;
* the envelope = for each radius, the best certified accuracy over the configurations of a dataset,
  after runs that differ only in run id and seed are pooled (never the best of several seeds).

Uncertainty: each certified accuracy k/m gets a two-sided Clopper-Pearson interval at ``ci``,
pointwise (one radius at a time, without the corrections); the curves can also carry a band
simultaneous over every radius (``band``: ``pipeline/stats/bands.py``). The
optional corrections for wrong certificates are in ``pipeline/stats/corrections.py``. The arguments, the
grouping rules and the column names are in docs/analysis.md and docs/schema.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

from rscert.analysis.missing import missing_parts
from rscert.analysis.per_class import per_class_table
from rscert.analysis.rebound import check_values, rebound
from rscert.analysis.references import reference_rows
from rscert.analysis.result import Analysis, AnalysisError, cert_col, check_table_radii, table_radii
from rscert.analysis.result_files import fill_settings, find_results, scan
from rscert.stats.bands import BANDS, corrected_lower_band
from rscert.stats.bands import band as simultaneous_band
from rscert.stats.corrections import CORRECTIONS, SUFFIX, correction_columns
from rscert.stats.smoothing import clopper_pearson_lower, clopper_pearson_upper
from rscert.store.results import KEY_COLUMNS

POOLED = ("run_id", "seed")  # dropped from the keys by pool_seeds
OTHER_COLUMNS = ["index", "count_top", "count_second", "top_class", "p_value", "p_lower", "p_upper", "soft_sum",
                 "soft_sumsq", "seconds", "unit_id", "label", "dim"]
# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------


def _ci(k: np.ndarray, m: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - level) / 2
    lower = np.where(m > 0, clopper_pearson_lower(k, np.maximum(m, 1), tail), np.nan)
    upper = np.where(m > 0, clopper_pearson_upper(k, np.maximum(m, 1), tail), np.nan)
    return lower, upper


def load_rows(paths: Sequence[str], alpha: float | None = None, files: Sequence[str] | None = None
                 ) -> pl.LazyFrame:
    """Rows under ``paths`` (or in ``files``) with every key column present, ``mode`` defaulting to
    certify, ``n_drawn`` the estimation samples drawn, ``n`` blanked for sequential rows (their n
    differs per row; the configuration is told by ``n_max``) and ``_file`` the file of each row.
    Re-bounded at ``alpha`` when given."""
    frame = scan(paths, [*KEY_COLUMNS, *OTHER_COLUMNS], files)
    frame = fill_settings(frame.with_columns(pl.col("mode").fill_null("certify")))
    if alpha is not None:
        frame = rebound(frame, alpha)
    sequential = pl.col("sampling") == "sequential"
    return frame.with_columns(pl.col("n").alias("n_drawn"),
                              pl.when(sequential).then(None).otherwise(pl.col("n")).alias("n"))


SUMS = ["inputs", "missing", "deselected", "ok", "abstained", "correct_count", "_radius_sum", "_n_sum", "_n_count",
        "forward_passes", "_seconds_sum", "_seconds_count", "_nan"]


def _partials(frame: pl.LazyFrame, radii: Sequence[float]) -> pl.DataFrame:
    """One streaming pass: sums per (every key column, file), with each part's index range and the
    number of rows whose index does not exceed the previous row's of the same file (rscert writes a
    unit's rows in index order, so 0 means no index repeats inside a file)."""
    ok = pl.col("status") == "ok"
    not_after = (pl.col("index").diff() <= 0) & (pl.col("_file") == pl.col("_file").shift())
    good = ok & pl.col("correct").fill_null(False)
    certified = [(good & (pl.col("radius") >= r)).sum().alias(f"k@{i}") for i, r in enumerate(radii)]
    return (frame.with_columns(not_after.fill_null(False).alias("_not_after")).group_by([*KEY_COLUMNS, "_file"]).agg(
        pl.len().alias("inputs"),
        ok.sum().alias("ok"),
        ((pl.col("prediction") == -1) & ok).sum().alias("abstained"),
        good.sum().alias("correct_count"),
        pl.when(good).then(pl.col("radius")).otherwise(0.0).sum().alias("_radius_sum"),
        pl.when(ok).then(pl.col("radius")).max().alias("max_radius"),
        pl.when(ok).then(pl.col("n_drawn")).sum().alias("_n_sum"),
        pl.when(ok).then(pl.col("n_drawn")).count().alias("_n_count"),
        pl.when(ok).then(pl.col("n0") + pl.col("n_drawn")).sum().alias("forward_passes"),
        pl.col("seconds").sum().alias("_seconds_sum"),
        pl.col("seconds").count().alias("_seconds_count"),
        (pl.col("radius").is_nan() & ok).sum().alias("_nan"),
        pl.col("index").min().alias("_lo"),
        pl.col("index").max().alias("_hi"),
        pl.col("_not_after").sum().alias("_unordered"),
        *certified,
    ).collect(engine="streaming").with_columns(pl.lit(0, dtype=pl.Int64).alias("missing"),
                                                pl.lit(0, dtype=pl.Int64).alias("deselected")))


def _combine(parts: pl.DataFrame, keys: list[str], pool: bool) -> pl.DataFrame:
    """The configurations: the partial sums added up over files (and, pooled, over runs and seeds)."""
    ks = [c for c in parts.columns if c.startswith("k@")]
    runs = [pl.col("run_id").unique().sort().str.join(",").alias("run_id"),
            pl.col("seed").unique().sort().cast(pl.String).str.join(",").alias("seeds")] if pool else []
    base = parts.group_by(keys).agg(*runs, *(pl.col(c).sum() for c in [*SUMS, *ks]), pl.col("max_radius").max())
    return base.with_columns((pl.col("inputs") - pl.col("ok")).alias("failed"),
                             pl.when(pl.col("_n_count") > 0).then(pl.col("_n_sum") / pl.col("_n_count"))
                             .alias("mean_n"),
                             pl.when(pl.col("_n_count") > 0).then(pl.col("forward_passes")).alias("forward_passes"),
                             pl.when(pl.col("_seconds_count") > 0)
                             .then(pl.col("_seconds_sum") / pl.col("_seconds_count")).alias("seconds_per_input"))


def _overlapping(parts: pl.DataFrame, keys: list[str]) -> bool:
    """Whether two files of one configuration have overlapping index ranges (so an input may repeat)."""
    ranged = parts.filter(pl.col("_lo").is_not_null()).sort([*keys, "_lo"], nulls_last=True)
    previous = pl.col("_hi").cum_max().shift(1).over(keys)
    return bool(ranged.select((pl.col("_lo") <= previous).fill_null(False).any()).item())


def _duplicates(frame: pl.LazyFrame, keys: list[str]) -> str | None:
    """A message naming one (dataset, index) counted twice in a configuration, and its runs."""
    dup = (frame.filter(pl.col("index").is_not_null())
           .group_by([*keys, "index"]).agg(pl.len().alias("times"), pl.col("run_id").unique().sort().alias("runs"))
           .filter(pl.col("times") > 1).sort("index").head(1).collect())
    if not dup.height:
        return None
    row = dup.row(0, named=True)
    runs = ", ".join(str(r) for r in row["runs"])
    return (f"input {row['index']} of dataset {row['dataset']!r} appears {row['times']} times in one "
            f"configuration (run(s) {runs}) and the rows are not copies of one row; an input is never counted "
            "twice: analyse the runs separately (without --pool-seeds) or leave out the overlapping folder")


def analyze(
    paths: Sequence[str],
    radii: Sequence[float] | None = None,
    step: float = 0.01,
    ci: float = 0.95,
    alpha: float | None = None,
    certificate_correction: bool = False,
    corrections: Sequence[str] = (),
    rho: float = 0.001,
    pool_seeds: bool = False,
    band: str = "pointwise",
    per_class: bool = False,
    references: Sequence[str] = (),
) -> Analysis:
    """Summary, curves and envelope for every configuration found under ``paths``.

    Configurations: rows agreeing on every KEY_COLUMNS value (so each run is its own; with
    ``pool_seeds`` runs that differ only in run id and seed are pooled). Exact copies of one row
    (a run read twice through different folders) are counted once; an input with two different
    rows in one configuration is refused. ``corrections`` names entries of CORRECTIONS
    (``certificate_correction`` is the older spelling of ``["cp"]``). ``band`` (``dkw`` or
    ``bonferroni``) adds a band simultaneous over each curve's radii to the curves (``band_lo``,
    ``band_hi``, and with the ``cp`` correction ``band_lo_corrected``). ``per_class`` adds the per-class table
    (:mod:`rscert.analysis.per_class`); ``references`` appends published results as summary rows
    (:mod:`rscert.analysis.references`; they have no curves).
    """
    if band not in BANDS:
        raise AnalysisError(f"--band: expected one of {', '.join(BANDS)}, got {band!r}")
    if not 0 < ci < 1:
        raise AnalysisError(f"--ci: must satisfy 0 < ci < 1, got {ci}")
    if not 0 < rho < 1:
        raise AnalysisError(f"--rho: must satisfy 0 < rho < 1, got {rho}")
    if not (step > 0 and math.isfinite(step)):
        raise AnalysisError(f"--step: must be a number > 0, got {step}")
    chosen = tuple(dict.fromkeys([*corrections, *(["cp"] if certificate_correction else [])]))
    unknown = [c for c in chosen if c not in CORRECTIONS]
    if unknown:
        raise AnalysisError(f"--correction: expected one of {', '.join(CORRECTIONS)}, got {unknown[0]!r}")
    found = find_results(paths)
    frame = load_rows(paths, alpha, found.parquet)
    keys = [k for k in KEY_COLUMNS if not (pool_seeds and k in POOLED)]
    if radii is None:
        datasets = frame.select(pl.col("dataset").unique()).collect()["dataset"].to_list()
        radii = table_radii(datasets)
    radii = check_table_radii(radii)
    parts = _partials(frame, radii)
    if parts.height == 0 and not found.records:
        raise AnalysisError("no rows to analyse")
    if parts["_nan"].sum():
        check_values(frame)
    if parts["_unordered"].sum() or _overlapping(parts, keys):
        # an input may repeat in a configuration: count exact copies of a row once, refuse the rest
        frame = frame.unique(subset=[c for c in frame.collect_schema().names() if c != "_file"])
        message = _duplicates(frame, keys)
        if message:
            raise AnalysisError(message)
        parts = _partials(frame, radii)
    # selected inputs without a row (their unit never committed): failed, in every denominator
    parts = pl.concat([parts, missing_parts(frame, parts, found.records, keys, KEY_COLUMNS, alpha)])
    if parts.height == 0:
        raise AnalysisError("no rows to analyse")
    summary = _summary(_combine(parts, keys, pool_seeds), radii, ci, chosen, rho, pool_seeds)
    curves = _curves(frame, summary, keys, step, ci, band, "cp" in chosen)
    classes = per_class_table(frame, summary, keys, radii, ci) if per_class else None
    if references:
        datasets = summary["dataset"].unique().to_list()
        try:
            extra = [reference_rows(name, radii, datasets, ci) for name in dict.fromkeys(references)]
        except ValueError as exc:
            raise AnalysisError(str(exc)) from None
        summary = pl.concat([summary, *extra], how="diagonal_relaxed")
    return Analysis(summary=summary, curves=curves, envelope=_envelope(curves), radii=radii, corrections=chosen,
                    band=band, ci=ci, per_class=classes)


def _summary(base: pl.DataFrame, radii: tuple[float, ...], ci: float, chosen: tuple[str, ...], rho: float,
             pool: bool) -> pl.DataFrame:
    m = base["inputs"].to_numpy()
    certify = (base["mode"] == "certify").to_numpy()
    alphas = base["alpha"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    with np.errstate(all="ignore"):
        summary = base.with_columns(
            pl.col("inputs", "missing", "deselected", "ok", "failed", "abstained", "correct_count").cast(pl.Int64),
            (pl.col("abstained") / pl.col("inputs")).alias("abstain_rate"),
            (pl.col("correct_count") / pl.col("inputs")).alias("accuracy"),
            # a sequential radius is a settled table cell, not an estimate: no average of them is an ACR
            pl.when((pl.col("mode") == "certify") & (pl.col("sampling").fill_null("fixed") != "sequential"))
            .then(pl.col("_radius_sum") / pl.col("inputs")).alias("acr"),
            pl.when(pl.col("mode") == "certify").then(pl.col("max_radius")).alias("max_radius"),
        )
        columns = []
        for i, r in enumerate(radii):
            k = base[f"k@{i}"].to_numpy()
            lo, hi = _ci(k, m, ci)
            share = np.where(m > 0, k / np.maximum(m, 1), np.nan)
            values = {"": share, "lo": lo, "hi": hi}
            for kind in chosen:
                values[SUFFIX[kind]] = correction_columns(kind, k, m, alphas, ci, rho)
            for suffix, v in values.items():
                columns.append(pl.Series(cert_col(r, suffix), np.where(certify, v, np.nan), nan_to_null=True))
    internal = [c for c in summary.columns if c.startswith(("_", "k@"))]
    summary = summary.with_columns(columns).drop(internal)
    first = ["run_id", "seeds"] if pool else ["run_id"]
    order = [*first, *[c for c in summary.columns if c not in first]]
    return summary.select(order).sort(["mode", "dataset", "model", "train_sigma", "sigma", "source", "run_id"],
                                      nulls_last=True)


def _curves(frame: pl.LazyFrame, summary: pl.DataFrame, keys: list[str], step: float, ci: float,
            band: str = "pointwise", corrected: bool = False) -> pl.DataFrame:
    """Certified accuracy on the grid 0, step, 2 step, ... up to the largest radius, per CERTIFY
    configuration: a histogram of the radius bins of certified-correct inputs, cumulated from the top.
    ``lo``/``hi``: pointwise Clopper-Pearson at ``ci``; with a simultaneous ``band``, ``band_lo``/
    ``band_hi`` over the configuration's grid (and ``band_lo_corrected`` for wrong certificates)."""
    configs = summary.filter(pl.col("mode") == "certify").with_row_index("_cfg")
    binned = (frame.filter((pl.col("status") == "ok") & pl.col("correct").fill_null(False)
                           & pl.col("radius").is_not_null() & (pl.col("mode") == "certify"))
              .with_columns((pl.col("radius") / step + 1e-9).floor().cast(pl.Int64).alias("bin"))
              .group_by([*keys, "bin"]).agg(pl.len().alias("k")).collect(engine="streaming"))
    binned = binned.join(configs.select([*keys, "_cfg"]), on=keys, how="inner", nulls_equal=True)
    by_cfg = {c: part for (c,), part in binned.partition_by("_cfg", as_dict=True).items()}
    label_cols = [c for c in ("run_id", *KEY_COLUMNS, "seeds") if c in configs.columns]
    frames = []
    for cfg in configs.iter_rows(named=True):
        m = cfg["inputs"]
        top = int(math.floor((cfg["max_radius"] or 0.0) / step + 1e-9))
        counts = np.zeros(top + 2, dtype=np.int64)
        part = by_cfg.get(cfg["_cfg"])
        if part is not None:
            np.add.at(counts, np.minimum(part["bin"].to_numpy(), top + 1), part["k"].to_numpy())
        k_at = np.cumsum(counts[::-1])[::-1]  # certified-correct with radius >= bin * step
        lo, hi = _ci(k_at, np.full_like(k_at, m), ci)
        columns = {"radius": np.arange(top + 2) * step, "certified_accuracy": k_at / m, "lo": lo, "hi": hi}
        if band != "pointwise":
            columns["band_lo"], columns["band_hi"] = simultaneous_band(band, k_at, m, ci, len(k_at))
            if corrected:
                alpha = np.nan if cfg["alpha"] is None else cfg["alpha"]
                columns["band_lo_corrected"] = corrected_lower_band(band, k_at, m, alpha, ci, len(k_at))
        frame_cfg = pl.DataFrame(columns).with_columns(pl.lit(m, dtype=pl.Int64).alias("inputs"))
        frames.append(frame_cfg.with_columns([pl.lit(cfg[c], dtype=configs.schema[c]).alias(c)
                                              for c in dict.fromkeys(label_cols)]))
    if not frames:
        return pl.DataFrame()
    cols = list(dict.fromkeys(label_cols))
    bands = [c for c in ("band_lo", "band_hi", "band_lo_corrected") if c in frames[0].columns]
    return pl.concat(frames, how="vertical_relaxed").select([*cols, "inputs", "radius", "certified_accuracy", "lo",
                                                             "hi", *bands])


def _envelope(curves: pl.DataFrame) -> pl.DataFrame:
    """Per dataset, split, norm and radius: the best certified accuracy over configurations (of that
    norm: radii of different norms are not comparable), and which run (noise, sigma, model, source)
    achieved it.

    Runs that differ only in run id and seed are one setting, pooled first (their certified-correct
    inputs over all their inputs; a curve that ended below r counts 0 there), so the envelope never
    takes the best of several seeds, which would select on the noise; ``best_run_id`` then lists the
    pooled runs. The best is taken over settings that differ in something else (sigma, model, ...)."""
    if curves.is_empty():
        return curves
    setting = [c for c in KEY_COLUMNS if c in curves.columns and c not in POOLED]
    configs = curves.select([c for c in curves.columns if c in KEY_COLUMNS or c == "seeds"] + ["inputs"]).unique()
    totals = configs.group_by(setting).agg(pl.col("inputs").sum().alias("_m"),
                                           pl.col("run_id").unique().sort().str.join(",").alias("_runs"))
    keyed = (curves.with_columns(pl.col("radius").round(6),
                                 (pl.col("certified_accuracy") * pl.col("inputs")).round(0).alias("_k"))
             .group_by([*setting, "radius"]).agg(pl.col("_k").sum())
             .join(totals, on=setting, how="inner", nulls_equal=True)
             .with_columns((pl.col("_k") / pl.col("_m")).alias("certified_accuracy"), pl.col("_runs").alias("run_id"))
             .sort([*setting, "radius"], nulls_last=True))
    return (keyed.sort("certified_accuracy", descending=True, maintain_order=True)
            .group_by(["dataset", "split", "norm", "radius"], maintain_order=True)
            .agg(pl.col("certified_accuracy").first(), pl.col("sigma").first().alias("best_sigma"),
                 pl.col("noise").first().alias("best_noise"),
                 pl.col("model").first().alias("best_model"), pl.col("source").first().alias("best_source"),
                 pl.col("run_id").first().alias("best_run_id"))
            .sort(["dataset", "split", "norm", "radius"], nulls_last=True))

