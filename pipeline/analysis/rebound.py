"""Re-bounding stored counts at another alpha, without sampling (no torch, no Ray); and the check
that stored radii are numbers."""

from __future__ import annotations

import numpy as np
import polars as pl

from rscert.analysis.result import AnalysisError
from rscert.stats.families import formula
from rscert.stats.pair import PairFormula, Tally, pair_bounds


def check_values(frame: pl.LazyFrame) -> None:
    """NaN radii are refused (a certificate is a number); names a source file via its unit or source."""
    bad = (frame.filter(pl.col("radius").is_nan() & (pl.col("status") == "ok"))
           .select(pl.coalesce("source", "unit_id", "run_id").alias("where"), "index").head(1).collect())
    if bad.height:
        raise AnalysisError(f"radius is NaN in {bad['where'][0]} (index {bad['index'][0]})")


def rebound(frame: pl.LazyFrame, alpha: float) -> pl.LazyFrame:
    """Recompute p_lower, prediction, radius and correct at another alpha from the stored counts (no
    sampling): CERTIFY rows from ``count_top``, ``n``, ``top_class``, their radius by the row's noise family,
    norm, sigma and ``dim`` (rscert.stats.families); PREDICT rows re-decide their stored
    ``p_value`` against the new alpha. The selected class is unchanged.

    Refused for sequential rows: their bound was valid at the alpha the run spent over its looks and
    stopping rule; the stored count at the stopping time cannot be re-bounded at another alpha.
    ``--bound top2`` rows re-bound from ``count_top`` and ``count_second`` (the runner-up's count: the
    bound on pB is monotone in it), soft ``pa`` rows from ``soft_sum`` and ``soft_sumsq``; soft top2 rows
    are refused (their pB bound is a maximum over every class's sums, which rows do not keep). PREDICT
    rows of either vote re-decide their ``p_value``.
    """
    ok = pl.col("status") == "ok"
    seq = (frame.filter(pl.col("sampling") == "sequential").select(pl.coalesce("run_id", "source").alias("s"))
           .unique().head(3).collect())
    if seq.height:
        raise AnalysisError(f"--alpha: cannot re-bound at alpha={alpha}: run(s) {', '.join(map(str, seq['s']))} "
                            "used sequential sampling, whose bound holds only at the alpha it was run with (the "
                            "stopping rule spent it across looks); analyse them without --alpha")
    soft = pl.col("vote") == "soft"
    soft_top2 = (frame.filter(ok & (pl.col("mode") == "certify") & soft & (pl.col("bound") == "top2"))
                 .select(pl.coalesce("run_id", "source").alias("s")).unique().head(3).collect())
    if soft_top2.height:
        raise AnalysisError(f"--alpha: cannot re-bound at alpha={alpha}: run(s) {', '.join(map(str, soft_top2['s']))} "
                            "used --vote soft --bound top2, whose bound on pB is a maximum over every class's score "
                            "sums (rows keep only cA's); analyse them without --alpha")
    certify = pl.col("mode") == "certify"
    no_counts = (certify & ~soft & pl.col("count_top").is_null()) | \
        (certify & ~soft & (pl.col("bound") == "top2") & pl.col("count_second").is_null()) | \
        (certify & soft & (pl.col("soft_sum").is_null() | pl.col("soft_sumsq").is_null())) | \
        ((pl.col("mode") == "predict") & (pl.col("p_value").is_null() | pl.col("top_class").is_null()))
    missing = (frame.filter(ok & no_counts).select(pl.coalesce("source", "run_id").alias("s")).head(1).collect())
    if missing.height:
        raise AnalysisError(f"--alpha: cannot re-bound at alpha={alpha}: {missing['s'][0]} stores no vote counts "
                            "(logs of other code bases keep only the decision)")

    def _one(batch: pl.Series) -> pl.Series:
        df = batch.struct.unnest()
        size = len(df)
        prediction = df["prediction"].to_numpy().astype(np.float64)  # NaN stands for null
        radius = df["radius"].to_numpy().astype(np.float64)
        p_lower = df["p_lower"].to_numpy().astype(np.float64)
        p_upper = df["p_upper"].to_numpy().astype(np.float64)
        soft = (df["vote"] == "soft").fill_null(False).to_numpy()
        stored = np.where(soft, df["soft_sum"].is_not_null().to_numpy() & df["soft_sumsq"].is_not_null().to_numpy(),
                          df["count_top"].is_not_null().to_numpy()
                          & (df["count_second"].is_not_null() | (df["bound"] != "top2")).fill_null(True).to_numpy())
        certify = (df["mode"] == "certify").to_numpy() & df["top_class"].is_not_null().to_numpy() & stored
        if certify.any():
            keys = ["noise", "norm", "sigma", "dim", "bound", "vote"]
            groups = df.filter(pl.Series(certify)).select(*keys, "n", "count_top", "count_second", "soft_sum",
                                                           "soft_sumsq", "top_class").with_row_index("_i")
            rows = np.flatnonzero(certify)
            for (noise, norm, sigma, dim, bound, vote), part in groups.group_by(keys):
                m = rows[part["_i"].to_numpy()]  # vectorised per family, norm, sigma, dimension, bound and vote
                n = part["n"].to_numpy().astype(np.int64)
                zero = np.zeros(part.height)
                if vote == "soft":
                    tally = Tally(n, np.stack([part["soft_sum"].to_numpy(), zero], 1),
                                  np.stack([part["soft_sumsq"].to_numpy(), zero], 1))
                else:
                    second = part["count_second"].fill_null(0).to_numpy() if bound == "top2" else zero
                    tally = Tally(n, np.stack([part["count_top"].to_numpy(), second], 1).astype(np.int64))
                pair = pair_bounds(tally, np.zeros(part.height, np.int64), alpha, bound)
                form = PairFormula(formula(noise, float(sigma), norm, None if dim is None else int(dim)), bound)
                ok_m = form.certified(pair.p_lower, pair.p_upper)
                prediction[m] = np.where(ok_m, part["top_class"].to_numpy(), -1)
                radius[m] = form(pair.p_lower, pair.p_upper)
                p_lower[m] = pair.p_lower
                p_upper[m] = pair.p_upper if bound == "top2" else np.nan
        predict = (df["mode"] == "predict").to_numpy() & df["p_value"].is_not_null().to_numpy()
        if predict.any():
            top = df["top_class"].to_numpy()[predict].astype(np.float64)
            prediction[predict] = np.where(df["p_value"].to_numpy()[predict] <= alpha, top, -1)
        out = pl.DataFrame({"prediction": pl.Series(prediction, nan_to_null=True).cast(pl.Int64),
                            "radius": pl.Series(radius, nan_to_null=True),
                            "p_lower": pl.Series(p_lower, nan_to_null=True),
                            "p_upper": pl.Series(p_upper, nan_to_null=True)})
        assert out.height == size
        return out.to_struct("r")

    new = pl.struct(["prediction", "radius", "p_lower", "p_upper", "count_top", "count_second", "soft_sum",
                     "soft_sumsq", "n", "top_class", "sigma", "mode", "p_value", "noise", "norm", "dim", "bound",
                     "vote"]).map_batches(
        _one, return_dtype=pl.Struct({"prediction": pl.Int64, "radius": pl.Float64, "p_lower": pl.Float64,
                                      "p_upper": pl.Float64}))
    return (frame.with_columns(new.alias("_r"))
            .with_columns(pl.col("_r").struct.field("prediction").alias("prediction"),
                          pl.col("_r").struct.field("radius").alias("radius"),
                          pl.col("_r").struct.field("p_lower").alias("p_lower"),
                          pl.col("_r").struct.field("p_upper").alias("p_upper"),
                          pl.lit(alpha, dtype=pl.Float64).alias("alpha"))
            .with_columns(pl.when(ok).then(pl.col("prediction") == pl.col("label")).otherwise(pl.col("correct"))
                          .alias("correct"))
            .drop("_r"))
