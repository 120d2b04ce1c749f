"""Analysis: every input in the denominator, runs kept apart, no input counted twice, sequential and
PREDICT rows (issues 10 items 5-6, 12 and 13 item 1, analysis side). Real Parquet files, real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import binomtest

from rscert.analysis.aggregate import analyze
from rscert.analysis.import_logs import import_logs
from rscert.analysis.result import AnalysisError
from rscert.analysis.tables import markdown_table, terminal_table
from rscert.cli import main
from rscert.store.results import Store, table_from_rows
from tests.reference_data import COHEN2019

ROOT = Path(__file__).resolve().parents[1]
PREDICT_LOGS = COHEN2019 / "data" / "predict"


def write_run(folder: Path, rows: list[dict], unit: str = "u0") -> Path:
    store = Store(str(folder))
    store.create_folders()
    store.commit_unit(unit, table_from_rows(rows, {"rscert.fingerprint": "t"}))
    return folder


def certify_rows(count: int, run_id: str = "run-a", start: int = 0, **settings) -> list[dict]:
    """Rows of a fixed-sampling CERTIFY run: input i is correct with radius 0.1 * (i % 5)."""
    base = {"run_id": run_id, "dataset": "toy", "split": "test", "model": "m", "sigma": 0.5, "n0": 100,
            "n": 1000, "n_max": 1000, "sampling": "fixed", "alpha": 0.001, "seed": 0, "precision": "fp32",
            "clamp": False, "preset": "none", "mode": "certify", "noise": "gaussian", "status": "ok"}
    rows = []
    for i in range(start, start + count):
        radius = 0.1 * (i % 5)
        rows.append({**base, "key": f"k{i}", "index": i, "label": 1, "prediction": 1, "top_class": 1,
                     "radius": radius, "correct": True, "count_top": 990, "p_lower": 0.98, "seconds": 0.5,
                     **settings})
    return rows


def test_failed_rows_are_in_the_denominator(tmp_path, capsys):
    rows = certify_rows(4)
    for row in rows[2:]:
        row.update(status="decode_error", error="bad image", prediction=None, radius=None, correct=None)
    out = write_run(tmp_path / "out", rows)
    s = analyze([str(out)], radii=[0.0]).summary.row(0, named=True)
    assert s["cert_acc_0"] == 0.5  # 2 certified of 4 selected inputs, not 2 of the 2 that succeeded
    assert (s["inputs"], s["ok"], s["failed"]) == (4, 2, 2)
    assert s["accuracy"] == 0.5
    assert main(["analyze", str(out), "--radii", "0", "--markdown", str(tmp_path / "t.md")]) == 0
    text = capsys.readouterr().out
    header, row = text.splitlines()[:2]
    assert header.split()[1:3] == ["inputs", "failed"] and row.split()[-8:-6] == ["4", "2"]
    table = (tmp_path / "t.md").read_text()
    assert "| inputs | failed |" in table and "| 4 | 2 |" in table


@pytest.mark.parametrize("setting, values", [("seed", (0, 1)), ("precision", ("fp32", "bf16")),
                                             ("clamp", (False, True)), ("preset", ("none", "cifar")),
                                             ("n0", (100, 200)), ("alpha", (0.001, 0.01)),
                                             ("sampling", ("fixed", "sequential"))])
def test_runs_differing_in_one_setting_are_kept_apart(tmp_path, setting, values):
    a = write_run(tmp_path / "a", certify_rows(10, "run-a", **{setting: values[0]}))
    b = write_run(tmp_path / "b", certify_rows(10, "run-b", **{setting: values[1]}))
    summary = analyze([str(a), str(b)], radii=[0.0]).summary
    assert summary.height == 2 and summary["inputs"].to_list() == [10, 10]
    assert sorted(summary[setting].to_list()) == sorted(values)
    # the same setting difference under one run id (a damaged folder) still never merges
    c = write_run(tmp_path / "c", certify_rows(10, "run-a", **{setting: values[1]}))
    assert analyze([str(a), str(c)], radii=[0.0]).summary["inputs"].to_list() == [10, 10]


def test_one_summary_row_per_run_even_when_settings_agree(tmp_path):
    a = write_run(tmp_path / "a", certify_rows(10, "run-a"))
    b = write_run(tmp_path / "b", certify_rows(10, "run-b"))
    summary = analyze([str(a), str(b)], radii=[0.0]).summary
    assert summary["run_id"].to_list() == ["run-a", "run-b"] and summary["inputs"].to_list() == [10, 10]


def test_a_folder_or_file_reached_twice_is_read_once(tmp_path):
    a = write_run(tmp_path / "a", certify_rows(10))
    unit = a / "units" / "u0.parquet"
    summary = analyze([str(a), str(a), str(unit), str(tmp_path / "a" / ".." / "a")], radii=[0.0]).summary
    assert summary.height == 1 and summary["inputs"].item() == 10


def test_a_copy_of_a_run_counts_once(tmp_path):
    a = write_run(tmp_path / "a", certify_rows(10))
    shutil.copytree(a, tmp_path / "copy")
    summary = analyze([str(a), str(tmp_path / "copy")], radii=[0.0]).summary
    assert summary.height == 1 and summary["inputs"].item() == 10


def test_an_input_with_two_different_rows_in_one_run_is_refused(tmp_path):
    a = write_run(tmp_path / "a", certify_rows(10))
    changed = certify_rows(10)
    changed[3]["radius"] = 2.0
    b = write_run(tmp_path / "b", changed)
    with pytest.raises(AnalysisError,
                       match=r"input 3 of dataset 'toy' appears 2 times in one configuration \(run\(s\) run-a\)"):
        analyze([str(a), str(b)], radii=[0.0])


def test_pool_seeds_pools_disjoint_runs_and_refuses_overlap(tmp_path):
    a = write_run(tmp_path / "a", certify_rows(10, "run-a", seed=0))
    b = write_run(tmp_path / "b", certify_rows(6, "run-b", start=10, seed=1))
    apart = analyze([str(a), str(b)], radii=[0.0]).summary
    assert apart.height == 2
    pooled = analyze([str(a), str(b)], radii=[0.0], pool_seeds=True).summary.row(0, named=True)
    assert pooled["inputs"] == 16 and pooled["run_id"] == "run-a,run-b" and pooled["seeds"] == "0,1"
    # runs that differ in more than the seed stay apart even when pooling
    c = write_run(tmp_path / "c", certify_rows(6, "run-c", start=20, seed=2, precision="bf16"))
    assert analyze([str(a), str(c)], radii=[0.0], pool_seeds=True).summary.height == 2
    # the same inputs under two seeds would count each input twice: refused, naming both runs
    d = write_run(tmp_path / "d", certify_rows(10, "run-d", seed=3))
    with pytest.raises(AnalysisError, match=r"input 0 .*\(run\(s\) run-a, run-d\)"):
        analyze([str(a), str(d)], radii=[0.0], pool_seeds=True)
    assert main(["analyze", str(a), str(d), "--pool-seeds"]) == 2


def test_imported_logs_are_each_their_own_group(tmp_path):
    text = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n1\t1\t1\t0.2\t1\t1.0\n"
    logs = tmp_path / "logs"
    for name in ("first/sigma_0.25", "second/sigma_0.25"):
        (logs / name).parent.mkdir(parents=True)
        (logs / name).write_text(text)
    import_logs([str(logs)], str(tmp_path / "out"))
    summary = analyze([str(tmp_path / "out")], radii=[0.0]).summary
    assert sorted(summary["source"].to_list()) == ["first/sigma_0.25", "second/sigma_0.25"]
    assert summary["inputs"].to_list() == [2, 2]


def sequential_rows(n_drawn: list[int], run_id: str = "seq") -> list[dict]:
    rows = certify_rows(len(n_drawn), run_id, sampling="sequential", n_max=100_000)
    for row, n in zip(rows, n_drawn, strict=True):
        row.update(n=n, stop_reason="settled" if n < 100_000 else "cap")
    return rows


def test_sequential_rows_form_one_configuration_with_mean_n(tmp_path):
    n_drawn = [1_000, 4_000, 100_000, 15_000]
    out = write_run(tmp_path / "seq", sequential_rows(n_drawn))
    s = analyze([str(out)], radii=[0.0, 0.2]).summary.row(0, named=True)
    assert s["inputs"] == 4 and s["n"] is None and s["n_max"] == 100_000
    assert s["mean_n"] == pytest.approx(np.mean(n_drawn))
    assert s["forward_passes"] == sum(n_drawn) + 4 * 100
    assert s["cert_acc_0_2"] == 0.5


def test_rebounding_sequential_rows_is_refused(tmp_path, capsys):
    out = write_run(tmp_path / "seq", sequential_rows([1_000, 2_000]))
    fixed = write_run(tmp_path / "fixed", certify_rows(3, "fixed-run"))
    with pytest.raises(AnalysisError, match=r"--alpha: cannot re-bound .*run\(s\) seq used sequential sampling"):
        analyze([str(out), str(fixed)], alpha=0.01)
    assert main(["analyze", str(out), "--alpha", "0.01"]) == 2
    assert "sequential sampling" in capsys.readouterr().err
    assert analyze([str(fixed)], alpha=0.01).summary["alpha"].item() == 0.01  # fixed rows still re-bound


def predict_rows(run_id: str = "pred", alpha: float = 0.001) -> list[dict]:
    """PREDICT rows whose p-values are scipy's binomtest of the stored counts."""
    counts = [(95, 3), (60, 35), (50, 48), (99, 1), (70, 25), (52, 47)]
    labels = [1, 1, 1, 2, 1, 1]
    rows = []
    for i, ((top, second), label) in enumerate(zip(counts, labels, strict=True)):
        p = binomtest(top, top + second, 0.5).pvalue
        prediction = 1 if p <= alpha else -1
        rows.append({"run_id": run_id, "dataset": "toy", "split": "test", "model": "m", "sigma": 0.5, "n": 100,
                     "n_max": 100, "sampling": "fixed", "alpha": alpha, "seed": 0, "mode": "predict",
                     "key": f"k{i}", "index": i, "label": label, "prediction": prediction, "top_class": 1,
                     "count_top": top, "count_second": second, "p_value": p, "correct": prediction == label,
                     "status": "ok"})
    return rows


def test_predict_rows_report_accuracy_and_abstention_apart_from_certify(tmp_path):
    rows = predict_rows()
    out = write_run(tmp_path / "out", rows)
    write_run(tmp_path / "out", certify_rows(6, "pred"), unit="u1")  # same run id, certify mode
    result = analyze([str(out)], radii=[0.0, 0.2])
    summary = result.summary
    assert sorted(summary["mode"].to_list()) == ["certify", "predict"]
    p = summary.filter(pl.col("mode") == "predict").row(0, named=True)
    assert p["accuracy"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    assert p["abstain_rate"] == pytest.approx(np.mean([r["prediction"] == -1 for r in rows]))
    assert p["cert_acc_0"] is None and p["acr"] is None and p["cert_acc_0_2_lo"] is None
    assert result.curves["mode"].unique().to_list() == ["certify"]
    assert "| PREDICT configuration | inputs | failed | accuracy | abstain |" in markdown_table(result)
    # re-deciding at another alpha compares the stored p-values with it
    loose = analyze([str(out)], radii=[0.0], alpha=0.05).summary.filter(pl.col("mode") == "predict").row(0, named=True)
    expected = [r["p_value"] <= 0.05 and r["label"] == 1 for r in rows]
    assert loose["accuracy"] == pytest.approx(np.mean(expected))
    assert loose["abstain_rate"] == pytest.approx(np.mean([r["p_value"] > 0.05 for r in rows]))


def test_imported_predict_logs_are_reported_like_native_ones(tmp_path):
    import_logs([str(PREDICT_LOGS)], str(tmp_path / "out"))
    result = analyze([str(tmp_path / "out")])
    s = result.summary
    assert s.height == 4 and (s["mode"] == "predict").all()
    assert sorted(s["n"].to_list()) == [100, 1000, 10000, 100000]
    for row in s.iter_rows(named=True):
        log = pl.read_csv(PREDICT_LOGS / row["source"], separator="\t")
        assert row["inputs"] == log.height
        assert row["accuracy"] == pytest.approx(log["correct"].mean())
        assert row["abstain_rate"] == pytest.approx((log["predict"] == -1).mean())
        assert row["cert_acc_0"] is None
    assert result.curves.is_empty()
    assert "PREDICT n = 1000" in terminal_table(result)


def test_analysis_does_not_import_torch():
    code = ("import sys; import rscert.analysis.aggregate, rscert.analysis.tables, rscert.analysis.exports, "
            "rscert.stats.corrections, rscert.analysis.result_files, rscert.analysis.import_logs, "
            "rscert.analysis.plots; print('torch' in sys.modules)")
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}, check=True)
    assert done.stdout.strip() == "False"


def test_repeats_inside_one_file_are_found_and_order_does_not_matter(tmp_path):
    rows = certify_rows(8)
    reversed_run = write_run(tmp_path / "reversed", rows[::-1])  # no repeat: counted as is
    assert analyze([str(reversed_run)], radii=[0.0]).summary["inputs"].item() == 8
    copy = write_run(tmp_path / "copy", rows + [dict(rows[5])])  # an exact copy of a row counts once
    assert analyze([str(copy)], radii=[0.0]).summary["inputs"].item() == 8
    conflict = write_run(tmp_path / "conflict", rows[:4] + [{**rows[2], "radius": 1.5}] + rows[4:])
    with pytest.raises(AnalysisError, match=r"input 2 of dataset 'toy' appears 2 times"):
        analyze([str(conflict)], radii=[0.0])


def test_closing_summary_of_a_job_counts_failed_rows(tmp_path):
    from rscert.run.report import summarize

    rows = certify_rows(4)
    for row in rows[2:]:
        row.update(status="decode_error", error="bad image", prediction=None, radius=None, correct=None)
    out = write_run(tmp_path / "out", rows)
    s = summarize(Store(str(out)), radii=(0.0,))
    assert s["certified_accuracy"][0.0] == 0.5 and s["errors"] == 2
