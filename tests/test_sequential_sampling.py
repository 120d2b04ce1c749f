"""Sequential CERTIFY's sampling loop with the real sampler, on every device of conftest.DEVICES:
coverage under optional stopping on a linear classifier (closed-form margin), the rounds reading the
estimation stream in order, one look equal to fixed sampling, and rows independent of batching and of
the other inputs. (The bound and the job's rows: tests/test_sequential.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest

from rscert.sampling.certify import SmoothingParams, certify, certify_sequential
from rscert.sampling.sampler import Sampler, SamplerOptions
from rscert.stats.sequential import Decision, look_schedule, lower_bound
from rscert.stats.smoothing import clopper_pearson_lower

from .test_linear_certificate import _setup


def _oracle_rule(margin: float, bound=None):
    """The most aggressive rule there is: it knows the true margin and stops at the first look where the
    certificate is wrong (so a violation happens iff some look's bound exceeds pA)."""

    def rule(tally, top, look, schedule, radii, radius):  # radius: the run's formula (Gaussian l2, pa here)
        count = tally.total[np.arange(top.size), top]
        p_lower = lower_bound(count, look, schedule) if bound is None else bound(count, schedule.looks[look])
        wrong = radius(p_lower, 1 - p_lower) > margin + 1e-9
        stop = wrong | (look == len(schedule.looks) - 1)
        return Decision(p_lower, 1 - p_lower, stop, np.where(stop, np.where(wrong, "settled", "cap"), ""))

    return rule


def test_coverage_under_optional_stopping_on_a_linear_classifier(device):
    alpha, trials, sigma, margin = 0.05, 400, 0.5, 0.25  # pA = Phi(0.5) ~ 0.69
    model, x, m = _setup(margin, trials, seed=3)
    sampler = Sampler(model, SamplerOptions(batch_size=4096), device=device)
    keys = [f"trial-{i}" for i in range(trials)]
    params = SmoothingParams(sigma=sigma, n0=100, n=1000, alpha=alpha, seed=5)
    rows = certify_sequential(sampler, x, keys, [0] * trials, params, radii=[0.0], rule=_oracle_rule(margin))
    radii = np.array([r["radius"] for r in rows])
    assert all(r["prediction"] in (0, -1) for r in rows)
    violations = int(np.sum(radii > m + 1e-9))
    assert binomtest(violations, trials, alpha, alternative="greater").pvalue > 1e-3, violations
    capped = [r for r in rows if r["stop_reason"] == "cap"]
    assert np.median([r["radius"] for r in capped]) > 0.5 * margin  # not vacuous
    # the same harness catches an invalid bound: Clopper-Pearson at the full alpha at every look
    naive = certify_sequential(sampler, x, keys, [0] * trials, params, radii=[0.0],
                               rule=_oracle_rule(margin, bound=lambda k, n: clopper_pearson_lower(k, n, alpha)))
    bad = int(np.sum(np.array([r["radius"] for r in naive]) > m + 1e-9))
    assert binomtest(bad, trials, alpha, alternative="greater").pvalue < 1e-3, bad


def _never_stop(tally, top, look, schedule, radii, radius):
    last = look == len(schedule.looks) - 1
    lower = lower_bound(tally.total[np.arange(top.size), top], look, schedule)
    return Decision(lower, 1 - lower, np.full(top.shape, last), np.full(top.shape, "cap"))


@pytest.fixture
def linear():
    model, x, _ = _setup(0.2, 12, seed=4)
    x[::3] = x[::3] + 2.0 * torch.ones(x.shape[1])  # a spread of margins, some negative
    return model, x


def test_rounds_read_the_estimation_stream_in_order(linear, device):
    """Run to the cap in rounds: the votes equal fixed sampling's over draws 0..n-1 of the same stream."""
    model, x = linear
    keys = [f"k{i}" for i in range(len(x))]
    params = SmoothingParams(sigma=0.5, n0=100, n=1500, alpha=0.001, seed=7)
    seq = certify_sequential(Sampler(model, SamplerOptions(batch_size=333), device=device), x, keys, None, params,
                             radii=[0.0], rule=_never_stop)
    fixed = certify(Sampler(model, SamplerOptions(batch_size=4096), device=device), x, keys, None, params)
    assert [r["count_top"] for r in seq] == [r["count_top"] for r in fixed]
    assert [r["count_select"] for r in seq] == [r["count_select"] for r in fixed]
    assert all(r["n"] == 1500 and r["stop_reason"] == "cap" for r in seq)
    s = look_schedule(1500, 0.001)
    assert [r["p_lower"] for r in seq] == pytest.approx(
        list(beta.ppf(s.alphas[-1], [r["count_top"] for r in seq], [1501 - r["count_top"] for r in seq])), abs=1e-12)


def test_one_look_equals_fixed_sampling(linear, device):
    model, x = linear
    keys = [f"k{i}" for i in range(len(x))]
    params = SmoothingParams(sigma=0.5, n0=50, n=80, alpha=0.01, seed=1)
    sampler = Sampler(model, SamplerOptions(batch_size=64), device=device)
    seq = certify_sequential(sampler, x, keys, None, params, radii=[0.0])
    fixed = certify(sampler, x, keys, None, params)
    for a, b in zip(seq, fixed, strict=True):
        for col in ("prediction", "count_top", "p_lower", "radius", "n", "n_max"):
            assert a[col] == pytest.approx(b[col], abs=1e-12), col
        assert (a["sampling"], b["sampling"], b["stop_reason"]) == ("sequential", "fixed", "cap")


def test_rows_do_not_depend_on_batching_or_on_the_other_inputs(linear, device):
    model, x = linear
    keys = [f"k{i}" for i in range(len(x))]
    params = SmoothingParams(sigma=0.5, n0=100, n=20_000, alpha=0.001, seed=2)
    together = certify_sequential(Sampler(model, SamplerOptions(batch_size=1000), device=device), x, keys, [0] * len(x),
                                  params, radii=[0.0, 0.25, 0.5])
    alone = [certify_sequential(Sampler(model, SamplerOptions(batch_size=77), device=device), x[i : i + 1], [k], [0],
                                params, radii=[0.0, 0.25, 0.5])[0] for i, k in enumerate(keys)]
    cols = ("prediction", "count_top", "p_lower", "radius", "n", "stop_reason")
    assert [[r[c] for c in cols] for r in together] == [[r[c] for c in cols] for r in alone]
    assert {r["stop_reason"] for r in together} >= {"settled"} and min(r["n"] for r in together) < 20_000
    for r in together:  # the reported bound is eq. 1 at the look where the input stopped
        s = look_schedule(20_000, 0.001)
        assert r["p_lower"] == pytest.approx(float(lower_bound(r["count_top"], s.looks.index(r["n"]), s)), abs=1e-15)
