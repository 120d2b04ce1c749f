"""The rounded Gaussian of rscert.stats.discrete_gaussian: thresholds, the exact inverse-CDF rule and the
certificate, each against an independent computation (scipy, exact Neyman-Pearson over the lattice)."""

from __future__ import annotations

import math
import random

import mpmath
import numpy as np
import pytest
from scipy.stats import binomtest, norm

from rscert.stats import discrete_gaussian as dg
from rscert.stats.smoothing import gaussian_radius


def _atom_probs_scipy(sigma: float, half_width: int) -> tuple[np.ndarray, np.ndarray]:
    """P(m) for m in [-half_width, half_width] from scipy's double-precision Phi (independent of mpmath)."""
    m = np.arange(-half_width, half_width + 1)
    s = dg.LEVELS * sigma
    upper, lower = (m + 0.5) / s, (m - 0.5) / s
    # the smaller tail difference of the two, for accuracy in both tails
    probs = np.where(m <= 0, norm.cdf(upper) - norm.cdf(lower), norm.sf(lower) - norm.sf(upper))
    return m, probs


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_thresholds_match_scipy_and_cover_the_table(sigma: float) -> None:
    tab = dg.table(sigma)
    scale = 2.0**tab.bits
    i = tab.i_lo + np.arange(tab.thresholds.size)
    x = (i + 0.5) / (dg.LEVELS * sigma)
    # F_i / 2^bits against scipy's Phi: within double precision (absolute, and relative in the lower tail)
    ref = norm.cdf(x)
    got = tab.thresholds.astype(np.float64) / scale
    assert np.all(np.abs(got - ref) <= 4e-16 + 1e-12 * ref)
    assert np.all(np.diff(tab.thresholds) >= 0)
    # exactly the boundaries whose floor lies in [1, 2^bits - 2]: the neighbours fall outside
    assert dg._scaled_floor(tab.i_lo - 1, sigma, tab.bits, dg.PRECISION) == 0
    last = tab.i_lo + tab.thresholds.size
    assert dg._scaled_floor(last, sigma, tab.bits, dg.PRECISION) == tab.top
    # symmetry of the Gaussian: b_{-i-1} = 1 - b_i, so F_{-i-1} = 2^bits - 1 - F_i
    np.testing.assert_array_equal(tab.thresholds[::-1], tab.top - tab.thresholds)


@pytest.mark.parametrize("sigma", [0.001, 0.01, 4.0])
def test_tables_build_at_extreme_sigmas(sigma: float) -> None:
    tab = dg.table(sigma)
    assert tab.thresholds.size >= 2
    atom, amb = dg.lookup(tab, np.array([tab.top // 2 + 12345]))
    assert atom[0] == 0 and not amb[0]


def test_guide_table_indexes_the_first_threshold_of_each_bucket() -> None:
    tab = dg.table(0.5)
    shift = tab.bits - dg.GUIDE_BITS
    for t in [0, 1, 100, 2047, 2048, 3000, 4095]:
        j = tab.guide[t]
        assert j == tab.thresholds.size or tab.thresholds[j] >= t << shift
        assert j == 0 or tab.thresholds[j - 1] < t << shift


def _oracle_atom(u: float, sigma: float) -> int:
    """The atom of U by scipy: round(255 sigma Phi^-1(U)) (eq. 1: m = round(255 e), e = sigma Phi^-1(U))."""
    return int(np.rint(dg.LEVELS * sigma * norm.ppf(u)))


@pytest.mark.parametrize("bits", [16, 63])
def test_lookup_and_resolve_give_the_atom_of_u(bits: int) -> None:
    """m(U) from the prefix (and, when ambiguous, the extension words) is the rounded Gaussian quantile of U,
    for U spread over the body and both tails."""
    sigma = 0.25
    tab = dg.table(sigma, bits)
    rng = random.Random(1)
    checked = ambiguous_seen = 0
    for k in range(1500):
        depth = rng.choice([1, 1, 1, 4, 12, 30, 50])  # U near 0 or 1 at times, to reach the tails
        u_bits = [rng.getrandbits(64) for _ in range(3)]
        whole = (u_bits[0] << 128 | u_bits[1] << 64 | u_bits[2]) >> depth  # a 192-bit U, shrunk towards 0
        if k % 2:
            whole = (1 << 192) - 1 - whole  # ... or towards 1
        prefix = whole >> (192 - bits)
        rest_bits = 192 - bits
        pad = -rest_bits % 64
        padded = (whole & ((1 << rest_bits) - 1)) << pad  # U's bits after the prefix, in whole 64-bit words
        count = (rest_bits + pad) // 64
        words = iter([(padded >> (64 * (count - 1 - t))) & (2**64 - 1) for t in range(count)] + [0] * 8)
        atom, amb = dg.lookup(tab, np.array([prefix]))
        got = dg.resolve(tab, prefix, words) if amb[0] else int(atom[0])
        ambiguous_seen += bool(amb[0])
        with mpmath.workprec(256):
            u = mpmath.mpf(whole) / mpmath.mpf(2) ** 192
            e = mpmath.sqrt(2) * mpmath.erfinv(2 * u - 1) * sigma
            exact = dg.LEVELS * e
        if abs(exact - mpmath.nint(exact)) > 0.5 - 1e-9:
            continue  # U within 1e-9 of a boundary: no oracle can tell
        assert got == int(mpmath.nint(exact)), (k, prefix)
        if 1e-300 < float(u) < 1 - 1e-15:
            assert got == _oracle_atom(float(u), sigma)
        checked += 1
    assert checked > 1450
    assert ambiguous_seen > (10 if bits == 16 else -1)  # the 16-bit table exercises resolution


def test_resolution_of_an_ambiguous_prefix_splits_at_the_boundary() -> None:
    """For prefix P = F_i the atom is i when U < b_i, else i + 1 (or further): over random extensions, the
    share of atom <= i is 2^bits b_i - P (binomial test)."""
    sigma, bits = 0.25, 16
    tab = dg.table(sigma, bits)
    j = int(np.flatnonzero(tab.thresholds > tab.top // 3)[0])
    prefix, i = int(tab.thresholds[j]), tab.i_lo + j
    with mpmath.workprec(256):
        share = float(mpmath.ldexp(dg.boundary(i, sigma, 256), bits) - prefix)
    rng = random.Random(7)
    trials = 2000
    below = sum(dg.resolve(tab, prefix, iter([rng.getrandbits(64) for _ in range(4)])) <= i for _ in range(trials))
    assert binomtest(below, trials, share).pvalue > 1e-4


def test_ambiguous_ends_resolve_into_the_far_tails() -> None:
    tab = dg.table(0.25)
    low = dg.resolve(tab, 0, iter([0, 1 << 63, 0]))  # U in [2^-128, 2^-128 + 2^-191): far below the table
    high = dg.resolve(tab, tab.top, iter([2**64 - 1, 1 << 63, 0]))  # U in [1 - 2^-128, ...): its mirror
    assert low < tab.i_lo and high > tab.i_lo + tab.thresholds.size
    assert low == -high


def test_atom_probabilities_match_scipy() -> None:
    sigma = 0.05
    m, probs = _atom_probs_scipy(sigma, 120)
    exact = np.array([float(dg.atom_probability(int(k), sigma)) for k in m])
    np.testing.assert_allclose(exact, probs, rtol=1e-9, atol=1e-300)
    assert math.isclose(sum(exact), 1.0, abs_tol=1e-12)


def _np_min(p_a: float, p: np.ndarray, q: np.ndarray) -> float:
    """Neyman-Pearson: the least Q[A] over (randomised) sets A with P[A] >= p_a, given the atoms' masses
    P (at x) and Q (at x'): fill A with atoms of smallest Q/P first, the last one fractionally."""
    keep = p > 0
    ratio = np.where(keep, q / np.where(keep, p, 1.0), np.inf)
    order = np.argsort(ratio, kind="stable")
    cp, cq = np.cumsum(p[order]), np.cumsum(q[order])
    k = int(np.searchsorted(cp, p_a))
    prev_p = cp[k - 1] if k else 0.0
    prev_q = cq[k - 1] if k else 0.0
    frac = (p_a - prev_p) / p[order][k]
    return float(prev_q + frac * q[order][k])


@pytest.mark.parametrize("p_a", [0.6, 0.8, 0.95, 0.999])
def test_radius_holds_against_exact_neyman_pearson_in_one_and_two_dimensions(p_a: float) -> None:
    """Eq. 3 against an oracle that knows nothing of the rounding argument: for every lattice shift delta with
    ||delta|| < radius, every classifier with P_x[A] >= pA has P_x'[A] > 1/2 (the worst one is Neyman-Pearson's
    over the discrete law), and P_x'[A] is at least the continuous bound Phi(Phi^-1(pA) - ||delta|| / sigma)."""
    sigma = 0.05
    half = 130  # 10 sigma in lattice units
    m, probs = _atom_probs_scipy(sigma, half)
    r = float(dg.radius(p_a, sigma))
    assert r == float(gaussian_radius(p_a, sigma))
    reach = int(math.floor(r * dg.LEVELS))
    # one dimension: every integer shift within the radius
    for s in range(1, reach + 1):
        if s / dg.LEVELS >= r:
            continue
        q = np.concatenate([np.zeros(s), probs[:-s]])  # law of x' + m seen from x: P(m - s)
        worst = _np_min(p_a, probs, q)
        assert worst > 0.5, (s, worst)
        assert worst >= norm.cdf(norm.ppf(p_a) - s / dg.LEVELS / sigma) - 1e-9
    # tight up to the lattice: the first shift beyond r + 1/255 is not certified by the discrete law either
    s = reach + 2
    q = np.concatenate([np.zeros(s), probs[:-s]])
    assert _np_min(p_a, probs, q) < 0.5
    # two dimensions: product law on a (2 half + 1)^2 grid, shifts along and across the axes
    p2 = np.outer(probs, probs).ravel()
    for s1, s2 in [(reach // 2, reach // 2), (reach // 3, 2 * reach // 3), (1, reach - 1), (reach // 4, 0)]:
        if math.hypot(s1, s2) / dg.LEVELS >= r or (s1, s2) == (0, 0):
            continue
        q1 = np.concatenate([np.zeros(s1), probs[: probs.size - s1]])
        q2 = np.concatenate([np.zeros(s2), probs[: probs.size - s2]])
        worst = _np_min(p_a, p2, np.outer(q1, q2).ravel())
        assert worst > 0.5, (s1, s2, worst)
        assert worst >= norm.cdf(norm.ppf(p_a) - math.hypot(s1, s2) / dg.LEVELS / sigma) - 1e-9


def test_table_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bits"):
        dg.table(0.5, 64)
    with pytest.raises(Exception, match="sigma"):
        dg.table(-1.0)
    with pytest.raises(ValueError, match="prefix"):
        dg.resolve(dg.table(0.5), -1, iter([]))


def test_the_lattice_family_certifies_with_the_gaussian_formulas() -> None:
    """In the registry, discrete-gaussian has the Gaussian's radius in every norm, the same inverse (the
    sequential threshold) and top-2 form, and its own generator version (a run's fingerprint)."""
    from rscert.constants import DISCRETE_NOISE_VERSION
    from rscert.stats.families import family, formula
    from rscert.stats.pair import PairFormula

    lattice, gauss = family("discrete-gaussian"), family("gaussian")
    assert lattice.version == DISCRETE_NOISE_VERSION != gauss.version
    p = np.array([0.3, 0.5, 0.7, 0.99, 0.999999])
    for which in ("l1", "l2", "linf"):
        d = 3072
        np.testing.assert_array_equal(lattice.radius(p, 0.5, which, dim=d), gauss.radius(p, 0.5, which, dim=d))
        r = np.array([0.0, 0.1, 1.0])
        np.testing.assert_array_equal(lattice.threshold(r, 0.5, which, dim=d), gauss.threshold(r, 0.5, which, dim=d))
    np.testing.assert_array_equal(lattice.radius(p, 0.5), dg.radius(p, 0.5))
    lo, hi = np.array([0.9, 0.6, 0.5]), np.array([0.05, 0.3, 0.5])
    top2 = PairFormula(formula("discrete-gaussian", 0.5), "top2")
    np.testing.assert_array_equal(top2(lo, hi), PairFormula(formula("gaussian", 0.5), "top2")(lo, hi))
    assert top2(lo, hi)[0] > float(dg.radius(0.9, 0.5))  # the runner-up bound is used, not 1 - pA
