"""Reporting that does not mislead (issue 18, section 5): sequential rows' radii are marked as settled
table cells (no ACR) in every table, and a narrower resubmission says how many earlier-selected inputs
it leaves out, in the closing summary and in ``rscert analyze``. Real jobs, real Parquet, the real CLI."""

from __future__ import annotations

import pytest

from rscert.analysis import analyze, latex_table, markdown_table, terminal_table
from rscert.analysis.plots import curves_figure
from rscert.cli import main

from .test_analysis_missing import _certify, _shard
from .test_analysis_runs import certify_rows, sequential_rows, write_run

# -- sequential rows ---------------------------------------------------------------------------


def test_sequential_runs_have_no_acr_and_are_marked_in_every_table(tmp_path, capsys):
    seq = write_run(tmp_path / "seq", sequential_rows([1_000, 4_000, 100_000, 15_000]))
    fixed = write_run(tmp_path / "fixed", certify_rows(4, "fixed-run"))
    result = analyze([str(seq), str(fixed)], radii=[0.0, 0.2])
    by_sampling = {r["sampling"]: r for r in result.summary.iter_rows(named=True)}
    assert by_sampling["sequential"]["acr"] is None
    assert by_sampling["fixed"]["acr"] == pytest.approx(sum(0.1 * (i % 5) for i in range(4)) / 4)
    md, tex, term = markdown_table(result), latex_table(result), terminal_table(result)
    for text in (md, tex, term):
        seq_line = next(line for line in text.splitlines() if "sequential (cap" in line)
        assert "†" in seq_line or r"$^\dagger$" in seq_line, seq_line
        assert "settled" in text, text  # the note under the table says what the mark means
    assert main(["analyze", str(seq), "--radii", "0 0.2"]) == 0
    assert "settled" in capsys.readouterr().out
    fig = curves_figure(result, "toy", "test")
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert [s for label, s in styles.items() if label.endswith("†")] == [":"]  # the sequential curve, dotted


# -- a narrower resubmission -------------------------------------------------------------------


def test_a_narrower_resubmission_says_how_many_earlier_inputs_it_leaves_out(tmp_path, monkeypatch, capsys):
    data = _shard(tmp_path / "frag-000000.tar")
    out = tmp_path / "out"
    assert _certify(data, out, True, monkeypatch) == 1  # rows 0..2 and 6..8; 3..5 without a row
    capsys.readouterr()
    assert _certify(data, out, True, monkeypatch, max=3) == 0
    closing = capsys.readouterr().out
    assert "6 inputs selected by earlier submissions are not selected now" in closing, closing
    assert "3 of them have no row" in closing
    row = analyze([str(out)], radii=[0.0]).summary.row(0, named=True)
    assert (row["inputs"], row["deselected"]) == (6, 3)
    assert main(["analyze", str(out), "--radii", "0"]) == 0
    assert "3 inputs selected by earlier submissions are no longer selected and have no row" in \
        capsys.readouterr().out
    assert _certify(data, out, True, monkeypatch, start=2, end=6) == 1  # 3..5 selected again
    row = analyze([str(out)], radii=[0.0]).summary.row(0, named=True)
    assert (row["inputs"], row["deselected"]) == (9, 0)
