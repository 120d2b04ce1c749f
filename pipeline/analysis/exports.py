"""Writing an analysis to files: the summary (CSV, Parquet), the tables (Markdown, LaTeX), the curves
and the envelope (CSV, Parquet). Each file is written whole: a temporary name, then a rename."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from rscert.analysis.tables import latex_table, markdown_table
from rscert.store.atomic import atomic_path

if TYPE_CHECKING:
    from rscert.analysis.result import Analysis


def _frame_writer(frame: pl.DataFrame, kind: str) -> Callable[[str], None]:
    if kind == "csv":
        return lambda p: frame.write_csv(p)
    return lambda p: frame.write_parquet(p)


def write_outputs(result: Analysis, markdown: str | None = None, csv: str | None = None,
                  parquet: str | None = None, latex: str | None = None, curves_csv: str | None = None,
                  curves_parquet: str | None = None, envelope_csv: str | None = None,
                  envelope_parquet: str | None = None) -> list[str]:
    """Write the requested files (any of them may be None); returns the written paths."""
    text = {"md": lambda p: Path(p).write_text(markdown_table(result, with_ci=True)),
            "tex": lambda p: Path(p).write_text(latex_table(result))}
    jobs = [(markdown, text["md"]), (latex, text["tex"]),
            (csv, _frame_writer(result.summary, "csv")), (parquet, _frame_writer(result.summary, "parquet")),
            (curves_csv, _frame_writer(result.curves, "csv")),
            (curves_parquet, _frame_writer(result.curves, "parquet")),
            (envelope_csv, _frame_writer(result.envelope, "csv")),
            (envelope_parquet, _frame_writer(result.envelope, "parquet"))]
    written = []
    for path, writer in jobs:
        if path:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                writer(str(tmp))
            written.append(str(target))
    return written
