"""Soft PREDICT (eq. P): the levels of its two sides, the p-value's consistency with the decision, and the
rate of wrong predictions by simulation."""

import numpy as np
import pytest
from scipy.stats import binomtest

from rscert.errors import ConfigError
from rscert.stats.bernstein import eb_lower, eb_upper
from rscert.stats.pair import Tally
from rscert.stats.soft_predict import soft_predict


def _tally(rng, conc, inputs, n):
    x = rng.dirichlet(conc, size=(inputs, n))
    return Tally(np.full(inputs, n), x.sum(1), (x * x).sum(1))


def test_sides_use_bonferroni_over_classes_for_the_chosen_class():
    t = _tally(np.random.default_rng(0), [8, 2, 1, 1, 1], 4, 400)
    out = soft_predict(t, 0.01)
    s, q = t.total, t.total_sq
    for i in range(4):
        a = int(np.argmax(s[i]))
        assert out.top_class[i] == a
        assert out.p_lower[i] == pytest.approx(eb_lower(s[i, a], q[i, a], 400, 0.01 / (2 * 4)))
        others = [float(eb_upper(s[i, c], q[i, c], 400, 0.005)) for c in range(5) if c != a]
        assert out.p_upper[i] == pytest.approx(max(others))
        assert out.prediction[i] == (a if out.p_lower[i] > out.p_upper[i] else -1)


def test_p_value_re_decides_like_the_direct_test_at_every_alpha():
    t = _tally(np.random.default_rng(1), [3, 2.7, 1], 60, 300)
    p = soft_predict(t, 0.5).p_value
    assert np.all((p > 0) & (p <= 1)) and np.any(p < 1) and np.any(p == 1)
    for alpha in (1e-6, 1e-3, 0.05, 0.3):
        direct = soft_predict(t, alpha)
        assert np.array_equal(direct.prediction, np.where(p <= alpha, direct.top_class, -1))
        assert np.array_equal(direct.prediction != -1, direct.p_lower > direct.p_upper)


def test_wrong_predictions_stay_within_alpha():
    """Two classes with close mean scores (0.40 vs 0.36): the top by mean is often the wrong one."""
    alpha, trials, n = 0.05, 3000, 200
    conc = np.array([0.40, 0.36, 0.24]) * 3
    out = soft_predict(_tally(np.random.default_rng(2), conc, trials, n), alpha)
    wrong = int(np.sum((out.prediction != -1) & (out.prediction != 0)))
    assert binomtest(wrong, trials, alpha, alternative="greater").pvalue > 1e-3, wrong
    assert np.mean(out.top_class != 0) > 0.05  # the harness does pick the wrong class often


def test_clear_inputs_are_predicted():
    out = soft_predict(_tally(np.random.default_rng(3), [20, 1, 1], 10, 500), 0.001)
    assert np.all(out.prediction == 0)


def test_needs_soft_sums_and_two_classes():
    with pytest.raises(ConfigError, match="vote"):
        soft_predict(Tally(np.array([10]), np.array([[7, 3]])), 0.1)
    with pytest.raises(ConfigError, match="scores"):
        soft_predict(Tally(np.array([10]), np.array([[10.0]]), np.array([[10.0]])), 0.1)
