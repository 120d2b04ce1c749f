"""`rscert certify` over real tar shards: rows, schema, resume, exactly once, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from rscert.cli import main
from rscert.sampling.certify import SmoothingParams, certify
from rscert.sampling.sampler import Sampler, SamplerOptions
from rscert.stats.smoothing import clopper_pearson_lower
from rscert.store.results import SCHEMA, Store

from .jobutil import ROOT, RSCERT, certify_args, env, run, table
from .shardutil import image_bytes, write_shards
from .zoo import tiny_cnn


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "data", shards=3, per_shard=10)
    return str(tmp_path / "data" / "data-{000000..000002}.tar")


def _decode_all(folder: Path) -> dict[str, tuple[torch.Tensor, int]]:
    out = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            key, ext = name.split(".", 1)
            if ext == "png":
                out[key] = (to_tensor(Image.open(io.BytesIO(data))), int(members[f"{key}.cls"]))
    return out


def test_certify_rows_schema_counts_and_bounds(tmp_path, shards):
    out = tmp_path / "out"
    assert main(certify_args(shards, out)) == 0
    df = table(out)
    assert df.height == 30 and df["key"].n_unique() == 30
    assert df["index"].to_list() == list(range(30))
    assert (df["status"] == "ok").all()
    # schema as documented, readable by both polars and pyarrow.dataset as one table
    assert pq.read_schema(next((out / "units").glob("*.parquet"))).remove_metadata() == SCHEMA
    assert pads.dataset(str(out)).to_table().num_rows == 30
    # counts and bounds: recompute with the Python API on independently decoded images
    images = _decode_all(tmp_path / "data")
    keys = df["key"].to_list()
    sampler = Sampler(tiny_cnn(), SamplerOptions(batch_size=64), device="cpu")
    ids = [str(i) for i in df["index"]]  # noise identity: the dataset index
    ref = certify(sampler, torch.stack([images[k][0] for k in keys]), ids, [images[k][1] for k in keys],
                  SmoothingParams(sigma=0.5, n0=40, n=400, alpha=0.001, seed=3))
    for row, expect in zip(df.iter_rows(named=True), ref, strict=True):
        for col in ("label", "prediction", "top_class", "count_select", "count_top", "correct"):
            assert row[col] == expect[col], col
        assert row["p_lower"] == pytest.approx(float(clopper_pearson_lower(row["count_top"], 400, 0.001)), abs=1e-15)
        assert row["radius"] == pytest.approx(expect["radius"], abs=1e-15)
    # run facts: manifest and parquet key-value metadata
    manifest = json.loads((out / "_rscert_manifest.json").read_text())
    assert manifest["result_fields"]["sigma"] == 0.5 and manifest["model"]["spec"] == "tests.zoo:tiny_cnn"
    assert {"run_id", "fingerprint", "code_version", "created", "config", "data"} <= set(manifest)
    meta = pq.read_metadata(next((out / "units").glob("*.parquet"))).metadata
    assert meta[b"rscert.fingerprint"].decode() == manifest["fingerprint"]


def test_selection_skip_max_and_range(tmp_path, shards):
    out = tmp_path / "sel"
    assert main(certify_args(shards, out, skip=3, max=7, **{"unit-size": 2})) == 0
    assert table(out)["index"].to_list() == [0, 3, 6, 9, 12, 15, 18]
    out2 = tmp_path / "range"
    assert main(certify_args(shards, out2, start=5, end=14, skip=2)) == 0
    assert table(out2)["index"].to_list() == [6, 8, 10, 12]


def test_rerun_skips_committed_units_and_refuses_other_config(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out)) == 0
    before = table(out)
    assert main(certify_args(shards, out)) == 0
    assert "0 to run" in capsys.readouterr().err
    assert table(out).equals(before)
    assert len(Store(str(out)).executions()) == 9  # 9 units, each executed once
    assert main(certify_args(shards, out, sigma=0.25)) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "sigma: 0.5 in the folder, 0.25 now" in err
    assert table(out).equals(before)


def test_config_file_with_command_line_override(tmp_path, shards):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: '{shards}'\nmodel: tests.zoo:tiny_cnn\nrandom-init: true\nsigma: 0.25\nn0: 20\n"
                   f"n: 100\nunit-size: 10\nout: {tmp_path / 'cfg-out'}\nmax: 5\n")
    assert main(["certify", "--config", str(cfg), "--sigma", "0.5"]) == 0
    df = table(tmp_path / "cfg-out")
    assert df.height == 5 and (df["sigma"] == 0.5).all() and (df["n"] == 100).all()


def test_fsspec_urls_and_pipe_sources(tmp_path, shards):
    data = tmp_path / "data"
    spec = f"file://{data}/data-000000.tar pipe:cat\\ {data}/data-000001.tar"
    spec = [f"file://{data}/data-000000.tar", f"pipe:cat {data}/data-000001.tar"]
    out = f"file://{tmp_path}/url-out"
    assert main(["certify", "--data", *spec, "--out", out, "--model", "tests.zoo:tiny_cnn", "--random-init",
                 "--sigma", "0.5", "--n0", "20", "--n", "100"]) == 0
    df = table(tmp_path / "url-out")
    assert df.height == 20 and df["key"].n_unique() == 20


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_bad_rows_fail_alone(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    rng = np.random.default_rng(0)
    from webdataset import TarWriter

    with TarWriter(str(folder / "bad-000000.tar")) as sink:
        sink.write({"__key__": "good0", "png": image_bytes(rng), "cls": b"1"})
        sink.write({"__key__": "corrupt", "jpg": b"\xff\xd8\xff\xe0 this is not a jpeg", "cls": b"2"})
        sink.write({"__key__": "nolabel", "png": image_bytes(rng)})
        sink.write({"__key__": "badlabel", "png": image_bytes(rng), "cls": b"seven"})
        sink.write({"__key__": "biglabel", "png": image_bytes(rng), "cls": b"99"})
        sink.write({"__key__": "jsonlabel", "png": image_bytes(rng), "json": b'{"label": 3}'})
        sink.write({"__key__": "good1", "png": image_bytes(rng), "cls": b"0"})
    out = tmp_path / "out"
    assert main(certify_args(str(folder / "bad-000000.tar"), out, **{"unit-size": 10})) == 0
    df = table(out)
    status = dict(zip(df["key"], df["status"], strict=True))
    assert status == {"good0": "ok", "corrupt": "decode_error", "nolabel": "missing_label",
                      "badlabel": "invalid_label", "biglabel": "invalid_label", "jsonlabel": "ok", "good1": "ok"}
    errors = df.filter(pl.col("status") != "ok")
    assert errors["error"].null_count() == 0 and errors["prediction"].null_count() == errors.height
    assert df.filter(pl.col("key") == "jsonlabel")["label"].item() == 3


def test_truncated_and_missing_shards_fail_their_units_only(tmp_path, capsys):
    write_shards(tmp_path / "data", shards=3, per_shard=10)
    data = tmp_path / "data"
    backup = (data / "data-000002.tar").read_bytes()
    _truncate(data / "data-000002.tar", 0.6)
    spec = f"{data}/data-{{000000..000003}}.tar"  # 000003 does not exist
    out = tmp_path / "out"
    assert main(certify_args(spec, out)) == 1
    text = capsys.readouterr()
    assert "data-000002.tar: truncated" in text.err + text.out
    assert "data-000003.tar: no such file" in text.err + text.out
    assert table(out).height == 20  # shards 0 and 1 complete
    # the shard is repaired: a rerun does only what is missing
    (data / "data-000002.tar").write_bytes(backup)
    assert main(certify_args(f"{data}/data-{{000000..000002}}.tar", tmp_path / "out2")) == 0


def test_shard_truncated_after_planning_fails_its_units_and_rerun_retries(tmp_path, capsys):
    write_shards(tmp_path / "data", shards=2, per_shard=10)
    data = tmp_path / "data"
    spec = f"{data}/data-{{000000..000001}}.tar"
    out = tmp_path / "out"
    # plan (and scan) with a whole shard, then damage it before its units run
    assert main(certify_args(spec, out, max=1)) == 0
    shutil.rmtree(out)
    assert main(certify_args(spec, out, n=100)) == 0
    backup = (data / "data-000001.tar").read_bytes()
    shutil.rmtree(out / "units")
    (out / "units").mkdir()
    _truncate(data / "data-000001.tar", 0.5)
    assert main(certify_args(spec, out, n=100)) == 1
    assert "FAILED" in capsys.readouterr().out
    partial = table(out)
    assert 10 <= partial.height < 20 and partial["key"].str.starts_with("s00").sum() == 10
    missing_units = 3 - len([u for u in (out / "units").glob("data-000001-*.parquet")])
    assert missing_units >= 1
    before = len(Store(str(out)).executions())
    (data / "data-000001.tar").write_bytes(backup)
    assert main(certify_args(spec, out, n=100)) == 0
    assert table(out).height == 20
    assert len(Store(str(out)).executions()) - before == missing_units  # only the failed units ran again


@pytest.mark.parametrize(
    "override,field",
    [
        ({"preset": "mnist"}, "preset"),
        ({"sigma": 0}, "sigma"),
        ({"sigma": -1}, "sigma"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": 0}, "alpha"),
        ({"n0": 0}, "n0"),
        ({"n": 0}, "n"),
        ({"unit-size": 0}, "unit-size"),
        ({"model": "resnet_nope"}, "model"),
    ],
)
def test_bad_configuration_fails_before_compute(tmp_path, shards, override, field, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if field == "preset" else contextlib.nullcontext():
        code = main(certify_args(shards, out, **override))
        assert code == 2
    err = capsys.readouterr().err
    assert field in err
    assert not out.exists()


def test_no_shards_and_file_output_are_refused(tmp_path, shards, capsys):
    assert main(certify_args(str(tmp_path / "nothing-*.tar"), tmp_path / "o")) == 2
    assert "data: no shards matched" in capsys.readouterr().err
    target = tmp_path / "a-file"
    target.write_text("x")
    assert main(certify_args(shards, target)) == 2
    assert "out:" in capsys.readouterr().err and "is a file" in target.read_text() + "is a file"


def test_sigkill_then_rerun_gives_every_key_once_with_identical_counts(tmp_path):
    write_shards(tmp_path / "data", shards=4, per_shard=12, size=24)
    spec = str(tmp_path / "data" / "data-{000000..000003}.tar")
    settings = {"n": 20000, "n0": 100, "unit-size": 3, "batch-size": 500}
    clean = tmp_path / "clean"
    result = run(certify_args(spec, clean, **settings))
    assert result.returncode == 0, result.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen(RSCERT + certify_args(spec, killed, **settings), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    units = killed / "units"
    while time.time() < deadline and (not units.exists() or len(list(units.glob("*.parquet"))) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(list(units.glob("*.parquet")))
    assert 3 <= partial < 16, "the kill should land part way"
    result = run(certify_args(spec, killed, **settings))
    assert result.returncode == 0, result.stderr
    assert f"{partial} already committed, {16 - partial} to run" in result.stderr
    a, b = table(clean), table(killed)
    assert b["key"].n_unique() == b.height == 48
    cols = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius"]
    assert a.select(cols).equals(b.select(cols))


def test_tensor_inputs_npy_and_pt(tmp_path):
    from webdataset import TarWriter

    rng = np.random.default_rng(5)
    path = tmp_path / "tensors-000000.tar"
    with TarWriter(str(path)) as sink:
        for i in range(4):
            array = rng.random((3, 6, 6)).astype(np.float32)
            if i % 2:
                buf = io.BytesIO()
                torch.save(torch.from_numpy(array), buf)
                sink.write({"__key__": f"t{i}", "pt": buf.getvalue(), "cls": b"1"})
            else:
                buf = io.BytesIO()
                np.save(buf, array)
                sink.write({"__key__": f"t{i}", "npy": buf.getvalue(), "cls": b"2"})
    out = tmp_path / "out"
    assert main(certify_args(str(path), out)) == 0
    df = table(out)
    assert df["status"].to_list() == ["ok"] * 4 and df["label"].to_list() == [2, 1, 2, 1]


def test_units_skip_earlier_members_without_decoding(tmp_path):
    """Members before a unit's inputs are skipped, not decoded: corrupt images there do not matter."""
    from webdataset import TarWriter

    from rscert.data.decode import read_unit
    from rscert.data.plan import Unit, unit_id

    rng = np.random.default_rng(6)
    path = tmp_path / "skip-000000.tar"
    with TarWriter(str(path)) as sink:
        for i in range(6):
            image = b"\x89PNG corrupt" if i < 3 else image_bytes(rng)
            sink.write({"__key__": f"k{i}", "png": image, "cls": b"0"})
    unit = Unit(unit_id(str(path), 3), str(path), (3, 4, 5), (3, 4, 5), ("k3", "k4", "k5"))
    items = list(read_unit(unit, "none"))
    assert [(it.key, it.status) for it in items] == [("k3", "ok"), ("k4", "ok"), ("k5", "ok")]
    whole = Unit(unit_id(str(path), 0), str(path), (0, 1), (0, 1), ("k0", "k1"))
    assert {it.status for it in read_unit(whole, "none")} == {"decode_error"}


def test_output_to_an_fsspec_filesystem(tmp_path, shards, capsys):
    """memory:// stands in for an object store: single-PUT commits, and the summary reads it back."""
    import fsspec
    import pyarrow.dataset as ds

    out = "memory://rscert-test/out"
    assert main(certify_args(shards, out, max=8)) == 0
    assert "inputs: 8" in capsys.readouterr().out
    fs = fsspec.filesystem("memory")
    files = fs.glob("/rscert-test/out/units/*.parquet")
    assert len(files) == 2 and fs.exists("/rscert-test/out/_rscert_manifest.json")  # 8 inputs, 4 per unit
    rows = ds.dataset(files, filesystem=fs, format="parquet").to_table()
    assert rows.num_rows == 8
    assert main(certify_args(shards, out, max=8)) == 0  # resume against the same store: nothing to run
    assert "0 to run" in capsys.readouterr().err


@pytest.mark.parametrize("preset,shape", [("imagenet", (3, 224, 224)), ("cifar", (3, 40, 30)), ("none", (1, 40, 30))])
def test_presets_shape_inputs(tmp_path, preset, shape):
    """imagenet: short side to 256, center 224 crop; cifar: RGB as is; none: grayscale stays 1 channel."""
    from webdataset import TarWriter

    from rscert.data.decode import read_unit
    from rscert.data.plan import Unit, unit_id

    gray = np.tile(np.linspace(0, 255, 30, dtype=np.uint8), (40, 1))  # 40 x 30, a horizontal ramp
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="PNG")
    path = tmp_path / "p-000000.tar"
    with TarWriter(str(path)) as sink:
        sink.write({"__key__": "g", "png": buf.getvalue(), "cls": b"0"})
    (item,) = read_unit(Unit(unit_id(str(path), 0), str(path), (0,), (0,), ("g",)), preset)
    assert item.status == "ok" and tuple(item.tensor.shape) == shape
    assert float(item.tensor.min()) >= 0.0 and float(item.tensor.max()) <= 1.0
    if preset != "imagenet":
        assert torch.allclose(item.tensor[0], torch.from_numpy(gray).float() / 255)
