"""Writing an analysis to files: the summary (CSV, Parquet), the tables (Markdown, LaTeX), the curves
and the envelope (CSV, Parquet). Each target is a local path or any fsspec URL, like the analysis'
inputs, and each file is written whole (:func:`rscert.store.storage.write_whole`)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl

from rscert.analysis.tables import latex_table, markdown_table
from rscert.store.storage import check_writable_url, write_whole

if TYPE_CHECKING:
    from rscert.analysis.result import Analysis


def _frame_bytes(frame: pl.DataFrame, kind: str) -> Callable[[], bytes]:
    def render() -> bytes:
        buffer = io.BytesIO()
        if kind == "csv":
            frame.write_csv(buffer)
        else:
            frame.write_parquet(buffer)
        return buffer.getvalue()

    return render


def summary_json(result: Analysis) -> bytes:
    """The analysis as one JSON document: the radii, then one object per run (configuration) with its
    settings, counts and certified accuracy (with interval ends) at each radius; the per-class rows
    when they were computed. Nulls stay null; floats are plain JSON numbers."""
    import json

    document = {"format": "rscert-analysis/v1", "radii": list(result.radii),
                "corrections": list(result.corrections), "runs": result.summary.to_dicts()}
    if result.per_class is not None:
        document["per_class"] = result.per_class.to_dicts()
    return json.dumps(document, indent=1, default=str, allow_nan=False).encode()


def _per_class_bytes(result: Analysis, target: str) -> bytes:
    if result.per_class is None:
        raise ValueError("per-class: the analysis was made without per_class=True")
    if target.endswith(".parquet"):
        return _frame_bytes(result.per_class, "parquet")()
    if target.endswith(".md"):
        return per_class_markdown(result).encode()
    return _frame_bytes(result.per_class, "csv")()


def per_class_markdown(result: Analysis, digits: int = 2) -> str:
    """The per-class table as Markdown: one row per configuration and label."""
    from rscert.analysis.labels import labels
    from rscert.analysis.result import cert_col

    names = dict(zip(result.summary["run_id"].to_list(), labels(result.summary), strict=True))
    cols = [cert_col(r) for r in result.radii]
    lines = ["| configuration | label | inputs | failed | " + " | ".join(f"r = {r:g}" for r in result.radii) + " |",
             "|" + " --- |" * (len(cols) + 4)]
    for row in result.per_class.iter_rows(named=True):
        cells = ["-" if row[c] is None else f"{row[c]:.{digits}f}" for c in cols]
        label = "(no row)" if row["label"] is None else str(row["label"])
        lines.append(f"| {names.get(row['run_id'], row['run_id'])} | {label} | {row['inputs']} | {row['failed']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_targets(targets: dict[str, str | None]) -> None:
    """Refuse, before any work, an output (``{option: path or URL}``) rscert cannot write to."""
    for option, target in targets.items():
        if target:
            check_writable_url(target, option)


def write_outputs(result: Analysis, markdown: str | None = None, csv: str | None = None,
                  parquet: str | None = None, latex: str | None = None, curves_csv: str | None = None,
                  curves_parquet: str | None = None, envelope_csv: str | None = None,
                  envelope_parquet: str | None = None, json: str | None = None,
                  per_class: str | None = None) -> list[str]:
    """Write the requested files (any of them may be None); returns the written paths or URLs. The
    per-class table is CSV, or Parquet / Markdown by the target's ending (.parquet, .md)."""
    jobs = [("markdown", markdown, lambda: markdown_table(result, with_ci=True).encode()),
            ("latex", latex, lambda: latex_table(result).encode()),
            ("csv", csv, _frame_bytes(result.summary, "csv")),
            ("parquet", parquet, _frame_bytes(result.summary, "parquet")),
            ("curves-csv", curves_csv, _frame_bytes(result.curves, "csv")),
            ("curves-parquet", curves_parquet, _frame_bytes(result.curves, "parquet")),
            ("envelope-csv", envelope_csv, _frame_bytes(result.envelope, "csv")),
            ("envelope-parquet", envelope_parquet, _frame_bytes(result.envelope, "parquet")),
            ("json", json, lambda: summary_json(result)),
            ("per-class", per_class, lambda: _per_class_bytes(result, per_class))]
    return [write_whole(target, render(), option) for option, target, render in jobs if target]
