"""Certified-accuracy figures (matplotlib, headless): curves with confidence bands, the envelope,
and a comparison of runs. Each figure is written as PNG and SVG, to a local folder or any fsspec URL.
Radii of different norms never share an axis: one figure per norm, its axis and title naming it
(docs/families.md).

Certified accuracy is a step function of the radius (it drops where an input's radius is passed), so
curves are drawn as steps (``where="post"``: the value at a grid radius holds until the next one).
Configurations get distinct colours; their shading is light and optional (``--no-bands``); the
envelope (best configuration per radius) is drawn last, thin and dashed, so it never hides a curve.
Under each curves figure a caption says what its shading is: pointwise Clopper-Pearson intervals (the
default: one radius at a time, no correction for wrong certificates) or the band of ``rscert analyze
--band`` simultaneous over every radius (with ``--correction cp`` its corrected lower edge dash-dot).
Sequential runs are dotted and marked †: their radii are settled table cells, not estimates; imported
logs (``rscert import-logs``: rows with a ``source``) are labelled as such and drawn dash-dotted."""

from __future__ import annotations

import io
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
from rscert.store.storage import check_writable_url, join_url, write_whole  # noqa: E402

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


BAND_ALPHA = 0.12
"""Opacity of the confidence bands: light enough that overlapping bands keep their colours."""


def _save(fig, folder: str, name: str) -> list[str]:
    paths = []
    for ext in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext)
        paths.append(write_whole(join_url(folder, f"{name}.{ext}"), buffer.getvalue(), "plot"))
    plt.close(fig)
    return paths


def _colors(count: int) -> list:
    """Distinct colours: tab10, or tab20 / a sampled colormap for more configurations."""
    if count <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(count)]
    if count <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(count)]
    cmap = plt.get_cmap("turbo")
    return [cmap(i / max(count - 1, 1)) for i in range(count)]


def _draw(ax, part: pl.DataFrame, color, label: str, cfg: dict, bands: bool, lw: float = 1.4, low: str = "lo",
          high: str = "hi") -> None:
    """One configuration's curve as steps (dotted when sequential, dash-dotted for an imported log)."""
    seq = sequential(cfg)  # dotted: radii are settled table cells, not estimates (labels.SEQUENTIAL_MARK)
    ls = ":" if seq else "-." if cfg.get("source") else "-"
    ax.step(part["radius"], part["certified_accuracy"], where="post", color=color, lw=lw, ls=ls,
            label=f"{label} {SEQUENTIAL_MARK}" if seq else label)
    if bands:
        ax.fill_between(part["radius"], part[low], part[high], step="post", color=color, alpha=BAND_ALPHA,
                        lw=0)


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
    for cfg, label, color in zip(configs, plot_labels(configs), _colors(len(configs)), strict=True):
        part = _select(curves, cfg).sort("radius")
        _draw(ax, part, color, label, cfg, bands, low=low, high=high)
        if bands and result.band != "pointwise" and "band_lo_corrected" in part.columns:
            ax.step(part["radius"], part["band_lo_corrected"], where="post", color=color, lw=0.8, ls="-.")
    env = _norm(_match(_match(result.envelope, "dataset", dataset), "split", split), norm)
    if env.height and len(configs) > 1:  # last, thin and dashed: on top of the curves, hiding none
        ax.step(env["radius"], env["certified_accuracy"], where="post", color="0.2", lw=0.7, ls=(0, (4, 3)),
                label="envelope (best per radius)", zorder=10)
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
    entries = []
    for dataset, split in curves.select("dataset", "split").unique(maintain_order=True).rows():
        configs = _configs(curves, dataset, split, norm)
        for cfg, label in zip(configs, plot_labels(configs), strict=True):
            name = ", ".join(str(x) for x in (dataset, cfg.get("model") or cfg.get("source")) if x)
            entries.append((cfg, f"{name}, {label}"))
    for (cfg, label), color in zip(entries, _colors(len(entries)), strict=True):
        _draw(ax, _select(curves, cfg).sort("radius"), color, label, cfg, False, lw=1.2)
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
    """Per dataset and split: curves per configuration (with CI bands unless ``bands`` is off) plus the
    envelope; and one figure that compares every run; each as PNG and SVG, in ``folder`` (a local
    path or an fsspec URL). Returns the written paths."""
    folder = str(folder)
    check_writable_url(folder, "plot")
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
