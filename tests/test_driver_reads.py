"""The driver's bookkeeping at scale: each committed unit file is read at most once per run, the closing
summary comes from what the driver already holds, execution records are written in batches, and the
analysis of an object-store folder fetches each file once."""

from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pytest
from fsspec.implementations.local import LocalFileSystem
from polars.testing import assert_frame_equal

from rscert.cli import main
from rscert.run.report import summarize
from rscert.store.results import EXECUTIONS_DIR, Store
from rscert.store.tally import RowFacts, tally

from .jobutil import certify_args, table
from .shardutil import write_shards

FAST = {"n": 100, "n0": 20, "unit-size": 3}


@pytest.fixture
def reads(monkeypatch):
    """Every opening of a unit file for reading through fsspec's local filesystem (``cat_file`` and
    ``open`` both come here), by file name."""
    counts: Counter[str] = Counter()
    opener = LocalFileSystem._open

    def _open(self, path, mode="rb", *args, **kwargs):
        if "r" in mode and str(path).endswith(".parquet"):
            counts[str(path).rsplit("/", 1)[-1]] += 1
        return opener(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", _open)
    return counts


def test_each_unit_file_is_read_once_and_the_summary_needs_no_rereading(tmp_path, reads, capsys):
    write_shards(tmp_path / "data", shards=2, per_shard=9)
    spec = f"{tmp_path}/data/data-{{000000..000001}}.tar"
    out = tmp_path / "out"
    assert main(certify_args(spec, out, max=7, **FAST)) == 0
    first = capsys.readouterr().out
    assert reads == Counter()  # nothing committed before: the summary came from the workers' facts
    assert main(certify_args(spec, out, **FAST)) == 0  # 7 committed before, 11 more
    files = sorted(p.name for p in (out / "units").glob("*.parquet"))
    assert set(reads) <= set(files) and max(reads.values()) == 1 and len(reads) == 3  # the 3 units of the 7
    second = capsys.readouterr().out
    reads.clear()
    assert main(certify_args(spec, out, **FAST)) == 0  # a no-op rerun
    assert sorted(reads) == files and set(reads.values()) == {1}
    rerun = capsys.readouterr().out
    # the summaries equal a fresh reading of the folder
    whole = summarize(Store(str(out)), (0.0, 0.5), selected=range(18))
    assert f"18 selected, {whole['ok']} certified" in second and f"18 selected, {whole['ok']} certified" in rerun
    assert "7 selected" in first
    assert whole["rows"] == 18 == table(out).height


def test_the_summary_from_units_facts_joined_in_chunks_equals_the_folders(tmp_path, capsys, monkeypatch):
    """The driver joins the workers' row facts by NEW_CHUNK units (5 million inputs: 160,000 units); the
    summary and the count of committed units must not change for it."""
    import importlib

    monkeypatch.setattr(importlib.import_module("rscert.run.prepare"), "NEW_CHUNK", 2)
    write_shards(tmp_path / "data", shards=2, per_shard=9)
    out = tmp_path / "out"
    assert main(certify_args(f"{tmp_path}/data/data-{{000000..000001}}.tar", out, **FAST)) == 0  # 6 units
    text = capsys.readouterr().out
    whole = summarize(Store(str(out)), (0.0, 0.5), selected=range(18))
    assert whole["rows"] == 18 and f"18 selected, {whole['ok']} certified" in text
    assert "(6 units committed)" in text, text


def test_execution_records_are_batched_by_the_driver(tmp_path):
    write_shards(tmp_path / "data", shards=1, per_shard=9)
    out = tmp_path / "out"
    assert main(certify_args(f"{tmp_path}/data/data-000000.tar", out, **FAST)) == 0
    logs = list((out / EXECUTIONS_DIR).iterdir())
    assert len(logs) == 1 and logs[0].suffix == ".jsonl"  # 3 units, one file (no file per unit)
    records = Store(str(out)).executions()
    assert sorted(r["unit_id"] for r in records) == sorted(p.stem for p in (out / "units").glob("*.parquet"))
    assert all("facts" not in r and r["rows"] == 3 for r in records)


def test_tally_matches_a_direct_count(tmp_path):
    import numpy as np
    import pyarrow as pa

    table = pa.table({"index": [0, 1, 2, 3, 5], "status": ["ok", "ok", "decode_error", "ok", "ok"],
                      "prediction": [1, -1, None, 2, 0], "correct": [True, False, None, False, True],
                      "radius": [0.7, None, None, 0.1, 0.2]})
    facts = RowFacts.from_table(table)
    s = tally(facts, (0.0, 0.5), np.array([0, 1, 2, 3, 4]))  # index 5 is not selected; 4 has no row
    assert (s["rows"], s["ok"], s["errors"], s["inputs"], s["failed"]) == (4, 3, 1, 5, 2)
    assert s["abstained"] == 1 and s["correct"] == 1
    assert s["certified_accuracy"] == {0.0: 1 / 5, 0.5: 1 / 5}


def test_compact_is_resumable_and_read_like_the_unit_files(tmp_path, capsys):
    from rscert.store.compact import JOURNAL, _plan, _write_part
    from rscert.store.results import MANIFEST

    write_shards(tmp_path / "data", shards=2, per_shard=9)
    spec = f"{tmp_path}/data/data-{{000000..000001}}.tar"
    out = tmp_path / "out"
    assert main(certify_args(spec, out, **FAST)) == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--radii", "0 0.25", "--csv", str(tmp_path / "before.csv")]) == 0
    rows = table(out)
    units = sorted(p.name for p in (out / "units").glob("*.parquet"))
    # a compaction killed after writing its first part, before deleting that part's unit files
    store = Store(str(out))
    fp = json.loads((out / MANIFEST).read_text())["fingerprint"]
    journal = _plan(store, fp, files_per_part=4)
    store.write_json(JOURNAL, journal)
    _write_part(store, journal["parts"][0], fp)
    found = store.committed(fp)
    assert len(found.facts) == 18 and sorted(found.indices) == list(range(18))  # each row once
    assert main(["analyze", str(out), "--radii", "0 0.25", "--csv", str(tmp_path / "mid.csv")]) == 0
    assert main(["compact", str(out), "--files-per-part", "4"]) == 0  # resumes from the journal
    left = sorted(p.name for p in (out / "units").glob("*.parquet"))
    assert len(left) == len(journal["parts"]) == -(-len(units) // 4) and all(n.startswith("compact-") for n in left)
    assert not (out / JOURNAL).exists()
    assert table(out).drop("unit_id").equals(rows.drop("unit_id"))
    assert main(["analyze", str(out), "--radii", "0 0.25", "--csv", str(tmp_path / "after.csv")]) == 0
    before = pl.read_csv(tmp_path / "before.csv")
    for name in ("mid", "after"):  # equal up to the order of float sums (seconds_per_input's last bit)
        assert_frame_equal(pl.read_csv(tmp_path / f"{name}.csv"), before, check_exact=False, rel_tol=1e-12)
    capsys.readouterr()
    assert main(certify_args(spec, out, **FAST)) == 0  # a rerun into the compacted folder: nothing to run
    err = capsys.readouterr().err
    assert "18 certified before" in err and "0 to run (0 inputs)" in err
    assert table(out).height == 18
