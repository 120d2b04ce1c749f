"""One configuration and one driver per output folder; committed work is never deleted."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import polars as pl
import pytest
from fsspec.implementations.local import LocalFileSystem

from rscert.cli import main
from rscert.store.lease import LEASE, STALE_AFTER_S
from rscert.store.results import QUARANTINE_DIR, OutputError, Store, table_from_rows
from rscert.store.storage import create_exclusive

from .jobutil import ROOT, RSCERT, certify_args, env, table
from .shardutil import write_shards

FAST = {"n0": 20, "n": 200}
COLS = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius"]


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "data", shards=3, per_shard=10)
    return str(tmp_path / "data" / "data-{000000..000002}.tar")


def _fingerprint(out) -> str:
    return json.loads((out / "_rscert_manifest.json").read_text())["fingerprint"]


def test_exclusive_create_locally(tmp_path):
    fs = LocalFileSystem()
    target = str(tmp_path / "m.json")
    create_exclusive(fs, target, b"first")
    with pytest.raises(FileExistsError):
        create_exclusive(fs, target, b"second")
    assert (tmp_path / "m.json").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left behind


def test_other_fingerprints_are_kept_out_and_never_deleted(tmp_path, shards):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, max=8, **FAST)) == 0
    store = Store(str(out))
    fp = _fingerprint(out)
    foreign = table_from_rows([{"run_id": "x", "index": 20, "status": "ok"}], {"rscert.fingerprint": "other"})
    store.commit_unit("foreign-unit", foreign)
    found = store.committed(fp)
    assert "foreign-unit" not in found.units and 20 not in found.indices
    assert found.indices == set(range(8)) and len(found.units) == 2
    assert (out / "units" / "foreign-unit.parquet").exists()
    assert main(certify_args(shards, out, **FAST)) == 0  # index 20 is certified: the foreign row counts for nothing
    assert (out / "units" / "foreign-unit.parquet").exists()
    mine = pl.read_parquet(f"{out}/units/*.parquet").filter(pl.col("run_id") != "x")
    assert sorted(mine["index"].to_list()) == list(range(30))


def test_unreadable_unit_is_set_aside_and_its_inputs_rerun(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, **FAST)) == 0
    before = table(out)
    victim = sorted((out / "units").glob("*.parquet"))[1]
    damaged = victim.read_bytes()[:100]
    victim.write_bytes(damaged)
    capsys.readouterr()
    assert main(certify_args(shards, out, **FAST)) == 0
    err = capsys.readouterr().err
    assert "set aside" in err and victim.name in err and "1 to run (4 inputs)" in err
    kept = list((out / QUARANTINE_DIR).iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # moved, not deleted
    assert table(out).select(COLS).equals(before.select(COLS))


class FlakyFS(LocalFileSystem):
    """A real local filesystem whose reads of unit files fail while ``down`` (a storage outage), or
    only on the first try (``once``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.down, self.once, self.failures = False, False, 0

    def _fault(self, path: str) -> None:
        if str(path).endswith(".parquet") and (self.down or (self.once and self.failures == 0)):
            self.failures += 1
            raise ConnectionResetError(f"simulated storage fault reading {path}")

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            self._fault(path)
        return super()._open(path, mode, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._fault(path)
        return super().cat_file(path, start, end, **kwargs)


def test_transient_read_error_keeps_the_unit_and_fails_prepare(tmp_path, shards):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, **FAST)) == 0
    files = sorted((out / "units").glob("*.parquet"))
    store = Store(str(out))
    fp = _fingerprint(out)
    flaky = FlakyFS(skip_instance_cache=True)
    store.fs = flaky
    flaky.down = True
    with pytest.raises(OutputError, match="cannot read the committed units.*nothing was moved or deleted"):
        store.committed(fp)
    assert sorted((out / "units").glob("*.parquet")) == files and not (out / QUARANTINE_DIR).exists()
    flaky.down, flaky.once, flaky.failures = False, True, 0
    found = store.committed(fp)  # the first read fails, the whole-file read succeeds: the unit counts
    assert flaky.failures == 1 and len(found.units) == len(files) and found.indices == set(range(30))
    assert not (out / QUARANTINE_DIR).exists()


def _lease(out, **fields) -> None:
    payload = {"host": socket.gethostname(), "pid": 1, "token": "t0", "heartbeat": time.time(), **fields}
    (out / LEASE).write_text(json.dumps(payload))


def test_lease_refuses_a_live_driver_and_takes_over_a_stale_one(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, max=2, **FAST)) == 0
    assert not (out / LEASE).exists()  # released at the end
    _lease(out, host="other-host", pid=4242)
    capsys.readouterr()
    assert main(certify_args(shards, out, max=4, **FAST)) == 2
    err = capsys.readouterr().err
    assert "in use by another driver (host other-host, pid 4242" in err
    assert table(out).height == 2
    _lease(out, host="other-host", pid=4242, heartbeat=time.time() - STALE_AFTER_S - 5)
    assert main(certify_args(shards, out, max=4, **FAST)) == 0
    assert "took over the stale lease of host other-host" in capsys.readouterr().err
    dead = subprocess.Popen(["true"])
    dead.wait()
    _lease(out, pid=dead.pid, token="t1")  # this host, fresh heartbeat, but the process is gone
    assert main(certify_args(shards, out, max=6, **FAST)) == 0
    assert table(out).height == 6 and not (out / LEASE).exists()


@pytest.mark.parametrize("same", [False, True])
def test_two_drivers_started_together(tmp_path, shards, same):
    out = tmp_path / "out"
    settings = {"n0": 50, "n": 6000, "batch-size": 500}
    procs = [subprocess.Popen(RSCERT + certify_args(shards, out, **settings, sigma=0.5 if same or i == 0 else 0.25),
                              cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    refused = [err for code, err in results if code == 2]
    df = table(out)
    assert df["index"].to_list() == list(range(30))  # no input twice
    assert df["sigma"].n_unique() == 1  # no mixed configurations
    executions = Store(str(out)).executions()
    assert sum(e["rows"] for e in executions) == 30  # nothing certified twice
    if same:  # refused by the lease, or started after the other finished and found nothing to do
        assert codes == [0, 2] and "in use by another driver" in refused[0] or codes == [0, 0]
    else:
        assert codes == [0, 2]
        assert "in use by another driver" in refused[0] or "another configuration" in refused[0]
