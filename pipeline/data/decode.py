"""Read and decode the inputs of one unit: WebDataset sample fields in, [0, 1] float tensors out."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from rscert.constants import PRESET_SIZES
from rscert.data.plan import Unit
from rscert.data.shard_identity import check_open
from rscert.data.shards import RawSample, ShardError, StreamCursor, read_span, sequential, walk

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TENSOR_EXTS = ("npy", "pt")
LABEL_EXTS = ("cls", "json")

PRESETS: dict[str, str] = {
    "imagenet": "RGB; resize the short side to 256, center crop 224x224; to [0, 1]",
    "cifar": "RGB at its own size (32x32 for CIFAR); to [0, 1]",
    "none": "no resizing; grayscale images stay 1 channel, others become RGB; to [0, 1]",
}


INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
"""Resampling filters for --interpolation (PIL's, through torchvision's Resize)."""


@dataclass(frozen=True)
class Preprocess:
    """A preset and what --resize / --crop / --interpolation change in it, read from its text form
    (:meth:`rscert.config.certify.CertifyConfig.preprocess`: the preset's name alone when nothing is changed,
    ``imagenet; resize 232; crop 224; bicubic`` otherwise), which runs record (rows' ``preset``, the
    fingerprint) and decoding takes."""

    preset: str = "none"
    resize: int | None = None  # short side, before the crop
    crop: int | None = None  # centre crop, square
    interpolation: str = "bilinear"

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        preset, *changes = [part.strip() for part in text.split(";")]
        if preset not in PRESETS:
            raise ValueError(f"preset: must be one of {sorted(PRESETS)}, got {preset!r}")
        values: dict = {"preset": preset, **PRESET_SIZES.get(preset, {})}
        for change in changes:
            key, _, value = change.partition(" ")
            if key in ("resize", "crop"):
                values[key] = int(value)
            elif change in INTERPOLATIONS:
                values["interpolation"] = change
            else:
                raise ValueError(f"preset: cannot read {change!r} in {text!r}")
        return cls(**values)

    def resample(self, img: Image.Image) -> Image.Image:
        """Resize (short side) then centre crop, as configured, with PIL's filter."""
        from torchvision import transforms  # here, not at import: torchvision's import costs a second

        mode = transforms.InterpolationMode[self.interpolation.upper()]
        if self.resize is not None:
            img = transforms.Resize(self.resize, interpolation=mode)(img)
        if self.crop is not None:
            img = transforms.CenterCrop(self.crop)(img)
        return img


@functools.cache
def _image_transform(preset: str) -> Callable[[Image.Image], torch.Tensor]:
    """8-bit images (every mode but 16-bit and float ones): PIL conversion, resampling, then k/255.
    ``preset`` is a :class:`Preprocess` text (a preset's name, with any changes)."""
    from torchvision import transforms  # here, not at import: torchvision's import costs a second

    spec = Preprocess.parse(preset)
    to_tensor = transforms.ToTensor()
    if spec.preset == "none":
        return lambda img: to_tensor(spec.resample(img if img.mode == "L" else img.convert("RGB")))
    return lambda img: to_tensor(spec.resample(img.convert("RGB")))


WIDE_IMAGE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""Single-channel modes with more than 8 bits (16-bit PNGs open as ``I;16``): PIL's own conversions
and torchvision's ToTensor would clip or wrap them, so they are scaled here with numpy."""


def _wide_image(img: Image.Image, preset: str) -> torch.Tensor:
    """A 16-bit (or 32-bit integer, or float) grayscale image in [0, 1]: integers over 65,535 (PNG's
    widest samples; wider values are refused), floats as they are if finite and in [0, 1] (the checks
    of :func:`scale_array`, else a ``decode_error``); resized like 8-bit images (PIL bilinear on the
    float image); gray becomes RGB by repetition for the RGB presets."""
    array = np.asarray(img)
    if img.mode == "F":
        scaled = scale_array(array, f"the {img.mode} (float) image").numpy()
    else:
        if array.size and (int(array.min()) < 0 or int(array.max()) > 65535):
            raise SampleError("decode_error", f"{img.mode} image has values outside the 16-bit range 0..65535")
        scaled = array.astype(np.float32) / np.float32(65535)
    spec = Preprocess.parse(preset)
    if spec.resize is not None or spec.crop is not None:
        resized = spec.resample(Image.fromarray(scaled, mode="F"))
        scaled = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)  # filter overshoot and rounding
    tensor = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32)).unsqueeze(0)
    return tensor if spec.preset == "none" else tensor.expand(3, -1, -1).contiguous()




class SampleError(ValueError):
    """A sample that cannot be used; ``status`` is the error class recorded in its row."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


INT64 = (-(2**63), 2**63 - 1)


def decode_label(fields: dict[str, bytes]) -> int:
    """The integer label of ``.cls`` (text) or ``.json`` (``label`` or ``cls``); it must fit int64."""
    if "cls" in fields:
        text = fields["cls"].decode("utf-8", errors="replace").strip()
        try:
            value = int(text)
        except ValueError:
            raise SampleError("invalid_label", f".cls is not an integer: {text[:40]!r}") from None
    elif "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SampleError("invalid_label", f".json does not parse: {exc}") from None
        value = meta.get("label", meta.get("cls")) if isinstance(meta, dict) else meta
        if isinstance(value, bool) or not isinstance(value, int):
            raise SampleError("invalid_label", f".json has no integer 'label' (got {str(value)[:40]!r})")
    else:
        raise SampleError("missing_label", f"no label member (.{' or .'.join(LABEL_EXTS)})")
    if not INT64[0] <= value <= INT64[1]:
        raise SampleError("invalid_label", f"label {str(value)[:40]} does not fit a 64-bit integer")
    return value


def scale_array(array: np.ndarray, what: str) -> torch.Tensor:
    """A numeric array as float32 pixels in [0, 1], or a :class:`SampleError`.

    * floats are taken as they are: every value must be finite and in [0, 1];
    * unsigned integers are divided by their dtype's maximum (uint8 / 255, uint16 / 65,535, ...);
    * bool is {0, 1};
    * signed integers (is int16 0..255, 0..65,535 or -32,768..32,767?), complex numbers, strings,
      objects and structured records are refused.
    """
    kind = array.dtype.kind
    if kind == "u":
        top = np.iinfo(array.dtype).max
        if array.dtype.itemsize <= 2:  # exact in float32: the same k/255 as an 8-bit image
            scaled = array.astype(np.float32) / np.float32(top)
        else:
            scaled = (array.astype(np.float64) / float(top)).astype(np.float32)
    elif kind == "b":
        scaled = array.astype(np.float32)
    elif kind == "f":
        if not np.isfinite(array).all():
            raise SampleError("decode_error", f"{what} has non-finite values (NaN or Inf)")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            raise SampleError("decode_error", f"{what} has values in [{low:g}, {high:g}], outside [0, 1] "
                                              "(floats must be pixels in [0, 1]; give raw 0..255 pixels as uint8)")
        scaled = array.astype(np.float32)
    elif kind == "i":
        raise SampleError("decode_error", f"{what} has signed integer dtype {array.dtype}, whose pixel range is "
                                          "ambiguous: give floats in [0, 1] or unsigned integers (uint8, uint16)")
    else:
        raise SampleError("decode_error", f"{what} has dtype {array.dtype}, not numbers: give floats in [0, 1] "
                                          "or unsigned integers")
    return torch.from_numpy(np.ascontiguousarray(scaled))


def check_pixels(x: torch.Tensor, what: str) -> torch.Tensor:
    """The gate every decoded input passes, whatever decoded it: float32, finite, in [0, 1]; else a
    :class:`SampleError` (``decode_error``). A certificate is about a point of [0, 1]^d: a NaN or an
    out-of-range pixel must fail its row, never reach the model."""
    if x.dtype != torch.float32:
        raise SampleError("decode_error", f"{what} decoded to {x.dtype}, not float32 pixels")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise SampleError("decode_error", f"{what} has non-finite values (NaN or Inf)")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise SampleError("decode_error", f"{what} has values in [{float(x.min()):g}, {float(x.max()):g}], "
                                          "outside [0, 1]")
    return x


def image_pixels(img: Image.Image, preset: str) -> torch.Tensor:
    """A decoded PIL image of any mode as float32 pixels in [0, 1] for ``preset`` (a ``decode_error``
    for a mode PIL cannot convert, or values that are not finite pixels): 16-bit, 32-bit integer and
    float images through :func:`_wide_image`, the rest through PIL's conversion and k/255; then the
    checks of :func:`check_pixels`."""
    try:
        x = _wide_image(img, preset) if img.mode in WIDE_IMAGE_MODES else _image_transform(preset)(img)
    except SampleError:
        raise
    except (ValueError, OSError, TypeError) as exc:  # a mode PIL has no conversion for (La, LAB, ...)
        raise SampleError("decode_error", f"the {img.mode} image cannot be converted to pixels: {exc}") from None
    return check_pixels(x, f"the {img.mode} image")


def _decode_image(data: bytes, ext: str, preset: str) -> torch.Tensor:
    """PIL opens the bytes by their content (a TIFF named .png is a TIFF): every mode it can return
    goes through :func:`image_pixels`."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return image_pixels(img, preset)
    except SampleError:
        raise
    except Image.DecompressionBombError as exc:
        raise SampleError("decode_error",
                          f".{ext} is too large to decode safely (DecompressionBombError): {exc}") from None
    except Exception as exc:  # noqa: BLE001 -- whatever a damaged file makes PIL raise is this sample's
        raise SampleError("decode_error", f".{ext} does not decode: {type(exc).__name__}: {exc}") from None


def decode_input(fields: dict[str, bytes], preset: str) -> torch.Tensor:
    """The input as float32 pixels in [0, 1]: an image (8-bit: k/255; 16-bit: k/65,535; float: as it
    is) or an array (see :func:`scale_array`). Every path ends in the checks of :func:`check_pixels`
    (finite, in [0, 1]); anything else is a :class:`SampleError` (``decode_error``)."""
    _image_transform(preset)  # an unknown preset is the configuration's fault, not the sample's
    for ext in IMAGE_EXTS:
        if ext in fields:
            return _decode_image(fields[ext], ext, preset)
    if "npy" in fields:
        try:
            array = np.load(io.BytesIO(fields["npy"]), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 -- object arrays, bad headers, truncated data
            raise SampleError("decode_error", f".npy does not load: {type(exc).__name__}: {exc}") from None
        if not isinstance(array, np.ndarray):
            raise SampleError("decode_error", f".npy holds {type(array).__name__}, not an array")
        return check_pixels(scale_array(array, ".npy"), ".npy")
    if "pt" in fields:
        try:
            value = torch.load(io.BytesIO(fields["pt"]), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise SampleError("decode_error", f".pt does not load: {type(exc).__name__}: {exc}") from None
        if not isinstance(value, torch.Tensor):
            raise SampleError("decode_error", f".pt holds {type(value).__name__}, not a tensor")
        try:
            value = value.detach().to_dense() if value.layout != torch.strided else value.detach()
            if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
                value = value.float()
            array = value.contiguous().numpy()
        except Exception as exc:  # noqa: BLE001 -- quantized and other tensors numpy cannot hold
            raise SampleError("decode_error", f".pt tensor of dtype {value.dtype} is not usable: {exc}") from None
        return check_pixels(scale_array(array, ".pt"), ".pt")
    raise SampleError("missing_input", f"no input member (.{', .'.join(IMAGE_EXTS + TENSOR_EXTS)})")


@dataclass
class Decoded:
    position: int
    index: int
    key: str
    tensor: torch.Tensor | None
    label: int | None
    status: str = "ok"
    error: str | None = None


def _raw_samples(unit: Unit, storage_options: dict | None, cursor: StreamCursor | None) -> Iterator[RawSample]:
    """The unit's samples: by ranged reads when it has them; over the cursor's stream for a sequential
    shard (``pipe:``, compressed) when one is given; else by walking the shard up to its last position.
    A shard opened locally (or walked) is first checked against the unit's identity record
    (:func:`rscert.data.shard_identity.check_open`); ranged reads from an object store are not (that
    would cost a request per unit): the planning pass checked the shard, and bytes that are not the
    planned samples fail the unit."""
    on_open = None if unit.identity is None else functools.partial(check_open, unit.shard, unit.identity)
    wanted = set(unit.positions)
    if unit.reads is not None:
        for first, offset, length in unit.reads:
            yield from read_span(unit.shard, offset, length, first, wanted, storage_options, on_open)
    elif cursor is not None and sequential(unit.shard):
        yield from cursor.samples(unit.shard, wanted, on_open)
    else:
        yield from walk(unit.shard, wanted=wanted, stop_after=max(unit.positions), storage_options=storage_options,
                        on_open=on_open)


def read_unit(unit: Unit, preset: str, storage_options: dict | None = None,
              cursor: StreamCursor | None = None) -> Iterator[Decoded]:
    """The unit's inputs, decoded. A bad sample yields a row with its error; a shard that is missing,
    truncated or no longer matches the plan raises :class:`~rscert.data.shards.ShardError`, and so does
    one whose opened file no longer matches the unit's identity record. The samples' bytes are the
    same whichever way they are read (spans, stream, walk), so are the rows."""
    _image_transform(preset)  # an unknown preset fails before any reading
    wanted = dict(zip(unit.positions, zip(unit.indices, unit.keys, strict=True), strict=True))
    seen = 0
    for raw in _raw_samples(unit, storage_options, cursor):
        if raw.position not in wanted:
            continue
        index, key = wanted[raw.position]
        if raw.key != key:
            raise ShardError(f"shard {unit.shard}: sample {raw.position} is {raw.key!r}, the plan says {key!r} "
                             "(the shard changed since the run was planned)")
        seen += 1
        label: int | None = None
        try:
            label = decode_label(raw.fields)
            tensor = decode_input(raw.fields, preset)
            yield Decoded(raw.position, index, key, tensor, label)
        except SampleError as exc:
            yield Decoded(raw.position, index, key, None, label, exc.status, str(exc))
    if seen != len(wanted):
        raise ShardError(f"shard {unit.shard}: ended after {seen} of the unit's {len(wanted)} inputs "
                         "(truncated, or changed since the run was planned)")
