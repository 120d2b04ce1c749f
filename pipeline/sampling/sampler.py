"""Vote counts (or sums of soft scores) of a base classifier under noise (any family of rscert.stats.families),
batched on one device.

Design (README.md, "Design in a page", is the record of the whole; this is the sampler's part):

* Noise for draw j of an input is a pure function of (seed, input id, phase, j): the counter-based
  generator of :mod:`rscert.sampling.noise` addresses every draw by its index. Which call, batch or device
  a draw is made in, which inputs share that batch, and their order never change the noise an
  input sees; a call may ask for any range of draws (``start``), so ``counts(n=300)`` equals
  ``counts(n=100) + counts(start=100, n=200)``. Within one input every draw is distinct by construction.
* The input x stays float32; the noise is drawn, scaled and added in float32 in [0, 1] pixel space
  (and clamped there if asked), as in Cohen et al. (2019). Reduced precision belongs to the base
  classifier: the noisy batch is cast to bf16/fp16 as the first step of the forward pass, which then
  runs under autocast. What is certified is the smoothed classifier of f∘cast at the float32 point x.
* ``noise="discrete-gaussian"`` (Voracek & Hein 2023; :mod:`rscert.stats.discrete_gaussian`): x must be
  an 8-bit image k/255 (a ValueError otherwise); the noise is the Gaussian rounded to the same grid,
  drawn exactly as integers m (:mod:`rscert.sampling.discrete_noise`), and f receives the float32 nearest
  the lattice point (k + m) / 255, computed from k + m alone: a fixed function of the lattice point.
* Samples of several inputs are packed into one forward batch, so n0 = 100 and the tail of n never
  leave the device half idle. Memory is one batch of inputs, whatever the number of samples.
* Votes accumulate on the device with ``index_add_`` at ``input * classes + class``; one device-to-host
  copy per call. That flat index is only right if every forward pass returns exactly one row of
  ``classes`` logits per noisy input, so the shape of every pass's output is checked (metadata, no
  device sync), and the row sums of every call's votes against the draws asked for: a model whose
  output width changes with its input's size or with the batch fails the call instead of having one
  input's votes counted for another (:func:`check_logits`, :func:`check_votes`).
* Soft votes (:meth:`Sampler.tally` with ``vote="soft"``): softmax(logits / T) in float32, clamped to
  [0, 1], and per input and class the float64 sums of the scores and of their squares: what the
  empirical Bernstein bound needs (:mod:`rscert.stats.bernstein`), two numbers per class whatever n is.
  Each draw's scores sum to 1, so the row sums are checked against the draws too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from rscert.constants import LATTICE_NOISE, NOISE, NOISE_VERSION
from rscert.models.load import ModelError
from rscert.sampling import discrete_noise
from rscert.sampling.draws import DRAWS
from rscert.sampling.noise import MAX_DRAWS, PHASES, draw_, stream
from rscert.stats import discrete_gaussian
from rscert.stats.pair import Tally, check_temperature, check_vote

__all__ = ["NOISE_VERSION", "PHASES", "Precision", "Sampler", "SamplerOptions", "check_logits", "check_votes",
           "default_device"]

Precision = Literal["fp32", "bf16", "fp16"]

_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SamplerOptions:
    """How the forward passes run. None of these changes the noise; precision changes the base
    classifier (f∘cast), never the noise or the point x."""

    batch_size: int = 400
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_noise: bool = False  # Gaussian noise's integer part as one compiled kernel: the same noise, bit for bit
    clamp: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: must be an integer >= 1, got {self.batch_size!r}")
        if self.precision not in _DTYPES:
            raise ValueError(f"precision: must be one of {sorted(_DTYPES)}, got {self.precision!r}")


@dataclass(frozen=True)
class _Segment:
    slot: int  # row of the counts matrix
    first: int  # first draw of the segment in the input's stream
    size: int


def _segments(starts: Sequence[int], num_samples: Sequence[int], batch_size: int) -> Iterator[_Segment]:
    """Runs of consecutive draws of one input, cut so that none straddles a forward batch."""
    pos = 0
    for slot, (first, n) in enumerate(zip(starts, num_samples, strict=True)):
        done = 0
        while done < n:
            take = min(n - done, batch_size - pos)
            yield _Segment(slot, first + done, take)
            done += take
            pos = (pos + take) % batch_size


def _per_input(value: int | Sequence[int], count: int, field: str) -> list[int]:
    values = [value] * count if isinstance(value, (int, np.integer)) else list(value)
    if len(values) != count:
        raise ValueError(f"{field}: got {len(values)} values for {count} inputs")
    for v in values:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{field}: must be integers >= 0, got {v!r}")
    return [int(v) for v in values]


def check_logits(logits: torch.Tensor, rows: int, classes: int | None, shape: tuple[int, ...]) -> None:
    """A forward pass must return [rows x classes] logits (``classes`` None: any width). Raises
    :class:`~rscert.models.load.ModelError` naming the width, the input shape and the class count."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(f"model: must return [batch x classes] logits, got {got} for a batch of {rows} inputs "
                         f"of shape {shape}")
    if classes is not None and logits.shape[1] != classes:
        raise ModelError(
            f"model: its output has {logits.shape[1]} classes for a batch of {rows} inputs of shape {shape}, not "
            f"the {classes} classes being counted: votes would be counted for another class or another input, "
            "so nothing is counted (the model's output width must not depend on the input's size or the batch)")


def check_votes(votes: np.ndarray, draws: Sequence[int]) -> None:
    """Row i of ``votes`` must add up to ``draws[i]``, the noisy samples drawn for input i (one vote
    each; soft votes: scores summing to 1 per draw, up to float rounding); anything else means votes
    landed in another input's row. Raises ValueError naming the input."""
    sums = np.asarray(votes).sum(axis=1)
    expected = np.asarray(draws)
    if np.asarray(votes).dtype.kind == "f":
        wrong = np.flatnonzero(np.abs(sums - expected) > 1e-4 * np.maximum(expected, 1))
    else:
        wrong = np.flatnonzero(sums != expected)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(f"votes: input {i} has {sums[i]:g} votes for {int(draws[i])} draws: votes of one input "
                         "were counted for another, so nothing is counted")


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
        noise: str = NOISE,
    ) -> None:
        if noise not in (NOISE, LATTICE_NOISE) and noise not in DRAWS:
            raise ValueError(f"noise: no draw for family {noise!r}; families: {NOISE}, {LATTICE_NOISE}, "
                             f"{', '.join(DRAWS)}")
        self.noise = noise  # the family every draw of this sampler comes from (rscert.stats.families)
        self.options = options or SamplerOptions()
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = _DTYPES[self.options.precision]  # of the forward pass only
        model = model.eval().to(self.device)
        if self.options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model: nn.Module = torch.compile(model) if self.options.compile else model
        self.num_classes = num_classes
        self._draw_ = draw_
        if self.options.compile_noise and noise == NOISE:  # the Gaussian's generator; other families draw eagerly
            from rscert.sampling.noise_compiled import draw_ as compiled_draw_  # torch.compile: only where asked

            self._draw_ = compiled_draw_

    # -- the forward pass --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.options.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def forward_logits(self, batch: torch.Tensor, classes: int | None = None) -> torch.Tensor:
        """f(cast(batch)) for a float32 batch already on the device (no host sync); the logits must be
        [batch x classes] (:func:`check_logits`; ``classes`` None: any width).

        The cast to the forward dtype is the first step of the base classifier: f∘cast is a fixed
        function of the float32 noisy input, and it is the classifier that is smoothed.
        """
        shape = tuple(batch.shape[1:])
        batch = batch.to(self.dtype)
        if self.options.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            logits = self.model(batch)
            check_logits(logits, batch.shape[0], classes, shape)
            return logits

    def forward_classes(self, batch: torch.Tensor, classes: int | None = None) -> torch.Tensor:
        """argmax of f(cast(batch)) (:meth:`forward_logits`)."""
        return self.forward_logits(batch, classes).argmax(dim=1)

    def forward_scores(self, batch: torch.Tensor, temperature: float, classes: int | None = None) -> torch.Tensor:
        """softmax(f(cast(batch)) / T) in float32, clamped to [0, 1]: the soft base classifier."""
        logits = self.forward_logits(batch, classes)
        with torch.inference_mode():
            return torch.softmax(logits.float() / temperature, dim=1).clamp_(0.0, 1.0)

    def ensure_num_classes(self, example: torch.Tensor) -> int:
        """The class count: as given, or read off one forward pass of ``example[:1]``."""
        if self.num_classes is None:
            with torch.inference_mode(), self._autocast():
                out = self.model(example[:1].to(self.device, torch.float32).to(self.dtype))
            check_logits(out, 1, None, tuple(example.shape[1:]))
            self.num_classes = int(out.shape[1])
        return self.num_classes

    # -- sampling ----------------------------------------------------------------------------------
    def counts(
        self,
        inputs: torch.Tensor,
        ids: Sequence[str],
        sigma: float,
        num_samples: int | Sequence[int],
        seed: int,
        phase: str,
        start: int | Sequence[int] = 0,
    ) -> np.ndarray:
        """Votes [inputs x classes] (int64) of f(cast(x + sigma e)), e in float32 of the sampler's noise
        family at unit variance per element (N(0, I) for the Gaussian).

        Input i gets draws ``start[i] .. start[i] + num_samples[i] - 1`` of its own noise stream,
        the stream of (seed, ids[i], phase) (:mod:`rscert.sampling.noise`); ``start`` and ``num_samples``
        are an int (the same for every input) or one value per input. Counts add up exactly however
        the draws are split across calls, batches, companions and order. ``inputs`` are in [0, 1]
        pixel space and are used in float32 whatever the precision; ``ids`` must be unique within
        a call (the worker passes the dataset index).
        """
        return self.tally(inputs, ids, sigma, num_samples, seed, phase, start).total

    def tally(
        self,
        inputs: torch.Tensor,
        ids: Sequence[str],
        sigma: float,
        num_samples: int | Sequence[int],
        seed: int,
        phase: str,
        start: int | Sequence[int] = 0,
        vote: str = "hard",
        temperature: float | None = None,
    ) -> Tally:
        """What the bounds need from the draws of :meth:`counts` (same noise, same draws).

        ``vote="hard"``: the vote counts. ``vote="soft"``: per input and class, the float64 sums of
        softmax(f(cast(x + sigma e)) / T)_c and of its square (T = ``temperature``, default 1). Either adds
        up across calls like the counts do (soft sums up to float64 summation order).
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        check_vote(vote)
        temperature = check_temperature(temperature, vote)
        num_inputs = inputs.shape[0]
        if len(ids) != num_inputs:
            raise ValueError(f"ids: got {len(ids)} ids for {num_inputs} inputs")
        if len(set(ids)) != len(ids):
            raise ValueError("ids: must be unique within a call (noise is keyed by them)")
        num_samples = _per_input(num_samples, num_inputs, "num_samples")
        starts = _per_input(start, num_inputs, "start")
        if any(s + n > MAX_DRAWS for s, n in zip(starts, num_samples, strict=True)):
            raise ValueError(f"start + num_samples: the noise stream of an input holds {MAX_DRAWS} draws")
        classes = self.ensure_num_classes(inputs)
        drawn = np.asarray(num_samples, dtype=np.int64)
        if num_inputs == 0:
            empty = np.zeros((0, classes), dtype=np.int64 if vote == "hard" else np.float64)
            return Tally(drawn, empty, None if vote == "hard" else empty.copy())

        dev, bsz = self.device, self.options.batch_size
        x = inputs.to(dev, torch.float32)
        keys = [stream(seed, str(i), phase) for i in ids]
        shape = tuple(inputs.shape[1:])
        buf = torch.empty((bsz, *shape), device=dev, dtype=torch.float32)
        owner = torch.empty(bsz, device=dev, dtype=torch.int64)
        lattice = _Lattice(x, sigma, bsz) if self.noise == LATTICE_NOISE else None
        ones = torch.ones(bsz, device=dev, dtype=torch.int64)
        if vote == "hard":
            votes = torch.zeros(num_inputs * classes, device=dev, dtype=torch.int64)

            def consume(batch: torch.Tensor, who: torch.Tensor, weights: torch.Tensor) -> None:
                self._vote(batch, who, weights, votes, classes)
        else:
            sums = torch.zeros((num_inputs, classes), device=dev, dtype=torch.float64)
            squares = torch.zeros((num_inputs, classes), device=dev, dtype=torch.float64)

            def consume(batch: torch.Tensor, who: torch.Tensor, weights: torch.Tensor) -> None:
                self._score(batch, who, weights, sums, squares, temperature, classes)
        pos = 0

        for seg in _segments(starts, num_samples, bsz):
            dest = buf[pos : pos + seg.size]
            if lattice is None:
                self._draw_(dest, keys[seg.slot], seg.first, self.noise)
                dest.mul_(sigma).add_(x[seg.slot])
            else:
                lattice.fill(dest, pos, keys[seg.slot], seg)
            owner[pos : pos + seg.size].fill_(seg.slot)
            pos += seg.size
            if pos == bsz:
                consume(buf[:pos], owner[:pos], lattice.weights(pos) if lattice else ones[:pos])
                pos = 0
        if pos:
            consume(buf[:pos], owner[:pos], lattice.weights(pos) if lattice else ones[:pos])
        if lattice is not None:  # draws whose prefix was ambiguous vote now, exact
            for slot, key, draw in lattice.deferred():
                consume(lattice.exact(key, draw, slot), torch.tensor([slot], device=dev), ones[:1])
        if vote == "hard":
            tally = Tally(drawn, votes.view(num_inputs, classes).cpu().numpy())
        else:
            tally = Tally(drawn, sums.cpu().numpy(), squares.cpu().numpy())
        check_votes(tally.total, num_samples)
        return tally

    def _vote(self, batch: torch.Tensor, owner: torch.Tensor, weights: torch.Tensor, votes: torch.Tensor,
              classes: int) -> None:
        if self.options.clamp:
            batch.clamp_(0.0, 1.0)  # in float32, before the cast (on the lattice: a function of k + m)
        pred = self.forward_classes(batch, classes)
        votes.index_add_(0, owner * classes + pred.to(torch.int64), weights)

    def _score(self, batch: torch.Tensor, owner: torch.Tensor, weights: torch.Tensor, sums: torch.Tensor,
               squares: torch.Tensor, temperature: float, classes: int) -> None:
        if self.options.clamp:
            batch.clamp_(0.0, 1.0)
        scores = self.forward_scores(batch, temperature, classes).to(torch.float64)
        scores.mul_(weights.to(torch.float64).unsqueeze(1))  # 0: a lattice draw deferred to its exact vote
        sums.index_add_(0, owner, scores)
        squares.index_add_(0, owner, scores * scores)


class _Lattice:
    """The discrete-gaussian path of :meth:`Sampler.counts`: the inputs' 8-bit levels k, the noisy inputs
    fl32((k + m) / 255) of exact atoms m (:func:`rscert.sampling.discrete_noise.noisy_`). A draw holding an
    ambiguous prefix (about 2^-50 per element) gets weight 0 in its batch and votes once made exact, after
    the call's batches (:meth:`deferred`, :meth:`exact`), so no device waits on the host in between."""

    def __init__(self, x: torch.Tensor, sigma: float, batch_size: int) -> None:
        self.levels = discrete_noise.lattice_levels(x)  # ValueError off the 8-bit grid
        self.table = discrete_gaussian.table(sigma, discrete_gaussian.PREFIX_BITS)
        self.flags = torch.zeros(batch_size, device=x.device, dtype=torch.bool)
        self.pending: list[tuple[torch.Tensor, int, tuple[int, int, int, int], int]] = []

    def fill(self, dest: torch.Tensor, pos: int, key: tuple[int, int, int, int], seg: _Segment) -> None:
        flags = discrete_noise.noisy_(dest, self.levels[seg.slot], key, seg.first, self.table)
        self.flags[pos : pos + seg.size] = flags
        self.pending.append((flags, seg.slot, key, seg.first))

    def weights(self, size: int) -> torch.Tensor:
        return (~self.flags[:size]).to(torch.int64)

    def deferred(self) -> Iterator[tuple[int, tuple[int, int, int, int], int]]:
        """(slot, key, draw) of every flagged draw of the call (one device-to-host copy)."""
        if not self.pending:
            return
        flags = torch.cat([f for f, *_ in self.pending]).cpu().numpy()
        at = 0
        for f, slot, key, first in self.pending:
            for row in np.flatnonzero(flags[at : at + f.numel()]):
                yield slot, key, first + int(row)
            at += f.numel()

    def exact(self, key: tuple[int, int, int, int], draw: int, slot: int) -> torch.Tensor:
        """The noisy input of one draw, every element exact (ambiguous prefixes resolved), as [1, ...]."""
        ints = discrete_noise.atoms(key, draw, 1, tuple(self.levels.shape[1:]), self.table, self.levels.device)
        denominator = torch.full((1,), float(discrete_gaussian.LEVELS), device=ints.device)  # IEEE division
        return (ints + self.levels[slot]).to(torch.float32).div_(denominator)
