"""Sequential CERTIFY: the anytime-valid bound against oracles, the stopping rule, the job's rows, resume,
and bad --radii through the command line. (The sampling loop with the real sampler, on every device:
tests/test_sequential_sampling.py.)"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import beta, binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from rscert.cli import main
from rscert.errors import ConfigError
from rscert.stats.pair import Tally
from rscert.stats.sequential import (
    Decision,
    check_stop_radii,
    decide,
    default_stop_radii,
    look_schedule,
    lower_bound,
    max_certifiable_radius,
    mixture_lower,
)
from rscert.stats.smoothing import clopper_pearson_lower, gaussian_radius

from .jobutil import certify_args, run, table
from .shardutil import write_shards

# --------------------------------------------------------------------------------------------------
# the bound
# --------------------------------------------------------------------------------------------------


def test_schedule_is_fixed_geometric_and_levels_sum_to_alpha():
    s = look_schedule(100_000, 0.001)
    assert s.looks[0] == 100 and s.looks[-1] == 100_000
    assert all(b > a for a, b in zip(s.looks, s.looks[1:], strict=False))
    assert all(1.45 <= b / a <= 2.0 for a, b in zip(s.looks[:-2], s.looks[1:-1], strict=False))
    assert sum(s.alphas) <= 0.001 and s.alphas[-1] == 0.0005
    assert look_schedule(100_000, 0.001) == s  # a function of (n_max, alpha) only
    assert look_schedule(60, 0.01).looks == (60,) and look_schedule(60, 0.01).alphas == (0.01,)


@pytest.mark.parametrize("n_max,alpha", [(100_000, 0.001), (2000, 0.05), (350, 0.01)])
def test_bound_at_each_look_is_clopper_pearson_at_alpha_k(n_max, alpha):
    s = look_schedule(n_max, alpha)
    rng = np.random.default_rng(0)
    for look, (n, a) in enumerate(zip(s.looks, s.alphas, strict=True)):
        k = rng.integers(1, n + 1, size=20)
        got = lower_bound(k, look, s)
        assert np.allclose(got, beta.ppf(a, k, n - k + 1), rtol=0, atol=1e-12)
        assert np.allclose(got, proportion_confint(k, n, alpha=2 * a, method="beta")[0], atol=1e-9)


def test_union_bound_covers_simultaneously_over_all_looks():
    """P[exists k: L_k > p] <= alpha, estimated with 200,000 binomial paths per p (pure statistics)."""
    alpha, trials = 0.05, 200_000
    s = look_schedule(3000, alpha)
    rng = np.random.default_rng(1)
    for p in (0.3, 0.69, 0.97):
        steps = np.diff((0, *s.looks))
        counts = np.cumsum(rng.binomial(steps, p, size=(trials, len(steps))), axis=1)
        bounds = np.stack([lower_bound(counts[:, j], j, s) for j in range(len(steps))], axis=1)
        missed = int((bounds > p).any(axis=1).sum())
        assert binomtest(missed, trials, alpha, alternative="greater").pvalue > 1e-3, (p, missed)
        # and alpha at every look (no union bound) is not a confidence sequence: this check has power
        naive = np.stack([clopper_pearson_lower(counts[:, j], s.looks[j], alpha) for j in range(len(steps))], 1)
        assert (naive > p).any(axis=1).mean() > 1.5 * alpha


def test_mixture_confidence_sequence_covers_over_all_looks():
    alpha, trials, p = 0.05, 4000, 0.8
    looks = look_schedule(3000, alpha).looks
    rng = np.random.default_rng(2)
    counts = np.cumsum(rng.binomial(np.diff((0, *looks)), p, size=(trials, len(looks))), axis=1)
    bounds = np.stack([mixture_lower(counts[:, j], n, alpha) for j, n in enumerate(looks)], axis=1)
    missed = int((bounds > p).any(axis=1).sum())
    assert binomtest(missed, trials, alpha, alternative="greater").pvalue > 1e-3, missed
    assert np.median(bounds[:, -1]) > p - 0.05  # not vacuous


def test_max_certifiable_radius_and_default_table():
    top = max_certifiable_radius(100_000, 0.001, 0.5)
    assert top == pytest.approx(0.5 * norm.ppf(0.0005 ** (1 / 100_000)), rel=1e-9)
    assert default_stop_radii(0.5, 100_000, 0.001) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert default_stop_radii(1.0, 100_000, 0.001)[-1] == 3.5 <= max_certifiable_radius(100_000, 0.001, 1.0)


@pytest.mark.parametrize("radii,words", [([0.5, 0.25], "increasing"), ([-0.1, 0.2], ">= 0"), ([0.1, 0.1], "increasing"),
                                         ([float("inf")], "finite"), ([], "at least one"), ([0.0, 2.0], "cap")])
def test_check_radii_refuses_bad_tables_naming_the_field(radii, words):
    with pytest.raises(ConfigError) as err:
        check_stop_radii(radii, 0.5, 100_000, 0.001)
    assert err.value.field == "radii" and words in str(err.value)


# --------------------------------------------------------------------------------------------------
# the stopping rule
# --------------------------------------------------------------------------------------------------


def _votes(count, n: int) -> Tally:
    """Hard votes of two classes: count for cA (class 0) among n."""
    count = np.asarray(count, dtype=np.int64)
    return Tally(np.full(count.shape, n), np.stack([count, n - count], axis=1))


def _decide(count, look, schedule, radii, sigma) -> Decision:
    count = np.asarray(count)
    return decide(_votes(count, schedule.looks[look]), np.zeros(count.shape, np.int64), look, schedule, radii, sigma)


def test_decide_settles_abstains_continues_and_caps():
    s = look_schedule(100_000, 0.001)
    sigma, radii = 0.5, [0.0, 0.5, 1.0]
    # look 0: n = 100 -- all votes: certified at 0 and 0.5 (bound ~0.9, r ~ 0.64), 1.0 still in reach: go on;
    # 0 of 100: pA < 1/2 is clear; 52 and 75 of 100: undecided
    d = _decide(np.array([100, 0, 52, 75]), 0, s, radii, sigma)
    assert d.stop.tolist() == [False, True, False, False]
    assert d.reason[1] == "abstain"
    # 7000 of 9300: certified at 0 (r ~ 0.31); even pA at its upper estimate (~0.767) cannot reach 0.5
    d = _decide(np.array([7000]), s.looks.index(9300), s, radii, sigma)
    assert d.stop[0] and d.reason[0] == "settled" and 0 < gaussian_radius(d.p_lower, sigma)[0] < 0.5
    # once the top radius is certified, stop: 9300 of 9300 -> r = 0.5 * Phi^-1(~0.9989) > 1.0
    look = s.looks.index(9300)
    d = _decide(np.array([9300]), look, s, radii, sigma)
    assert d.stop[0] and d.reason[0] == "settled" and gaussian_radius(d.p_lower, sigma)[0] >= 1.0
    # the cap stops everyone
    d = _decide(np.array([50_000, 99_000]), len(s.looks) - 1, s, radii, sigma)
    assert d.stop.all() and set(d.reason) == {"cap"}
    # one radius: the question is "certified at r?"
    d = _decide(np.array([99, 40]), 0, s, [0.25], sigma)
    assert d.stop.tolist() == [True, True] and d.reason.tolist() == ["settled", "abstain"]


# --------------------------------------------------------------------------------------------------
# the job: rows, resume, bad settings through the command line
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "data", shards=3, per_shard=8)
    return str(tmp_path / "data" / "data-{000000..000002}.tar")


SEQ = {"sampling": "sequential", "n": 5000, "radii": "0 0.25 0.5"}
ROW_COLS = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius",
            "n", "n_max", "sampling", "stop_reason", "correct"]


def test_fixed_rows_say_fixed_and_sequential_rows_say_how_they_stopped(tmp_path, shards):
    fixed, seq = tmp_path / "fixed", tmp_path / "seq"
    assert main(certify_args(shards, fixed)) == 0
    f = table(fixed)
    assert f["sampling"].to_list() == ["fixed"] * 24 and f["stop_reason"].to_list() == ["cap"] * 24
    assert (f["n_max"] == 400).all() and (f["n"] == 400).all()
    assert main(certify_args(shards, seq, **SEQ)) == 0
    s = table(seq)
    assert (s["sampling"] == "sequential").all() and (s["n_max"] == 5000).all() and s.height == 24
    assert set(s["stop_reason"]) <= {"settled", "abstain", "cap"}
    assert (s["n"] <= 5000).all() and (s["n"] >= 100).all()
    assert ((s["prediction"] == -1) == (s["p_lower"] < 0.5)).all()
    assert (s.filter(pl.col("stop_reason") == "abstain")["prediction"] == -1).all()
    looks = look_schedule(5000, 0.001)
    for r in s.iter_rows(named=True):
        assert r["n"] in looks.looks
        assert r["p_lower"] == pytest.approx(float(lower_bound(r["count_top"], looks.looks.index(r["n"]), looks)))


def test_resume_and_rerun_give_identical_rows(tmp_path, shards):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(certify_args(shards, a, **SEQ)) == 0
    result = run(certify_args(shards, b, **SEQ, **{"unit-size": 3, "batch-size": 97}))
    assert result.returncode == 0, result.stderr
    units = sorted((b / "units").glob("*.parquet"))
    for path in units[::2]:  # as if the job had died before committing these
        path.unlink()
    result = run(certify_args(shards, b, **SEQ, **{"unit-size": 3, "batch-size": 97}))
    assert result.returncode == 0, result.stderr
    assert f"{len(units) - len(units[::2])} already committed, {len(units[::2])} to run" in result.stderr
    assert table(a).select(ROW_COLS).equals(table(b).select(ROW_COLS))


@pytest.mark.parametrize("radii,words", [("0.5,0.25", "increasing"), ("-0.25", ">= 0"), ("0 0.5 3", "cap")])
def test_bad_radii_are_refused_before_compute(tmp_path, shards, radii, words, capsys):
    out = tmp_path / "out"
    assert main(certify_args(shards, out, **{**SEQ, "radii": radii})) == 2
    err = capsys.readouterr().err
    assert "radii:" in err and words in err
    assert not out.exists()
