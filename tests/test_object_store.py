"""Shards, checkpoint and results in S3: a real S3 API (moto in server mode on 127.0.0.1), reached
through the standard AWS variables or --storage-options, compared with a local run."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import time

import boto3
import fsspec
import polars as pl
import pytest
import torch
from moto.server import ThreadedMotoServer
from s3fs import S3FileSystem

from rscert.cli import main
from rscert.store.results import Store

from .jobutil import ROOT, RSCERT, certify_args, env, run, table
from .shardutil import write_shards
from .zoo import tiny_cnn

BUCKET = "rscert-test"
COLS = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius"]
SETTINGS = {"n": 10000, "n0": 100, "unit-size": 3, "batch-size": 500}
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback holding 4 shards and a checkpoint; AWS_ENDPOINT_URL points at it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    S3FileSystem.clear_instance_cache()  # instances cached by an earlier test point at another server
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*AWS, "AWS_ENDPOINT_URL", "AWS_PROFILE"]}
    os.environ.update(AWS, AWS_ENDPOINT_URL=endpoint)
    os.environ.pop("AWS_PROFILE", None)
    try:
        local = tmp_path_factory.mktemp("s3src")
        write_shards(local / "data", shards=4, per_shard=6, size=20)
        torch.save(tiny_cnn().state_dict(), local / "model.pt")
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        for path in sorted((local / "data").glob("*.tar")):
            client.upload_file(str(path), BUCKET, f"data/{path.name}")
        client.upload_file(str(local / "model.pt"), BUCKET, "models/model.pt")
        yield {"endpoint": endpoint, "local": local}
    finally:
        server.stop()
        S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        fsspec.AbstractFileSystem.clear_instance_cache()


def _args(data: str, out: str, checkpoint: str, **extra) -> list[str]:
    return certify_args(data, out, checkpoint=checkpoint, **SETTINGS, **extra)


@pytest.fixture(scope="module")
def reference(s3, tmp_path_factory):
    out = tmp_path_factory.mktemp("s3ref") / "out"
    local = s3["local"]
    result = run(_args(f"{local}/data/data-{{000000..000003}}.tar", out, str(local / "model.pt")))
    assert result.returncode == 0, result.stderr
    return table(out)


def _s3_units(prefix: str) -> int:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    return len(fs.glob(f"{BUCKET}/{prefix}/units/*.parquet"))


def test_s3_in_and_out_killed_resumed_analyzed_equals_local(s3, reference, tmp_path, capsys):
    out = f"s3://{BUCKET}/run1"
    args = _args(f"s3://{BUCKET}/data/data-*.tar", out, f"s3://{BUCKET}/models/model.pt")
    proc = subprocess.Popen(RSCERT + args, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and _s3_units("run1") < 2:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _s3_units("run1")
    assert 2 <= partial < 8, "the kill should land part way"
    result = run(args)  # resumes at once: the killed driver's lease names a dead pid on this host
    assert result.returncode == 0, result.stderr
    assert f"{partial} already committed, {8 - partial} to run" in result.stderr
    got = pl.read_parquet(f"{out}/units/*.parquet").sort("index")
    assert got["key"].n_unique() == got.height == 24
    assert got.select(COLS).equals(reference.select(COLS))
    sha = hashlib.sha256((s3["local"] / "model.pt").read_bytes()).hexdigest()
    assert set(got["checkpoint_sha256"]) == {sha}
    assert sum(e["rows"] for e in Store(out).executions()) <= 24 + 3  # at most the killed unit ran twice
    capsys.readouterr()
    assert main(["analyze", out, "--radii", "0 0.25"]) == 0
    table_text = capsys.readouterr().out
    assert "24" in table_text


def test_storage_options_reach_shards_checkpoint_and_output(s3, reference, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: only the option works
    fsspec.AbstractFileSystem.clear_instance_cache()
    options = json.dumps({"endpoint_url": s3["endpoint"]})
    out = f"s3://{BUCKET}/with-options"
    args = _args(f"s3://{BUCKET}/data/data-{{000000..000001}}.tar", out, f"s3://{BUCKET}/models/model.pt",
                 max=4, **{"storage-options": options})
    assert main(args) == 0
    fs = fsspec.filesystem("s3", endpoint_url=s3["endpoint"])
    files = fs.glob(f"{BUCKET}/with-options/units/*.parquet")
    got = pl.concat([pl.read_parquet(fs.cat_file(f)) for f in files]).sort("index")
    assert got.select(COLS).equals(reference.select(COLS).head(4))
    fsspec.AbstractFileSystem.clear_instance_cache()


def test_s3_sidecar_index_ranged_reads_and_a_changed_shard(s3, reference, tmp_path, capsys):
    """``rscert index`` writes sidecars next to the S3 shards; units read their byte spans (same rows as the
    local walk); a shard re-uploaded with other content (another ETag and size) is refused."""
    client = boto3.client("s3")
    for path in sorted((s3["local"] / "data").glob("*.tar")):
        client.upload_file(str(path), BUCKET, f"indexed/{path.name}")
    spec = f"s3://{BUCKET}/indexed/data-{{000000..000003}}.tar"
    assert main(["index", spec]) == 0
    body = client.get_object(Bucket=BUCKET, Key="indexed/data-000000.tar.rscert-index.json")["Body"]
    sidecar = json.loads(body.read())
    assert sidecar["nsamples"] == 6 and sidecar["identity"]["etag"]
    out = f"s3://{BUCKET}/indexed-run"
    assert main(_args(spec, out, f"s3://{BUCKET}/models/model.pt")) == 0
    got = pl.read_parquet(f"{out}/units/*.parquet").sort("index")
    assert got.select(COLS).equals(reference.select(COLS))
    other = tmp_path / "other"
    write_shards(other, shards=4, per_shard=6, size=24, seed=9)
    client.upload_file(str(other / "data-000002.tar"), BUCKET, "indexed/data-000002.tar")
    client.delete_object(Bucket=BUCKET, Key=f"indexed-run/units/{got['unit_id'][12]}.parquet")
    capsys.readouterr()
    assert main(_args(spec, out, f"s3://{BUCKET}/models/model.pt")) == 1
    err = capsys.readouterr().err
    assert "data-000002.tar: not the content this folder's rows were planned from (its" in err


def test_manifest_and_lease_are_created_exclusively_on_s3(s3):
    store = Store(f"s3://{BUCKET}/exclusive")
    assert store.create_json("_rscert_manifest.json", {"who": "first"})
    assert not store.create_json("_rscert_manifest.json", {"who": "second"})  # If-None-Match: * refused
    assert store.read_json("_rscert_manifest.json") == {"who": "first"}


@pytest.mark.parametrize("setting", ["data", "out", "checkpoint"])
def test_a_scheme_without_its_package_names_the_package(tmp_path, setting, capsys):
    assert importlib.util.find_spec("gcsfs") is None, "gcsfs is not a dependency (see pyproject.toml)"
    local = tmp_path / "data"
    write_shards(local, shards=1, per_shard=2)
    urls = {"data": f"{local}/data-000000.tar", "out": str(tmp_path / "out"), "checkpoint": None}
    urls[setting] = "gs://bucket/thing" + (".tar" if setting == "data" else ".pt" if setting == "checkpoint" else "")
    assert main(certify_args(urls["data"], urls["out"], checkpoint=urls["checkpoint"])) == 2
    err = capsys.readouterr().err
    assert f"{setting}: 'gs://bucket/thing" in err and "pip install gcsfs" in err
