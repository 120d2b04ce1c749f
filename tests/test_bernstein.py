"""Empirical Bernstein bounds (Maurer & Pontil 2009, Thm 4) against the formula computed from raw samples,
closed forms, and coverage by simulation (with a normal approximation as the control that must fail)."""

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from rscert.errors import ConfigError
from rscert.stats.bernstein import eb_lower, eb_upper, sample_variance


def _oracle_lower(z: np.ndarray, alpha: float) -> float:
    """Theorem 4 of Maurer & Pontil applied to 1 - Z, written from the samples themselves."""
    n = z.size
    log_term = np.log(2 / alpha)
    bound = z.mean() - np.sqrt(2 * np.var(z, ddof=1) * log_term / n) - 7 * log_term / (3 * (n - 1))
    return float(np.clip(bound, 0, 1))


@pytest.mark.parametrize("n", [2, 3, 50, 10_000])
@pytest.mark.parametrize("alpha", [0.5, 0.05, 1e-3, 1e-6])
def test_matches_the_theorem_computed_from_the_samples(n, alpha):
    rng = np.random.default_rng(n)
    for z in (rng.beta(5, 2, n), rng.integers(0, 2, n).astype(float), rng.uniform(0, 1, n)):
        lo = eb_lower(z.sum(), (z * z).sum(), n, alpha)
        hi = eb_upper(z.sum(), (z * z).sum(), n, alpha)
        assert lo == pytest.approx(_oracle_lower(z, alpha), abs=1e-9)
        assert 1 - hi == pytest.approx(_oracle_lower(1 - z, alpha), abs=1e-9)
        assert sample_variance(z.sum(), (z * z).sum(), n) == pytest.approx(np.var(z, ddof=1), rel=1e-9, abs=1e-12)


def test_closed_form_for_a_constant_variable():
    # V_n = 0: the bound is the mean minus 7 log(2/alpha) / (3 (n - 1)) (less the float64 slack, ~1e-7 here)
    n, c, alpha = 1000, 0.9, 0.01
    expected = c - 7 * np.log(2 / alpha) / (3 * (n - 1))
    assert eb_lower(c * n, c * c * n, n, alpha) == pytest.approx(expected, abs=1e-6)  # sqrt of the slack
    assert eb_lower(c * n, c * c * n, n, alpha) < expected  # the slack only widens


def test_vectorised_over_inputs_and_levels_and_monotone_in_alpha():
    s, q, n = np.array([90.0, 50.0]), np.array([85.0, 30.0]), np.array([100, 100])
    one = [float(eb_lower(s[i], q[i], n[i], 0.01)) for i in range(2)]
    assert np.allclose(eb_lower(s, q, n, 0.01), one)
    alphas = np.array([1e-9, 1e-6, 1e-3, 0.1, 0.9])
    lows = eb_lower(np.full(5, 90.0), np.full(5, 85.0), 100, alphas)
    assert np.all(np.diff(lows) > 0)


def test_fewer_than_two_samples_bound_nothing():
    assert eb_lower(1.0, 1.0, 1, 0.1) == 0.0 and eb_upper(0.0, 0.0, 1, 0.1) == 1.0


@pytest.mark.parametrize("total,total_sq,n", [(5.0, 6.0, 10), (11.0, 5.0, 10), (-1.0, 0.0, 10), (np.nan, 0.0, 10),
                                              (1.0, 1.0, 0)])
def test_impossible_sums_are_refused(total, total_sq, n):
    with pytest.raises(ConfigError):
        eb_lower(total, total_sq, n, 0.1)


def test_alpha_out_of_range_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="alpha"):
        eb_lower(5.0, 3.0, 10, 1.0)


def _violations(bound, draw, mean, trials, n, alpha, rng) -> int:
    z = draw(rng, (trials, n))
    return int(np.sum(bound(z.sum(1), (z * z).sum(1), n, alpha) > mean))


DISTRIBUTIONS = [
    ("bernoulli 0.97", lambda r, s: (r.uniform(size=s) < 0.97).astype(float), 0.97),
    ("beta(8, 1)", lambda r, s: r.beta(8, 1, s), 8 / 9),
    ("two points", lambda r, s: np.where(r.uniform(size=s) < 0.5, 0.2, 0.6), 0.4),
]


@pytest.mark.parametrize("name,draw,mean", DISTRIBUTIONS, ids=[d[0] for d in DISTRIBUTIONS])
def test_coverage_by_simulation(name, draw, mean):
    alpha, trials, n = 0.05, 4000, 40
    rng = np.random.default_rng(7)
    bad = _violations(eb_lower, draw, mean, trials, n, alpha, rng)
    assert binomtest(bad, trials, alpha, alternative="greater").pvalue > 1e-3, (name, bad)
    up = lambda s, q, n_, a: 1 - eb_upper(s, q, n_, a)  # noqa: E731  (upper bound below the mean = failure)
    bad_up = _violations(up, lambda r, s: 1 - draw(r, s), mean, trials, n, alpha, rng)
    assert binomtest(bad_up, trials, alpha, alternative="greater").pvalue > 1e-3, (name, bad_up)


def test_the_harness_catches_a_normal_approximation():
    """Control: mean - z_alpha * sd / sqrt(n), the bound the issue rules out, fails this harness."""
    alpha, trials, n = 0.05, 4000, 40

    def normal_lower(total, total_sq, n_, a):
        return total / n_ - norm.isf(a) * np.sqrt(sample_variance(total, total_sq, n_) / n_)

    bad = _violations(normal_lower, DISTRIBUTIONS[0][1], 0.97, trials, n, alpha, np.random.default_rng(7))
    assert binomtest(bad, trials, alpha, alternative="greater").pvalue < 1e-3, bad
