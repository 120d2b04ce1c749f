"""The noise of :mod:`rscert.sampling.noise` with its integer part compiled into one kernel (``torch.compile``).

The eager generator runs Philox4x32-10 as about a hundred separate int64 tensor operations per tile, each
a full pass over memory; on a GPU that is memory traffic, not arithmetic. Here the rounds and the
formation of the float32 uniform u1 and angle θ (:func:`rscert.sampling.noise._uniforms_tile`, module docstring
of :mod:`rscert.sampling.noise`) are one function, :func:`uniforms`, that ``torch.compile`` fuses into one
kernel (Triton on CUDA, C++ on CPU): it reads two index vectors and writes u1 and θ once. The rest of
Box-Muller (ln, sqrt, cos, sin) is :func:`rscert.sampling.noise._box_muller_tile`, the eager torch code, as on
the numba CPU path.

Why the normals are those of the eager path bit for bit, on the same device: the compiled part is
integer arithmetic on int64 (exact, whatever the order of evaluation), two int64 -> float32 conversions
(correctly rounded, round to nearest, in PTX/C++ as in eager torch) and one float32 product
fl32(⌊w2/2^8⌋ · c) with the float32 constant c passed as a float32 tensor (one IEEE product: nothing to
contract into a fused multiply-add, nothing to reassociate); u1 = fl32(integer) · 2^-53 is exact. The
transcendental functions are not compiled: they are eager torch's own. tests/test_noise.py checks the
equality on every device it runs on.

Shapes vary from call to call (the sampler's segments), so the function is compiled once with dynamic
shapes; keys and counters are tensors, so a new input or draw range recompiles nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from rscert.sampling.noise import _TILE_BLOCKS_DEFAULT, _box_muller_tile, draw_target, philox4x32
from rscert.sampling.philox import MASK32, THETA_STEP, TWO_POW_M53

_TILE_BLOCKS = _TILE_BLOCKS_DEFAULT  # blocks per tile (a module attribute, so tests can cut finer)
_COMPILED: Callable | None = None
_LOCK = threading.Lock()


def uniforms(blocks: torch.Tensor, draws: torch.Tensor, upper: torch.Tensor, key: torch.Tensor,
             step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (u1, θ) of shape [len(draws), len(blocks)] for counters (b, j, c2, c3), b in ``blocks``,
    j in ``draws`` (int64 vectors), (c2, c3) = ``upper`` and the Philox key (k0, k1) = ``key`` (int64
    [2] tensors), with c = ``step`` (a float32 scalar tensor, fl32(2π·2^-24)):
    u1 = fl32(w0·2^21 + ⌊w1/2^11⌋ + 1)·2^-53 and θ = fl32(⌊w2/2^8⌋ · c), (w0, w1, w2, w3) the
    Philox4x32-10 words of the counter (:func:`rscert.sampling.noise.philox4x32`, the same rounds)."""
    c0, c1 = blocks.unsqueeze(0), draws.unsqueeze(1)
    w0, w1, w2, _ = philox4x32(c0, c1, upper[0], upper[1], key[0], key[1])
    whole = ((w0 << 21) | (w1 >> 11)) + 1  # [1, 2^53]
    u1 = whole.to(torch.float32) * TWO_POW_M53  # rounded once to float32; the product by 2^-53 is exact
    theta = (w2 >> 8).to(torch.float32) * step  # an exact integer < 2^24, then one float32 product
    return u1, theta


def _compiled() -> Callable:
    global _COMPILED
    with _LOCK:
        if _COMPILED is None:
            _COMPILED = torch.compile(uniforms, dynamic=True, fullgraph=True)
    return _COMPILED


class _Floats:
    """The three float32 tiles :func:`rscert.sampling.noise._box_muller_tile` works in."""

    def __init__(self, u1: torch.Tensor, theta: torch.Tensor) -> None:
        self.floats = [u1, theta, torch.empty_like(u1)]


def draw_(out: torch.Tensor, key: tuple[int, int, int, int], start: int, family: str = "gaussian") -> torch.Tensor:
    """:func:`rscert.sampling.noise.draw_`'s signature for the Gaussian family (the only one compiled here)."""
    if family != "gaussian":
        raise ValueError(f"noise: the compiled generator draws Gaussian noise only, got {family!r}")
    return normal_(out, key, start)


def normal_(out: torch.Tensor, key: tuple[int, int, int, int], start: int) -> torch.Tensor:
    """:func:`rscert.sampling.noise.normal_` (same contract, same values bit for bit on one device), with u1
    and θ from the compiled :func:`uniforms`. Tiles of at most ``_TILE_BLOCKS`` (2^22) blocks bound the memory."""
    m, flat, elements = draw_target(out, start)
    if m == 0 or elements == 0:
        return out
    dev = out.device
    k0, k1, c2, c3 = key
    keyt = torch.tensor([k0 & MASK32, k1 & MASK32], dtype=torch.int64, device=dev)
    upper = torch.tensor([c2, c3], dtype=torch.int64, device=dev)
    step = torch.tensor(THETA_STEP, dtype=torch.float32, device=dev)  # c = fl32(2 pi 2^-24), as eager uses it
    blocks = (elements + 1) // 2
    cols = min(blocks, _TILE_BLOCKS)
    rows = min(m, max(1, _TILE_BLOCKS // cols))
    fn = _compiled()
    for b0 in range(0, blocks, cols):
        b1 = min(blocks, b0 + cols)
        index = torch.arange(b0, b1, dtype=torch.int64, device=dev)
        for r0 in range(0, m, rows):
            r1 = min(m, r0 + rows)
            draws = torch.arange(start + r0, start + r1, dtype=torch.int64, device=dev)
            u1, theta = fn(index, draws, upper, keyt, step)
            dest = flat[r0:r1, 2 * b0 : min(elements, 2 * b1)]
            _box_muller_tile(_Floats(u1, theta), dest[:, 0::2], dest[:, 1::2])
    return out
