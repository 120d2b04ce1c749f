"""Certificates against the closed form: a linear classifier's certified radius is its margin.

For f(x) = [w.x + b > 0] and e ~ N(0, sigma^2 I), P[f(x + e) = f(x)] = Phi(m / sigma) with
m = |w.x + b| / ||w||, so sigma * Phi^-1(pA) = m exactly, and every sound certificate has R <= m
with probability >= 1 - alpha.
"""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm

from rscert.sampling.certify import SmoothingParams, certify
from rscert.sampling.sampler import Sampler, SamplerOptions
from rscert.stats.smoothing import gaussian_radius

from .conftest import linear_classifier

DIM = 6


def _setup(margin: float, trials: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, generator=gen)
    b = 0.3
    # points at signed distance +margin from the plane w.x + b = 0 (class 0 side)
    base = torch.randn(trials, DIM, generator=gen)
    unit = w / w.norm()
    base = base - ((base @ w + b) / w.norm()).unsqueeze(1) * unit  # project onto the plane
    x = base + margin * unit
    true_margin = ((x @ w + b) / w.norm()).numpy()
    return linear_classifier(w, b), x, true_margin


def test_radius_from_exact_pa_equals_margin():
    sigma = 0.7
    for margin in [0.01, 0.3, 1.0, 2.5]:
        _, _, m = _setup(margin, 3)
        p_exact = norm.cdf(m / sigma)
        assert np.allclose(gaussian_radius(p_exact, sigma), m, atol=1e-6)


@pytest.mark.parametrize("alpha,trials,n", [(0.05, 400, 1000), (0.001, 200, 2000)])
def test_monte_carlo_radius_exceeds_margin_at_most_alpha_of_the_time(alpha, trials, n, device):
    sigma, margin = 0.5, 0.25  # pA = Phi(0.5) ~ 0.69
    model, x, m = _setup(margin, trials, seed=1)
    sampler = Sampler(model, SamplerOptions(batch_size=4096), device=device)
    keys = [f"trial-{i}" for i in range(trials)]  # independent noise per trial
    rows = certify(sampler, x, keys, [0] * trials, SmoothingParams(sigma=sigma, n0=100, n=n, alpha=alpha, seed=11))
    radii = np.array([r["radius"] for r in rows])
    assert all(r["prediction"] == 0 for r in rows)
    violations = int(np.sum(radii > m + 1e-9))
    # H0: violation rate <= alpha; reject (fail) only on strong evidence of more
    assert binomtest(violations, trials, alpha, alternative="greater").pvalue > 1e-3, violations
    # and the certificate is not vacuous
    assert np.median(radii) > 0.5 * margin


def test_large_n_radius_is_within_a_few_percent_of_the_margin(device):
    sigma, margin = 0.5, 0.5  # pA = Phi(1) ~ 0.84
    model, x, m = _setup(margin, 4, seed=2)
    sampler = Sampler(model, SamplerOptions(batch_size=8192), device=device)
    rows = certify(sampler, x, ["a", "b", "c", "d"], None, SmoothingParams(sigma=sigma, n0=100, n=100_000, alpha=0.001))
    for row, true_m in zip(rows, m, strict=True):
        assert 0.95 * true_m < row["radius"] <= true_m
        assert row["correct"] is None and row["count_top"] <= 100_000
