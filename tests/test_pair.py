"""The pair of bounds (pA_lower, pB_upper) for each --vote and --bound, and Theorem 1's radius: against
statsmodels' Clopper-Pearson interval, the closed form of a three-band linear classifier (where eq. T1 is
exact), and coverage of the joint event by simulation."""

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from rscert.errors import ConfigError
from rscert.stats.bernstein import eb_lower, eb_upper
from rscert.stats.families import formula
from rscert.stats.pair import (
    PairFormula,
    Tally,
    certify_pair,
    check_bound,
    check_temperature,
    check_vote,
    equivalent_bound,
    pair_bounds,
    runner_up,
)
from rscert.stats.smoothing import certify_from_counts, gaussian_radius


def gauss(sigma: float, bound: str = "pa", norm: str = "l2", dim: int | None = None) -> PairFormula:
    return PairFormula(formula("gaussian", sigma, norm, dim), bound)


def test_top2_hard_bounds_are_statsmodels_two_sided_interval_at_alpha():
    """Bonferroni: each one-sided bound at alpha/2 is an end of the two-sided (1 - alpha) CP interval."""
    counts = np.array([[700, 250, 50], [900, 30, 70], [400, 350, 250]])
    n, alpha = 1000, 0.01
    b = pair_bounds(Tally(np.full(3, n), counts), [0, 0, 0], alpha, "top2")
    for i, row in enumerate(counts):
        lo, _ = proportion_confint(row[0], n, alpha=alpha, method="beta")
        _, hi = proportion_confint(sorted(row[1:])[-1], n, alpha=alpha, method="beta")
        assert b.p_lower[i] == pytest.approx(lo, rel=1e-10)
        assert b.p_upper[i] == pytest.approx(min(hi, 1 - lo), rel=1e-10)


def test_pa_is_cohen_et_al_bit_for_bit():
    rng = np.random.default_rng(0)
    est = rng.multinomial(1000, [0.8, 0.1, 0.1], size=50)
    sel = rng.multinomial(100, [0.8, 0.1, 0.1], size=50)
    old = certify_from_counts(sel, est, 1000, 0.001, 0.5)
    new = certify_pair(Tally(np.full(50, 1000), est), old.top_class, 0.001, gauss(0.5))
    assert np.array_equal(new.p_lower, old.p_lower)
    assert np.array_equal(new.prediction, old.prediction)
    assert np.array_equal(new.radius, old.radius)


def test_pa_radius_is_the_family_radius_bit_for_bit():
    p = np.linspace(0.5001, 0.99999, 200)
    assert np.array_equal(gauss(0.7)(p, 1 - p), gaussian_radius(p, 0.7))
    for noise, nrm in [("laplace", "l1"), ("uniform", "l1"), ("gaussian", "linf")]:
        fam = formula(noise, 0.7, nrm, 100)
        assert np.array_equal(PairFormula(fam, "pa")(p, 1 - p), fam(p))


def test_top2_with_pb_one_minus_pa_equals_pa():
    """With nothing spread beyond the runner-up, eq. T1 and the reductions give back the family's radius."""
    p = np.linspace(0.55, 0.999, 50)
    for noise, nrm in [("gaussian", "l2"), ("laplace", "l1"), ("uniform", "l1"), ("uniform", "linf")]:
        fam = formula(noise, 0.5, nrm, 64)
        assert PairFormula(fam, "top2")(p, 1 - p) == pytest.approx(fam(p), rel=1e-9)


def test_runner_up_skips_the_top_class():
    counts = np.array([[5, 9, 1], [9, 5, 1], [1, 1, 9]])
    assert runner_up(counts, [1, 1, 2]).tolist() == [5, 9, 1]


def _three_bands(m: float, a: float, b: float, sigma: float) -> tuple[float, float, float]:
    """f = A if z > a, B if z < b, C between, z = w.x with ||w|| = 1 at distance m: exact pA, pB, radius.

    Moving x by t along -w gives pA = Phi((m - t - a)/sigma), pB = Phi((b - m + t)/sigma); they meet at
    t = (2m - a - b)/2, and C (a narrow band) never leads, so that is g's exact L2 radius."""
    return norm.cdf((m - a) / sigma), norm.cdf((b - m) / sigma), (2 * m - a - b) / 2


@pytest.mark.parametrize("m,a,b,sigma", [(1.0, 0.2, -0.1, 0.5), (0.3, 0.1, 0.0, 0.25), (2.0, 0.5, 0.2, 1.0)])
def test_eq_t1_is_exact_for_three_parallel_bands(m, a, b, sigma):
    pa, pb, radius = _three_bands(m, a, b, sigma)
    assert gauss(sigma, "top2")(pa, pb) == pytest.approx(radius, rel=1e-9)
    assert gauss(sigma, "top2")(pa, pb) == pytest.approx(sigma / 2 * (norm.ppf(pa) - norm.ppf(pb)), rel=1e-9)
    # and pA alone is weaker: sigma Phi^-1(pA) <= the top-2 radius when pB < 1 - pA
    assert gaussian_radius(pa, sigma) < radius
    # in linf the l2 certificate converts: divided by sqrt(d)
    linf = gauss(sigma, "top2", "linf", 16)(pa, pb)
    assert linf == pytest.approx(radius / 4, rel=1e-9)


def test_uniform_top2_is_lambda_times_the_gap_and_exact_for_one_coordinate_bands():
    """Uniform noise on [-lambda, lambda]^d, bands along coordinate 1 (A: x1 > a, B: x1 < b): moving by t along
    -e1 moves mass t / (2 lambda) from A to the middle and from the middle to B, so pA = pB at t = lambda (pA - pB)."""
    sigma = 0.4
    lam = np.sqrt(3) * sigma
    m, a, b = 0.3, 0.1, -0.2
    pa = np.clip((m + lam - a) / (2 * lam), 0, 1)
    pb = np.clip((b - (m - lam)) / (2 * lam), 0, 1)
    exact = lam * (pa - pb)  # both stay inside the support over [0, exact] here
    assert 0 < pb < pa < 1 and m - exact - lam < b and m - exact + lam > a
    got = PairFormula(formula("uniform", sigma, "l1"), "top2")(pa, pb)
    assert got == pytest.approx(exact, rel=1e-12)


def test_laplace_top2_is_teng_et_al_theorem_1():
    lam = 0.5 / np.sqrt(2)
    fam = formula("laplace", 0.5, "l1")
    for pa, pb in [(0.6, 0.05), (0.7, 0.29), (0.95, 0.001), (0.5, 0.2)]:
        teng = max(lam / 2 * np.log(pa / pb), -lam * np.log(1 - pa + pb))
        assert PairFormula(fam, "top2")(pa, pb) == pytest.approx(teng, rel=1e-9)


def test_laplace_top2_is_sound_for_one_coordinate_bands():
    """Laplace noise, bands along coordinate 1: the exact L1 radius (move along -e1 until pA = pB) bounds it."""
    from scipy.optimize import brentq
    from scipy.stats import laplace

    sigma, m, a, b = 0.5, 0.4, 0.1, -0.1
    lam = sigma / np.sqrt(2)
    pa_t = lambda t: laplace.sf(a, loc=m - t, scale=lam)  # noqa: E731
    pb_t = lambda t: laplace.cdf(b, loc=m - t, scale=lam)  # noqa: E731
    exact = brentq(lambda t: pa_t(t) - pb_t(t), 0, 5)
    got = float(PairFormula(formula("laplace", sigma, "l1"), "top2")(pa_t(0), pb_t(0)))
    assert 0.6 * exact < got <= exact + 1e-12


def test_equivalent_bound_is_the_best_valid_form():
    lo, hi = np.array([0.6, 0.9]), np.array([0.01, 0.05])
    assert np.allclose(equivalent_bound("uniform", lo, hi), (1 + lo - hi) / 2)
    assert np.all(equivalent_bound("gaussian", lo, hi) >= (1 + lo - hi) / 2)
    assert np.all(equivalent_bound("laplace", lo, hi) >= (1 + lo - hi) / 2)
    assert np.all(equivalent_bound("gaussian", np.array([0.4]), np.array([0.45])) < 0.5)


def test_top2_certifies_more_than_pa_when_the_rest_is_spread():
    counts = np.array([[600] + [4] * 100])  # pA ~ 0.6, the runner-up ~ 0.004
    t = Tally(np.array([1000]), counts)
    pa = certify_pair(t, [0], 0.001, gauss(0.5))
    top2 = certify_pair(t, [0], 0.001, gauss(0.5, "top2"))
    assert top2.radius[0] > 2 * pa.radius[0] > 0


def test_pb_upper_is_capped_by_one_minus_pa_lower():
    t = Tally(np.array([100]), np.array([[99, 1]]))
    b = pair_bounds(t, [0], 0.01, "top2")
    assert b.p_upper[0] == pytest.approx(1 - b.p_lower[0])  # CP_upper(1, 100) would be larger


def test_abstains_when_the_bounds_overlap():
    t = Tally(np.array([1000]), np.array([[480, 470, 50]]))
    cert = certify_pair(t, [0], 0.001, gauss(0.5, "top2"))
    assert cert.prediction[0] == -1 and cert.radius[0] == 0.0


def test_soft_bounds_are_empirical_bernstein_at_half_alpha():
    rng = np.random.default_rng(1)
    x = rng.dirichlet([6, 2, 1, 1], size=(3, 500))
    s, q = x.sum(1), (x * x).sum(1)
    t = Tally(np.full(3, 500), s, q)
    b = pair_bounds(t, [0, 0, 0], 0.01, "top2")
    for i in range(3):
        lo = eb_lower(s[i, 0], q[i, 0], 500, 0.005)
        hi = max(float(eb_upper(s[i, c], q[i, c], 500, 0.005)) for c in (1, 2, 3))
        assert b.p_lower[i] == pytest.approx(lo) and b.p_upper[i] == pytest.approx(min(hi, 1 - lo))
    pa = pair_bounds(t, [0, 0, 0], 0.01, "pa")
    assert np.allclose(pa.p_lower, eb_lower(s[:, 0], q[:, 0], 500, 0.01))


def _joint_failures(bound, vote, probs, trials, n, alpha, rng):
    """How often pA_lower > pA or pB_upper < max_{c != A} p_c over independent tallies (A = class 0)."""
    probs = np.asarray(probs)
    if vote == "hard":
        tally = Tally(np.full(trials, n), rng.multinomial(n, probs, size=trials))
    else:  # soft scores: a Dirichlet around probs, whose mean is probs
        x = rng.dirichlet(probs * 20, size=(trials, n))
        tally = Tally(np.full(trials, n), x.sum(1), (x * x).sum(1))
    b = pair_bounds(tally, np.zeros(trials, np.int64), alpha, bound)
    return int(np.sum((b.p_lower > probs[0]) | (b.p_upper < probs[1:].max())))


@pytest.mark.parametrize("vote", ["hard", "soft"])
@pytest.mark.parametrize("bound", ["pa", "top2"])
def test_the_pair_holds_jointly_at_alpha(bound, vote):
    """Two runner-up classes of equal p: the observed runner-up is biased upward, which the argument allows."""
    alpha, trials, n = 0.05, 3000, 60
    bad = _joint_failures(bound, vote, [0.5, 0.2, 0.2, 0.1], trials, n, alpha, np.random.default_rng(3))
    assert binomtest(bad, trials, alpha, alternative="greater").pvalue > 1e-3, bad


@pytest.mark.parametrize("value,check,field", [("top3", check_bound, "bound"), ("vote", check_vote, "vote")])
def test_bad_settings_name_the_field(value, check, field):
    with pytest.raises(ConfigError, match=field):
        check(value)


def test_temperature_only_for_soft_and_positive():
    assert check_temperature(None, "soft") == 1.0 and check_temperature(0.5, "soft") == 0.5
    assert check_temperature(None, "hard") is None
    for bad, vote in [(1.0, "hard"), (0.0, "soft"), (float("inf"), "soft"), ("x", "soft")]:
        with pytest.raises(ConfigError, match="temperature"):
            check_temperature(bad, vote)
