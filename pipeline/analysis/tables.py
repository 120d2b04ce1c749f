"""Certified-accuracy tables as text: terminal, Markdown and LaTeX (booktabs) (no torch, no Ray).

Rows are configurations (runs, by default) of ``Analysis.summary``; the CERTIFY table has one column
per radius with the best value per column (among rows of one norm) in bold, the norm of the radii in
its header and its row labels wherever it is not l2 alone, the number of inputs and of failed ones (``3 (2
missing)``: 3 failed, 2 of them selected inputs without a row); PREDICT configurations get their own
table (accuracy and abstention of g). Sequential configurations are marked † and have no ACR: their
radii are the table cells their stopping rule settled (docs/sequential.md), not estimates; the notes
under each table say so, and how many earlier-selected inputs a narrower resubmission left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from rscert.analysis.labels import SEQUENTIAL_MARK, labels, sequential
from rscert.analysis.result import cert_col

if TYPE_CHECKING:
    from rscert.analysis.result import Analysis


SEQUENTIAL_NOTE = (f"{SEQUENTIAL_MARK} sequential sampling: each radius is the cell of the run's --radii table that "
                   "its stopping rule settled, not an estimate of the radius fixed sampling would report; certified "
                   "accuracy at those radii holds as for fixed sampling, but ACR (omitted) and values at other radii "
                   "are not comparable with fixed-sampling runs (docs/sequential.md)")


def _acr(row: dict) -> str:
    return _num(row.get("acr"), 3)


def notes(result: Analysis) -> list[str]:
    """Lines under a table: what the sequential mark means, and inputs a narrower resubmission left out."""
    rows = result.summary.to_dicts()
    out = [SEQUENTIAL_NOTE] if any(sequential(r) for r in rows) else []
    for name, row in zip(labels(result.summary), rows, strict=True):
        if row.get("deselected"):
            out.append(f"{name}: {row['deselected']} inputs selected by earlier submissions are no longer selected "
                       "and have no row: they are in no denominator (select them again to certify them)")
    return out
def _num(value: float | None, digits: int) -> str:
    """A number to ``digits`` places, or ``-`` where there is none (a reference row's unknown cells)."""
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def failed_cell(row: dict) -> str:
    """The failed count, and how many of them have no row (their unit never committed)."""
    missing = row.get("missing") or 0
    return f"{row['failed']} ({missing} missing)" if missing else str(row["failed"])


def best_per_norm(rows: pl.DataFrame, cols: list[str]) -> dict[tuple, float]:
    """The best value of each column among the rows of each norm (radii of different norms are not
    compared: a bold cell is the best of its norm)."""
    norms = rows["norm"] if "norm" in rows.columns else pl.Series([None] * rows.height)
    return {(norm, c): rows.filter(norms == norm if norm is not None else norms.is_null())[c].max()
            for norm in norms.unique().to_list() for c in cols}


def norm_note(rows: pl.DataFrame) -> str:
    """'' for l2 radii only (Cohen et al.'s tables); else which norm the radius columns are in."""
    norms = set(rows["norm"].to_list()) if "norm" in rows.columns else {None}
    if norms <= {None, "l2"}:
        return ""
    if len(norms) == 1:
        return f" ({norms.pop()} radii)"
    return " (radii in each row's norm)"


def _rows(result: Analysis, mode: str) -> tuple[pl.DataFrame, list[str]]:
    """The summary rows of one mode and their labels."""
    mask = result.summary["mode"] == mode
    names = [n for n, keep in zip(labels(result.summary), mask, strict=True) if keep]
    return result.summary.filter(mask), names


def markdown_table(result: Analysis, digits: int = 2, with_ci: bool = False) -> str:
    """CERTIFY configurations (rows) by radius (columns), best per column in bold; then PREDICT ones."""
    s, names = _rows(result, "certify")
    cols = [cert_col(r) for r in result.radii]
    lines = []
    if s.height:
        header = (f"| configuration{norm_note(s)} | inputs | failed | " + " | ".join(f"r = {r:g}" for r in result.radii)
                  + " | ACR |")
        lines += [header, "|" + " --- |" * (len(cols) + 4)]
        best = best_per_norm(s, cols)
        for name, row in zip(names, s.iter_rows(named=True), strict=True):
            cells = []
            for c in cols:
                v = row[c]
                text = _num(v, digits)
                if with_ci and v is not None:
                    text += f" ({_num(row[c + '_lo'], digits)}–{_num(row[c + '_hi'], digits)})"
                if v is not None and v == best[row.get("norm"), c] and v > 0:
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {name} | {row['inputs']} | {failed_cell(row)} | " + " | ".join(cells)
                         + f" | {_acr(row)} |")
    p, names = _rows(result, "predict")
    if p.height:
        lines += [""] if lines else []
        lines += ["| PREDICT configuration | inputs | failed | accuracy | abstain |", "| --- | --- | --- | --- | --- |"]
        for name, row in zip(names, p.iter_rows(named=True), strict=True):
            lines.append(f"| {name} | {row['inputs']} | {failed_cell(row)} | {row['accuracy']:.{digits}f} | "
                         f"{row['abstain_rate']:.{digits}f} |")
    extra = notes(result)
    if extra:
        lines += ["", *extra]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_table(result: Analysis, digits: int = 2) -> str:
    """The CERTIFY table as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``): one row per
    configuration, one column per radius, the best per column in bold, then inputs and failed ones."""
    s, names = _rows(result, "certify")
    cols = [cert_col(r) for r in result.radii]
    spec = "l" + "r" * (len(cols) + 3)
    head = " & ".join([f"configuration{latex_escape(norm_note(s))}", *(f"$r = {r:g}$" for r in result.radii), "ACR",
                       "inputs", "failed"])
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head + r" \\", r"\midrule"]
    best = best_per_norm(s, cols) if s.height else {}
    for name, row in zip(names, s.iter_rows(named=True), strict=True):
        name = latex_escape(name).replace("sigma = ", r"$\sigma$ = ").replace(SEQUENTIAL_MARK, r"$^\dagger$")
        cells = []
        for c in cols:
            text = _num(row[c], digits)
            top = row[c] is not None and row[c] == best[row.get("norm"), c] and row[c] > 0
            cells.append(rf"\textbf{{{text}}}" if top else text)
        lines.append(" & ".join([name, *cells, _acr(row), str(row["inputs"]), failed_cell(row)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if any(sequential(r) for r in s.iter_rows(named=True)):
        note = latex_escape(SEQUENTIAL_NOTE).replace(SEQUENTIAL_MARK, r"$^\dagger$")
        lines.append(r"\par\smallskip{\footnotesize " + note + "}")
    return "\n".join(lines) + "\n"


def terminal_table(result: Analysis) -> str:
    s = result.summary
    cols = [cert_col(r) for r in result.radii]
    headers = [f"configuration{norm_note(s.filter(pl.col('mode') == 'certify'))}", "inputs", "failed", "abstain",
               "acc", "ACR", "mean n", "s/input",
               *(f"r={r:g}" for r in result.radii)]
    rows = []
    for name, row in zip(labels(s), s.iter_rows(named=True), strict=True):
        predict = row["mode"] == "predict"
        cert = ["-"] * len(cols) if predict else [_num(row[c], 3) for c in cols]
        sec, mean_n = row["seconds_per_input"], row["mean_n"]
        rows.append([name, str(row["inputs"]), failed_cell(row), _num(row["abstain_rate"], 3),
                     _num(row["accuracy"], 3), "-" if predict else _acr(row),
                     _num(mean_n, 0), _num(sec, 2), *cert])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(headers), *(line(r) for r in rows), *notes(result)])
