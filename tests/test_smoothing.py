"""The statistics against independent oracles (statsmodels, scipy) and closed forms."""

import numpy as np
import pytest
from scipy.stats import binom, norm
from statsmodels.stats.proportion import binom_test, proportion_confint

from rscert.errors import ConfigError
from rscert.stats.smoothing import (
    ABSTAIN,
    certify_from_counts,
    certify_from_top,
    check_alpha,
    check_count,
    check_labels,
    check_sigma,
    clopper_pearson_lower,
    clopper_pearson_upper,
    gaussian_radius,
    predict_from_counts,
)


def _grid(rng, size):
    n = np.concatenate([[1, 1, 2, 5], rng.integers(1, 200_001, size)])
    k = np.concatenate([[0, 1, 0, 5], rng.integers(0, n[4:] + 1)])
    # force the edges k = 0 and k = n often
    k[4::7] = 0
    k[5::7] = n[5::7]
    alpha = np.concatenate([[1e-9, 0.5, 0.001, 0.01], 10 ** rng.uniform(-9, np.log10(0.5), size)])
    return k, n, alpha


def test_lower_bound_equals_statsmodels_on_random_grid():
    rng = np.random.default_rng(12345)
    k, n, alpha = _grid(rng, 3000)
    ours = np.array([clopper_pearson_lower(a, b, c) for a, b, c in zip(k, n, alpha, strict=True)])
    oracle = np.array(
        [proportion_confint(a, b, alpha=2 * c, method="beta")[0] for a, b, c in zip(k, n, alpha, strict=True)]
    )
    oracle = np.nan_to_num(oracle, nan=0.0)  # statsmodels versions differ on k = 0 (nan or 0)
    assert np.max(np.abs(ours - oracle)) <= 1e-12


def test_upper_bound_equals_statsmodels_on_random_grid():
    rng = np.random.default_rng(7)
    k, n, alpha = _grid(rng, 1500)
    ours = np.array([clopper_pearson_upper(a, b, c) for a, b, c in zip(k, n, alpha, strict=True)])
    oracle = np.array(
        [proportion_confint(a, b, alpha=2 * c, method="beta")[1] for a, b, c in zip(k, n, alpha, strict=True)]
    )
    oracle = np.nan_to_num(oracle, nan=1.0)
    assert np.max(np.abs(ours - oracle)) <= 1e-12


def test_vectorised_bounds_match_scalar_calls():
    k = np.array([0, 3, 10, 10])
    n = np.array([10, 10, 10, 20])
    vec = clopper_pearson_lower(k, n, 0.01)
    assert np.array_equal(vec, [clopper_pearson_lower(a, b, 0.01) for a, b in zip(k, n, strict=True)])


@pytest.mark.parametrize("n", [1, 2, 17, 1000])
def test_edges_in_closed_form(n):
    alpha = 0.001
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    assert clopper_pearson_upper(n, n, alpha) == 1.0
    # k = n: P[Binomial(n, p) >= n] = p^n = alpha  =>  lower = alpha^(1/n)
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)
    # k = 0: upper = 1 - alpha^(1/n)
    assert clopper_pearson_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n), rel=1e-10)


@pytest.mark.parametrize("p,n,alpha", [(0.3, 50, 0.05), (0.9, 200, 0.001), (0.51, 1000, 0.01), (0.02, 80, 0.1)])
def test_lower_bound_coverage_is_exact_and_at_least_one_minus_alpha(p, n, alpha):
    """P[lower(K) <= p] computed exactly over the Binomial(n, p) law, not sampled."""
    ks = np.arange(n + 1)
    covered = clopper_pearson_lower(ks, np.full_like(ks, n), alpha) <= p
    assert binom.pmf(ks, n, p)[covered].sum() >= 1 - alpha - 1e-12
    covered_up = clopper_pearson_upper(ks, np.full_like(ks, n), alpha) >= p
    assert binom.pmf(ks, n, p)[covered_up].sum() >= 1 - alpha - 1e-12


def test_reference_certificate():
    cert = certify_from_top([7312], [3], 10_000, 0.001, 0.5)
    assert cert.p_lower[0] == pytest.approx(0.717297, abs=5e-7)
    assert cert.radius[0] == pytest.approx(0.287416, abs=5e-7)
    assert cert.prediction[0] == 3


def test_certify_abstains_below_half_and_breaks_ties_low():
    selection = np.array([[5, 5, 0], [0, 2, 8], [1, 0, 0]])
    estimation = np.array([[600, 400, 0], [0, 480, 520], [1000, 0, 0]])
    cert = certify_from_counts(selection, estimation, 1000, 0.001, 0.25)
    assert cert.top_class.tolist() == [0, 2, 0]  # tie 5-5 -> class 0
    assert cert.count_top.tolist() == [600, 520, 1000]
    # 520/1000 gives p_lower < 0.5 -> abstain with radius 0
    assert cert.prediction.tolist() == [0, ABSTAIN, 0]
    assert cert.radius[1] == 0.0
    expected = 0.25 * norm.ppf(clopper_pearson_lower(600, 1000, 0.001))
    assert cert.radius[0] == pytest.approx(expected, rel=1e-12)
    assert cert.radius[2] == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 1000)), rel=1e-12)


def test_certify_rejects_rows_that_do_not_sum_to_n():
    with pytest.raises(ConfigError, match="estimation_counts"):
        certify_from_counts([[1, 0]], [[5, 4]], 10, 0.001, 0.5)


def test_predict_matches_statsmodels_binomial_test():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 60, size=(200, 4))
    counts[:20, 0] += 500  # some clear winners
    pred = predict_from_counts(counts, alpha=0.01)
    for row, c, p in zip(counts, pred.prediction, pred.p_value, strict=True):
        top2 = np.argsort(-row, kind="stable")[:2]
        a, b = int(row[top2[0]]), int(row[top2[1]])
        oracle = binom_test(a, a + b, 0.5, alternative="two-sided") if a + b else 1.0
        assert p == pytest.approx(oracle, rel=1e-9, abs=1e-300)
        assert c == (ABSTAIN if oracle > 0.01 else top2[0])
    assert (pred.prediction[:20] == 0).all()


def test_gaussian_radius_is_zero_below_half():
    assert gaussian_radius([0.3, 0.5], 1.0).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "x"])
def test_sigma_validation_names_the_field(bad):
    with pytest.raises(ConfigError, match="^sigma"):
        check_sigma(bad)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan")])
def test_alpha_validation_names_the_field(bad):
    with pytest.raises(ConfigError, match="^alpha"):
        check_alpha(bad)


@pytest.mark.parametrize("field,bad", [("n0", 0), ("n", -5), ("n", 2.5), ("n0", True)])
def test_count_validation_names_the_field(field, bad):
    with pytest.raises(ConfigError, match=f"^{field}"):
        check_count(bad, field)


@pytest.mark.parametrize("k,n", [(-1, 10), (11, 10), (2.5, 10), (1, 0)])
def test_bad_counts_are_refused(k, n):
    with pytest.raises(ConfigError):
        clopper_pearson_lower(k, n, 0.01)


def test_labels_must_fit_the_class_count():
    assert check_labels([0, 9], 10).tolist() == [0, 9]
    with pytest.raises(ConfigError, match="labels: label 10 does not fit 10 classes"):
        check_labels([0, 10], 10)
    with pytest.raises(ConfigError, match="labels"):
        check_labels([0.5], 10)
