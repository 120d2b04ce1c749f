"""Vote counts of a base classifier under Gaussian noise, batched on one device (torch).

Design (see docs/design.md, "Sampler"):

* Noise for sample j of an input is a pure function of (seed, input key, phase, j): samples are cut
  into fixed chunks of ``NOISE_CHUNK``, and chunk c is drawn by a generator seeded with a hash of
  (seed, key, phase, c). Which batch a chunk lands in, which inputs share that batch, and the order
  of inputs therefore never change the noise an input sees.
* Noise is drawn on the model's device, in the dtype the forward pass runs in, and added in
  [0, 1] pixel space (the model normalises internally), as in Cohen et al. (2019).
* Samples of several inputs are packed into one forward batch, so n0 = 100 and the tail of n never
  leave the device half idle. Memory is one batch of inputs, whatever the number of samples.
* Votes accumulate on the device with ``index_add_``; one device-to-host copy per call.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from .constants import NOISE_CHUNK

Precision = Literal["fp32", "bf16", "fp16"]
PHASES = ("selection", "estimation", "prediction")

_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def chunk_seed(seed: int, key: str, phase: str, chunk: int) -> int:
    """The generator seed of one noise chunk: a 63-bit hash of (seed, key, phase, chunk index)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    text = f"{int(seed)}\x1f{key}\x1f{phase}\x1f{int(chunk)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class SamplerOptions:
    """How the forward passes run. None of these changes the noise (but precision changes its dtype)."""

    batch_size: int = 400
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    clamp: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: must be an integer >= 1, got {self.batch_size!r}")
        if self.precision not in _DTYPES:
            raise ValueError(f"precision: must be one of {sorted(_DTYPES)}, got {self.precision!r}")


@dataclass(frozen=True)
class _Segment:
    slot: int  # row of the counts matrix
    key: str
    chunk: int
    size: int


def _segments(keys: Sequence[str], num_samples: Sequence[int], phase: str) -> Iterator[_Segment]:
    for slot, (key, n) in enumerate(zip(keys, num_samples, strict=True)):
        for c in range(math.ceil(n / NOISE_CHUNK)):
            yield _Segment(slot, key, c, min(NOISE_CHUNK, n - c * NOISE_CHUNK))


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Sampler:
    """Counts the base classifier's votes under noise for batches of inputs on one device."""

    def __init__(
        self,
        model: nn.Module,
        options: SamplerOptions | None = None,
        device: torch.device | str | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.options = options or SamplerOptions()
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = _DTYPES[self.options.precision]
        model = model.eval().to(self.device)
        if self.options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model: nn.Module = torch.compile(model) if self.options.compile else model
        self.num_classes = num_classes
        self._generator = torch.Generator(device=self.device)

    # -- the forward pass --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.options.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def forward_classes(self, batch: torch.Tensor) -> torch.Tensor:
        """argmax of the model's logits for a batch already on the device (no host sync)."""
        if self.options.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            return self.model(batch).argmax(dim=1)

    def ensure_num_classes(self, example: torch.Tensor) -> int:
        """The class count: as given, or read off one forward pass of ``example[:1]``."""
        if self.num_classes is None:
            with torch.inference_mode(), self._autocast():
                out = self.model(example[:1].to(self.device, self.dtype))
            if out.dim() != 2:
                raise ValueError(f"the model must return [batch x classes] logits, got shape {tuple(out.shape)}")
            self.num_classes = int(out.shape[1])
        return self.num_classes

    # -- sampling ----------------------------------------------------------------------------------
    def _noise(self, seg: _Segment, phase: str, seed: int, out: torch.Tensor) -> None:
        self._generator.manual_seed(chunk_seed(seed, seg.key, phase, seg.chunk))
        torch.randn(out.shape, generator=self._generator, out=out)

    def counts(
        self,
        inputs: torch.Tensor,
        keys: Sequence[str],
        sigma: float,
        num_samples: int | Sequence[int],
        seed: int,
        phase: str,
    ) -> np.ndarray:
        """Votes [inputs x classes] (int64) of f(x + e), e ~ N(0, sigma^2 I), num_samples per input.

        ``inputs`` are in [0, 1] pixel space; ``keys`` name the inputs (noise depends on them).
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if len(keys) != inputs.shape[0]:
            raise ValueError(f"keys: got {len(keys)} keys for {inputs.shape[0]} inputs")
        if len(set(keys)) != len(keys):
            raise ValueError("keys: must be unique within a call (noise is keyed by them)")
        if isinstance(num_samples, int):
            num_samples = [num_samples] * len(keys)
        if any(n < 0 for n in num_samples):
            raise ValueError("num_samples: must be >= 0")
        num_inputs, classes = len(keys), self.ensure_num_classes(inputs)
        if num_inputs == 0:
            return np.zeros((0, classes), dtype=np.int64)

        dev, dtype, bsz = self.device, self.dtype, self.options.batch_size
        x = inputs.to(dev, dtype)
        shape = tuple(inputs.shape[1:])
        buf = torch.empty((bsz, *shape), device=dev, dtype=dtype)
        owner = torch.empty(bsz, device=dev, dtype=torch.int64)
        ones = torch.ones(bsz, device=dev, dtype=torch.int64)
        votes = torch.zeros(num_inputs * classes, device=dev, dtype=torch.int64)
        scratch = torch.empty((NOISE_CHUNK, *shape), device=dev, dtype=dtype)
        pos = 0

        def flush() -> None:
            nonlocal pos
            batch = buf[:pos]
            if self.options.clamp:
                batch.clamp_(0.0, 1.0)
            pred = self.forward_classes(batch)
            votes.index_add_(0, owner[:pos] * classes + pred.to(torch.int64), ones[:pos])
            pos = 0

        for seg in _segments(keys, num_samples, phase):
            if pos + seg.size <= bsz:  # the whole chunk fits: draw it in place
                dest = buf[pos : pos + seg.size]
                self._noise(seg, phase, seed, dest)
                dest.mul_(sigma).add_(x[seg.slot])
                owner[pos : pos + seg.size].fill_(seg.slot)
                pos += seg.size
                if pos == bsz:
                    flush()
                continue
            # the chunk straddles batches: draw it whole, then split it
            noisy = scratch[: seg.size]
            self._noise(seg, phase, seed, noisy)
            noisy.mul_(sigma).add_(x[seg.slot])
            done = 0
            while done < seg.size:
                take = min(seg.size - done, bsz - pos)
                buf[pos : pos + take].copy_(noisy[done : done + take])
                owner[pos : pos + take].fill_(seg.slot)
                pos += take
                done += take
                if pos == bsz:
                    flush()
        if pos:
            flush()
        return votes.view(num_inputs, classes).cpu().numpy()
