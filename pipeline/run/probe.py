"""One forward pass of the model on a real input, before compute: its output must be [batch x classes]
logits with the configured class count, and the input's shape is the one the model is known to take.

``prepare`` probes once (so a wrong ``--num-classes`` is refused before anything runs or is written): in
the driver for the local executor, in a Ray task for the Ray executor (:mod:`rscert.run.model_facts`),
and each worker probes once per input shape it meets: a shape the model cannot take fails
the rows of that shape (status ``shape_error``), provided the model has already worked on another shape
(otherwise the model, not the input, is at fault, and the unit fails as a whole).
"""

from __future__ import annotations

import torch
from torch import nn

from rscert.data.decode import SampleError, decode_input
from rscert.data.shards import ShardError, walk
from rscert.models.load import ModelError

PROBE_SAMPLES = 8
"""Samples of the first shard tried, in order, for one that decodes."""


def output_width(model: nn.Module, example: torch.Tensor) -> int:
    """The class count of the model's logits for one input (a [C x H x W] tensor on the model's device).

    Exceptions of the forward pass propagate (the model cannot take this input)."""
    with torch.inference_mode():
        out = model(example.unsqueeze(0))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model: must return [batch x classes] logits, got {shape} for one input")
    return int(out.shape[1])


def check_width(width: int, num_classes: int | None) -> None:
    """The model's logits must have exactly ``num_classes`` columns when that is set: a wider output
    would vote for classes the counts have no column for, a narrower one is a misconfiguration."""
    if num_classes is not None and width != num_classes:
        raise ModelError(
            f"num-classes: the model outputs {width} classes but --num-classes (num_classes) is {num_classes}; "
            f"set --num-classes {width}, or use a model with {num_classes} outputs")


def class_count(model: nn.Module, shape: tuple[int, ...]) -> int:
    """The model's output width for an input of ``shape`` (one forward pass of zeros, on the CPU)."""
    return output_width(model, torch.zeros(shape))


def _inputs(shard: str, preset: str, tries: int, storage_options: dict | None = None) -> list[torch.Tensor]:
    """Those of the shard's first ``tries`` samples that decode (none if the shard cannot be read:
    planning reports that)."""
    out = []
    try:
        for raw in walk(shard, stop_after=tries - 1, storage_options=storage_options):
            try:
                out.append(decode_input(raw.fields, preset))
            except SampleError:
                continue
    except ShardError:
        pass
    return out


def probe(model: nn.Module, shard: str, preset: str, num_classes: int | None,
          tries: int = PROBE_SAMPLES, storage_options: dict | None = None) -> tuple[int, ...] | None:
    """Check the model's output on the first of ``shard``'s first ``tries`` inputs that it takes (CPU,
    fp32); that input's shape, or None when none decodes. Raises :class:`ModelError` naming the setting
    at fault: the output width, or a model that fails on every one of them."""
    failures = []
    for example in _inputs(shard, preset, tries, storage_options):
        try:
            width = output_width(model, example)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 -- anything the user's model raises on this input
            failures.append(f"shape {tuple(example.shape)}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        check_width(width, num_classes)
        return tuple(example.shape)
    if failures:
        raise ModelError(f"model: fails on each of the first {len(failures)} decodable inputs of {shard} "
                         f"(--preset {preset}); the first: {failures[0]}")
    return None
