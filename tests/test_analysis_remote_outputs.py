"""Every file ``rscert analyze`` writes (tables, exports, plots, the JSON summary) goes through fsspec
like its inputs: to a real S3 API (moto in server mode on loopback), never to a local folder named
``s3:``; a scheme without its package is refused naming the option (issue 22 item 1)."""

from __future__ import annotations

import os

import boto3
import pytest
from moto.server import ThreadedMotoServer
from s3fs import S3FileSystem

from rscert.cli import main

from .test_analysis_runs import certify_rows, write_run

BUCKET = "outputs"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    S3FileSystem.clear_instance_cache()
    host, port = server.get_host_and_port()
    for k, v in {**AWS, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()
        S3FileSystem.clear_instance_cache()


def _keys(client) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_every_output_of_analyze_reaches_the_object_store(s3, tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run", certify_rows(20))
    monkeypatch.chdir(tmp_path)  # a wrong implementation would create ./s3:/outputs/... here
    outputs = {"--markdown": "t.md", "--latex": "t.tex", "--csv": "s.csv", "--parquet": "s.parquet",
               "--curves-csv": "c.csv", "--curves-parquet": "c.parquet", "--envelope-csv": "e.csv",
               "--envelope-parquet": "e.parquet"}
    args = ["analyze", str(run), "--plot", f"s3://{BUCKET}/figs"]
    for flag, name in outputs.items():
        args += [flag, f"s3://{BUCKET}/tables/{name}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    keys = _keys(s3)
    for name in outputs.values():
        assert f"tables/{name}" in keys
        assert f"wrote s3://{BUCKET}/tables/{name}" in printed
    assert {k for k in keys if k.startswith("figs/")} >= {"figs/comparison.png", "figs/comparison.svg"}
    assert not any("s3:" in p for p in os.listdir(tmp_path))
    body = s3.get_object(Bucket=BUCKET, Key="tables/t.md")["Body"].read().decode()
    assert "sigma = 0.50" in body
    png = s3.get_object(Bucket=BUCKET, Key="figs/comparison.png")["Body"].read()
    assert png.startswith(b"\x89PNG")


def test_an_output_url_without_its_package_is_refused_naming_the_option(tmp_path, capsys):
    run = write_run(tmp_path / "run", certify_rows(5))
    assert main(["analyze", str(run), "--markdown", "nosuchscheme://b/t.md"]) == 2
    err = capsys.readouterr().err
    assert "markdown" in err and "nosuchscheme://b/t.md" in err and "Traceback" not in err
