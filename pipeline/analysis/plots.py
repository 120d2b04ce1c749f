"""Certified-accuracy figures (matplotlib, headless): curves with confidence bands, the envelope,
and a comparison of runs. Each figure is written as PNG and SVG."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # headless files; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from rscert.analysis.labels import plot_labels  # noqa: E402
from rscert.analysis.result import Analysis  # noqa: E402
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


def _configs(curves: pl.DataFrame, dataset, split) -> list[dict]:
    keys = [c for c in curves.columns if c not in ("radius", "certified_accuracy", "lo", "hi")]
    sub = _match(_match(curves, "dataset", dataset), "split", split)
    return sub.select(keys).unique(maintain_order=True).sort("sigma").to_dicts()


def _select(curves: pl.DataFrame, cfg: dict) -> pl.DataFrame:
    out = curves
    for k, v in cfg.items():
        out = out.filter(pl.col(k).is_null() if v is None else pl.col(k) == v)
    return out


def curves_figure(result: Analysis, dataset, split, bands: bool = True):
    """Certified accuracy against radius for every configuration of one dataset and split, with
    Clopper-Pearson bands and the best-over-configurations envelope."""
    curves = result.curves
    fig, ax = plt.subplots()
    configs = _configs(curves, dataset, split)
    for cfg, label in zip(configs, plot_labels(configs), strict=True):
        part = _select(curves, cfg).sort("radius")
        line, = ax.plot(part["radius"], part["certified_accuracy"], lw=1.4, label=label)
        if bands:
            ax.fill_between(part["radius"], part["lo"], part["hi"], color=line.get_color(), alpha=0.15, lw=0)
    env = _match(_match(result.envelope, "dataset", dataset), "split", split)
    if env.height:
        ax.plot(env["radius"], env["certified_accuracy"], color="black", lw=1.0, ls="--", label="envelope")
    ax.set_xlabel("radius (ℓ2)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.set_title(", ".join(str(x) for x in (dataset or "results", split) if x))
    ax.legend(fontsize=7)
    return fig


def comparison_figure(result: Analysis):
    """Every run's curve in one figure."""
    curves = result.curves
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for dataset, split in curves.select("dataset", "split").unique(maintain_order=True).rows():
        configs = _configs(curves, dataset, split)
        for cfg, label in zip(configs, plot_labels(configs), strict=True):
            part = _select(curves, cfg).sort("radius")
            name = ", ".join(str(x) for x in (dataset, cfg.get("model") or cfg.get("source")) if x)
            ax.plot(part["radius"], part["certified_accuracy"], lw=1.2, label=f"{name}, {label}")
    ax.set_xlabel("radius (ℓ2)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.set_title("all runs")
    ax.legend(fontsize=6, loc="upper right")
    return fig


def panels(result: Analysis) -> list[tuple]:
    """The (dataset, split) pairs that have CERTIFY curves (the curves hold CERTIFY configurations only)."""
    curves = result.curves
    if curves.is_empty():
        return []
    return curves.select("dataset", "split").unique(maintain_order=True).rows()


def write_plots(result: Analysis, folder: str | Path, bands: bool = True) -> list[str]:
    """Per dataset and split: curves per configuration (with CI bands) plus the envelope; and one
    figure that compares every run; each as PNG and SVG. Returns the written paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    if not panels(result):
        return written
    with plt.rc_context(STYLE):
        for dataset, split in panels(result):
            name = "_".join(str(x) for x in (dataset or "results", split) if x)
            written += _save(curves_figure(result, dataset, split, bands), folder, f"certified_accuracy_{name}")
        written += _save(comparison_figure(result), folder, "comparison")
    return written
