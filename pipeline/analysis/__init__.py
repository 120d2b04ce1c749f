"""Certified-accuracy tables and curves from result rows, with Polars (no torch, no Ray).

Read the result files (:mod:`.result_files`), count inputs without rows (:mod:`.missing`), re-bound at
another alpha (:mod:`.rebound`), aggregate (:mod:`.aggregate`) into an :class:`Analysis`
(:mod:`.result`), label configurations (:mod:`.labels`), render tables (:mod:`.tables`), write them
(:mod:`.exports`) and plots (:mod:`.plots`, imported on its own: matplotlib), and import the published
scripts' logs (:mod:`.import_logs`).
"""

from rscert.analysis.aggregate import analyze, load_rows
from rscert.analysis.exports import write_outputs
from rscert.analysis.result import Analysis, AnalysisError, cert_col
from rscert.analysis.tables import latex_table, markdown_table, terminal_table

__all__ = ["Analysis", "AnalysisError", "analyze", "cert_col", "latex_table", "markdown_table", "load_rows",
           "terminal_table", "write_outputs"]
