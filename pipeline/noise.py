"""Counter-based Gaussian noise: draw j of an input is a pure function of (seed, id, phase, j).

Generator (``NOISE_VERSION``): Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011), written with torch integer ops so that CPU and CUDA run the same algorithm and
give the same bits.

* **Stream.** A 128-bit blake2b hash of (seed, id, phase) gives the 64-bit Philox key (k0, k1) and the
  upper 64 counter bits (c2, c3): one stream per (seed, id, phase).
* **Counter.** The lower 64 counter bits address one block of draw j: c0 = block b of the draw's
  elements, c1 = j. Block b of draw j gives elements 2b and 2b+1 of that draw (flattened, C order).
* **Gaussians.** Each 128-bit block (w0, w1, w2, w3) gives two independent N(0, 1) values by
  Box-Muller, computed in float64: u1 = (w0·2^21 + ⌊w1 / 2^11⌋ + 1)·2^-53 ∈ (0, 1] and
  u2 = (w2·2^21 + ⌊w3 / 2^11⌋)·2^-53 ∈ [0, 1) are 53-bit uniforms,
  r = sqrt(-2 ln u1), θ = 2π u2, and the pair is (r cos θ, r sin θ), rounded to float32.
  The radius reaches sqrt(2·53·ln 2) ≈ 8.6 (not the ≈ 5.8 of a 24-bit float32 uniform), so the tails
  are those of the normal law down to probabilities of order 2^-53.

Guarantees (by construction, not by chance):

* **Within one input** (one stream) no two draws, and no two blocks of one draw, share a counter;
  for a fixed key Philox is a bijection of the 128-bit counter, so every block of every draw is a
  distinct output of the permutation. Limits: fewer than 2^32 draws per (seed, id, phase) and fewer
  than 2^33 elements per draw (checked).
* **Across inputs, phases and seeds** streams differ unless two 128-bit blake2b hashes of distinct
  (seed, id, phase) texts collide (about 2^-128 per pair).
* **Reproducibility.** The noise of draw j never depends on which call, batch, device, worker or
  companion inputs produce it, nor on the tiling used here: every element is computed from its own
  counter.

Integer arithmetic stays within int64 without overflow: the 32 x 32 -> 64-bit products of a round
are computed from 16-bit limbs of the multiplier (each partial product < 2^48).
"""

from __future__ import annotations

import hashlib
import math

import torch

NOISE_VERSION = "philox4x32-10/box-muller-f64/v1"
"""Names the noise generator; part of a run's fingerprint. Changing the algorithm changes it."""

PHASES = ("selection", "estimation", "prediction")

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_ROUNDS = 10
MAX_DRAWS = 1 << 32
MAX_ELEMENTS = 1 << 33
_TWO_POW_M53 = 2.0**-53
_TILE_BLOCKS = {"cpu": 1 << 14}  # blocks per tile: CPU tiles stay in cache; other devices go larger
_TILE_BLOCKS_DEFAULT = 1 << 22


def stream(seed: int, ident: str, phase: str) -> tuple[int, int, int, int]:
    """(k0, k1, c2, c3): Philox key and upper counter words of the stream of (seed, id, phase).

    The four 32-bit words are the little-endian words of blake2b-128 of ``"{seed}\\x1f{id}\\x1f{phase}"``.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    text = f"{seed}\x1f{ident}\x1f{phase}".encode()
    digest = hashlib.blake2b(text, digest_size=16).digest()
    k0, k1, c2, c3 = (int.from_bytes(digest[4 * i : 4 * i + 4], "little") for i in range(4))
    return k0, k1, c2, c3


def _mulhilo(m: int, a):  # noqa: ANN001, ANN202 - a is an int64 tensor of 32-bit values or a Python int
    """(hi, lo) 32-bit words of m * a, without leaving int64: m is split into 16-bit limbs."""
    t1 = a * (m & 0xFFFF)  # < 2^48
    t2 = a * (m >> 16)  # < 2^48
    s = t1 + ((t2 & 0xFFFF) << 16)  # < 2^49
    return (t2 >> 16) + (s >> 32), s & _MASK32


def philox4x32(c0, c1, c2, c3, k0: int, k1: int):  # noqa: ANN001, ANN201
    """Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1); words are int64 tensors
    (broadcast against each other) holding values in [0, 2^32), or Python ints."""
    for r in range(_ROUNDS):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _gaussian_pairs(words, device_type: str) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Box-Muller in float64 from one Philox block per pair (53-bit uniforms)."""
    w0, w1, w2, w3 = words
    u1 = ((w0 << 21) | (w1 >> 11)).add_(1).to(torch.float64).mul_(_TWO_POW_M53)  # (0, 1]
    theta = ((w2 << 21) | (w3 >> 11)).to(torch.float64).mul_(2 * math.pi * _TWO_POW_M53)  # [0, 2 pi)
    radius = u1.log_().mul_(-2.0).sqrt_()
    return radius * torch.cos(theta), radius.mul_(torch.sin(theta))


def normal_(out: torch.Tensor, key: tuple[int, int, int, int], start: int) -> torch.Tensor:
    """Fill ``out`` (shape [m, ...], float32) with draws start .. start+m-1 of the stream ``key``.

    Row i of ``out`` receives draw start + i: its elements (flattened) are i.i.d. N(0, 1).
    """
    if out.dtype != torch.float32:
        raise ValueError(f"out: must be float32, got {out.dtype}")
    m = out.shape[0]
    flat = out.view(m, -1)
    elements = flat.shape[1]
    if start < 0 or start + m > MAX_DRAWS:
        raise ValueError(f"draws {start}..{start + m - 1} leave the stream's range [0, 2^32)")
    if elements >= MAX_ELEMENTS:
        raise ValueError(f"an input of {elements} elements exceeds the generator's 2^33 - 2")
    if m == 0 or elements == 0:
        return out
    k0, k1, c2, c3 = key
    dev = out.device
    blocks = (elements + 1) // 2
    tile = _TILE_BLOCKS.get(dev.type, _TILE_BLOCKS_DEFAULT)
    cols = min(blocks, tile)
    rows = max(1, tile // cols)
    for b0 in range(0, blocks, cols):
        b1 = min(blocks, b0 + cols)
        c0 = torch.arange(b0, b1, device=dev, dtype=torch.int64).unsqueeze(0)
        for r0 in range(0, m, rows):
            r1 = min(m, r0 + rows)
            c1 = torch.arange(start + r0, start + r1, device=dev, dtype=torch.int64).unsqueeze(1)
            words = philox4x32(c0, c1, c2, c3, k0, k1)
            words = [w.expand(r1 - r0, b1 - b0) for w in words]
            z0, z1 = _gaussian_pairs(words, dev.type)
            e0, e1 = 2 * b0, min(elements, 2 * b1)
            dest = flat[r0:r1, e0:e1]
            if e1 - e0 == 2 * (b1 - b0):
                pairs = dest.view(r1 - r0, b1 - b0, 2)
                pairs[..., 0].copy_(z0)
                pairs[..., 1].copy_(z1)
            else:  # odd element count: the last block's second value is unused
                dest[:, 0::2].copy_(z0)
                dest[:, 1::2].copy_(z1[:, : (e1 - e0) // 2])
    return out


def normal(key: tuple[int, int, int, int], start: int, count: int, shape: tuple[int, ...],
           device: torch.device | str = "cpu") -> torch.Tensor:
    """Draws start .. start+count-1 of the stream ``key`` as a new float32 tensor [count, *shape]."""
    out = torch.empty((count, *shape), dtype=torch.float32, device=device)
    return normal_(out, key, start)
