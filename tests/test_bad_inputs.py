"""Bad values and bad inputs in real tar shards: each fails its row (or its unit), never the job."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from rscert.cli import main
from rscert.data.decode import read_unit
from rscert.data.plan import Unit, unit_id
from rscert.data.shards import shard_keys

from .jobutil import certify_args, table
from .shardutil import image_bytes


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _pt(tensor: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(tensor, buf)
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header claims more pixels than PIL will decode (DecompressionBombError)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _write(path: Path, samples: list[dict]) -> str:
    with TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


def _read_all(path: str, preset: str = "none") -> dict[str, object]:
    keys = shard_keys(path)
    unit = Unit(unit_id(path, 0), path, tuple(range(len(keys))), tuple(range(len(keys))), tuple(keys))
    return {it.key: it for it in read_unit(unit, preset)}


# -- item 3: bad values --------------------------------------------------------------------------


def test_values_are_checked_and_integers_scaled(tmp_path):
    rng = np.random.default_rng(0)
    pixels = (rng.random((3, 6, 6)) * 255).astype(np.uint8)
    good = rng.random((3, 6, 6)).astype(np.float32)
    nan, inf, big, neg = good.copy(), good.copy(), good.copy(), good.copy()
    nan[0, 0, 0], inf[1, 2, 3], big[2, 5, 5], neg[0, 1, 1] = np.nan, np.inf, 1.5, -0.25
    samples = {
        "npy_ok": _npy(good), "npy_f64": _npy(good.astype(np.float64)), "npy_nan": _npy(nan),
        "npy_inf": _npy(inf), "npy_big": _npy(big), "npy_neg": _npy(neg), "npy_raw255": _npy(good * 255),
        "npy_u8": _npy(pixels), "npy_u16": _npy(pixels.astype(np.uint16) * 257), "npy_bool": _npy(pixels > 127),
        "npy_i16": _npy(pixels.astype(np.int16)), "npy_str": _npy(np.array(["a", "bc"])),
        "npy_complex": _npy(good.astype(np.complex64)),
        "pt_ok": _pt(torch.from_numpy(good)), "pt_nan": _pt(torch.from_numpy(nan)),
        "pt_big": _pt(torch.from_numpy(big)),
        "pt_u8": _pt(torch.from_numpy(pixels)), "pt_i64": _pt(torch.from_numpy(pixels.astype(np.int64))),
        "pt_bf16": _pt(torch.from_numpy(good).bfloat16()),
    }
    path = _write(tmp_path / "values-000000.tar",
                  [{"__key__": k, k.split("_")[0]: v, "cls": b"1"} for k, v in samples.items()])
    items = _read_all(path)
    status = {k: it.status for k, it in items.items()}
    assert status == {k: ("decode_error" if k.split("_")[1] in {"nan", "inf", "big", "neg", "raw255", "i16", "str",
                                                                "complex", "i64"} else "ok") for k in samples}
    for key, words in [("npy_nan", "non-finite"), ("npy_inf", "non-finite"), ("npy_big", "outside [0, 1]"),
                       ("npy_neg", "outside [0, 1]"), ("npy_raw255", "uint8"), ("npy_i16", "signed integer"),
                       ("npy_str", "<U2"), ("pt_nan", "non-finite"), ("pt_i64", "int64")]:
        assert words in items[key].error, (key, items[key].error)
    expect_u8 = torch.from_numpy(pixels).float() / 255  # an 8-bit image's k/255, exactly
    assert torch.equal(items["npy_u8"].tensor, expect_u8) and torch.equal(items["pt_u8"].tensor, expect_u8)
    assert torch.equal(items["npy_u16"].tensor, expect_u8)  # k * 257 / 65535 = k / 255
    assert torch.equal(items["npy_bool"].tensor, torch.from_numpy(pixels > 127).float())
    assert torch.equal(items["npy_ok"].tensor, torch.from_numpy(good))
    assert torch.equal(items["npy_f64"].tensor, torch.from_numpy(good))
    assert torch.equal(items["pt_bf16"].tensor, torch.from_numpy(good).bfloat16().float())
    # the same uint8 pixels as an 8-bit PNG decode to the same tensor
    png = _write(tmp_path / "png-000000.tar",
                 [{"__key__": "p", "png": _png(np.ascontiguousarray(pixels.transpose(1, 2, 0))), "cls": b"0"}])
    assert torch.equal(_read_all(png)["p"].tensor, expect_u8)
    # the job: bad values fail their rows, the rest is certified
    out = tmp_path / "out"
    assert main(certify_args(path, out, **{"unit-size": 32})) == 0
    df = table(out)
    assert dict(zip(df["key"], df["status"], strict=True)) == status
    failed = df.filter(pl.col("status") != "ok")
    assert failed["prediction"].null_count() == failed.height and failed["error"].null_count() == 0


@pytest.mark.parametrize("preset", ["none", "cifar", "imagenet"])
def test_sixteen_bit_png_is_scaled_by_its_range(tmp_path, preset):
    ramp = np.tile(np.linspace(0, 30000, 40).astype(np.uint16), (30, 1))  # below half of 65535
    ramp[0, 0] = 65535
    image = Image.fromarray(ramp)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16"
    path = _write(tmp_path / "wide-000000.tar", [{"__key__": "w", "png": buf.getvalue(), "cls": b"0"}])
    item = _read_all(path, preset)["w"]
    assert item.status == "ok", item.error
    x = item.tensor
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    if preset == "imagenet":
        assert tuple(x.shape) == (3, 224, 224) and float(x.max()) < 0.6  # no saturation, up to interpolation
        return
    assert tuple(x.shape) == ((1, 30, 40) if preset == "none" else (3, 30, 40))
    expect = torch.from_numpy(ramp.astype(np.float32)) / 65535
    for channel in x:
        assert torch.equal(channel, expect)


# -- item 4: one bad input does not kill the job -------------------------------------------------


def _mixed_shard(tmp_path: Path) -> str:
    rng = np.random.default_rng(1)
    gray = (rng.random((16, 16)) * 255).astype(np.uint8)
    return _write(tmp_path / "mixed-000000.tar", [
        {"__key__": "a", "png": image_bytes(rng), "cls": b"1"},
        {"__key__": "dup", "png": image_bytes(rng), "cls": b"2"},
        {"__key__": "gray", "png": _png(gray), "cls": b"0"},
        {"__key__": "bomb", "png": _bomb_png(), "cls": b"0"},
        {"__key__": "strings", "npy": _npy(np.array([["x", "y"]])), "cls": b"0"},
        {"__key__": "hugelabel", "png": image_bytes(rng), "cls": b"123456789012345678901234567890"},
        {"__key__": "b", "png": image_bytes(rng), "cls": b"3"},
        {"__key__": "dup", "png": image_bytes(rng), "cls": b"0"},  # the same key again, in the same unit
        {"__key__": "c", "png": image_bytes(rng), "cls": b"1"},
    ])


def test_each_bad_input_fails_only_its_row(tmp_path, capsys):
    path = _mixed_shard(tmp_path)
    out = tmp_path / "out"
    assert main(certify_args(path, out, **{"unit-size": 9, "preset": "none"})) == 0
    df = table(out)
    assert df["index"].to_list() == list(range(9))
    assert df["status"].to_list() == ["ok", "ok", "shape_error", "decode_error", "decode_error", "invalid_label",
                                      "ok", "ok", "ok"]
    errors = dict(zip(df["key"], df["error"], strict=False))
    assert "(1, 16, 16)" in errors["gray"] and "(3, 16, 16)" in errors["gray"]
    assert "too large" in errors["bomb"] and "DecompressionBomb" in errors["bomb"]
    assert "<U1" in errors["strings"] and "64-bit" in errors["hugelabel"]
    dups = df.filter(pl.col("key") == "dup")
    assert dups["index"].to_list() == [1, 7] and dups["label"].to_list() == [2, 0]  # matched by position
    assert (df["precision"] == "fp32").all() and (~df["clamp"]).all() and (df["preset"] == "none").all()
    assert "9 selected, 5 certified, 4 failed" in capsys.readouterr().out


def test_model_wider_than_num_classes_is_refused_before_compute(tmp_path, capsys):
    path = _mixed_shard(tmp_path)
    out = tmp_path / "out"
    assert main(certify_args(path, out, model="tests.zoo:wide_cnn", **{"num-classes": 4})) == 2
    err = capsys.readouterr().err
    assert "num-classes" in err and "outputs 6 classes" in err
    assert not out.exists()
    assert main(certify_args(path, out, model="tests.zoo:wide_cnn", **{"num-classes": 6, "max": 2})) == 0


def test_an_unexpected_unit_failure_fails_that_unit_and_the_job_goes_on(tmp_path, capsys):
    rng = np.random.default_rng(2)
    white = (rng.random((16, 16, 3)) * 200).astype(np.uint8)
    white[0, 0, 0] = 255  # the fragile model raises on a batch holding this input
    samples = [{"__key__": f"k{i}", "png": image_bytes(rng), "cls": b"1"} for i in range(6)]
    samples[4]["png"] = _png(white)
    path = _write(tmp_path / "frag-000000.tar", samples)
    out = tmp_path / "out"
    args = certify_args(path, out, model="tests.zoo:fragile_cnn", sigma=0.001, **{"unit-size": 3})
    assert main(args) == 1
    text = capsys.readouterr()
    assert "RuntimeError: fragile model" in text.out and "FAILED (1)" in text.out
    assert "6 selected, 3 certified, 3 failed (0 failed rows, 3 in units not committed)" in text.out
    assert table(out)["index"].to_list() == [0, 1, 2]
    rows = table(out)
    share = (rows["correct"] & (rows["radius"] >= 0)).sum() / 6  # every selected input in the denominator
    assert f"r=0: {share:.3f}" in text.out


def test_workers_check_the_output_width_when_prepare_saw_no_input(tmp_path, capsys):
    """The first 8 samples do not decode, so the driver cannot probe: the worker checks before computing."""
    rng = np.random.default_rng(3)
    samples = [{"__key__": f"bad{i}", "png": b"\x89PNG broken", "cls": b"0"} for i in range(8)]
    samples += [{"__key__": f"k{i}", "png": image_bytes(rng), "cls": b"1"} for i in range(2)]
    path = _write(tmp_path / "late-000000.tar", samples)
    out = tmp_path / "out"
    assert main(certify_args(path, out, model="tests.zoo:wide_cnn", **{"num-classes": 4, "unit-size": 5})) == 1
    text = capsys.readouterr().out
    assert "--num-classes (num_classes) is 4" in text and "FAILED (1)" in text
    assert table(out)["status"].to_list() == ["decode_error"] * 5  # the unit of undecodable inputs only
