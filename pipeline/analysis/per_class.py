"""Certified accuracy per class (``rscert analyze --per-class FILE``; no torch, no Ray).

One row per configuration and label: the inputs of that label, how many were certified correct at
each radius and the share (``cert_acc_<r>``, with a Clopper-Pearson interval at the analysis' level),
the accuracy of g, abstentions and failed rows. Selected inputs without a row (their unit never
committed) have no known label: each configuration that has some gets a row with ``label`` null, so
the rows of a configuration still add up to every selected input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from rscert.analysis.result import cert_col
from rscert.stats.smoothing import clopper_pearson_lower, clopper_pearson_upper


def per_class_table(frame: pl.LazyFrame, summary: pl.DataFrame, keys: list[str], radii: Sequence[float],
                    ci: float) -> pl.DataFrame:
    """The per-class rows of every configuration in ``summary`` (grouped by ``keys``)."""
    ok = pl.col("status") == "ok"
    good = ok & pl.col("correct").fill_null(False)
    counts = (frame.group_by([*keys, "label"]).agg(
        pl.len().alias("inputs"),
        (~ok).sum().alias("failed"),
        ((pl.col("prediction") == -1) & ok).sum().alias("abstained"),
        good.sum().alias("correct_count"),
        *[(good & (pl.col("radius") >= r)).sum().alias(f"_k{i}") for i, r in enumerate(radii)],
    ).collect(engine="streaming"))
    no_row = summary.filter(pl.col("missing") > 0).select([*keys, pl.col("missing").alias("inputs")])
    if no_row.height:
        zero = {c: pl.lit(0, dtype=counts.schema[c]) for c in counts.columns
                if c not in [*keys, "inputs", "label", "failed"]}
        no_row = no_row.with_columns(pl.lit(None, dtype=counts.schema["label"]).alias("label"),
                                     pl.col("inputs").alias("failed"), **zero)
        counts = pl.concat([counts, no_row.select(counts.columns)], how="vertical_relaxed")
    m = counts["inputs"].to_numpy()
    certify = (counts["mode"] == "certify").to_numpy() if "mode" in counts.columns else np.ones(len(m), bool)
    tail = (1 - ci) / 2
    columns = []
    for i, r in enumerate(radii):
        k = counts[f"_k{i}"].to_numpy()
        with np.errstate(all="ignore"):
            share = np.where(m > 0, k / np.maximum(m, 1), np.nan)
            lo = np.where(m > 0, clopper_pearson_lower(k, np.maximum(m, 1), tail), np.nan)
            hi = np.where(m > 0, clopper_pearson_upper(k, np.maximum(m, 1), tail), np.nan)
        for suffix, values in (("", share), ("lo", lo), ("hi", hi)):
            columns.append(pl.Series(cert_col(r, suffix), np.where(certify, values, np.nan), nan_to_null=True))
    out = counts.with_columns(*columns, (pl.col("correct_count") / pl.col("inputs")).alias("accuracy"))
    out = out.drop([f"_k{i}" for i in range(len(radii))])
    return out.sort([*[k for k in keys if k in ("mode", "dataset", "model", "sigma", "run_id")], "label"],
                    nulls_last=True)
