"""Analysis: published tables reproduced from the published logs, statistics checked against oracles,
bad input refused with the file (and line) named."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from statsmodels.stats.proportion import proportion_confint

from rscert.analysis.aggregate import analyze
from rscert.analysis.import_logs import LogError, import_logs, parse_time, read_log
from rscert.analysis.result import AnalysisError, cert_col
from rscert.analysis.tables import markdown_table
from rscert.cli import main
from rscert.stats.smoothing import certify_from_top
from rscert.store.results import Store, table_from_rows
from tests.reference_data import COHEN2019

DATA = COHEN2019


def published_tables() -> dict[str, dict[float, dict[float, str]]]:
    """{dataset: {sigma: {radius: '0.49'}}} parsed from the reference README's two tables."""
    text = (DATA / "README.md").read_text()
    tables, current = {}, None
    for line in text.splitlines():
        if line.startswith("ImageNet"):
            current = tables.setdefault("imagenet", {})
        elif line.startswith("CIFAR-10"):
            current = tables.setdefault("cifar10", {})
        elif line.startswith("| sigma |") and current is not None:
            radii = [float(x) for x in re.findall(r"r=([0-9.]+)", line)]
        elif re.match(r"\| [0-9.]+ \|", line) and current is not None:
            cells = [c.strip() for c in line.strip("|").split("|")]
            current[float(cells[0])] = dict(zip(radii, cells[1:], strict=True))
    return tables


def best_marks() -> dict[str, dict[float, float]]:
    """The sigma the published Markdown tables mark as best (<b>*</b>) for each radius."""
    marks = {}
    for dataset in ("imagenet", "cifar10"):
        text = (DATA / "analysis" / "markdown" / f"vary_noise_{dataset}").read_text().splitlines()
        radii = [float(x) for x in re.findall(r"r = ([0-9.]+)", text[0])]
        marks[dataset] = {}
        for line in text[2:]:
            sigma = float(re.search(r"&sigma; = ([0-9.]+)", line).group(1))
            for r, cell in zip(radii, line.split("</b>|", 1)[1].split("|"), strict=False):
                if "*" in cell:
                    marks[dataset][r] = sigma
    return marks


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("legacy") / "out"
    written = import_logs([str(DATA / "data" / "certify")], str(out))
    assert len(written) == 13
    return out


def test_every_published_cell_is_reproduced(imported):
    tables = published_tables()
    assert set(tables) == {"imagenet", "cifar10"} and len(tables["cifar10"]) == 4
    for dataset, rows in tables.items():
        radii = sorted(next(iter(rows.values())))
        result = analyze([str(imported)], radii=radii)
        same = result.summary.filter((pl.col("dataset") == dataset) & (pl.col("train_sigma") == pl.col("sigma"))
                                     & (pl.col("split") == "test"))
        assert same.height == len(rows)
        for row in same.iter_rows(named=True):
            for r, cell in rows[row["sigma"]].items():
                assert f"{row[cert_col(r)]:.2f}" == cell, (dataset, row["sigma"], r)


def test_envelope_marks_the_published_best_sigma(imported, tmp_path):
    # analyse only the logs of models certified at their training sigma, as the tables do
    for dataset, marks in best_marks().items():
        keep = tmp_path / dataset
        for f in imported.rglob("*.parquet"):
            t = pq.read_table(f)
            if t["dataset"][0].as_py() == dataset and t["split"][0].as_py() == "test" and \
                    t["train_sigma"][0].as_py() == t["sigma"][0].as_py():
                (keep / f.name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, keep / f.name)
        env = analyze([str(keep)]).envelope
        for r, sigma in marks.items():
            best = env.filter((pl.col("radius") - r).abs() < 1e-9)
            assert best["best_sigma"].item() == sigma, (dataset, r)


def test_time_formats_and_predict_logs(tmp_path):
    assert parse_time("0:02:31.238689", "x") == pytest.approx(151.238689)
    assert parse_time("15.4", "x") == 15.4
    with pytest.raises(LogError, match="x: time"):
        parse_time("2 min", "x")
    table = read_log(DATA / "data/predict/imagenet/resnet50/noise_0.25/test/N_1000",
                     "predict/imagenet/resnet50/noise_0.25/test/N_1000")
    df = pl.from_arrow(table)
    assert (df["mode"] == "predict").all() and (df["n"] == 1000).all() and (df["sigma"] == 0.25).all()
    assert df["radius"].null_count() == df.height


def _native(folder: Path, rows: list[dict], name: str = "u0") -> None:
    store = Store(str(folder))
    store.create_folders()
    store.commit_unit(name, table_from_rows(rows, {"rscert.fingerprint": "t"}))


def _rows(rng, count, sigma=0.5, n=1000, alpha=0.001, model="m"):
    rows = []
    for i in range(count):
        k = int(rng.integers(300, 1001))
        top = int(rng.integers(0, 3))
        label = int(rng.integers(0, 3))
        c = certify_from_top([k], [top], n, alpha, sigma)
        pred = int(c.prediction[0])
        rows.append({"run_id": "r", "key": f"k{i}", "index": i, "label": label, "prediction": pred, "top_class": top,
                     "radius": float(c.radius[0]), "correct": pred == label, "n0": 100, "n": n, "count_top": k,
                     "p_lower": float(c.p_lower[0]), "alpha": alpha, "sigma": sigma, "noise": "gaussian",
                     "model": model, "dataset": "toy", "split": "test", "mode": "certify", "status": "ok",
                     "seconds": 1.0})
    return rows


def test_native_metrics_against_direct_computation(tmp_path):
    rng = np.random.default_rng(0)
    rows = _rows(rng, 400)
    rows += [{**rows[0], "key": "bad", "index": 999, "status": "decode_error", "prediction": None,
              "radius": None, "correct": None, "error": "x"}]
    _native(tmp_path / "out", rows)
    result = analyze([str(tmp_path / "out")], radii=[0.0, 0.3, 0.6], ci=0.9)
    s = result.summary.row(0, named=True)
    ok = [r for r in rows if r["status"] == "ok"]
    # every selected input is in the denominator: the failed row counts as not certified
    assert s["inputs"] == 401 and s["ok"] == 400 and s["failed"] == 1
    radius = np.array([r["radius"] for r in ok])
    correct = np.array([r["correct"] for r in ok])
    for r in (0.0, 0.3, 0.6):
        k = int(np.sum(correct & (radius >= r)))
        assert s[cert_col(r)] == pytest.approx(k / 401)
        lo, hi = proportion_confint(k, 401, alpha=0.1, method="beta")
        assert s[cert_col(r, "lo")] == pytest.approx(lo if k else 0.0, abs=1e-12)
        assert s[cert_col(r, "hi")] == pytest.approx(hi if k < 401 else 1.0, abs=1e-12)
    assert s["acr"] == pytest.approx(np.sum(np.where(correct, radius, 0.0)) / 401)
    assert s["abstain_rate"] == pytest.approx(np.sum([r["prediction"] == -1 for r in ok]) / 401)
    assert s["accuracy"] == pytest.approx(correct.sum() / 401)
    # the fine curve agrees with the exact counts on grid points
    curve = result.curves.filter((pl.col("radius") - 0.3).abs() < 1e-9)
    assert curve["certified_accuracy"].item() == pytest.approx(s["cert_acc_0_3"])


def test_rebound_at_another_alpha_matches_the_statistics(tmp_path):
    rng = np.random.default_rng(1)
    rows = _rows(rng, 200, alpha=0.001)
    _native(tmp_path / "out", rows)
    result = analyze([str(tmp_path / "out")], radii=[0.0, 0.2], alpha=0.05)
    s = result.summary.row(0, named=True)
    assert s["alpha"] == 0.05
    c = certify_from_top([r["count_top"] for r in rows], [r["top_class"] for r in rows], 1000, 0.05, 0.5)
    correct = c.prediction == np.array([r["label"] for r in rows])
    assert s["cert_acc_0_2"] == pytest.approx(np.mean(correct & (c.radius >= 0.2)))
    assert s["acr"] == pytest.approx(np.mean(np.where(correct, c.radius, 0.0)))


def test_certificate_correction_lowers_the_interval(tmp_path):
    _native(tmp_path / "out", _rows(np.random.default_rng(2), 300, alpha=0.01))
    s = analyze([str(tmp_path / "out")], radii=[0.1], certificate_correction=True).summary.row(0, named=True)
    assert s["cert_acc_0_1_lo_corrected"] < s["cert_acc_0_1_lo"]


def test_runs_group_separately_and_tables_mark_the_best(tmp_path):
    rng = np.random.default_rng(3)
    _native(tmp_path / "a", _rows(rng, 100, sigma=0.25))
    _native(tmp_path / "b", _rows(rng, 100, sigma=0.5))
    result = analyze([str(tmp_path / "a"), str(tmp_path / "b")], radii=[0.0, 0.5])
    assert result.summary.height == 2
    table = markdown_table(result)
    assert table.count("**") >= 2 and "sigma = 0.25" in table and "sigma = 0.50" in table


def test_cli_writes_every_output(imported, tmp_path, capsys):
    code = main(["analyze", str(imported), "--radii", "0 0.5 1", "--markdown", str(tmp_path / "t.md"),
                 "--csv", str(tmp_path / "t.csv"), "--parquet", str(tmp_path / "t.parquet"),
                 "--plot", str(tmp_path / "fig")])
    assert code == 0
    out = capsys.readouterr().out
    assert "imagenet, resnet50, sigma = 1.00" in out
    assert pl.read_csv(tmp_path / "t.csv").height == 13
    assert pl.read_parquet(tmp_path / "t.parquet").height == 13
    assert "| configuration |" in (tmp_path / "t.md").read_text()
    pngs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert "comparison.png" in pngs and "certified_accuracy_imagenet_test.png" in pngs
    assert all((tmp_path / "fig" / p).with_suffix(".svg").exists() for p in pngs)
    assert (tmp_path / "fig" / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="no Parquet files"):
        analyze([str(tmp_path / "empty")])
    with pytest.raises(AnalysisError, match="no such file"):
        analyze([str(tmp_path / "absent")])
    other = tmp_path / "other"
    other.mkdir()
    pl.DataFrame({"a": [1]}).write_parquet(other / "x.parquet")
    with pytest.raises(AnalysisError, match=r"x\.parquet: not an rscert result file"):
        analyze([str(other)])
    nan = tmp_path / "nan"
    rows = _rows(np.random.default_rng(4), 5)
    rows[2]["radius"] = float("nan")
    rows[2]["source"] = "nan-log"
    _native(nan, rows)
    with pytest.raises(AnalysisError, match="radius is NaN in nan-log"):
        analyze([str(nan)])
    # mixed configurations without grouping columns
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, sigma in enumerate((0.25, 0.5)):
        pl.DataFrame({"radius": [0.1], "correct": [True], "prediction": [1], "status": ["ok"],
                      "sigma": [sigma]}).write_parquet(mixed / f"f{i}.parquet")
    with pytest.raises(AnalysisError, match="no grouping columns"):
        analyze([str(mixed)])


def test_bad_log_line_names_file_and_line_and_writes_nothing(tmp_path):
    logs = tmp_path / "logs" / "sigma_0.25"
    logs.parent.mkdir()
    logs.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01.5\n5\t2\t2\tbroken\t1\t3.0\n")
    good = tmp_path / "logs" / "a_sigma_0.5"
    good.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n")
    out = tmp_path / "out"
    assert main(["import-logs", str(tmp_path / "logs"), "--out", str(out)]) == 2
    assert not out.exists()  # nothing written half
    with pytest.raises(LogError, match=r"sigma_0\.25:3: could not convert string to float: 'broken'"):
        import_logs([str(tmp_path / "logs")], str(out))
    logs.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\tnan\t1\t1.0\n")
    with pytest.raises(LogError, match=r"sigma_0\.25:2: radius must be a number"):
        import_logs([str(logs)], str(out))
    logs.write_text("idx label predict\n")
    with pytest.raises(LogError, match=r"sigma_0\.25:1: header"):
        import_logs([str(logs)], str(out))


def test_notebook_runs_against_a_small_output(imported, monkeypatch):
    """Executes every cell of notebooks/certified_accuracy.ipynb (nbclient); any failing cell fails."""
    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[1]
    notebook = nbformat.read(root / "notebooks" / "certified_accuracy.ipynb", as_version=4)
    monkeypatch.setenv("RSCERT_OUTPUT", str(imported))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]))
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(root / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "13 configuration(s)" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
