"""Re-bounding stored counts at another alpha, without sampling (no torch, no Ray); and the check
that stored radii are numbers."""

from __future__ import annotations

import numpy as np
import polars as pl

from rscert.analysis.result import AnalysisError
from rscert.stats.families import formula
from rscert.stats.smoothing import clopper_pearson_lower


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
    """
    ok = pl.col("status") == "ok"
    seq = (frame.filter(pl.col("sampling") == "sequential").select(pl.coalesce("run_id", "source").alias("s"))
           .unique().head(3).collect())
    if seq.height:
        raise AnalysisError(f"--alpha: cannot re-bound at alpha={alpha}: run(s) {', '.join(map(str, seq['s']))} "
                            "used sequential sampling, whose bound holds only at the alpha it was run with (the "
                            "stopping rule spent it across looks); analyse them without --alpha")
    no_counts = ((pl.col("mode") == "certify") & pl.col("count_top").is_null()) | \
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
        certify = (df["mode"] == "certify").to_numpy() & df["count_top"].is_not_null().to_numpy()
        if certify.any():
            count, n, top = (df[c].to_numpy()[certify].astype(np.int64) for c in ("count_top", "n", "top_class"))
            low = clopper_pearson_lower(count, n, alpha)
            pred = np.where(low >= 0.5, top, -1).astype(np.float64)
            rad = np.empty(certify.sum())
            groups = df.filter(pl.Series(certify)).select("noise", "norm", "sigma", "dim").with_row_index("_i")
            for (noise, norm, sigma, dim), part in groups.group_by(["noise", "norm", "sigma", "dim"]):
                m = part["_i"].to_numpy()  # vectorised per family, norm, sigma and dimension
                rad[m] = formula(noise, float(sigma), norm, None if dim is None else int(dim))(low[m])
            prediction[certify], radius[certify], p_lower[certify] = pred, rad, low
        predict = (df["mode"] == "predict").to_numpy() & df["p_value"].is_not_null().to_numpy()
        if predict.any():
            top = df["top_class"].to_numpy()[predict].astype(np.float64)
            prediction[predict] = np.where(df["p_value"].to_numpy()[predict] <= alpha, top, -1)
        out = pl.DataFrame({"prediction": pl.Series(prediction, nan_to_null=True).cast(pl.Int64),
                            "radius": pl.Series(radius, nan_to_null=True),
                            "p_lower": pl.Series(p_lower, nan_to_null=True)})
        assert out.height == size
        return out.to_struct("r")

    new = pl.struct(["prediction", "radius", "p_lower", "count_top", "n", "top_class", "sigma", "mode",
                     "p_value", "noise", "norm", "dim"]).map_batches(
        _one, return_dtype=pl.Struct({"prediction": pl.Int64, "radius": pl.Float64, "p_lower": pl.Float64}))
    return (frame.with_columns(new.alias("_r"))
            .with_columns(pl.col("_r").struct.field("prediction").alias("prediction"),
                          pl.col("_r").struct.field("radius").alias("radius"),
                          pl.col("_r").struct.field("p_lower").alias("p_lower"),
                          pl.lit(alpha, dtype=pl.Float64).alias("alpha"))
            .with_columns(pl.when(ok).then(pl.col("prediction") == pl.col("label")).otherwise(pl.col("correct"))
                          .alias("correct"))
            .drop("_r"))
