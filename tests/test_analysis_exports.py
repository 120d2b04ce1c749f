"""Analysis exports (issue 13 item 4): SQL-friendly summary columns, one row per run, LaTeX (booktabs),
curves and envelope as CSV and Parquet from the command line."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rscert.analysis.aggregate import analyze
from rscert.analysis.result import cert_col
from rscert.cli import main

from .test_analysis_runs import certify_rows, write_run

ROOT = Path(__file__).resolve().parents[1]


def test_column_names_write_the_point_as_underscore_without_trailing_zeros():
    assert [cert_col(r) for r in (0, 0.0, 0.25, 0.5, 1.0, 1.5, 2.25, 0.125)] == [
        "cert_acc_0", "cert_acc_0", "cert_acc_0_25", "cert_acc_0_5", "cert_acc_1", "cert_acc_1_5", "cert_acc_2_25",
        "cert_acc_0_125"]
    assert cert_col(0.25, "lo") == "cert_acc_0_25_lo"


def test_summary_is_queryable_in_sql_without_quoting(tmp_path):
    a = write_run(tmp_path / "a", certify_rows(20, "run-a", precision="bf16"))
    b = write_run(tmp_path / "b", certify_rows(30, "run-b"))
    summary = analyze([str(a), str(b)], radii=[0.0, 0.25], corrections=["cp"]).summary
    assert summary["run_id"].to_list() == ["run-a", "run-b"]  # one row per run, with its id
    ctx = pl.SQLContext(summary=summary)
    got = ctx.execute(
        "SELECT run_id, inputs, failed, cert_acc_0, cert_acc_0_25, cert_acc_0_25_lo, cert_acc_0_25_hi, "
        "cert_acc_0_25_lo_corrected, accuracy, acr, mean_n, n_max, sampling, seed, clamp, preset, sigma, alpha, "
        "precision, mode, split, source, dataset, model "
        "FROM summary WHERE cert_acc_0_25 > 0.3 ORDER BY run_id", eager=True)
    assert got["run_id"].to_list() == ["run-a", "run-b"]
    assert got["cert_acc_0_25"].to_list() == pytest.approx([0.4, 0.4])
    assert all(c.replace("_", "").isalnum() and c[0].isalpha() for c in summary.columns)


def test_cli_exports_tables_curves_and_envelope(tmp_path):
    a = write_run(tmp_path / "a", certify_rows(20, "run-a", sigma=0.25))
    b = write_run(tmp_path / "b", certify_rows(20, "run-b", sigma=0.5, precision="fp16"))
    files = {name: tmp_path / "x" / name for name in ("t.tex", "c.csv", "c.parquet", "e.csv", "e.parquet", "s.csv")}
    code = main(["analyze", str(a), str(b), "--radii", "0 0.2 0.4", "--latex", str(files["t.tex"]),
                 "--curves-csv", str(files["c.csv"]), "--curves-parquet", str(files["c.parquet"]),
                 "--envelope-csv", str(files["e.csv"]), "--envelope-parquet", str(files["e.parquet"]),
                 "--csv", str(files["s.csv"])])
    assert code == 0
    result = analyze([str(a), str(b)], radii=[0.0, 0.2, 0.4])
    curves = pl.read_parquet(files["c.parquet"])
    assert curves.equals(result.curves) and set(curves["run_id"]) == {"run-a", "run-b"}
    assert pl.read_csv(files["c.csv"]).height == result.curves.height
    envelope = pl.read_parquet(files["e.parquet"])
    assert envelope.equals(result.envelope)
    assert {"radius", "certified_accuracy", "best_sigma", "best_run_id"} <= set(pl.read_csv(files["e.csv"]).columns)
    assert pl.read_csv(files["s.csv"])["run_id"].to_list() == ["run-a", "run-b"]
    tex = files["t.tex"].read_text().splitlines()
    assert tex[0] == r"\begin{tabular}{lrrrrrr}" and tex[1] == r"\toprule" and tex[3] == r"\midrule"
    assert tex[-2:] == [r"\bottomrule", r"\end{tabular}"]
    body = tex[4:-2]
    assert len(body) == 2 and all(line.endswith(r" \\") and line.count(" & ") == 6 for line in body)
    assert r"$\sigma$ = 0.25" in body[0] and r"\textbf{" in "".join(body)
    assert all(line.split(" & ")[-2:] == ["20", r"0 \\"] for line in body)  # inputs, failed


def test_every_summary_column_is_documented(tmp_path):
    section = (ROOT / "docs" / "schema.md").read_text().split("## Analysis summary", 1)[1]
    a = write_run(tmp_path / "a", certify_rows(5, "run-a"))
    b = write_run(tmp_path / "b", certify_rows(5, "run-b", start=5, seed=1))
    for pool in (False, True):
        summary = analyze([str(a), str(b)], radii=[0.25], corrections=["cp", "testset", "published"],
                          pool_seeds=pool).summary
        for column in summary.columns:
            documented = column.replace("cert_acc_0_25", "cert_acc_<r>")
            assert f"`{documented}`" in section, column
