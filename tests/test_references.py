"""Published results built in as reference rows (rscert analyze --reference cohen2019): the shipped counts
are what the published logs give, they reproduce the published tables, and they appear labelled in
the tables; per-class tables and the JSON summary. Real Parquet, the real CLI."""

from __future__ import annotations

import json
import re

import pytest

from rscert.analysis.aggregate import analyze
from rscert.analysis.import_logs import import_logs
from rscert.analysis.references import REFERENCES
from rscert.analysis.result import cert_col
from rscert.cli import main
from tests.reference_data import COHEN2019

from .test_analysis_runs import certify_rows, write_run

DATA = COHEN2019


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    out = tmp_path_factory.mktemp("published") / "logs"
    import_logs([str(DATA / "data" / "certify")], str(out))
    return out


@pytest.mark.parametrize("row", REFERENCES["cohen2019"]["rows"], ids=lambda r: f"{r.dataset}-{r.sigma}")
def test_shipped_counts_are_the_published_logs_counts(published, row):
    """Counted again from the logs (import-logs + analyze), at every radius the reference has."""
    radii = sorted(row.certified)
    summary = analyze([str(published)], radii=radii).summary
    log = summary.filter((summary["dataset"] == row.dataset) & (summary["sigma"] == row.sigma)
                         & (summary["train_sigma"] == row.sigma) & (summary["split"] == "test"))
    assert log.height == 1
    got = log.row(0, named=True)
    assert got["inputs"] == row.inputs
    for r, k in row.certified.items():
        assert got[cert_col(r)] * got["inputs"] == pytest.approx(k), r


def _published_table(name: str) -> dict[float, dict[float, float]]:
    """sigma -> radius -> the two-digit value of the published Markdown table."""
    lines = (DATA / "analysis" / "markdown" / name).read_text().splitlines()
    radii = [float(x) for x in re.findall(r"r = ([0-9.]+)", lines[0])]
    table = {}
    for line in lines[2:]:
        sigma = float(re.search(r"&sigma; = ([0-9.]+)", line).group(1))
        values = [float(v) for v in re.findall(r"\| ?([0-9]\.[0-9]{2})", line)]
        table[sigma] = dict(zip(radii, values, strict=True))
    return table


def test_shipped_counts_reproduce_the_published_tables():
    tables = {"imagenet": _published_table("vary_noise_imagenet"), "cifar10": _published_table("vary_noise_cifar10")}
    for row in REFERENCES["cohen2019"]["rows"]:
        for r, value in tables[row.dataset][row.sigma].items():
            assert round(row.certified[r] / row.inputs + 1e-9, 2) == value, (row.dataset, row.sigma, r)


def test_reference_rows_join_the_tables_labelled_as_published(tmp_path, capsys):
    run = write_run(tmp_path / "run", certify_rows(20, "ours", dataset="imagenet", model="resnet50"))
    args = ["analyze", str(run), "--reference", "cohen2019", "--markdown", str(tmp_path / "t.md"),
            "--json", str(tmp_path / "s.json"), "--per-class", str(tmp_path / "classes.csv")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("Cohen et al. 2019 (published)") == 3  # the three ImageNet rows, not CIFAR-10's
    markdown = (tmp_path / "t.md").read_text()
    assert "imagenet, resnet50, sigma = 1.00, Cohen et al. 2019 (published)" in markdown
    document = json.loads((tmp_path / "s.json").read_text())
    runs = {r["run_id"]: r for r in document["runs"]}
    assert runs["reference:cohen2019:imagenet:0.50"]["cert_acc_1"] == pytest.approx(186 / 500)
    assert runs["ours"]["inputs"] == 20 and document["radii"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert len(document["per_class"]) == 1  # every row of ours has label 1


def test_per_class_rows_add_up_to_every_selected_input(tmp_path):
    rows = certify_rows(12, "ours")
    for i, row in enumerate(rows):
        row["label"] = i % 3
        row["correct"] = i % 2 == 0
        row["prediction"] = row["label"] if row["correct"] else (row["label"] + 1) % 3
    rows[5].update(status="decode_error", error="bad", prediction=None, radius=None, correct=None)
    result = analyze([str(write_run(tmp_path / "run", rows))], radii=[0.0, 0.2], per_class=True)
    table = result.per_class.sort("label")
    assert table["label"].to_list() == [0, 1, 2] and table["inputs"].to_list() == [4, 4, 4]
    assert table["failed"].to_list() == [0, 0, 1]
    for label in range(3):
        mine = [r for r in rows if r["label"] == label]
        good = [r for r in mine if r["status"] == "ok" and r["correct"] and r["radius"] >= 0.2]
        got = table.filter(table["label"] == label).row(0, named=True)
        assert got[cert_col(0.2)] == pytest.approx(len(good) / len(mine))
        assert got[cert_col(0.2, "lo")] <= got[cert_col(0.2)] <= got[cert_col(0.2, "hi")]
    assert table["inputs"].sum() == result.summary["inputs"].sum()


def test_per_class_gives_inputs_without_a_row_their_own_row(tmp_path, monkeypatch):
    """A unit that never committed: its 3 inputs have no label, so they are a row of label null."""
    from .test_analysis_missing import _certify, _shard

    out = tmp_path / "out"
    assert _certify(_shard(tmp_path / "frag-000000.tar"), out, True, monkeypatch) == 1
    result = analyze([str(out)], radii=[0.0], per_class=True)
    table = result.per_class
    assert table.filter(table["label"].is_null())["inputs"].to_list() == [3]
    assert table["inputs"].sum() == result.summary["inputs"].item() == 9
