"""What an analysis returns, and the radii and column names of its tables (no torch, no Ray).

The certified-accuracy table has one column per radius, ``cert_acc_<r>`` (:func:`cert_col`); its
default radii depend on the dataset (:data:`TABLE_RADII`). These are *table* radii; the radii that
decide when sequential sampling stops are :func:`rscert.stats.sequential.default_stop_radii`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl


class AnalysisError(ValueError):
    """Input that cannot be analysed, naming the file (and line, for logs) or the setting."""


TABLE_RADII: dict[str, tuple[float, ...]] = {
    "imagenet": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
    "cifar10": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
    "digits": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25),  # rscert demo's 8x8 digits
}
"""Default radii of the certified-accuracy table, by dataset (the papers' tables for ImageNet, CIFAR-10)."""
FALLBACK_TABLE_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
CURVE_VALUES = ("inputs", "radius", "certified_accuracy", "lo", "hi", "band_lo", "band_hi", "band_lo_corrected")
"""Columns of ``Analysis.curves`` that are values; the others are the configuration's settings."""
"""The table's radii when the rows' datasets have no entry (or several different ones)."""


def cert_col(r: float, suffix: str = "") -> str:
    """``cert_acc_<r>`` with the point written ``_`` and no trailing zeros (cert_acc_0, cert_acc_0_25)."""
    text = np.format_float_positional(float(r), trim="-").replace(".", "_")
    return f"cert_acc_{text}" + (f"_{suffix}" if suffix else "")


@dataclass
class Analysis:
    summary: pl.DataFrame  # one row per configuration (per run, by default)
    curves: pl.DataFrame  # CERTIFY configuration x radius grid
    envelope: pl.DataFrame  # dataset x split x radius: the best configuration
    radii: tuple[float, ...]
    corrections: tuple[str, ...] = ()
    band: str = "pointwise"  # the curves' band_lo/band_hi: none (pointwise lo/hi only), dkw or bonferroni
    ci: float = 0.95  # the level of every interval and band
    per_class: pl.DataFrame | None = None  # configuration x label (analyze(per_class=True))


def table_radii(datasets: Sequence[str | None]) -> tuple[float, ...]:
    """The default table radii for rows of these datasets: their common entry, else the fallback."""
    known = {TABLE_RADII[d] for d in datasets if d in TABLE_RADII}
    if len(known) == 1:
        return known.pop()
    return FALLBACK_TABLE_RADII


def check_table_radii(radii: Sequence[float]) -> tuple[float, ...]:
    """Sorted distinct table radii; refuses an empty list or a radius that is negative or not finite."""
    values = tuple(sorted({float(r) for r in radii}))
    bad = [r for r in values if not (math.isfinite(r) and r >= 0)]
    if bad or not values:
        raise AnalysisError(f"--radii: expected finite numbers >= 0, got {list(radii)!r}")
    return values
