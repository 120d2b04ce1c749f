"""Eq. 4 of :mod:`rscert.stats.discrete_gaussian` on the CPU, compiled by numba: Philox words to atoms.

For each element of each draw, the ``bits``-bit prefix of U is read from the Philox4x32-10 block of
:mod:`rscert.sampling.noise`'s counter layout (block b of draw j is counter (b, j, c2, c3); element
2b takes words (w0, w1), element 2b + 1 words (w2, w3), high word first), and the atom is
i_lo + #{F_i < P}, found from the guide table in a step or two. The same atoms and ambiguity flags as
the numpy reference :func:`rscert.stats.discrete_gaussian.lookup` and the torch path of
:mod:`rscert.sampling.discrete_noise`, bit for bit (tests/test_discrete_noise.py).
Single-threaded, releases the GIL; cached as :func:`rscert.sampling.noise_cpu.cached_njit` caches.
"""

from __future__ import annotations

import numpy as np
from numba import float32, int32, int64, njit, uint64

from rscert.sampling.noise_cpu import _philox, cached_njit


@njit(inline="always")
def _prefixes(pre, draw, c2, c3, keys, drop):  # noqa: ANN001, ANN202 - numba arrays and scalars
    for b in range(pre.shape[0] // 2):  # branch-free: the compiler vectorizes the rounds
        w0, w1, w2, w3 = _philox(uint64(b), draw, c2, c3, keys)
        pre[2 * b] = int64(((w0 << uint64(32)) | w1) >> drop)
        pre[2 * b + 1] = int64(((w2 << uint64(32)) | w3) >> drop)


@njit(inline="always")
def _find(p, thresholds, guide, guide_shift):  # noqa: ANN001, ANN202 - numba scalars and arrays
    """#{F_i < p}: the first threshold index at or above p, from its guide bucket."""
    size = thresholds.shape[0]
    j = int64(guide[p >> guide_shift])
    while j < size and thresholds[j] < p:
        j += 1
    return j


@njit(inline="always")
def _ambiguous(p, j, thresholds, top):  # noqa: ANN001, ANN202 - numba scalars and arrays
    return p == 0 or p == top or (j < thresholds.shape[0] and thresholds[j] == p)


@cached_njit(fastmath=False, nogil=True)
def _atoms(out, flags, draw0, c2, c3, keys, thresholds, guide, i_lo, bits, guide_shift):  # noqa: ANN001, ANN202
    rows, cols = out.shape
    pre = np.empty(2 * ((cols + 1) // 2), dtype=np.int64)
    top = (int64(1) << int64(bits)) - 1
    for i in range(rows):
        _prefixes(pre, uint64(draw0 + i), c2, c3, keys, uint64(64 - bits))
        flag = False
        for e in range(cols):
            j = _find(pre[e], thresholds, guide, guide_shift)
            out[i, e] = int32(i_lo + j)
            flag |= _ambiguous(pre[e], j, thresholds, top)
        flags[i] = flag


@cached_njit(fastmath=False, nogil=True)
def _noisy(out, flags, levels, draw0, c2, c3, keys, thresholds, guide, i_lo, bits, guide_shift):  # noqa: ANN001, ANN202
    rows, cols = out.shape
    pre = np.empty(2 * ((cols + 1) // 2), dtype=np.int64)
    top = (int64(1) << int64(bits)) - 1
    denominator = float32(255.0)
    for i in range(rows):
        _prefixes(pre, uint64(draw0 + i), c2, c3, keys, uint64(64 - bits))
        flag = False
        for e in range(cols):
            j = _find(pre[e], thresholds, guide, guide_shift)
            out[i, e] = float32(levels[e] + i_lo + j) / denominator  # IEEE division: the float32 nearest n/255
            flag |= _ambiguous(pre[e], j, thresholds, top)
        flags[i] = flag


def atoms_rows(out: np.ndarray, flags: np.ndarray, draw0: int, c2: int, c3: int, keys: np.ndarray,
               thresholds: np.ndarray, guide: np.ndarray, i_lo: int, bits: int, guide_bits: int) -> None:
    """Atoms of draws draw0 .. draw0 + rows - 1 (every element) into the int32 [rows, elements] array
    ``out``, and into the bool [rows] array ``flags`` whether a row holds an ambiguous prefix (its
    atoms there are candidates only). ``keys``: :func:`rscert.sampling.noise_cpu.round_keys`."""
    _atoms(out, flags, draw0, np.uint64(c2), np.uint64(c3), keys, thresholds, guide, i_lo, bits, bits - guide_bits)


def noisy_rows(out: np.ndarray, flags: np.ndarray, levels: np.ndarray, draw0: int, c2: int, c3: int,
               keys: np.ndarray, thresholds: np.ndarray, guide: np.ndarray, i_lo: int, bits: int,
               guide_bits: int) -> None:
    """As :func:`atoms_rows`, but writes the noisy inputs fl32((k + m) / 255) into the float32 [rows, elements]
    array ``out``, k being the int32 [elements] ``levels`` of the input (the sampler's CPU path, fused)."""
    _noisy(out, flags, levels, draw0, np.uint64(c2), np.uint64(c3), keys, thresholds, guide, i_lo, bits,
           bits - guide_bits)
