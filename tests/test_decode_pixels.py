"""Every decode path gives finite pixels in [0, 1] or a ``decode_error`` row (issue 18, section 2):
every PIL mode, every image extension (PIL sniffs the content whatever the name says), every preset.
Real image bytes in real tar shards, the real decoder, the real job."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from rscert.cli import main
from rscert.data.decode import IMAGE_EXTS, PRESETS, SampleError, decode_input, image_pixels

from .jobutil import certify_args, table

FORMATS = ("PNG", "TIFF", "WEBP", "JPEG", "BMP", "GIF", "PPM")
RNG = np.random.default_rng(18)
BASE = RNG.random((5, 6))  # values in [0, 1)
COMMON = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B", "I", "F")


def _image(mode: str) -> Image.Image:
    """An image of ``mode`` with varied content (every mode PIL knows)."""
    if mode == "F":
        return Image.fromarray(BASE.astype(np.float32), mode="F")
    if mode == "I":
        return Image.fromarray((BASE * 60000).astype(np.int32), mode="I")
    if mode.startswith("I;16"):
        img = Image.new(mode, (6, 5))
        img.putdata([int(v) for v in (BASE * 60000).ravel()])
        return img
    rgb = Image.fromarray((RNG.random((5, 6, 3)) * 255).astype(np.uint8))
    try:
        return rgb.convert(mode)
    except ValueError:
        return Image.new(mode, (6, 5))


def _saved(img: Image.Image, fmt: str) -> bytes | None:
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return buf.getvalue()


def _outcome(make) -> tuple[str, torch.Tensor | None]:
    try:
        x = make()
    except SampleError as exc:
        assert exc.status == "decode_error", exc
        return "decode_error", None
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32, type(x)
    assert bool(torch.isfinite(x).all()), "non-finite pixels passed the decoder"
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0, (float(x.min()), float(x.max()))
    return "ok", x


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("mode", Image.MODES)
def test_every_mode_in_memory_gives_pixels_in_range_or_a_decode_error(mode, preset):
    status, x = _outcome(lambda: image_pixels(_image(mode), preset))
    if mode in COMMON:
        assert status == "ok", mode
    if status == "ok":
        assert x.dim() == 3 and x.shape[0] in (1, 3)


@pytest.mark.parametrize("mode", Image.MODES)
def test_every_mode_from_every_format_under_every_extension(mode):
    """The bytes of each format that can hold the mode, under each image extension: what PIL opens
    (its content decides, not the name) goes through the same checks."""
    img = _image(mode)
    tried = 0
    for fmt in FORMATS:
        data = _saved(img, fmt)
        if data is None:
            continue
        for ext in IMAGE_EXTS:
            for preset in sorted(PRESETS):
                status, _ = _outcome(lambda data=data, ext=ext, preset=preset: decode_input({ext: data}, preset))
                assert status in ("ok", "decode_error")
                tried += 1
    assert tried or mode in ("La", "RGBa", "HSV", "I;16N"), mode  # modes no format writes


def _float_tiff(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.float32), mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def _int_tiff(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.int32), mode="I").save(buf, format="TIFF")
    return buf.getvalue()


BAD_FLOATS = {"nan": np.nan, "inf": np.inf, "neginf": -np.inf, "big": 1.5, "neg": -0.25}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("ext", IMAGE_EXTS)
@pytest.mark.parametrize("bad", sorted(BAD_FLOATS))
def test_float_images_with_bad_values_are_decode_errors_under_any_name(bad, ext, preset):
    values = BASE.copy()
    values[2, 3] = BAD_FLOATS[bad]
    with pytest.raises(SampleError, match="non-finite|outside \\[0, 1\\]") as info:
        decode_input({ext: _float_tiff(values)}, preset)
    assert info.value.status == "decode_error"


@pytest.mark.parametrize("ext", IMAGE_EXTS)
def test_float_images_in_range_keep_their_values(ext):
    x = decode_input({ext: _float_tiff(BASE)}, "none")
    assert torch.equal(x[0], torch.from_numpy(BASE.astype(np.float32)))


@pytest.mark.parametrize("value", [-1, 70_000])
def test_integer_images_outside_the_sixteen_bit_range_are_decode_errors(value):
    values = (BASE * 1000).astype(np.int64)
    values[0, 0] = value
    with pytest.raises(SampleError) as info:
        decode_input({"png": _int_tiff(values)}, "none")
    assert info.value.status == "decode_error"


def test_a_nan_tiff_named_png_is_a_failed_row_not_a_certificate(tmp_path: Path):
    """The reproduction of the issue: float TIFF bytes under a .png name, NaN in every pixel."""
    good = np.full((16, 16), 0.5, dtype=np.float32)
    path = tmp_path / "nan-000000.tar"
    with TarWriter(str(path)) as sink:
        sink.write({"__key__": "nan", "png": _float_tiff(np.full((16, 16), np.nan)), "cls": b"0"})
        sink.write({"__key__": "inf", "jpg": _float_tiff(np.full((16, 16), np.inf)), "cls": b"0"})
        sink.write({"__key__": "good", "png": _float_tiff(good), "cls": b"0"})
    out = tmp_path / "out"
    assert main(certify_args(str(path), out, preset="cifar", **{"unit-size": 3})) == 0
    rows = table(out)
    status = dict(zip(rows["key"], rows["status"], strict=True))
    assert status == {"nan": "decode_error", "inf": "decode_error", "good": "ok"}
    bad = rows.filter(pl.col("status") != "ok")
    assert bad["radius"].null_count() == 2 and bad["prediction"].null_count() == 2
    assert all("non-finite" in e for e in bad["error"])
