"""Readable labels for configurations, one home for tables and figures (no torch, no Ray).

A configuration is named by its dataset, model, noise family, sigma, the norm of its radii and the like;
two that would read the same get the settings they differ in appended (:data:`DISTINGUISH`), so no two
rows or curves share a label. A table that mixes norms names the norm on every CERTIFY row (l2 too);
figures never mix norms (one figure per norm, its axis named by it).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from rscert.analysis.references import REFERENCE_PREFIX

DISTINGUISH = ("bound", "vote", "temperature", "precision", "clamp", "preset", "seed", "seeds", "sampling", "n_max",
               "n", "n0", "alpha", "checkpoint_sha256", "num_classes", "run_id")
"""Settings appended to a label when two configurations would otherwise read the same."""


def disambiguate(base: Sequence[str], rows: Sequence[dict], columns: Sequence[str], sep: str) -> list[str]:
    """``base`` labels, each group that collides extended by the ``columns`` its rows differ in
    (``column<sep>value``); the run id only when no setting tells them apart."""
    out = list(base)
    for text in set(base):
        same = [i for i, b in enumerate(base) if b == text]
        if len(same) < 2:
            continue
        differ = [c for c in columns if len({str(rows[i].get(c)) for i in same}) > 1]
        if "run_id" in differ and len(differ) > 1:
            differ.remove("run_id")  # a setting tells them apart; the run id is in the summary anyway
        for i in same:
            out[i] = text + ", " + ", ".join(f"{c}{sep}{rows[i].get(c)}" for c in differ)
    return out


NORM_SYMBOLS = {"l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}


def _norms(rows: Sequence[dict]) -> set:
    return {r.get("norm") or "l2" for r in rows}


def _family(row: dict) -> str:
    """'' for Gaussian noise (the default), else 'laplace noise, ' and the like."""
    noise = row.get("noise")
    return f"{noise} noise, " if noise not in (None, "gaussian") else ""


def denoiser_name(spec: str | None) -> str | None:
    """A short name for a ``--denoiser`` spec: a factory as given, else the last path component, or
    the folder above it when that is a generic checkpoint name (``.../dncnn_0.50/checkpoint.pt``)."""
    if not spec:
        return None
    text = spec.removeprefix("diffusion:").rstrip("/")
    if ":" in text and "/" not in text:
        return spec  # package.module:factory
    parts = [p for p in text.split("/") if p]
    if len(parts) > 1 and parts[-1].startswith(("checkpoint", "model", "best")):
        return f"{parts[-2]}/{parts[-1]}"
    return ("diffusion:" if spec.startswith("diffusion:") else "") + (parts[-1] if parts else text)


def _base_label(row: dict, norms: bool = False) -> str:
    """``norms``: say the norm even for l2 (the table mixes norms)."""
    parts = []
    if row.get("dataset"):
        parts.append(str(row["dataset"]))
    if row.get("model"):
        parts.append(str(row["model"]) + (f" behind denoiser {denoiser_name(row['denoiser'])}"
                                          if row.get("denoiser") else ""))
    if row.get("train_sigma") is not None and row.get("train_sigma") != row.get("sigma"):
        parts.append(f"trained at {row['train_sigma']:.2f}")
    parts.append(f"{_family(row)}sigma = {row['sigma']:.2f}")
    if row.get("mode") != "predict" and (norms or (row.get("norm") or "l2") != "l2"):
        parts.append(f"{row.get('norm') or 'l2'} radii")
    if row.get("split") not in (None, "test"):
        parts.append(f"{row['split']} split")
    if row.get("mode") == "predict":
        parts.append(f"PREDICT n = {row['n']}" if row.get("n") else "PREDICT")
    if row.get("sampling") == "sequential":
        parts.append(f"sequential (cap {row['n_max']})" if row.get("n_max") else "sequential")
    if row.get("bound") == "top2":
        parts.append("top-2 bound")
    if row.get("vote") == "soft":
        t = row.get("temperature")
        parts.append(f"soft votes (T = {t:g})" if t is not None else "soft votes")
    if row.get("source") and (not row.get("model") or str(row.get("run_id", "")).startswith(REFERENCE_PREFIX)):
        parts.append(str(row["source"]))
    return ", ".join(parts)


SEQUENTIAL_MARK = "†"
"""Ends the label of a sequential CERTIFY configuration: its radii are settled table cells (tables.SEQUENTIAL_NOTE)."""


def sequential(row: dict) -> bool:
    return row.get("mode", "certify") == "certify" and row.get("sampling") == "sequential"


def labels(summary: pl.DataFrame) -> list[str]:
    """One readable label per summary row (tables); rows whose labels collide get the settings they differ in;
    sequential CERTIFY rows end in the mark †."""
    rows = summary.to_dicts()
    mixed = len(_norms([r for r in rows if r.get("mode") != "predict"])) > 1
    out = disambiguate([_base_label(r, mixed) for r in rows], rows,
                       [c for c in DISTINGUISH if c in summary.columns], " = ")
    return [f"{label} {SEQUENTIAL_MARK}" if sequential(row) else label for label, row in zip(out, rows, strict=True)]


def _plot_label(cfg: dict) -> str:
    noise = cfg.get("noise")
    text = (f"{noise} " if noise not in (None, "gaussian") else "") + f"σ = {cfg['sigma']:.2f}"
    if cfg.get("train_sigma") is not None and cfg["train_sigma"] != cfg["sigma"]:
        text += f" (trained {cfg['train_sigma']:.2f})"
    if cfg.get("split") not in (None, "test"):
        text += f", {cfg['split']}"
    if cfg.get("denoiser"):
        text += f", denoiser {denoiser_name(cfg['denoiser'])}"
    if cfg.get("source"):
        text += ", imported log"
    return text


def plot_labels(configs: list[dict]) -> list[str]:
    """Short legend labels (a figure is per dataset already); colliding ones get the settings they differ in."""
    return disambiguate([_plot_label(c) for c in configs], configs, DISTINGUISH, " ")
