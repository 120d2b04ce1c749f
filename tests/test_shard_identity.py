"""A resumed run never certifies other content under an old index (issue 18, section 3): each shard's
content identity is recorded when the folder's run first reads it, and a shard that changed since
fails, naming it, while the rest of the run goes on. Local files, S3 (moto on loopback) and pipe:
streams; real shards, the real job."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import boto3

from rscert.cli import main
from rscert.config import load_config
from rscert.data.shard_identity import identify
from rscert.run.local import run_local
from rscert.run.prepare import prepare
from rscert.store.results import SHARD_IDENTITY

from .jobutil import certify_args, table
from .shardutil import write_shards
from .test_object_store import BUCKET, s3  # noqa: F401 -- the moto server fixture

FAST = {"n0": 20, "n": 100}


def _data(tmp_path: Path) -> tuple[Path, str]:
    write_shards(tmp_path / "data", shards=3, per_shard=4)
    return tmp_path / "data", f"{tmp_path}/data/data-{{000000..000002}}.tar"


def _rewrite(folder: Path, name: str, seed: int) -> None:
    """The same keys in the same order, other images (as if a shard were regenerated)."""
    other = folder.parent / f"regen-{seed}"
    write_shards(other, shards=3, per_shard=4, seed=seed)
    shutil.copyfile(other / name, folder / name)


def test_the_record_names_what_identifies_each_shard(tmp_path):
    data, spec = _data(tmp_path)
    out = tmp_path / "out"
    assert main(certify_args(spec, out, max=2, **FAST)) == 0
    record = json.loads((out / SHARD_IDENTITY).read_text())
    first = record["shards"][str(data / "data-000000.tar")]
    stat = os.stat(data / "data-000000.tar")
    assert first["size"] == stat.st_size and first["mtime_ns"] == stat.st_mtime_ns
    assert len(first["sha256"]) == 64
    assert first == identify(str(data / "data-000000.tar"), content=True)


def test_resuming_over_a_rewritten_shard_fails_it_by_name_and_runs_the_rest(tmp_path, capsys):
    data, spec = _data(tmp_path)
    out = tmp_path / "out"
    assert main(certify_args(spec, out, max=6, **FAST)) == 0  # shard 0 whole, 2 inputs of shard 1
    before = table(out)
    _rewrite(data, "data-000001.tar", seed=9)
    capsys.readouterr()
    assert main(certify_args(spec, out, **FAST)) == 1
    text = capsys.readouterr().out
    assert "data-000001.tar" in text and "changed" in text and "new --out" in text
    rows = table(out)
    # shard 1 ran nothing more; shard 2 (indices 8..11, known from the recorded index) ran
    assert rows["index"].to_list() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]
    assert rows.head(6).equals(before)
    assert "12 selected" in text and "2 in units not committed" in text


def test_a_shard_restored_with_the_same_bytes_resumes(tmp_path):
    data, spec = _data(tmp_path)
    out = tmp_path / "out"
    assert main(certify_args(spec, out, max=2, **FAST)) == 0
    backup = (data / "data-000002.tar").read_bytes()
    _rewrite(data, "data-000002.tar", seed=9)
    assert main(certify_args(spec, out, **FAST)) == 1
    (data / "data-000002.tar").write_bytes(backup)  # the same bytes, a new modification time
    assert main(certify_args(spec, out, **FAST)) == 0
    assert table(out)["index"].to_list() == list(range(12))


def test_a_shard_changed_after_planning_fails_its_units(tmp_path):
    data, spec = _data(tmp_path)
    out = tmp_path / "out"
    config = load_config(None, {"mode": "certify", "data": spec, "out": str(out), "model": "tests.zoo:tiny_cnn",
                                "random_init": True, "sigma": 0.5, "seed": 3, "unit_size": 4, **FAST})
    job = prepare(config, log=lambda _: None)
    try:
        _rewrite(data, "data-000002.tar", seed=9)
        run_local(job)
    finally:
        job.close()
    failed = [reason for name, reason in job.failed.items() if "data-000002" in name]
    assert failed and all("changed" in reason for reason in failed), job.failed
    assert table(out)["index"].to_list() == list(range(8))


def test_pipe_streams_are_hashed_and_a_changed_stream_is_refused(tmp_path, capsys):
    data, _ = _data(tmp_path)
    spec = f"pipe:sh -c 'cat {data}/data-{{000000..000002}}.tar'"
    out = tmp_path / "out"
    assert main(certify_args(spec, out, max=2, **FAST)) == 0
    record = json.loads((out / SHARD_IDENTITY).read_text())["shards"]
    assert {len(r["sha256"]) for r in record.values()} == {64}
    backup = (data / "data-000000.tar").read_bytes()
    _rewrite(data, "data-000000.tar", seed=9)
    capsys.readouterr()
    assert main(certify_args(spec, out, **FAST)) == 1
    assert "data-000000.tar" in capsys.readouterr().out
    (data / "data-000000.tar").write_bytes(backup)
    assert main(certify_args(spec, out, **FAST)) == 0
    assert table(out).height == 12


def test_object_store_shards_are_identified_by_etag_and_hash(s3, tmp_path, capsys):  # noqa: F811
    spec = f"s3://{BUCKET}/data/data-{{000000..000001}}.tar"
    out = tmp_path / "out"
    assert main(certify_args(spec, out, checkpoint=f"s3://{BUCKET}/models/model.pt", max=2, **FAST)) == 0
    record = json.loads((out / SHARD_IDENTITY).read_text())["shards"]
    one = record[f"s3://{BUCKET}/data/data-000001.tar"]
    assert one["etag"] and one["size"] > 0 and len(one["sha256"]) == 64
    client = boto3.client("s3")
    original = client.get_object(Bucket=BUCKET, Key="data/data-000001.tar")["Body"].read()
    regen = tmp_path / "regen"
    write_shards(regen, shards=4, per_shard=6, size=20, seed=9)
    client.upload_file(str(regen / "data-000001.tar"), BUCKET, "data/data-000001.tar")
    try:
        capsys.readouterr()
        assert main(certify_args(spec, out, checkpoint=f"s3://{BUCKET}/models/model.pt", **FAST)) == 1
        assert "data-000001.tar" in capsys.readouterr().out
    finally:
        client.put_object(Bucket=BUCKET, Key="data/data-000001.tar", Body=original)
    assert main(certify_args(spec, out, checkpoint=f"s3://{BUCKET}/models/model.pt", **FAST)) == 0
    assert table(out).height == 12
