"""`rscert certify|predict --noise discrete-gaussian` over real tar shards: rows, fingerprint, off-grid inputs,
sequential sampling, and an analysis that keeps the modes apart."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor
from webdataset import TarWriter

from rscert.cli import main
from rscert.sampling.certify import SmoothingParams, certify
from rscert.sampling.sampler import Sampler, SamplerOptions

from .jobutil import certify_args, table
from .shardutil import image_bytes
from .zoo import tiny_cnn


@pytest.fixture
def shard(tmp_path):
    """Five 8-bit PNGs, an 8-bit image stored as float32 .npy (on the grid), and a float .npy off it."""
    rng = np.random.default_rng(0)
    path = tmp_path / "data" / "data-000000.tar"
    path.parent.mkdir()
    images = {}
    with TarWriter(str(path)) as sink:
        for i in range(5):
            data = image_bytes(rng, 16)
            images[f"k{i}"] = to_tensor(Image.open(io.BytesIO(data)))
            sink.write({"__key__": f"k{i}", "png": data, "cls": str(i % 4).encode()})
        levels = rng.integers(0, 256, (3, 16, 16)).astype(np.float32) / np.float32(255)
        images["k5"] = torch.from_numpy(levels)
        for key, array in (("k5", levels), ("k6", rng.random((3, 16, 16)).astype(np.float32))):
            buf = io.BytesIO()
            np.save(buf, array)
            sink.write({"__key__": key, "npy": buf.getvalue(), "cls": b"1"})
    return str(path), images


def test_certify_rows_record_the_mode_and_match_the_python_api(tmp_path, shard):
    data, images = shard
    out = tmp_path / "out"
    assert main(certify_args(data, out, noise="discrete-gaussian")) == 0
    df = table(out)
    assert df.height == 7 and (df["noise"] == "discrete-gaussian").all()
    assert df["status"].to_list() == ["ok"] * 6 + ["off_grid"]
    assert "not 8-bit levels" in df["error"][6]
    manifest = json.loads((out / "_rscert_manifest.json").read_text())
    assert manifest["result_fields"]["noise"] == "discrete-gaussian"
    assert manifest["result_fields"]["noise_version"].startswith("philox4x32-10/discrete-gaussian-255/")
    # the same rows from the Python API on independently decoded images
    keys = [f"k{i}" for i in range(6)]
    sampler = Sampler(tiny_cnn(), SamplerOptions(batch_size=64), device="cpu", noise="discrete-gaussian")
    ref = certify(sampler, torch.stack([images[k] for k in keys]), [str(i) for i in range(6)],
                  [i % 4 for i in range(5)] + [1],
                  SmoothingParams(sigma=0.5, n0=40, n=400, alpha=0.001, seed=3, noise="discrete-gaussian"))
    for row, expect in zip(df.head(6).iter_rows(named=True), ref, strict=True):
        for col in ("prediction", "count_select", "count_top", "radius", "noise"):
            assert row[col] == expect[col], col
    # another mode is another run: resuming into this folder with gaussian noise is refused
    assert main(certify_args(data, out)) != 0


def test_sequential_and_predict_in_the_lattice_mode(tmp_path, shard):
    data, _ = shard
    out = tmp_path / "seq"
    assert main(certify_args(data, out, noise="discrete-gaussian", sampling="sequential", n=2000)) == 0
    df = table(out)
    ok = df.filter(df["status"] == "ok")
    assert ok.height == 6 and (ok["sampling"] == "sequential").all() and (df["noise"] == "discrete-gaussian").all()
    assert (ok["n"] <= 2000).all()
    pred = tmp_path / "pred"
    args = certify_args(data, pred, noise="discrete-gaussian", n=200)
    args[0] = "predict"
    i = args.index("--n0")
    del args[i : i + 2]
    assert main(args) == 0
    rows = table(pred)
    assert (rows["mode"] == "predict").all() and (rows["noise"] == "discrete-gaussian").all()
    assert rows["status"].to_list() == ["ok"] * 6 + ["off_grid"]


def test_analysis_keeps_the_modes_apart(tmp_path, shard, capsys):
    data, _ = shard
    for noise in ("gaussian", "discrete-gaussian"):
        assert main(certify_args(data, tmp_path / noise, noise=noise)) == 0
    capsys.readouterr()
    csv = tmp_path / "summary.csv"
    env_csv = tmp_path / "envelope.csv"
    assert main(["analyze", str(tmp_path / "gaussian"), str(tmp_path / "discrete-gaussian"),
                 "--csv", str(csv), "--envelope-csv", str(env_csv), "--plot", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "discrete-gaussian" in text
    import polars as pl

    summary = pl.read_csv(csv)
    assert sorted(summary["noise"].to_list()) == ["discrete-gaussian", "gaussian"]
    # the gaussian run fails its off-grid input nowhere; the lattice run counts it in its denominator
    assert summary.filter(pl.col("noise") == "discrete-gaussian")["failed"].to_list() == [1]
    envelope = pl.read_csv(env_csv)  # the best per radius names the mode that reached it
    assert set(envelope["best_noise"].to_list()) <= {"gaussian", "discrete-gaussian"}
