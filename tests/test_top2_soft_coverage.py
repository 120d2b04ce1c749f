"""Coverage of --bound pa|top2 and --vote hard|soft through the real sampler, for every noise family in its
own norm (gaussian l2, laplace l1, uniform l1), against exact radii.

The base classifier has three parallel bands along the first coordinate: logits (s (z - a), s (b - z), 0)
with z = x_1, so f = A where z > a, B where z < b, C between (b <= a). f depends on x_1 alone, so moving x
by t along -e1 is the worst move in every norm, and the smoothed classifier's exact radius is the first t
at which another class's smoothed score reaches A's, computed here from one-dimensional integrals (scipy's
quad and the family's marginal law of one coordinate): an oracle independent of the sampler and the bounds.

* hard votes: p_c(t) = P[f(x - t w + e) = c], closed form (normal cdfs of the band edges);
* soft votes: G_c(t) = E[softmax(logits / T)_c], by quadrature.

Inputs are placed so that the certificates are tight: pa on two bands (a = b: pB = 1 - pA, eq. T1 exact),
top2 on three bands with a narrow middle one (eq. T1 exact, and pa loose), soft votes with sharp logits.
With hard votes the wrong certificates come close to alpha in fixed sampling (of 400 at alpha = 0.05:
pa 20, 20, 21 and top2 9, 4, 7 for gaussian, laplace, uniform; the median radius is 0.83-0.88 of the exact
one); the empirical Bernstein bound is conservative at n = 1000 and was never wrong here (median radius
0.69-0.76 of the exact one), so for soft votes the test guards against gross errors, and
tests/test_bernstein.py against subtle ones.
Over 400 inputs (distinct noise), wrong certificates (radius > exact radius) must stay within alpha
(binomial test), and so must failures of the pair of bounds itself (pA_lower > p_A or pB_upper < p_B),
in fixed sampling and in sequential sampling under the most aggressive stopping rule (it knows the exact
radius and stops the first time the certificate is wrong).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import softmax
from scipy.stats import binomtest, laplace, norm, uniform
from torch import nn

from rscert.sampling.certify import SmoothingParams, certify, certify_sequential
from rscert.sampling.sampler import Sampler, SamplerOptions
from rscert.stats.sequential import Decision, decide

DIM = 5
SIGMA = 0.5
TRIALS = 400


class Bands(nn.Module):
    """logits (s (w.x - a), s (b - w.x), 0): classes A = 0, B = 1, C = 2 in three parallel bands."""

    def __init__(self, w: torch.Tensor, a: float, b: float, scale: float) -> None:
        super().__init__()
        self.register_buffer("w", w / w.norm())
        self.a, self.b, self.scale = a, b, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w
        return torch.stack([self.scale * (z - self.a), self.scale * (self.b - z), torch.zeros_like(z)], dim=1)


def _scores(z: float, a: float, b: float, scale: float, temperature: float | None) -> np.ndarray:
    logits = np.array([scale * (z - a), scale * (b - z), 0.0])
    if temperature is None:
        return (np.arange(3) == np.argmax(logits)).astype(float)
    return softmax(logits / temperature)


MARGINALS = {  # one coordinate of each family's noise at standard deviation SIGMA (rs4a's convention)
    "gaussian": norm(scale=SIGMA),
    "laplace": laplace(scale=SIGMA / np.sqrt(2)),
    "uniform": uniform(loc=-np.sqrt(3) * SIGMA, scale=2 * np.sqrt(3) * SIGMA),
}


def smoothed(m: float, a: float, b: float, scale: float, temperature: float | None, noise: str) -> np.ndarray:
    """The smoothed scores of the three classes at z-mean m (hard: closed form; soft: quadrature)."""
    dist = MARGINALS[noise]
    if temperature is None:
        pa, pb = dist.sf(a - m), dist.cdf(b - m)
        return np.array([pa, pb, 1 - pa - pb])
    lo, hi = dist.ppf(1e-15), dist.isf(1e-15)
    edges = sorted({float(np.clip(e, lo, hi)) for e in (a - m, b - m)})
    out = []
    for c in range(3):
        f = lambda u, c=c: _scores(m + u, a, b, scale, temperature)[c] * dist.pdf(u)  # noqa: E731
        out.append(quad(f, lo, hi, points=edges, limit=400, epsabs=1e-12)[0])
    return np.array(out)


def exact_radius(m: float, a: float, b: float, scale: float, temperature: float | None, noise: str) -> float:
    """The first t >= 0 at which A stops leading when x moves by t along -e1. f depends on x1 alone, so
    that is the smoothed classifier's exact radius in every norm (any other move of the same norm moves
    x1 by no more)."""
    lead = lambda t: (lambda g: g[0] - max(g[1], g[2]))(smoothed(m - t, a, b, scale, temperature, noise))  # noqa: E731
    assert lead(0.0) > 0
    return brentq(lead, 0.0, m - b + 8 * SIGMA, xtol=1e-10)


CASES = {  # bound -> band edges (a, b): two bands for pa, a narrow middle band for top2
    "pa": (0.0, 0.0),
    "top2": (0.05, -0.05),
}


def _inputs(margin: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bands along e1 (the worst direction in every norm for a function of x1); inputs at x1 = margin."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(DIM)
    w[0] = 1.0
    x = torch.randn(TRIALS, DIM, generator=gen)
    x[:, 0] = margin
    return w, x


def _setting(bound: str, vote: str, noise: str):
    a, b = CASES[bound]
    temperature = 1.0 if vote == "soft" else None
    scale = 60.0  # sharp: soft scores close to the votes, so the certificates are tight
    margin = 0.3  # pA ~ 0.65 to 0.8 across the families
    w, x = _inputs(margin, seed=3)
    model = Bands(w, a, b, scale)
    truth = smoothed(margin, a, b, scale, temperature, noise)
    radius = exact_radius(margin, a, b, scale, temperature, noise)
    return model, x, truth, radius, temperature


def _check(rows: list[dict], truth: np.ndarray, radius: float, alpha: float, bound: str) -> None:
    radii = np.array([r["radius"] for r in rows])
    lower = np.array([r["p_lower"] for r in rows])
    assert all(r["prediction"] in (0, -1) for r in rows)
    wrong = int(np.sum(radii > radius + 1e-9))
    failed = lower > truth[0]
    if bound == "top2":
        failed |= np.array([r["p_upper"] for r in rows]) < max(truth[1], truth[2])
    for count in (wrong, int(failed.sum())):
        assert binomtest(count, len(rows), alpha, alternative="greater").pvalue > 1e-3, (wrong, failed.sum())
    assert np.median(radii) > 0.4 * radius  # not vacuous


FAMILIES = ["gaussian", "laplace", "uniform"]  # each in its own norm: l2, l1, l1


@pytest.mark.parametrize("noise", FAMILIES)
@pytest.mark.parametrize("vote", ["hard", "soft"])
@pytest.mark.parametrize("bound", ["pa", "top2"])
def test_fixed_sampling_certificates_hold_within_alpha(bound, vote, noise):
    model, x, truth, radius, temperature = _setting(bound, vote, noise)
    alpha = 0.05
    params = SmoothingParams(sigma=SIGMA, n0=64, n=1000, alpha=alpha, seed=5, bound=bound, vote=vote,
                             temperature=temperature, noise=noise)
    sampler = Sampler(model, SamplerOptions(batch_size=8192), device="cpu", noise=noise)
    rows = certify(sampler, x, [f"t{i}" for i in range(TRIALS)], [0] * TRIALS, params)
    assert {(r["bound"], r["vote"], r["temperature"]) for r in rows} == {(bound, vote, temperature)}
    _check(rows, truth, radius, alpha, bound)


def _oracle_rule(radius: float):
    """Stop at the first look whose certificate is wrong (the worst rule for soundness)."""

    def rule(tally, top, look, schedule, radii, formula):
        d = decide(tally, top, look, schedule, radii, formula)
        wrong = formula(d.p_lower, d.p_upper) > radius + 1e-9
        stop = wrong | (look == len(schedule.looks) - 1)
        return Decision(d.p_lower, d.p_upper, stop, np.where(stop, "cap", ""))

    return rule


@pytest.mark.parametrize("noise", FAMILIES)
@pytest.mark.parametrize("vote", ["hard", "soft"])
@pytest.mark.parametrize("bound", ["pa", "top2"])
def test_sequential_certificates_hold_within_alpha_under_adversarial_stopping(bound, vote, noise):
    model, x, truth, radius, temperature = _setting(bound, vote, noise)
    alpha = 0.05
    params = SmoothingParams(sigma=SIGMA, n0=64, n=2000, alpha=alpha, seed=6, bound=bound, vote=vote,
                             temperature=temperature, noise=noise)
    sampler = Sampler(model, SamplerOptions(batch_size=8192), device="cpu", noise=noise)
    rows = certify_sequential(sampler, x, [f"t{i}" for i in range(TRIALS)], [0] * TRIALS, params, radii=[0.0],
                              rule=_oracle_rule(radius))
    if vote == "hard":  # the rule did stop some inputs early (soft: the bound is never wrong here, see above)
        assert len({r["n"] for r in rows}) > 1
    _check(rows, truth, radius, alpha, bound)
