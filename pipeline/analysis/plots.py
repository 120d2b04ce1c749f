"""Certified-accuracy figures (matplotlib, headless): curves with confidence bands, the envelope,
and a comparison of runs. Each figure is written as PNG and SVG. Radii of different norms never share
an axis: one figure per norm, its axis and title naming it (docs/families.md).

Under each curves figure a caption says what its shading is: pointwise Clopper-Pearson intervals (the
default: one radius at a time, no correction for wrong certificates) or the band of ``rscert analyze
--band`` simultaneous over every radius (with ``--correction cp`` its corrected lower edge dash-dot).
Sequential runs are dotted and marked †: their radii are settled table cells, not estimates."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # headless files; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from rscert.analysis.labels import NORM_SYMBOLS, SEQUENTIAL_MARK, plot_labels, sequential  # noqa: E402
from rscert.analysis.result import CURVE_VALUES, Analysis  # noqa: E402
from rscert.stats.bands import BAND_NAMES  # noqa: E402
from rscert.store.atomic import atomic_path  # noqa: E402

STYLE = {
    "figure.figsize": (4.8, 3.4),
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "savefig.bbox": "tight",
    "savefig.dpi": 200,
}


def _save(fig, folder: Path, name: str) -> list[str]:
    paths = []
    for ext in ("png", "svg"):
        target = folder / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext)
        paths.append(str(target))
    plt.close(fig)
    return paths


def _match(frame: pl.DataFrame, column: str, value) -> pl.DataFrame:
    return frame.filter(pl.col(column).is_null() if value is None else pl.col(column) == value)


def _norm(curves: pl.DataFrame, norm) -> pl.DataFrame:
    return _match(curves, "norm", norm) if "norm" in curves.columns else curves


def _axis(norm) -> str:
    return f"radius ({NORM_SYMBOLS.get(norm or 'l2', norm)})"


def _configs(curves: pl.DataFrame, dataset, split, norm=None) -> list[dict]:
    keys = [c for c in curves.columns if c not in CURVE_VALUES]
    sub = _norm(_match(_match(curves, "dataset", dataset), "split", split), norm)
    return sub.select(keys).unique(maintain_order=True).sort("sigma").to_dicts()


def _select(curves: pl.DataFrame, cfg: dict) -> pl.DataFrame:
    out = curves
    for k, v in cfg.items():
        out = out.filter(pl.col(k).is_null() if v is None else pl.col(k) == v)
    return out


def curves_figure(result: Analysis, dataset, split, bands: bool = True, norm: str | None = "l2"):
    """Certified accuracy against radius for every configuration of one dataset, split and norm, with
    the chosen band (pointwise Clopper-Pearson, or simultaneous) and the best-over-configurations
    envelope (of that norm); the caption under it says which band is drawn."""
    curves = result.curves
    fig, ax = plt.subplots()
    configs = _configs(curves, dataset, split, norm)
    low, high = ("lo", "hi") if result.band == "pointwise" else ("band_lo", "band_hi")
    for cfg, label in zip(configs, plot_labels(configs), strict=True):
        part = _select(curves, cfg).sort("radius")
        seq = sequential(cfg)  # dotted: radii are settled table cells, not estimates (labels.SEQUENTIAL_MARK)
        line, = ax.plot(part["radius"], part["certified_accuracy"], lw=1.4, ls=":" if seq else "-",
                        label=f"{label} {SEQUENTIAL_MARK}" if seq else label)
        if bands:
            ax.fill_between(part["radius"], part[low], part[high], color=line.get_color(), alpha=0.15, lw=0)
            if result.band != "pointwise" and "band_lo_corrected" in part.columns:
                ax.plot(part["radius"], part["band_lo_corrected"], color=line.get_color(), lw=0.8, ls="-.")
    env = _norm(_match(_match(result.envelope, "dataset", dataset), "split", split), norm)
    if env.height:
        ax.plot(env["radius"], env["certified_accuracy"], color="black", lw=1.0, ls="--", label="envelope")
    ax.set_xlabel(_axis(norm))
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.set_title(", ".join(str(x) for x in (dataset or "results", split, f"{norm} radii" if norm != "l2" else None)
                           if x))
    ax.legend(fontsize=7)
    if bands:
        fig.text(0.01, -0.02, band_caption(result), fontsize=6, va="top", wrap=True)
    return fig


def band_caption(result: Analysis) -> str:
    """What the shading of a curves figure is, in words (drawn under the figure)."""
    text = "shaded: " + BAND_NAMES[result.band].format(level=result.ci)
    if result.band != "pointwise" and "band_lo_corrected" in result.curves.columns:
        text += "; dash-dot: its lower edge corrected for wrong certificates (cp)"
    else:
        text += ", no correction for wrong certificates"
    if "sampling" in result.curves.columns and (result.curves["sampling"] == "sequential").any():
        text += f"\ndotted {SEQUENTIAL_MARK}: sequential runs (radii are settled table cells, not estimates)"
    return text


def comparison_figure(result: Analysis, norm: str | None = "l2"):
    """Every run's curve of one norm in one figure."""
    curves = _norm(result.curves, norm)
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for dataset, split in curves.select("dataset", "split").unique(maintain_order=True).rows():
        configs = _configs(curves, dataset, split, norm)
        for cfg, label in zip(configs, plot_labels(configs), strict=True):
            part = _select(curves, cfg).sort("radius")
            name = ", ".join(str(x) for x in (dataset, cfg.get("model") or cfg.get("source")) if x)
            ax.plot(part["radius"], part["certified_accuracy"], lw=1.2, label=f"{name}, {label}")
    ax.set_xlabel(_axis(norm))
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.set_title("all runs" + (f", {norm} radii" if norm != "l2" else ""))
    ax.legend(fontsize=6, loc="upper right")
    return fig


def panels(result: Analysis) -> list[tuple]:
    """The (dataset, split, norm) triples that have CERTIFY curves (the curves hold CERTIFY configurations
    only): one figure each, so that curves of different norms never share an axis."""
    curves = result.curves
    if curves.is_empty():
        return []
    if "norm" not in curves.columns:
        curves = curves.with_columns(pl.lit("l2").alias("norm"))
    return curves.select("dataset", "split", "norm").unique(maintain_order=True).rows()


def _suffix(norm) -> str:
    """File names of l2 figures are Cohen et al.'s (no suffix); other norms add theirs."""
    return "" if norm in (None, "l2") else f"_{norm}"


def write_plots(result: Analysis, folder: str | Path, bands: bool = True) -> list[str]:
    """Per dataset and split: curves per configuration (with CI bands) plus the envelope; and one
    figure that compares every run; each as PNG and SVG. Returns the written paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    if not panels(result):
        return written
    with plt.rc_context(STYLE):
        for dataset, split, norm in panels(result):
            name = "_".join(str(x) for x in (dataset or "results", split) if x) + _suffix(norm)
            written += _save(curves_figure(result, dataset, split, bands, norm), folder, f"certified_accuracy_{name}")
        for norm in dict.fromkeys(p[2] for p in panels(result)):
            written += _save(comparison_figure(result, norm), folder, f"comparison{_suffix(norm)}")
    return written
