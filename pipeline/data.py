"""Plan work units over shards, and read and decode the inputs of one unit (no Ray, no model).

Selection follows the paper's scripts: the dataset index i runs over all samples of all shards in
order; an input is selected if ``start <= i < end`` and ``i % skip == 0``; at most ``max`` inputs
are kept. Each shard's selected positions are cut into units of at most ``unit_size`` inputs; a
unit's id is a stable function of its shard and first position.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .shards import ShardError, shard_name, walk

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TENSOR_EXTS = ("npy", "pt")
LABEL_EXTS = ("cls", "json")

PRESETS: dict[str, str] = {
    "imagenet": "RGB; resize the short side to 256, center crop 224x224; to [0, 1]",
    "cifar": "RGB at its own size (32x32 for CIFAR); to [0, 1]",
    "none": "no resizing; grayscale images stay 1 channel, others become RGB; to [0, 1]",
}


def _image_transform(preset: str) -> Callable[[Image.Image], torch.Tensor]:
    from torchvision import transforms  # here, not at import: torchvision's import costs a second

    to_tensor = transforms.ToTensor()
    if preset == "imagenet":
        chain = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), to_tensor])
        return lambda img: chain(img.convert("RGB"))
    if preset == "cifar":
        return lambda img: to_tensor(img.convert("RGB"))
    if preset == "none":
        return lambda img: to_tensor(img if img.mode == "L" else img.convert("RGB"))
    raise ValueError(f"preset: must be one of {sorted(PRESETS)}, got {preset!r}")


@dataclass(frozen=True)
class Selection:
    skip: int = 1
    start: int = 0
    end: int | None = None
    max: int | None = None

    def picks(self, index: int) -> bool:
        return index >= self.start and (self.end is None or index < self.end) and index % self.skip == 0


@dataclass(frozen=True)
class Unit:
    """A work unit: some inputs of one shard, given by their positions and dataset indices."""

    unit_id: str
    shard: str
    positions: tuple[int, ...]
    indices: tuple[int, ...]
    keys: tuple[str, ...]

    def to_json(self) -> dict:
        return {"unit_id": self.unit_id, "shard": self.shard, "positions": list(self.positions),
                "indices": list(self.indices), "keys": list(self.keys)}

    @classmethod
    def from_json(cls, d: dict) -> Unit:
        return cls(d["unit_id"], d["shard"], tuple(d["positions"]), tuple(d["indices"]), tuple(d["keys"]))


def unit_id(shard: str, first_position: int) -> str:
    """``<shard file stem>-<first position>-<8 hex of the shard URL>``: stable and unique."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", shard_name(shard)).removesuffix(".tar")[:60]
    digest = hashlib.sha1(shard.encode()).hexdigest()[:8]
    return f"{stem}-{first_position:07d}-{digest}"


@dataclass
class Plan:
    units: list[Unit]
    failed_shards: dict[str, str] = field(default_factory=dict)  # url -> reason
    deferred_shards: list[str] = field(default_factory=list)  # offsets unknown until a failed shard reads


def plan_units(
    shards: Sequence[str], shard_keys: dict[str, list[str] | str], selection: Selection, unit_size: int
) -> Plan:
    """Cut the selected inputs into units. ``shard_keys[url]`` is the shard's key list, or the reason it
    could not be read. Indices of shards after an unreadable one are unknown, so those shards are
    deferred (reported, not run) until it reads."""
    plan = Plan(units=[])
    offset, kept = 0, 0
    for pos_in_list, url in enumerate(shards):
        keys = shard_keys[url]
        if isinstance(keys, str):
            plan.failed_shards[url] = keys
            plan.deferred_shards = [u for u in shards[pos_in_list + 1 :] if not isinstance(shard_keys[u], str)]
            for later in shards[pos_in_list + 1 :]:
                if isinstance(shard_keys[later], str):
                    plan.failed_shards[later] = shard_keys[later]
            break
        chosen = []
        for position in range(len(keys)):
            if selection.max is not None and kept >= selection.max:
                break
            if selection.picks(offset + position):
                chosen.append(position)
                kept += 1
        for i in range(0, len(chosen), unit_size):
            part = chosen[i : i + unit_size]
            plan.units.append(
                Unit(unit_id(url, part[0]), url, tuple(part), tuple(offset + p for p in part),
                     tuple(keys[p] for p in part))
            )
        offset += len(keys)
    return plan


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------


class SampleError(ValueError):
    """A sample that cannot be used; ``status`` is the error class recorded in its row."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_label(fields: dict[str, bytes]) -> int:
    if "cls" in fields:
        text = fields["cls"].decode("utf-8", errors="replace").strip()
        try:
            return int(text)
        except ValueError:
            raise SampleError("invalid_label", f".cls is not an integer: {text[:40]!r}") from None
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SampleError("invalid_label", f".json does not parse: {exc}") from None
        value = meta.get("label", meta.get("cls")) if isinstance(meta, dict) else meta
        if isinstance(value, bool) or not isinstance(value, int):
            raise SampleError("invalid_label", f".json has no integer 'label' (got {value!r})")
        return value
    raise SampleError("missing_label", f"no label member (.{' or .'.join(LABEL_EXTS)})")


def decode_input(fields: dict[str, bytes], transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    for ext in IMAGE_EXTS:
        if ext in fields:
            try:
                with Image.open(io.BytesIO(fields[ext])) as img:
                    img.load()
                    return transform(img)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise SampleError("decode_error", f".{ext} does not decode: {exc}") from None
    if "npy" in fields:
        try:
            array = np.load(io.BytesIO(fields["npy"]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise SampleError("decode_error", f".npy does not load: {exc}") from None
        return torch.from_numpy(np.asarray(array, dtype=np.float32).copy())
    if "pt" in fields:
        try:
            value = torch.load(io.BytesIO(fields["pt"]), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SampleError("decode_error", f".pt does not load: {exc}") from None
        if not isinstance(value, torch.Tensor):
            raise SampleError("decode_error", f".pt holds {type(value).__name__}, not a tensor")
        return value.to(torch.float32)
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


def read_unit(unit: Unit, preset: str) -> Iterator[Decoded]:
    """The unit's inputs, decoded. A bad sample yields a row with its error; a shard that is missing,
    truncated or no longer matches the plan raises :class:`~pipeline.shards.ShardError`."""
    transform = _image_transform(preset)
    wanted = dict(zip(unit.positions, zip(unit.indices, unit.keys, strict=True), strict=True))
    last = max(unit.positions)
    seen = 0
    for raw in walk(unit.shard, wanted=set(wanted), stop_after=last):
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
            tensor = decode_input(raw.fields, transform)
            yield Decoded(raw.position, index, key, tensor, label)
        except SampleError as exc:
            yield Decoded(raw.position, index, key, None, label, exc.status, str(exc))
    if seen != len(wanted):
        raise ShardError(f"shard {unit.shard}: ended after {seen} of the unit's {len(wanted)} inputs "
                         "(truncated, or changed since the run was planned)")
