"""Corrections for wrong certificates and re-bounding at another alpha, against independent oracles
(statsmodels' Clopper-Pearson interval, binomial quantiles summed from scipy's pmf, exact coverage)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from rscert.analysis.aggregate import analyze, load_rows
from rscert.stats.corrections import cp_corrected_lower, published_lower
from rscert.stats.corrections import testset_lower as bound_on_these_inputs

from .test_analysis_runs import certify_rows, write_run


def quantile_by_summing(m: int, alpha: float, tail: float) -> int:
    """Smallest B with P[Binomial(m, alpha) <= B] >= 1 - tail, summing the pmf (oracle for binom.ppf)."""
    cdf = np.cumsum(binom.pmf(np.arange(m + 1), m, alpha))
    return int(np.argmax(cdf >= 1 - tail - 1e-12))


@pytest.mark.parametrize("k, m, alpha, ci", [(412, 500, 0.001, 0.95), (80, 100, 0.05, 0.9), (3, 500, 0.01, 0.95),
                                             (9_000, 10_000, 0.001, 0.99)])
def test_cp_correction_is_cp_lower_of_k_minus_b(k, m, alpha, ci):
    delta = (1 - ci) / 2
    b = quantile_by_summing(m, alpha, delta)
    expected = proportion_confint(max(k - b, 0), m, alpha=2 * delta, method="beta")[0] if k > b else 0.0
    assert cp_corrected_lower(k, m, alpha, ci) == pytest.approx(expected, abs=1e-12)


def test_cp_correction_covers_under_the_worst_wrong_certificates():
    """Truly certified-correct count K ~ Bin(m, p); every input that is not gets a wrong certificate
    (counted as certified-correct) with probability alpha. The corrected lower end must stay below p
    in at least ci of the trials (binomial test of the misses at ci)."""
    rng = np.random.default_rng(0)
    m, p, alpha, ci, trials = 200, 0.6, 0.05, 0.9, 4000
    true = rng.binomial(m, p, trials)
    observed = true + rng.binomial(m - true, alpha)
    misses = int(np.sum(cp_corrected_lower(observed, m, alpha, ci) > p))
    assert binomtest(misses, trials, 1 - ci, alternative="greater").pvalue > 0.01
    # without the correction the plain lower end misses far more often than 1 - ci
    plain = np.array([proportion_confint(k, m, alpha=1 - ci, method="beta")[0] for k in observed])
    assert np.mean(plain > p) > 2 * (1 - ci) / 2  # its nominal one-sided miss is (1 - ci) / 2


def test_testset_and_published_corrections():
    k, m, alpha, rho = 412, 500, 0.001, 0.001
    b = quantile_by_summing(m, alpha, rho)
    assert bound_on_these_inputs(k, m, alpha, rho) == pytest.approx((k - b) / m)
    # the published analysis' expression, written out independently
    log = math.log(1 / rho)
    expected = k / m - alpha - math.sqrt(alpha * (1 - alpha) * log / m) - log / (3 * m)
    assert published_lower(k, m, alpha, rho) == pytest.approx(expected)


@pytest.mark.parametrize("m, alpha, rho", [(10_000, 0.001, 0.001), (100_000, 0.01, 0.001)])
def test_published_expression_can_miss_more_often_than_rho(m, alpha, rho):
    """docs/analysis.md: the published expression's deduction t from k/m is exceeded by the share of
    wrong certificates W/m (W ~ Bin(m, alpha), the worst case) with probability above rho, while the
    exact quantile of the testset correction is exceeded with probability at most rho."""
    t = -float(published_lower(0, m, alpha, rho))  # = alpha + sqrt(...) + log(1/rho) / (3 m)
    assert binom.sf(math.floor(m * t), m, alpha) > rho
    b = m - round(float(bound_on_these_inputs(m, m, alpha, rho)) * m)  # the B that testset deducts
    assert b == quantile_by_summing(m, alpha, rho) and binom.sf(b, m, alpha) <= rho


def test_cli_offers_each_correction_as_its_own_column(tmp_path):
    out = write_run(tmp_path / "out", certify_rows(300, alpha=0.01))
    result = analyze([str(out)], radii=[0.1], corrections=["cp", "testset", "published"], rho=0.01)
    s = result.summary.row(0, named=True)
    k, m = round(s["cert_acc_0_1"] * 300), 300
    assert s["cert_acc_0_1_lo_corrected"] == pytest.approx(cp_corrected_lower(k, m, 0.01, 0.95))
    assert s["cert_acc_0_1_lo_testset"] == pytest.approx(bound_on_these_inputs(k, m, 0.01, 0.01))
    assert s["cert_acc_0_1_lo_published"] == pytest.approx(published_lower(k, m, 0.01, 0.01))
    assert s["cert_acc_0_1_lo_corrected"] < s["cert_acc_0_1_lo"]


def test_rebound_recomputes_p_lower_prediction_and_radius(tmp_path):
    rows = certify_rows(50)
    rng = np.random.default_rng(5)
    for row in rows:
        row["count_top"] = int(rng.integers(400, 1001))
    out = write_run(tmp_path / "out", rows)
    frame = load_rows([str(out)], alpha=0.05).sort("index").collect()
    counts = np.array([r["count_top"] for r in rows])
    oracle = np.array([proportion_confint(k, 1000, alpha=0.10, method="beta")[0] for k in counts])
    assert np.allclose(frame["p_lower"].to_numpy(), oracle, atol=1e-12)
    assert (frame["alpha"] == 0.05).all()
    expected_prediction = np.where(oracle >= 0.5, 1, -1)
    assert frame["prediction"].to_list() == expected_prediction.tolist()
    assert np.allclose(frame["radius"].to_numpy(), np.where(oracle >= 0.5, 0.5 * norm.ppf(np.maximum(oracle, 0.5)), 0))


def test_rebound_keeps_failed_rows_in_the_same_configuration(tmp_path):
    rows = certify_rows(4)
    rows[3].update(status="decode_error", error="bad", prediction=None, radius=None, correct=None, count_top=None)
    out = write_run(tmp_path / "out", rows)
    s = analyze([str(out)], radii=[0.0], alpha=0.01).summary
    assert s.height == 1 and s["inputs"].item() == 4 and s["failed"].item() == 1 and s["cert_acc_0"].item() == 0.75
