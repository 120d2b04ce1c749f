"""The Philox4x32-10 words of :mod:`rscert.sampling.noise`, compiled by numba for the CPU.

:func:`philox_tile` computes, for a tile of counters (b, j, c2, c3), the same four 32-bit words as
:func:`rscert.sampling.noise.philox4x32`, bit for bit (tests/test_noise_cpu.py against the reference rounds
and the known answers): the rounds in uint64 arithmetic, where a 32 x 32 -> 64-bit product is one
uint64 multiply and (hi, lo) are its upper and lower words.

:func:`uniforms_tile`, the sampler's CPU path, goes one step further: from the words it forms the
float32 uniform u1 and angle θ of :func:`rscert.sampling.noise._uniforms_tile` (exact integer steps, correctly
rounded float32 conversions and one float32 product: the same floats on any IEEE machine). The
transcendental part of Box-Muller (ln, sqrt, cos, sin: :func:`rscert.sampling.noise._box_muller_tile`)
stays in torch, so that those are torch's own on every path: the float32 normals of the CPU fast
path are those of the torch-only path, bit for bit.

Every word depends only on (key, counter), never on the tile, the thread or the call.
The kernel is single-threaded and releases the GIL; :func:`rscert.sampling.noise.normal_` runs one
per thread. Compilation: ``cache=True`` keeps the machine code in ``__pycache__`` beside this file,
or, where the package folder is read-only, in numba's user-wide cache folder (or ``NUMBA_CACHE_DIR``):
only the first process pays the compile. Where neither can be written (a read-only install and a
read-only HOME), the kernels compile without a cache, in every process (:func:`cached_njit`).
"""

from __future__ import annotations

import numpy as np
from numba import float32, int64, njit, uint64

from rscert.sampling import philox
from rscert.sampling.philox import M0, M1, MASK32, ROUNDS


def round_keys(k0: int, k1: int) -> np.ndarray:
    """The round keys of (k0, k1) (:func:`rscert.sampling.philox.round_keys`), as a uint64 [10, 2] array."""
    return np.array(philox.round_keys(k0, k1), dtype=np.uint64)


def cached_njit(**options):  # noqa: ANN202 - a numba decorator
    """``njit(cache=True, **options)``, or without the cache where numba finds no folder it can write
    (it then raises "cannot cache function ...: no locator available" when the function is decorated)."""
    def decorate(fn):  # noqa: ANN001, ANN202
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as exc:
            if "no locator available" not in str(exc):
                raise
            return njit(cache=False, **options)(fn)

    return decorate


@njit(inline="always")
def _philox(c0, c1, c2, c3, keys):  # noqa: ANN001, ANN202 - numba scalars
    mask, m0, m1 = uint64(MASK32), uint64(M0), uint64(M1)
    for r in range(ROUNDS):
        p0 = m0 * c0
        p1 = m1 * c2
        hi0, hi1 = p0 >> uint64(32), p1 >> uint64(32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ keys[r, 0], p1 & mask, hi0 ^ c3 ^ keys[r, 1], p0 & mask
    return c0, c1, c2, c3


@cached_njit(fastmath=False, nogil=True)
def _words(w0, w1, w2, w3, b0, draw0, c2, c3, keys):  # noqa: ANN001, ANN202 - numba arrays and scalars
    rows, cols = w0.shape
    for i in range(rows):
        draw = uint64(draw0 + i)
        for j in range(cols):
            w0[i, j], w1[i, j], w2[i, j], w3[i, j] = _philox(uint64(b0 + j), draw, c2, c3, keys)


def philox_tile(words: list[np.ndarray], block0: int, draw0: int, c2: int, c3: int, keys: np.ndarray) -> None:
    """Philox4x32-10 words of blocks block0 .. block0+cols-1 of draws draw0 .. draw0+rows-1 into the
    four int64 [rows, cols] arrays ``words`` (w0, w1, w2, w3), under the round keys ``keys`` (from
    :func:`round_keys`) and upper counter words (c2, c3). Runs in the calling thread, without the GIL."""
    _words(*words, block0, draw0, np.uint64(c2), np.uint64(c3), keys)


_TWO_POW_M53 = np.float32(philox.TWO_POW_M53)
_THETA_STEP = np.float32(philox.THETA_STEP)  # c = fl32(2 pi 2^-24), as torch's float32 product uses it


@cached_njit(fastmath=False, nogil=True)
def _uniforms(u1, theta, b0, draw0, c2, c3, keys):  # noqa: ANN001, ANN202 - numba arrays and scalars
    rows, cols = u1.shape
    scale, step = _TWO_POW_M53, _THETA_STEP
    for i in range(rows):
        draw = uint64(draw0 + i)
        for j in range(cols):
            w0, w1, w2, _ = _philox(uint64(b0 + j), draw, c2, c3, keys)
            u1[i, j] = float32(int64(((w0 << uint64(21)) | (w1 >> uint64(11))) + uint64(1))) * scale  # < 2^54
            theta[i, j] = float32(int64(w2 >> uint64(8))) * step


def uniforms_tile(u1: np.ndarray, theta: np.ndarray, block0: int, draw0: int, c2: int, c3: int,
                  keys: np.ndarray) -> None:
    """The float32 u1 and θ of :func:`rscert.sampling.noise._uniforms_tile` for blocks block0 .. block0+cols-1
    of draws draw0 .. draw0+rows-1, into the float32 [rows, cols] arrays ``u1`` and ``theta``: the
    words of :func:`philox_tile`, the same exact integer steps, then the same correctly rounded float32
    conversions and product (IEEE round to nearest), so the same floats bit for bit
    (tests/test_noise_cpu.py). Runs in the calling thread, without the GIL."""
    _uniforms(u1, theta, block0, draw0, np.uint64(c2), np.uint64(c3), keys)


_TWO_POW_M24 = np.float32(philox.TWO_POW_M24)
_GRID_OFFSET = philox.GRID_OFFSET
LAPLACE = philox.LAPLACE_PAIRS


@cached_njit(fastmath=False, nogil=True)
def _pairs(v0, v1, kind, b0, draw0, c2, c3, keys):  # noqa: ANN001, ANN202 - numba arrays and scalars
    rows, cols = v0.shape
    for i in range(rows):
        draw = uint64(draw0 + i)
        for j in range(cols):
            w0, w1, w2, w3 = _philox(uint64(b0 + j), draw, c2, c3, keys)
            if kind == LAPLACE:  # signed 53-bit uniforms, the sign from bit 0 of the second word
                s0 = float32(1.0) - float32(2.0) * float32(int64(w1 & uint64(1)))
                s1 = float32(1.0) - float32(2.0) * float32(int64(w3 & uint64(1)))
                v0[i, j] = float32(int64(((w0 << uint64(21)) | (w1 >> uint64(11))) + uint64(1))) * _TWO_POW_M53 * s0
                v1[i, j] = float32(int64(((w2 << uint64(21)) | (w3 >> uint64(11))) + uint64(1))) * _TWO_POW_M53 * s1
            else:  # philox.UNIFORM_PAIRS: the 24-bit symmetric grid
                v0[i, j] = float32(int64(w0 >> uint64(8)) * 2 + _GRID_OFFSET) * _TWO_POW_M24
                v1[i, j] = float32(int64(w2 >> uint64(8)) * 2 + _GRID_OFFSET) * _TWO_POW_M24


def pairs_tile(v0: np.ndarray, v1: np.ndarray, kind: int, block0: int, draw0: int, c2: int, c3: int,
               keys: np.ndarray) -> None:
    """The two float32 values per block of the family ``kind`` (:mod:`rscert.sampling.draws`: its
    ``pairs`` rule) for blocks block0 .. block0+cols-1 of draws draw0 .. draw0+rows-1, into the float32
    [rows, cols] arrays ``v0`` and ``v1``: exact integer steps, one correctly rounded conversion and
    exact products, so the floats of the torch rule bit for bit (tests/test_noise_families.py)."""
    _pairs(v0, v1, kind, block0, draw0, np.uint64(c2), np.uint64(c3), keys)
