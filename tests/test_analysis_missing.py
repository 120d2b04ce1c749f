"""Selected inputs without a row are failed inputs in `rscert analyze` (issue 10 item 5): real certify
jobs whose units fail as a whole, real selection records, real Parquet, the real CLI (and S3 on moto)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import boto3
import numpy as np
import polars as pl
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image
from s3fs import S3FileSystem
from webdataset import TarWriter

from rscert.analysis.aggregate import analyze
from rscert.analysis.result import AnalysisError
from rscert.analysis.tables import latex_table, markdown_table
from rscert.cli import main
from rscert.store.selection_record import SELECTION_RECORD, from_ranges, to_ranges

from .jobutil import certify_args, table
from .shardutil import image_bytes

MARKED = {4}  # inputs whose unit the switched fragile model fails (RSCERT_ZOO_FRAGILE=1)
BROKEN = {7}  # an undecodable input: a failed row


def _shard(path: Path, count: int = 9, marked: set[int] = MARKED) -> str:
    rng = np.random.default_rng(5)
    with TarWriter(str(path)) as sink:
        for i in range(count):
            if i in marked:
                pixels = (rng.random((16, 16, 3)) * 200).astype(np.uint8)
                pixels[0, 0, 0] = 255  # the fragile model raises on a batch holding this input
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="PNG")
                png = buf.getvalue()
            else:
                png = b"\x89PNG broken" if i in BROKEN else image_bytes(rng)
            sink.write({"__key__": f"k{i}", "png": png, "cls": str(i % 2).encode()})
    return str(path)


def _certify(data: str, out: Path | str, fragile: bool, monkeypatch, **extra) -> int:
    monkeypatch.setenv("RSCERT_ZOO_FRAGILE", "1" if fragile else "0")
    return main(certify_args(data, out, model="tests.zoo:switched_fragile_cnn", sigma=0.05,
                             **{"unit-size": 3, **extra}))


def _from_rows(rows: pl.DataFrame, inputs: int, r: float = 0.0) -> tuple[float, float]:
    """Certified accuracy at r and ACR over ``inputs``, straight from the rows."""
    good = rows.filter((pl.col("status") == "ok") & pl.col("correct"))
    return good.filter(pl.col("radius") >= r).height / inputs, good["radius"].sum() / inputs


def test_a_unit_that_never_committed_counts_as_failed_until_a_rerun_commits_it(tmp_path, monkeypatch, capsys):
    data = _shard(tmp_path / "frag-000000.tar")
    out = tmp_path / "out"
    assert _certify(data, out, True, monkeypatch) == 1  # unit 3..5 fails as a whole, the job goes on
    closing = capsys.readouterr().out
    rows = table(out)
    assert rows["index"].to_list() == [0, 1, 2, 6, 7, 8]
    record = json.loads((out / SELECTION_RECORD).read_text())
    assert record["selected"] == 9 and record["indices"] == [[0, 9, 1]]

    s = analyze([str(out)], radii=[0.0, 0.1]).summary
    assert s.height == 1  # the failed row (decode error) stays in its run's configuration
    row = s.row(0, named=True)
    assert (row["inputs"], row["missing"], row["ok"], row["failed"]) == (9, 3, 5, 4)
    cert0, acr = _from_rows(rows, 9)
    assert 0 < cert0 < 5 / 9
    assert row["cert_acc_0"] == pytest.approx(cert0) and row["acr"] == pytest.approx(acr)
    assert row["cert_acc_0_1"] == pytest.approx(_from_rows(rows, 9, 0.1)[0])
    assert row["accuracy"] == pytest.approx(cert0)
    assert f"r=0: {cert0:.3f}" in closing  # the same number as the job's closing summary
    curve = analyze([str(out)], radii=[0.0]).curves
    assert curve.filter(pl.col("radius") == 0)["certified_accuracy"].item() == pytest.approx(cert0)

    assert main(["analyze", str(out), "--radii", "0 0.1", "--markdown", str(tmp_path / "t.md")]) == 0
    assert "4 (3 missing)" in capsys.readouterr().out
    assert "| 9 | 4 (3 missing) |" in (tmp_path / "t.md").read_text()
    assert "& 9 & 4 (3 missing) \\\\" in latex_table(analyze([str(out)], radii=[0.0]))

    assert _certify(data, out, False, monkeypatch) == 0  # the rerun commits the failed unit only
    rows = table(out)
    assert rows["index"].to_list() == list(range(9))
    result = analyze([str(out)], radii=[0.0, 0.1])
    row = result.summary.row(0, named=True)
    assert (row["inputs"], row["missing"], row["ok"], row["failed"]) == (9, 0, 8, 1)
    assert row["cert_acc_0"] == pytest.approx(_from_rows(rows, 9)[0])
    from_rows_only = analyze([str(out / "units")], radii=[0.0, 0.1])  # no record below units/
    assert from_rows_only.summary.equals(result.summary)
    assert "missing" not in markdown_table(result)


def test_a_smaller_submission_never_takes_committed_rows_out_of_the_denominators(tmp_path, monkeypatch):
    data = _shard(tmp_path / "frag-000000.tar")
    out = tmp_path / "out"
    assert _certify(data, out, True, monkeypatch) == 1  # rows 0..2 and 6..8; 3..5 missing
    assert _certify(data, out, True, monkeypatch, max=3) == 0  # selects 0..2, all committed: nothing runs
    assert json.loads((out / SELECTION_RECORD).read_text())["indices"] == [[0, 3, 1]]
    row = analyze([str(out)], radii=[0.0]).summary.row(0, named=True)
    # the union of the latest selection and the rows: 0..2 and 6..8; 3..5 are no longer selected
    assert (row["inputs"], row["missing"], row["failed"]) == (6, 0, 1)
    assert row["cert_acc_0"] == pytest.approx(_from_rows(table(out), 6)[0])
    assert _certify(data, out, True, monkeypatch, start=2, end=6) == 1  # 3..5 selected again, fail again
    row = analyze([str(out)], radii=[0.0]).summary.row(0, named=True)
    assert (row["inputs"], row["missing"], row["failed"]) == (9, 3, 4)


def test_a_run_without_any_row_is_a_configuration_of_failed_inputs(tmp_path, monkeypatch, capsys):
    data = _shard(tmp_path / "all-000000.tar", count=6, marked={0, 3})
    out = tmp_path / "none"
    assert _certify(data, out, True, monkeypatch) == 1
    assert not list(out.glob("units/*.parquet"))
    other = tmp_path / "other"
    assert _certify(_shard(tmp_path / "ok-000000.tar", count=3, marked=set()), other, False, monkeypatch) == 0
    s = analyze([str(out), str(other)], radii=[0.0]).summary.sort("dataset")
    assert s["dataset"].to_list() == ["all", "ok"]
    dead = s.row(0, named=True)
    assert (dead["inputs"], dead["missing"], dead["ok"], dead["failed"], dead["cert_acc_0"]) == (6, 6, 0, 6, 0.0)
    assert dead["model"] == "tests.zoo:switched_fragile_cnn" and dead["sigma"] == 0.05 and dead["num_classes"] == 4
    assert main(["analyze", str(out), "--radii", "0"]) == 0
    assert "6 (6 missing)" in capsys.readouterr().out
    rebound = analyze([str(out), str(other)], radii=[0.0], alpha=0.01).summary
    assert rebound["alpha"].to_list() == [0.01, 0.01] and rebound["inputs"].sort().to_list() == [3, 6]


def test_pooled_runs_count_each_selected_input_once(tmp_path, monkeypatch):
    data = _shard(tmp_path / "frag-000000.tar")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _certify(data, a, True, monkeypatch, end=6) == 1  # rows 0..2, 3..5 missing
    assert _certify(data, b, False, monkeypatch, start=6, seed=4) == 0  # rows 6..8
    apart = analyze([str(a), str(b)], radii=[0.0]).summary
    assert sorted(zip(apart["inputs"], apart["missing"], strict=True)) == [(3, 0), (6, 3)]
    pooled = analyze([str(a), str(b)], radii=[0.0], pool_seeds=True).summary.row(0, named=True)
    assert (pooled["inputs"], pooled["missing"], pooled["failed"]) == (9, 3, 4)  # the missing add up
    assert _certify(data, c, False, monkeypatch, start=3, end=6, seed=5) == 0  # rows 3..5: a's missing
    pooled = analyze([str(a), str(b), str(c)], radii=[0.0], pool_seeds=True).summary.row(0, named=True)
    assert (pooled["inputs"], pooled["missing"], pooled["failed"]) == (9, 0, 1)
    rows = pl.concat([table(p) for p in (a, b, c)])
    assert pooled["cert_acc_0"] == pytest.approx(_from_rows(rows, 9)[0])


def test_selection_records_are_read_from_object_stores(tmp_path, monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        boto3.client("s3").create_bucket(Bucket="missing")
        data = _shard(tmp_path / "frag-000000.tar")
        assert _certify(data, "s3://missing/runs/out", True, monkeypatch) == 1
        row = analyze(["s3://missing/runs"], radii=[0.0]).summary.row(0, named=True)
        assert (row["inputs"], row["missing"], row["failed"]) == (9, 3, 4)
    finally:
        server.stop()
        S3FileSystem.clear_instance_cache()  # its cached instances point at this server's port


def test_ranges_round_trip_and_stay_compact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = set(rng.choice(60, size=rng.integers(0, 30), replace=False).tolist())
        assert sorted(from_ranges(to_ranges(values)).tolist()) == sorted(values)
    assert to_ranges(range(0, 50_000, 100)) == [[0, 50_000, 100]]
    assert to_ranges(range(7, 1_000)) == [[7, 1_000, 1]]
    assert to_ranges([5]) == [[5, 6, 1]] and to_ranges([]) == []


def test_a_damaged_record_is_refused_naming_the_file(tmp_path, monkeypatch):
    data = _shard(tmp_path / "ok-000000.tar", count=3, marked=set())
    out = tmp_path / "out"
    assert _certify(data, out, False, monkeypatch) == 0
    path = out / SELECTION_RECORD
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "selected": 4}))
    with pytest.raises(AnalysisError, match=f"{SELECTION_RECORD}: damaged selection record"):
        analyze([str(out)])
    path.write_text("{not json")
    with pytest.raises(AnalysisError, match=f"{os.sep}{SELECTION_RECORD}: not a readable selection record"):
        analyze([str(out)])


@pytest.mark.parametrize("sampling", ["fixed", "sequential"])
def test_failed_rows_stay_in_their_runs_configuration_in_either_sampling(tmp_path, monkeypatch, sampling):
    """A failed row carries the run's sampling settings, so it is counted in the run's one summary row."""
    data = _shard(tmp_path / "frag-000000.tar", marked=set())
    out = tmp_path / "out"
    assert _certify(data, out, False, monkeypatch, sampling=sampling, radii="0 0.05") == 0
    rows = table(out)
    failed = rows.filter(pl.col("status") != "ok")
    assert failed["index"].to_list() == sorted(BROKEN)
    assert failed["sampling"].to_list() == [sampling] and failed["n_max"].to_list() == [400]
    s = analyze([str(out)], radii=[0.0]).summary
    assert s.height == 1 and (s["inputs"].item(), s["failed"].item()) == (9, len(BROKEN))
