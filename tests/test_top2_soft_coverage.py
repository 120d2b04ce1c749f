"""Coverage of --bound pa|top2 and --vote hard|soft through the real sampler, against exact radii.

The base classifier has three parallel bands along a unit vector w: logits (s (z - a), s (b - z), 0) with
z = w.x, so f = A where z > a, B where z < b, C between (b <= a). Moving x by t along -w is the worst
direction (f depends on z only), so the smoothed classifier's exact L2 radius is the first |t| at which
another class's smoothed score reaches A's, computed here from one-dimensional integrals (scipy's quad)
of the classifier's outputs against N(m - t, sigma^2): an oracle independent of the sampler and the bounds.

* hard votes: p_c(t) = P[f(x - t w + e) = c], closed form (normal cdfs of the band edges);
* soft votes: G_c(t) = E[softmax(logits / T)_c], by quadrature.

Inputs are placed so that the certificates are tight: pa on two bands (a = b: pB = 1 - pA, eq. T1 exact),
top2 on three bands with a narrow middle one (eq. T1 exact, and pa loose), soft votes with sharp logits.
With hard votes the wrong certificates come close to alpha (15 and 9 of 400 at alpha = 0.05 in fixed
sampling); the empirical Bernstein bound is conservative at n = 1000 and is rarely if ever wrong here, so
for soft votes the test guards against gross errors, and tests/test_bernstein.py against subtle ones.
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
from scipy.stats import binomtest, norm
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


def smoothed(m: float, a: float, b: float, scale: float, temperature: float | None) -> np.ndarray:
    """The smoothed scores of the three classes at z-mean m (hard: closed form; soft: quadrature)."""
    if temperature is None:
        pa, pb = norm.sf((a - m) / SIGMA), norm.cdf((b - m) / SIGMA)
        return np.array([pa, pb, 1 - pa - pb])
    out = []
    for c in range(3):
        f = lambda u, c=c: _scores(m + SIGMA * u, a, b, scale, temperature)[c] * norm.pdf(u)  # noqa: E731
        edges = sorted({(a - m) / SIGMA, (b - m) / SIGMA})
        out.append(quad(f, -12, 12, points=edges, limit=400, epsabs=1e-12)[0])
    return np.array(out)


def exact_radius(m: float, a: float, b: float, scale: float, temperature: float | None) -> float:
    """The first t >= 0 at which A stops leading when x moves by t along -w (g's exact L2 radius)."""
    lead = lambda t: (lambda g: g[0] - max(g[1], g[2]))(smoothed(m - t, a, b, scale, temperature))  # noqa: E731
    assert lead(0.0) > 0
    return brentq(lead, 0.0, m - b + 8 * SIGMA, xtol=1e-10)


CASES = {  # bound -> band edges (a, b): two bands for pa, a narrow middle band for top2
    "pa": (0.0, 0.0),
    "top2": (0.05, -0.05),
}


def _inputs(margin: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, generator=gen)
    unit = w / w.norm()
    base = torch.randn(TRIALS, DIM, generator=gen)
    base = base - (base @ unit).unsqueeze(1) * unit  # on the plane z = 0, then moved to z = margin
    return w, base + margin * unit


def _setting(bound: str, vote: str):
    a, b = CASES[bound]
    temperature = 1.0 if vote == "soft" else None
    scale = 60.0  # sharp: soft scores close to the votes, so the certificates are tight
    margin = 0.3  # pA ~ Phi(0.6) ~ 0.73
    w, x = _inputs(margin, seed=3)
    model = Bands(w, a, b, scale)
    truth = smoothed(margin, a, b, scale, temperature)
    radius = exact_radius(margin, a, b, scale, temperature)
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
    assert np.median(radii) > 0.5 * radius  # not vacuous


@pytest.mark.parametrize("vote", ["hard", "soft"])
@pytest.mark.parametrize("bound", ["pa", "top2"])
def test_fixed_sampling_certificates_hold_within_alpha(bound, vote):
    model, x, truth, radius, temperature = _setting(bound, vote)
    alpha = 0.05
    params = SmoothingParams(sigma=SIGMA, n0=64, n=1000, alpha=alpha, seed=5, bound=bound, vote=vote,
                             temperature=temperature)
    sampler = Sampler(model, SamplerOptions(batch_size=8192), device="cpu")
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


@pytest.mark.parametrize("vote", ["hard", "soft"])
@pytest.mark.parametrize("bound", ["pa", "top2"])
def test_sequential_certificates_hold_within_alpha_under_adversarial_stopping(bound, vote):
    model, x, truth, radius, temperature = _setting(bound, vote)
    alpha = 0.05
    params = SmoothingParams(sigma=SIGMA, n0=64, n=2000, alpha=alpha, seed=6, bound=bound, vote=vote,
                             temperature=temperature)
    sampler = Sampler(model, SamplerOptions(batch_size=8192), device="cpu")
    rows = certify_sequential(sampler, x, [f"t{i}" for i in range(TRIALS)], [0] * TRIALS, params, radii=[0.0],
                              rule=_oracle_rule(radius))
    if vote == "hard":  # the rule did stop some inputs early (soft: the bound is never wrong here, see above)
        assert len({r["n"] for r in rows}) > 1
    _check(rows, truth, radius, alpha, bound)
