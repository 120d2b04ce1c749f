"""Certified-accuracy analysis with Polars lazy scans (no torch, no Ray).

Definitions (Cohen et al. 2019, Section 4): over the inputs of one run configuration,
* certified accuracy at radius r = fraction of inputs with ``correct`` and ``radius >= r``
  (abstentions and errors count as not certified);
* the smoothed classifier's accuracy = certified accuracy at r = 0;
* average certified radius (ACR) = mean over inputs of ``radius`` if correct, else 0;
* the envelope = for each radius, the best certified accuracy over the configurations of a
  dataset (the published tables mark that best sigma per radius).

Uncertainty: the inputs are a sample of the test distribution, so each certified accuracy k/m gets
a two-sided Clopper-Pearson interval at ``ci`` (default 95%). Optionally (``certificate_correction``)
its lower end also accounts for certificates that are wrong: each is wrong with probability at most
alpha, so with probability >= 1 - delta at most B = binom.ppf(1 - delta, m, alpha) of the m are; the
corrected lower bound is CP_lower(k, m) - B / m (delta = half the interval's miss probability).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import pyarrow.parquet as pq
from scipy.stats import binom

from .atomic import atomic_path
from .smoothing import clopper_pearson_lower, clopper_pearson_upper, gaussian_radius

GROUP_COLUMNS = ["dataset", "split", "model", "checkpoint_sha256", "train_sigma", "noise", "sigma", "n0", "n",
                 "alpha", "mode", "source"]
REQUIRED = {"radius", "correct", "prediction", "status", "sigma"}
DEFAULT_RADII = {
    "imagenet": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
    "cifar10": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
}
FALLBACK_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


class AnalysisError(ValueError):
    """Input that cannot be analysed, naming the file (and line, for logs)."""


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def find_parquet(paths: Sequence[str]) -> list[str]:
    """Parquet files under each path (a file, a folder searched recursively, or an fsspec URL)."""
    files: list[str] = []
    for raw in paths:
        fs, root = fsspec.core.url_to_fs(raw)
        protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        prefix = "" if protocol in ("file", "local") else f"{protocol}://"
        if not fs.exists(root):
            raise AnalysisError(f"{raw}: no such file or folder")
        if fs.isfile(root):
            found = [root]
        else:
            found = sorted(f for f in fs.glob(f"{root.rstrip('/')}/**/*.parquet")
                           if not any(part.startswith((".", "_")) for part in f[len(root):].split("/")))
        if not found:
            raise AnalysisError(f"{raw}: no Parquet files found")
        files += [prefix + f for f in found]
    return files


IDENTITY = {"model", "dataset", "run_id", "source"}


def check_schema(files: Sequence[str]) -> None:
    """Every file must carry rscert's result columns; names the first file that does not. Files
    without any identifying column cannot be told apart, so they are refused when mixed."""
    for path in files:
        try:
            with fsspec.open(path, "rb") as fh:
                names = set(pq.read_schema(fh).names)
        except Exception as exc:
            raise AnalysisError(f"{path}: not a readable Parquet file ({exc})") from None
        missing = REQUIRED - names
        if missing:
            raise AnalysisError(f"{path}: not an rscert result file (missing columns {sorted(missing)})")
        if len(files) > 1 and not (IDENTITY & names):
            raise AnalysisError(f"{path}: has no grouping columns ({', '.join(sorted(IDENTITY))}), so its "
                                "configuration cannot be told from the other files'; analyse it alone")


def scan(paths: Sequence[str]) -> pl.LazyFrame:
    """All result rows under the paths, lazily, with every grouping column present."""
    files = find_parquet(paths)
    check_schema(files)
    frame = pl.scan_parquet(files, missing_columns="insert")
    names = frame.collect_schema().names()
    add = [pl.lit(None).alias(c) for c in [*GROUP_COLUMNS, "count_top", "top_class", "seconds"] if c not in names]
    return frame.with_columns(add) if add else frame


def check_values(frame: pl.LazyFrame) -> None:
    """NaN radii are refused (a certificate is a number); names a source file via its unit or source."""
    bad = (frame.filter(pl.col("radius").is_nan() & (pl.col("status") == "ok"))
           .select(pl.coalesce(pl.col("source"), pl.col("unit_id") if "unit_id" in frame.collect_schema().names()
                               else pl.lit(None)).alias("where"), "index").head(1).collect())
    if bad.height:
        raise AnalysisError(f"radius is NaN in {bad['where'][0]} (index {bad['index'][0]})")


def rebound(frame: pl.LazyFrame, alpha: float) -> pl.LazyFrame:
    """Recompute prediction, radius and correct at another alpha from the stored counts (no sampling).

    Valid for CERTIFY rows that store ``count_top``, ``n`` and ``top_class``; the selection is unchanged.
    """
    missing = (frame.filter((pl.col("status") == "ok") & pl.col("count_top").is_null())
               .select(pl.coalesce("source", pl.lit("a native run")).alias("s")).head(1).collect())
    if missing.height:
        raise AnalysisError(f"cannot re-bound at alpha={alpha}: {missing['s'][0]} stores no vote counts "
                            "(logs of other code bases keep only the radius)")

    def _one(batch: pl.Series) -> pl.Series:
        df = batch.struct.unnest()
        ok = df["count_top"].is_not_null().to_numpy()
        prediction = np.full(len(df), -1, dtype=np.int64)
        radius = np.zeros(len(df))
        if ok.any():
            sigmas = df["sigma"].to_numpy()[ok]
            count, n, top = (df[c].to_numpy()[ok].astype(np.int64) for c in ("count_top", "n", "top_class"))
            pred, rad = np.empty(ok.sum(), dtype=np.int64), np.empty(ok.sum())
            for s in np.unique(sigmas):  # vectorised per sigma
                m = sigmas == s
                p_low = clopper_pearson_lower(count[m], n[m], alpha)
                pred[m] = np.where(p_low >= 0.5, top[m], -1)
                rad[m] = gaussian_radius(p_low, float(s))
            prediction[ok], radius[ok] = pred, rad
        return pl.DataFrame({"prediction": prediction, "radius": radius}).to_struct("r")

    new = pl.struct(["count_top", "n", "top_class", "sigma"]).map_batches(
        _one, return_dtype=pl.Struct({"prediction": pl.Int64, "radius": pl.Float64}))
    return (frame.with_columns(new.alias("_r"))
            .with_columns(pl.col("_r").struct.field("prediction").alias("prediction"),
                          pl.col("_r").struct.field("radius").alias("radius"),
                          pl.lit(alpha).alias("alpha"))
            .with_columns((pl.col("prediction") == pl.col("label")).alias("correct"))
            .drop("_r"))


# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------


@dataclass
class Analysis:
    summary: pl.DataFrame  # one row per configuration
    curves: pl.DataFrame  # configuration x radius grid
    envelope: pl.DataFrame  # dataset x radius: the best configuration
    radii: tuple[float, ...]


def default_radii(datasets: Sequence[str | None]) -> tuple[float, ...]:
    known = {DEFAULT_RADII[d] for d in datasets if d in DEFAULT_RADII}
    if len(known) == 1:
        return known.pop()
    return FALLBACK_RADII


def _ci(k: np.ndarray, m: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - level) / 2
    lower = np.where(m > 0, clopper_pearson_lower(k, np.maximum(m, 1), tail), np.nan)
    upper = np.where(m > 0, clopper_pearson_upper(k, np.maximum(m, 1), tail), np.nan)
    return lower, upper


def analyze(
    paths: Sequence[str],
    radii: Sequence[float] | None = None,
    step: float = 0.01,
    ci: float = 0.95,
    alpha: float | None = None,
    certificate_correction: bool = False,
) -> Analysis:
    """Summary, curves and envelope for every configuration found under ``paths``."""
    frame = scan(paths)
    check_values(frame)
    if alpha is not None:
        frame = rebound(frame, alpha)
    groups = GROUP_COLUMNS
    ok = pl.col("status") == "ok"
    certify_rows = frame.filter(ok)
    base = (frame.group_by(groups).agg(
        pl.len().alias("rows"),
        ok.sum().alias("inputs"),
        (~ok).sum().alias("failed"),
        ((pl.col("prediction") == -1) & ok).sum().alias("abstained"),
        (pl.col("correct").fill_null(False) & ok).sum().alias("correct_count"),
        pl.when(ok & pl.col("correct").fill_null(False)).then(pl.col("radius")).otherwise(0.0)
        .sum().alias("radius_sum"),
        pl.col("seconds").mean().alias("seconds_per_input"),
        pl.col("radius").max().alias("max_radius"),
    ).collect(engine="streaming"))
    if base.height == 0:
        raise AnalysisError("no rows to analyse")
    if radii is None:
        radii = default_radii(base["dataset"].to_list())
    radii = tuple(sorted(set(float(r) for r in radii)))

    # certified counts at the requested radii (exact comparisons) ...
    at = (certify_rows.group_by(groups).agg(
        [(pl.col("correct").fill_null(False) & (pl.col("radius") >= r)).sum().alias(f"k@{r:g}") for r in radii]
    ).collect(engine="streaming"))
    # ... and on the fine grid: histogram of radius bins of certified-correct inputs, cumulated from the top
    binned = (certify_rows.filter(pl.col("correct").fill_null(False) & pl.col("radius").is_not_null())
              .with_columns((pl.col("radius") / step + 1e-9).floor().cast(pl.Int64).alias("bin"))
              .group_by([*groups, "bin"]).agg(pl.len().alias("k")).collect(engine="streaming"))

    summary = base.join(at, on=groups, how="left", nulls_equal=True)
    m = summary["inputs"].to_numpy()
    summary = summary.with_columns(
        (pl.col("abstained") / pl.col("inputs")).alias("abstain_rate"),
        (pl.col("correct_count") / pl.col("inputs")).alias("accuracy"),
        (pl.col("radius_sum") / pl.col("inputs")).alias("acr"),
    )
    new_cols = []
    for r in radii:
        k = summary[f"k@{r:g}"].fill_null(0).to_numpy()
        lo, hi = _ci(k, m, ci)
        new_cols += [pl.Series(f"r={r:g}", np.where(m > 0, k / np.maximum(m, 1), np.nan)),
                     pl.Series(f"r={r:g} lo", lo), pl.Series(f"r={r:g} hi", hi)]
        if certificate_correction:
            alphas = summary["alpha"].fill_null(np.nan).to_numpy().astype(float)
            delta = (1 - ci) / 2
            wrong = np.where(np.isfinite(alphas), binom.ppf(1 - delta, m, np.nan_to_num(alphas)), np.nan)
            new_cols.append(pl.Series(f"r={r:g} lo corrected", np.maximum(lo - wrong / np.maximum(m, 1), 0.0)))
    summary = summary.with_columns(new_cols).drop([f"k@{r:g}" for r in radii]).sort(
        ["dataset", "model", "train_sigma", "sigma", "source"], nulls_last=True)

    curves = _curves(binned, summary, groups, step, ci)
    envelope = _envelope(curves)
    return Analysis(summary=summary, curves=curves, envelope=envelope, radii=radii)


def _curves(binned: pl.DataFrame, summary: pl.DataFrame, groups: list[str], step: float, ci: float) -> pl.DataFrame:
    """Certified accuracy on the grid 0, step, 2 step, ... up to the largest radius, per configuration."""
    frames = []
    for cfg in summary.select([*groups, "inputs", "max_radius"]).iter_rows(named=True):
        m = cfg["inputs"]
        if not m:
            continue
        match = binned
        for g in groups:
            match = match.filter(pl.col(g).is_null() if cfg[g] is None else pl.col(g) == cfg[g])
        top = int(math.floor((cfg["max_radius"] or 0.0) / step + 1e-9)) if cfg["max_radius"] else 0
        counts = np.zeros(top + 2, dtype=np.int64)
        for b, k in match.select("bin", "k").iter_rows():
            counts[min(b, top + 1)] += k
        k_at = np.cumsum(counts[::-1])[::-1][: top + 2]  # certified-correct with radius >= bin * step
        lo, hi = _ci(k_at, np.full_like(k_at, m), ci)
        frame = pl.DataFrame({"radius": np.arange(top + 2) * step, "certified_accuracy": k_at / m,
                              "lo": lo, "hi": hi})
        frames.append(frame.with_columns([pl.lit(cfg[g]).alias(g) for g in groups]))
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed").select([*groups, "radius", "certified_accuracy", "lo", "hi"])


def _envelope(curves: pl.DataFrame) -> pl.DataFrame:
    """Per dataset and radius: the best certified accuracy over configurations, and its sigma."""
    if curves.is_empty():
        return curves
    keyed = curves.with_columns(pl.col("radius").round(6))
    return (keyed.sort("certified_accuracy", descending=True)
            .group_by(["dataset", "split", "mode", "radius"], maintain_order=True)
            .agg(pl.col("certified_accuracy").first(), pl.col("sigma").first().alias("best_sigma"),
                 pl.col("model").first().alias("best_model"), pl.col("source").first().alias("best_source"))
            .sort(["dataset", "radius"], nulls_last=True))


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------


def _label(row: dict) -> str:
    parts = []
    if row.get("dataset"):
        parts.append(str(row["dataset"]))
    if row.get("model"):
        parts.append(str(row["model"]))
    if row.get("train_sigma") is not None and row.get("train_sigma") != row.get("sigma"):
        parts.append(f"trained at {row['train_sigma']:.2f}")
    parts.append(f"sigma = {row['sigma']:.2f}")
    if row.get("split") not in (None, "test"):
        parts.append(f"{row['split']} split")
    if row.get("mode") == "predict":
        parts.append(f"PREDICT n = {row['n']}" if row.get("n") else "PREDICT")
    if row.get("source") and not row.get("model"):
        parts.append(str(row["source"]))
    return ", ".join(parts)


def markdown_table(result: Analysis, digits: int = 2, with_ci: bool = False) -> str:
    """Certified accuracy per configuration (rows) and radius (columns); the best per column in bold."""
    s = result.summary.filter(pl.col("mode").fill_null("certify") == "certify")
    cols = [f"r={r:g}" for r in result.radii]
    header = "| configuration | n | " + " | ".join(f"r = {r:g}" for r in result.radii) + " | ACR |"
    lines = [header, "|" + " --- |" * (len(cols) + 3)]
    best = {c: s[c].max() for c in cols}
    for row in s.iter_rows(named=True):
        cells = []
        for c in cols:
            v = row[c]
            text = f"{v:.{digits}f}"
            if with_ci:
                text += f" ({row[c + ' lo']:.{digits}f}–{row[c + ' hi']:.{digits}f})"
            if v == best[c] and v > 0:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {_label(row)} | {row['inputs']} | " + " | ".join(cells) + f" | {row['acr']:.3f} |")
    return "\n".join(lines) + "\n"


def terminal_table(result: Analysis) -> str:
    s = result.summary
    cols = [f"r={r:g}" for r in result.radii]
    headers = ["configuration", "inputs", "abstain", "acc", "ACR", "s/input", *cols]
    rows = []
    for row in s.iter_rows(named=True):
        cert = ["-"] * len(cols) if row.get("mode") == "predict" else [f"{row[c]:.3f}" for c in cols]
        sec = row["seconds_per_input"]
        rows.append([_label(row), str(row["inputs"]), f"{row['abstain_rate']:.3f}", f"{row['accuracy']:.3f}",
                     "-" if row.get("mode") == "predict" else f"{row['acr']:.3f}",
                     "-" if sec is None else f"{sec:.2f}", *cert])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(headers), *(line(r) for r in rows)])


def write_outputs(result: Analysis, markdown: str | None = None, csv: str | None = None,
                  parquet: str | None = None) -> list[str]:
    """Write the requested tables; each file is written whole (temporary name, then rename)."""
    written = []
    for path, writer in ((markdown, lambda p: Path(p).write_text(markdown_table(result, with_ci=True))),
                         (csv, lambda p: result.summary.write_csv(p)),
                         (parquet, lambda p: result.summary.write_parquet(p))):
        if path:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                writer(str(tmp))
            written.append(str(target))
    return written
