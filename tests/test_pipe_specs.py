"""pipe: shard specs: one command per spec (spaces and quotes included), stdin at EOF, failures named."""

from __future__ import annotations

import subprocess

import pytest

from rscert.cli import main
from rscert.data.shards import ShardError, base_plus_ext, expand_shards, expand_urls, shard_keys

from .jobutil import ROOT, RSCERT, certify_args, env, table
from .shardutil import write_shards


def test_url_expansion_and_sample_keys_follow_webdataset(monkeypatch):
    """rscert's copies of WebDataset's two rules (its package imports torch, the Ray driver does not):
    the same URLs and the same keys as webdataset's own functions."""
    from webdataset.shardlists import expand_urls as wds_expand
    from webdataset.tariterators import base_plus_ext as wds_key

    monkeypatch.setenv("WDS_SPLIT", "val-{0..2}")
    monkeypatch.setenv("WDS_NESTED", "${SPLIT}")
    for spec in ["s-{000..012}.tar", "a/${SPLIT}.tar::b/{x,y}-{1..2}.tar", "d/${NESTED}.tar", "plain.tar",
                 "pipe:curl -s http://h/s-{0..3}.tar", "s3://b/{a..c}/shard.tar"]:
        assert expand_urls(spec) == wds_expand(spec), spec
    for name in ["a/b.c.d", "a.b/c", "x", ".hidden.jpg", "d/e.f/g.h", "n01440764_10026.JPEG", "k.cls", "dir/"]:
        assert base_plus_ext(name) == (wds_key(name) or (None, None)), name
    with pytest.raises(ShardError, match="WDS_MISSING"):
        expand_urls("x/${MISSING}.tar")


def test_expansion_keeps_a_pipe_command_whole(tmp_path):
    d = tmp_path
    assert expand_shards(f"pipe:cat {d}/a.tar") == [f"pipe:cat {d}/a.tar"]
    assert expand_shards(f"pipe:sh -c 'cat {d}/s-{{0..1}}.tar'") == [f"pipe:sh -c 'cat {d}/s-0.tar'",
                                                                    f"pipe:sh -c 'cat {d}/s-1.tar'"]
    assert expand_shards([f"{d}/x.tar", f"pipe:cat {d}/y.tar"]) == [f"{d}/x.tar", f"pipe:cat {d}/y.tar"]
    assert expand_shards(f"{d}/x.tar::{d}/y.tar") == [f"{d}/x.tar", f"{d}/y.tar"]  # WebDataset's separator


def test_pipe_specs_from_the_command_line_and_yaml(tmp_path):
    write_shards(tmp_path / "data", shards=2, per_shard=5)
    data = tmp_path / "data"
    assert main(certify_args(f"pipe:sh -c 'cat {data}/data-{{000000..000001}}.tar'", tmp_path / "cli",
                             n0=20, n=100)) == 0
    assert table(tmp_path / "cli")["key"].n_unique() == 10
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data:\n  - pipe:cat {data}/data-000000.tar\n  - \"pipe:sh -c 'cat {data}/data-000001.tar'\"\n"
                   "model: tests.zoo:tiny_cnn\nrandom_init: true\nsigma: 0.5\nseed: 3\nn0: 20\nn: 100\n"
                   f"out: {tmp_path / 'yaml'}\n")
    assert main(["certify", "--config", str(cfg)]) == 0
    cols = ["key", "index", "count_top", "radius"]
    assert table(tmp_path / "yaml").select(cols).equals(table(tmp_path / "cli").select(cols))


def test_pipe_command_reads_eof_not_the_drivers_stdin(tmp_path):
    """The driver's stdin stays open with bytes in it: a command that inherited it would read them
    and then block for ever; with stdin at EOF it sees nothing and goes on."""
    write_shards(tmp_path / "data", shards=1, per_shard=4)
    seen = tmp_path / "seen"
    spec = f"pipe:sh -c 'cat > {seen}; cat {tmp_path}/data/data-000000.tar'"
    log = (tmp_path / "stderr").open("wb")
    proc = subprocess.Popen(RSCERT + certify_args(spec, tmp_path / "out", n0=20, n=100), cwd=ROOT, env=env(),
                            stdin=subprocess.PIPE, stdout=log, stderr=log)
    proc.stdin.write(b"the driver's own input\n")
    proc.stdin.flush()  # and left open
    try:
        code = proc.wait(timeout=300)
    finally:
        proc.kill()
        proc.stdin.close()
        log.close()
    assert code == 0, (tmp_path / "stderr").read_text()
    assert seen.read_bytes() == b""
    assert table(tmp_path / "out").height == 4


def test_failing_pipe_command_fails_its_shard_with_stderr(tmp_path):
    write_shards(tmp_path / "data", shards=1, per_shard=3)
    ok = shard_keys(f"pipe:cat {tmp_path}/data/data-000000.tar")
    assert ok == ["s00_0000", "s00_0001", "s00_0002"]
    with pytest.raises(ShardError, match="exited with status 3: boom"):
        shard_keys(f"pipe:sh -c 'cat {tmp_path}/data/data-000000.tar; echo boom >&2; exit 3'")
