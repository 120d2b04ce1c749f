"""The rounded Gaussian on the 8-bit lattice, its exact inverse-CDF sampler, and what it certifies.

numpy, scipy and mpmath only (no torch). The noise mode ``discrete-gaussian`` of rscert follows
Voracek & Hein, "Sound randomized smoothing in floating-point arithmetics" (ICLR 2023): inputs are
8-bit images, pixel k/255 with k an integer, and the noise is a Gaussian *rounded to the same grid*,
so that every noisy input is an exact lattice point n/255 and the base classifier sees a fixed
function of the integer vector n, whatever floating-point format carries it.

**The law** (eq. 1). In units of 1/255 (``LEVELS``), the noise of one coordinate is m = round(255 e),
e ~ N(0, sigma^2): for every integer m,

    P(m) = b_m - b_{m-1},   b_i = Phi((i + 1/2) / (255 sigma)),

b_i being the boundary between atoms i and i + 1 (a tie at a boundary has probability 0).

**The certificate** (eq. 2, the rounding argument of Voracek & Hein). For an integer vector k and any
base classifier h on integer vectors (rscert's h(n) = f(fl32(n / 255)), any cast included), let
F(z) = h(round(255 z)) on R^d. Since k + round(255 e) = round(255 (k/255 + e)) exactly,

    P_{m ~ P^d}[h(k + m) = c] = P_{e ~ N(0, sigma^2 I)}[F(k/255 + e) = c]   for every class c.

So the smoothed classifier g of h under eq. 1, at the lattice point k/255, *is* Cohen et al.'s smoothed
classifier G_F of the fixed function F at k/255, and their Theorem 1 applies to F unchanged: if
P[h(k + m) = cA] >= pA_lower > 1/2, then G_F(z) = cA for every real z with ||z - k/255||_2 < R,

    R = sigma * Phi^-1(pA_lower)                                                        (eq. 3)

(:func:`radius`), in particular g(k'/255) = cA for every 8-bit image k'/255 within R. The runner-up
form R = sigma/2 (Phi^-1(pA_lower) - Phi^-1(pB_upper)) carries over the same way (it is Theorem 1 for
F). No assumption on f is needed beyond its being a fixed function: the noise is exactly eq. 1 (below),
and the floating-point value f receives depends on the lattice point n alone, not on how k and m were
represented. The certificate speaks of 8-bit images (the lattice) and of G_F off it.

**The exact sampler** (eq. 4). With U uniform on [0, 1), the atom m(U) = min{i : U < b_i} has law
eq. 1 exactly (P[m(U) = i] = b_i - b_{i-1}). U is read as a binary expansion: a ``bits``-bit prefix P
(the first ``bits`` bits of two Philox words), then, only when needed, 64-bit extensions.
With F_i = floor(2^bits b_i) (computed in ``PRECISION``-bit arithmetic and checked to lie at least
2^-32 from an integer, so the floor is certain), U's interval [P, P + 1) 2^-bits contains no boundary
unless P = F_i for some i, or P = 0 or P = 2^bits - 1 (the two ends hold the infinitely many tail
boundaries); otherwise

    m(U) = i_lo + #{i : F_i < P},   i_lo = min{i : F_i >= 1}.

The rare remaining prefixes (probability about (number of F_i + 2) 2^-bits per coordinate, 2^-50 at
the default 63 bits) are *ambiguous*: :func:`resolve` reads further 64-bit words of U and compares
against the boundaries computed at the matching precision until the interval holds none, so the
sampled law is eq. 1 exactly, not an approximation of it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import mpmath
import numpy as np
from numpy.typing import ArrayLike, NDArray

from rscert.stats.smoothing import check_sigma, gaussian_radius

LEVELS = 255
"""8-bit images: pixel values k / LEVELS, k = 0 .. LEVELS; the noise lives on the same grid."""
PREFIX_BITS = 63
"""Bits of U read for every coordinate (the high 31 of one Philox word and the 32 of another: int64-safe)."""
PRECISION = 192
"""Working precision (bits) of mpmath for the thresholds F_i."""
GUIDE_BITS = 12
"""The guide table indexes the top GUIDE_BITS bits of the prefix (Chen & Asau's indexed search)."""
MAX_EXTENSIONS = 16
"""Extensions of 64 bits before giving up: U would lie within 2^-(63 + 1024) of a boundary."""
_FLOOR_GUARD = mpmath.mpf(2) ** -32


def radius(p_lower: ArrayLike, sigma: float) -> NDArray[np.float64]:
    """Certified L2 radius of the discrete-Gaussian smoothed classifier: eq. 3, sigma * Phi^-1(pA_lower).

    Guarantee (module docstring, eq. 2 and 3): if pA_lower <= P_{m ~ eq. 1}[h(k + m) = cA] and
    pA_lower > 1/2, then G_F(z) = cA for every ||z - k/255||_2 < radius, in particular on every
    8-bit image within it. The formula is Cohen et al.'s (Theorem 1) for F = h∘round(255 ·), so it is
    :func:`rscert.stats.smoothing.gaussian_radius` itself (0 where pA_lower < 1/2).
    """
    return gaussian_radius(p_lower, sigma)


def boundary(i: int, sigma: float, prec: int = PRECISION) -> mpmath.mpf:
    """b_i = Phi((i + 1/2) / (255 sigma)) in ``prec``-bit arithmetic (eq. 1)."""
    with mpmath.workprec(prec):
        x = (mpmath.mpf(2 * i + 1) / 2) / (LEVELS * mpmath.mpf(sigma))
        return mpmath.ncdf(x)


def atom_probability(m: int, sigma: float, prec: int = PRECISION) -> mpmath.mpf:
    """P(m) = b_m - b_{m-1} (eq. 1), the exact probability of noise m/255, in ``prec``-bit arithmetic."""
    with mpmath.workprec(prec):
        return boundary(m, sigma, prec) - boundary(m - 1, sigma, prec)


def _scaled_floor(i: int, sigma: float, bits: int, prec: int) -> int:
    """floor(2^bits b_i), checked to be certain: 2^bits b_i lies at least 2^-32 from every integer in
    [1, 2^bits - 1] (0 < b_i < 1 makes the floor certain near 0 and near 2^bits)."""
    with mpmath.workprec(prec):
        v = mpmath.ldexp(boundary(i, sigma, prec), bits)
        f = int(mpmath.floor(v))
        nearest = int(mpmath.nint(v))
        if 1 <= nearest < 1 << bits and abs(v - nearest) < _FLOOR_GUARD:
            raise ArithmeticError(f"boundary {i} at sigma={sigma!r} lies within 2^-32 of a multiple of 2^-{bits}")
        return f


@dataclass(frozen=True)
class Table:
    """The thresholds of eq. 4 for one sigma: F_i = floor(2^bits b_i) for i = i_lo .. i_lo + len - 1.

    ``thresholds`` holds exactly the F_i in [1, 2^bits - 2] (int64, non-decreasing); ``guide[t]`` is the
    first index j with F_j >= t 2^(bits - GUIDE_BITS), so a prefix's count #{F_i < P} is found from
    guide[P >> (bits - GUIDE_BITS)] in a step or two on average.
    """

    sigma: float
    bits: int
    i_lo: int
    thresholds: NDArray[np.int64]
    guide: NDArray[np.int32]

    @property
    def top(self) -> int:
        """The largest prefix, 2^bits - 1 (ambiguous, like 0)."""
        return (1 << self.bits) - 1


@functools.lru_cache(maxsize=16)
def table(sigma: float, bits: int = PREFIX_BITS) -> Table:
    """The thresholds of eq. 4 for ``sigma`` at a ``bits``-bit prefix (16 <= bits <= 63), computed once
    per process and sigma (about 0.3 s at sigma = 1: 2 * 9.3 * 255 sigma boundaries)."""
    sigma = check_sigma(sigma)
    if not 16 <= bits <= 63:
        raise ValueError(f"bits: must lie in [16, 63], got {bits!r}")
    prec = max(PRECISION, bits + 128)
    top = (1 << bits) - 1
    # the first boundary whose floor reaches 1: start below Phi^-1(2^-bits) and walk up
    start = int(mpmath.floor(LEVELS * sigma * mpmath.sqrt(2) * -mpmath.sqrt(bits * mpmath.log(2)))) - 2
    while _scaled_floor(start, sigma, bits, prec) >= 1:
        start -= LEVELS
    i = start
    while _scaled_floor(i, sigma, bits, prec) < 1:
        i += 1
    i_lo, values = i, []
    while True:
        f = _scaled_floor(i, sigma, bits, prec)
        if f > top - 1:
            break
        values.append(f)
        i += 1
    thresholds = np.asarray(values, dtype=np.int64)
    shift = bits - GUIDE_BITS
    starts = np.arange(1 << GUIDE_BITS, dtype=np.int64) << shift
    guide = np.searchsorted(thresholds, starts, side="left").astype(np.int32)
    return Table(sigma=sigma, bits=bits, i_lo=i_lo, thresholds=thresholds, guide=guide)


def lookup(tab: Table, prefixes: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Eq. 4 for an array of prefixes (numpy reference of the compiled and torch paths): the atoms
    i_lo + #{F_i < P} and whether each prefix is ambiguous (then the atom is only a candidate)."""
    p = np.asarray(prefixes, dtype=np.int64)
    j = np.searchsorted(tab.thresholds, p, side="left")
    hit = np.zeros(p.shape, dtype=bool)
    inside = j < tab.thresholds.size
    hit[inside] = tab.thresholds[j[inside]] == p[inside]
    ambiguous = hit | (p == 0) | (p == tab.top)
    return (tab.i_lo + j).astype(np.int64), ambiguous


def resolve(tab: Table, prefix: int, extension: Iterator[int]) -> int:
    """The atom m(U) of eq. 4 for U = (prefix + 0.w1 w2 ...) 2^-bits, reading 64-bit words w1, w2, ...
    of ``extension`` only until U's interval holds no boundary.

    At level q (q words read) U lies in [A, A + 1) 2^-(bits + 64 q) with A the integer of the prefix
    and the words. With v_i = 2^(bits + 64 q) b_i (computed at that precision plus 128 bits and used
    with a margin of 2^-32): if v_{m-1} < A and v_m > A + 1 for m = min{i : v_i > A + 1}, every b_i
    with i < m lies below U and every other above it, so m(U) = m exactly. Otherwise read a word.
    """
    if not 0 <= prefix <= tab.top:
        raise ValueError(f"prefix {prefix} is not a {tab.bits}-bit integer")
    a, bits, size = int(prefix), tab.bits, tab.thresholds.size
    # bracket m(U) from the table: boundaries with F_i < P lie below U, those with F_i > P above it
    # (F_i is 2^-32 from an integer); at the ends, the tails hold every boundary down to U >= 2^-(bits + 1024)
    span = int(LEVELS * tab.sigma * 40) + 2
    if a == 0:
        first, last = -span, tab.i_lo
    elif a == tab.top:
        first, last = tab.i_lo + size - 1, span
    else:
        first = tab.i_lo + int(np.searchsorted(tab.thresholds, a, side="left")) - 1
        last = tab.i_lo + int(np.searchsorted(tab.thresholds, a, side="right"))
    for q in range(MAX_EXTENSIONS + 1):
        if q:
            a = (a << 64) | (next(extension) & 0xFFFFFFFFFFFFFFFF)
        total = bits + 64 * q
        prec = total + 128
        with mpmath.workprec(prec):
            target = mpmath.mpf(a + 1) + _FLOOR_GUARD

            def above(i: int, total: int = total, prec: int = prec, target: mpmath.mpf = target) -> bool:
                return mpmath.ldexp(boundary(i, tab.sigma, prec), total) > target

            lo, hi = first, last  # above(lo) is False and above(hi) True at every level
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if above(mid):
                    hi = mid
                else:
                    lo = mid
            below = mpmath.ldexp(boundary(hi - 1, tab.sigma, prec), total)
            if below < a - _FLOOR_GUARD:
                return hi
    raise ArithmeticError(f"U lies within 2^-{bits + 64 * MAX_EXTENSIONS} of a boundary (probability ~0)")
