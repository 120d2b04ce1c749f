"""Sequential CERTIFY: an anytime-valid lower bound on pA and the stopping rule (numpy and scipy only).

The estimation samples of an input are drawn in rounds, and after each round (a *look*) the input may
stop. The lower bound must therefore hold at whatever look the input stops at, even though that look
is chosen by looking at the data. rscert uses a **union bound over a fixed geometric schedule of
looks** (docs/sequential.md gives the simulation that chose it over a beta-mixture confidence
sequence with Ville's inequality):

* Schedule: cumulative sample counts n_1 < n_2 < ... < n_K = n_max, n_1 = ``FIRST_LOOK`` and
  n_{k+1} = ceil(RATIO * n_k) (rounded up to whole ``ROUND_TO`` blocks), fixed before any sample is drawn.
* Levels: alpha_K = alpha / 2 at the cap and alpha_k = alpha / (2 (K - 1)) at each earlier look, so
  sum_k alpha_k = alpha (with a single look, alpha_1 = alpha). Half of alpha at the cap keeps the inputs
  that need every sample close to fixed sampling's bound.
* Bound at look k:  L_k = CP_lower(S_k, n_k, alpha_k) = Beta.ppf(alpha_k; S_k, n_k - S_k + 1)  (eq. 1)
  where S_k is the number of votes for the selected class among the first n_k estimation samples.

Guarantee (eq. 2): for the true pA,  P[exists k: L_k > pA] <= sum_k P[L_k > pA] <= sum_k alpha_k <= alpha,
because each S_k ~ Binomial(n_k, pA) and eq. 1 is an exact (1 - alpha_k) Clopper-Pearson bound. The event
"L_T > pA" at a stopping look T (any rule, however it depends on the data) is contained in the event
"exists k: L_k > pA", so P[L_T > pA] <= alpha: the radius sigma * Phi^-1(L_T) is a certificate of
Cohen et al. (2019, Theorem 1) with probability at least 1 - alpha, whatever the stopping rule. Nothing
here depends on the noise family: eq. 2 is about the Bernoulli probability pA of the fixed class, however
the votes were produced, and a family's radius R(L_T) (rscert.stats.families) is a fixed increasing
function of L_T, so it is a certificate of that family and norm with the same probability. A table
radius r is certified exactly when L_T >= R^-1(r), the formula's threshold (docs/families.md).

The stopping rule (:func:`decide`) may use anything else, in particular upper estimates of pA that
have no share of alpha: they only choose T, and eq. 2 holds for every T.

Every ``--bound`` and ``--vote`` (:mod:`rscert.stats.pair`, docs/bounds.md) uses the same looks and
levels: eq. 1 becomes the pair of bounds of that module at level alpha_k (pA_lower at alpha_k with pa;
pA_lower and pB_upper at alpha_k / 2 each with top2; Clopper-Pearson on votes, empirical Bernstein on
soft scores). Each is valid at its fixed look, so eq. 2 and the argument above hold unchanged for the
pair, and the radius of the pair at T (rscert.stats.pair.PairFormula, increasing in pA_lower and
decreasing in pB_upper) is a certificate with probability >= 1 - alpha. With hard votes and pa, the pair
is eq. 1 and 1 - eq. 1, and every decision is the one eq. 1 alone gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln
from scipy.stats import beta as beta_dist

from rscert.errors import ConfigError
from rscert.stats.bernstein import eb_lower, eb_upper, eb_width, sample_variance
from rscert.stats.families import RadiusFormula
from rscert.stats.pair import TOP2_SHARE, PairBounds, PairFormula, Tally, _others, as_pair, pair_bounds, runner_up
from rscert.stats.smoothing import check_alpha, check_count, clopper_pearson_lower

FIRST_LOOK = 100
"""Estimation samples before the first look."""
RATIO = 1.5
"""Growth of the cumulative sample count from one look to the next."""
ROUND_TO = 100
"""Looks fall on whole blocks of this many samples (the sampler's unit of work), except the cap."""
STOP_LEVEL = 0.001
"""One-sided level of the Clopper-Pearson *upper* estimate used only to stop (no share of alpha)."""
DEFAULT_STEP = 0.5
"""Without --radii: 0, 0.5 sigma, sigma, 1.5 sigma, ... up to what the cap can certify."""

STOP_REASONS = ("settled", "abstain", "cap")


@dataclass(frozen=True)
class Schedule:
    """The looks (cumulative estimation samples, the last is the cap) and their levels alpha_k."""

    looks: tuple[int, ...]
    alphas: tuple[float, ...]

    @property
    def n_max(self) -> int:
        return self.looks[-1]

    def describe(self) -> dict:
        """What fixes the schedule (for the run's fingerprint)."""
        return {"rule": "clopper-pearson-union-geometric", "looks": list(self.looks), "alphas": list(self.alphas),
                "stop_level": STOP_LEVEL}


def look_schedule(n_max: int, alpha: float, first: int = FIRST_LOOK, ratio: float = RATIO) -> Schedule:
    """The fixed geometric schedule n_1 = min(first, n_max) < ... < n_K = n_max and its levels alpha_k."""
    n_max = check_count(n_max, "n")
    alpha = check_alpha(alpha)
    if ratio <= 1:
        raise ConfigError("ratio", f"must be > 1, got {ratio!r}")
    looks = []
    n = min(int(first), n_max)
    while n < n_max:
        looks.append(n)
        n = max(n + 1, math.ceil(n * ratio / ROUND_TO) * ROUND_TO)
    looks.append(n_max)
    if len(looks) == 1:
        return Schedule(looks=tuple(looks), alphas=(alpha,))
    early = alpha / 2 / (len(looks) - 1) * (1 - 1e-12)  # so that the float sum stays <= alpha
    return Schedule(looks=tuple(looks), alphas=tuple([early] * (len(looks) - 1) + [alpha / 2]))


def lower_bound(count: ArrayLike, look: int, schedule: Schedule) -> NDArray[np.float64]:
    """Eq. 1: the anytime-valid lower bound on pA at look ``look`` (0-based) from ``count`` of n_look votes."""
    return clopper_pearson_lower(count, schedule.looks[look], schedule.alphas[look])


Radius = float | RadiusFormula | PairFormula
"""A run's radius formula: sigma (Gaussian l2, pa), a family's RadiusFormula (pa), or a PairFormula."""


def pair_at_look(tally: Tally, top: ArrayLike, look: int, schedule: Schedule, bound: str) -> PairBounds:
    """Eq. 1 for every --bound and --vote: the pair of bounds of :mod:`rscert.stats.pair` at level alpha_look."""
    return pair_bounds(tally, top, schedule.alphas[look], bound)


def _perfect(n: int, vote: str) -> Tally:
    """One input whose every sample gives cA the whole vote (hard) or the whole score (soft), of 2 classes."""
    if vote == "hard":
        return Tally(np.array([n]), np.array([[n, 0]]))
    return Tally(np.array([n]), np.array([[float(n), 0.0]]), np.array([[float(n), 0.0]]))


def max_certifiable_radius(n_max: int, alpha: float, radius: Radius, vote: str = "hard") -> float:
    """The largest radius sequential sampling can certify: a perfect tally at the cap (eq. 1 at k = K).
    ``radius``: the run's formula (rscert.stats.pair.PairFormula, or a family's RadiusFormula, or sigma
    for Gaussian l2, both with --bound pa); with hard votes and pa, R(CP_lower(n_max, n_max, alpha_K))."""
    form = as_pair(radius)
    schedule = look_schedule(n_max, alpha)
    pair = pair_at_look(_perfect(schedule.n_max, vote), [0], len(schedule.looks) - 1, schedule, form.bound)
    return float(form(pair.p_lower, pair.p_upper)[0])


def default_stop_radii(radius: Radius, n_max: int, alpha: float, vote: str = "hard") -> list[float]:
    """0, u/2, u, 3u/2, ... up to what the cap can certify (the published tables' spacing), u the
    formula's unit: sigma (Gaussian l2, and every radius that does not depend on the dimension), else
    the radius at the bound Phi(1) (:meth:`RadiusFormula.unit`)."""
    form = as_pair(radius)
    top = max_certifiable_radius(n_max, alpha, form, vote)
    step = DEFAULT_STEP * form.radius.unit()
    count = int(math.floor(top / step + 1e-9)) + 1
    return [round(i * step, 12) for i in range(count)]


def check_stop_radii(radii: Sequence[float], radius: Radius, n_max: int, alpha: float, cap: bool = True,
                     vote: str = "hard") -> list[float]:
    """--radii must be non-empty, finite, >= 0, strictly increasing and (``cap``) certifiable at the cap:
    at most :func:`max_certifiable_radius` (with hard votes and pa, R(CP_lower(n_max, n_max, alpha_K)),
    alpha_K being the cap's share of alpha and R the run's radius formula)."""
    values = [float(r) for r in radii]
    if not values:
        raise ConfigError("radii", "give at least one radius")
    if not all(np.isfinite(values)):
        raise ConfigError("radii", f"must be finite numbers, got {values}")
    if any(r < 0 for r in values):
        raise ConfigError("radii", f"must be >= 0, got {values}")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ConfigError("radii", f"must be strictly increasing, got {values}")
    if not cap:
        return values
    form = as_pair(radius)
    top = max_certifiable_radius(n_max, alpha, form, vote)
    if values[-1] > top:
        raise ConfigError("radii", f"{values[-1]:g} is beyond what the cap n = {n_max} can certify at "
                                   f"alpha = {alpha:g} with {form.radius.describe()}, --bound {form.bound} and "
                                   f"--vote {vote} (at most {top:.4f})")
    return values


def certified_cells(p_lower: ArrayLike, radii: Sequence[float], radius: Radius,
                    p_upper: ArrayLike | None = None) -> NDArray[np.int64]:
    """How many of the (sorted) radii a pair of bounds certifies: r is certified iff the pair certifies cA
    and its radius is >= r (the analysis' "radius >= r" for a non-abstaining row). ``p_upper`` defaults to
    1 - p_lower (--bound pa: then r is certified iff p_lower >= 1/2 and p_lower >= R^-1(r), the formula's
    threshold): each table radius is a threshold on the bounds through the radius formula's inverse."""
    form = as_pair(radius)
    lo = np.atleast_1d(np.asarray(p_lower, dtype=np.float64))
    hi = 1.0 - lo if p_upper is None else np.atleast_1d(np.asarray(p_upper, dtype=np.float64))
    rad = form(lo, hi)
    r = np.asarray(radii, dtype=np.float64)
    return np.where(form.certified(lo, hi), (rad[:, None] >= r[None, :]).sum(axis=1), 0).astype(np.int64)


def _optimistic(tally: Tally, top: NDArray[np.int64], bound: str) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """(pA estimate, its variance, pB estimate, its variance) leaning towards certifying: pA at its one-sided
    (1 - STOP_LEVEL) upper bound, pB (top2) at its lower one; variances only for soft votes."""
    rows = np.arange(top.size)
    n = np.asarray(tally.n, dtype=np.float64)
    total = np.asarray(tally.total)
    zeros = np.zeros(top.size)
    if tally.vote == "hard":
        k = total[rows, top].astype(np.float64)
        with np.errstate(all="ignore"):
            up_a = np.where(k >= n, 1.0, beta_dist.isf(STOP_LEVEL, k + 1, n - k))
        if bound == "pa" or total.shape[1] < 2:
            return up_a, zeros, zeros, zeros
        kb = runner_up(total, top).astype(np.float64)
        with np.errstate(all="ignore"):
            low_b = np.where(kb <= 0, 0.0, beta_dist.ppf(STOP_LEVEL, kb, n - kb + 1))
        return up_a, zeros, low_b, zeros
    sq = np.asarray(tally.total_sq, np.float64)
    up_a = eb_upper(total[rows, top], sq[rows, top], n, STOP_LEVEL)
    var_a = sample_variance(total[rows, top], sq[rows, top], n)
    if bound == "pa" or total.shape[1] < 2:
        return up_a, var_a, zeros, zeros
    others_s, others_q = _others(total, top), _others(sq, top)
    pick = np.argmax(others_s, axis=1)
    sb, qb = others_s[rows, pick], others_q[rows, pick]
    return up_a, var_a, eb_lower(sb, qb, n, STOP_LEVEL), sample_variance(sb, qb, n)


def reachable_radius(tally: Tally, top: ArrayLike, look: int, schedule: Schedule, radius: Radius
                     ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The largest radius (and whether any certifies) the pair would give at a later look if the votes went
    on at optimistic rates (:func:`_optimistic`): hard votes, the Clopper-Pearson bounds of those rates at
    n_j (fractional counts); soft, the rate -/+ the empirical Bernstein half-width at n_j with the variance
    seen so far. Used only to stop (no share of alpha)."""
    form = as_pair(radius)
    top_arr = np.asarray(top, dtype=np.int64)
    up_a, var_a, low_b, var_b = _optimistic(tally, top_arr, form.bound)
    share = 1.0 if form.bound == "pa" else TOP2_SHARE
    best = np.zeros(top_arr.size)
    any_ok = np.zeros(top_arr.size, dtype=bool)
    for j in range(look + 1, len(schedule.looks)):
        nj, level = schedule.looks[j], schedule.alphas[j] * share
        if tally.vote == "hard":
            ka, kb = up_a * nj, low_b * nj
            with np.errstate(all="ignore"):
                lo = np.nan_to_num(np.where(ka <= 0, 0.0, beta_dist.ppf(level, ka, nj - ka + 1)), nan=1.0)
                hi = np.nan_to_num(np.where(kb >= nj, 1.0, beta_dist.isf(level, kb + 1, nj - kb)), nan=0.0)
        else:
            lo = np.clip(up_a - eb_width(var_a, nj, level), 0.0, 1.0)
            hi = np.clip(low_b + eb_width(var_b, nj, level), 0.0, 1.0)
        hi = 1.0 - lo if form.bound == "pa" else np.minimum(hi, 1.0 - lo)
        ok = form.certified(lo, hi)
        best = np.maximum(best, np.where(ok, form(lo, hi), 0.0))
        any_ok |= ok
    return best, any_ok


@dataclass(frozen=True)
class Decision:
    """The state after a look: the pair of bounds (eq. 1; p_upper = 1 - p_lower with pa), whether to stop,
    and why ("" while going on)."""

    p_lower: NDArray[np.float64]
    p_upper: NDArray[np.float64]
    stop: NDArray[np.bool_]
    reason: NDArray[np.str_]


def decide(tally: Tally, top: ArrayLike, look: int, schedule: Schedule, radii: Sequence[float],
           radius: Radius) -> Decision:
    """After look ``look`` (0-based) with ``tally`` of the n_look estimation samples so far: stop or go on.

    Stop when (a) every asked radius is certified (:func:`certified_cells`: each table radius is a
    threshold on the pair), or (b) the next asked radius cannot be reached at any later look even at
    optimistic rates (:func:`reachable_radius`; "settled" if the pair certifies cA at some radius, else
    "abstain"), or (c) at the cap. Soundness does not depend on this rule (module docstring, eq. 2).
    ``radius``: the run's formula (any family, norm and bound), or sigma for Gaussian l2 with pa.
    """
    form = as_pair(radius)
    top_arr = np.asarray(top, dtype=np.int64)
    pair = pair_at_look(tally, top_arr, look, schedule, form.bound)
    ok = form.certified(pair.p_lower, pair.p_upper)
    cells = certified_cells(pair.p_lower, radii, form, pair.p_upper)
    if look == len(schedule.looks) - 1:
        return Decision(pair.p_lower, pair.p_upper, np.ones(top_arr.shape, bool), np.full(top_arr.shape, "cap"))
    done = cells >= len(radii)
    best, best_ok = reachable_radius(tally, top_arr, look, schedule, form)
    r = np.asarray(radii, dtype=np.float64)
    best_cells = np.where(best_ok, (best[:, None] >= r[None, :]).sum(axis=1), 0)
    stuck = best_cells <= cells
    stop = done | stuck
    reason = np.where(stop, np.where(ok, "settled", "abstain"), "")
    return Decision(pair.p_lower, pair.p_upper, stop, reason)


# --------------------------------------------------------------------------------------------------
# the alternative that was measured against (bench/sequential_bench.py --simulate), not used to certify
# --------------------------------------------------------------------------------------------------


def mixture_lower(count: ArrayLike, n: ArrayLike, alpha: float, a: float = 1.0, b: float = 1.0) -> NDArray[np.float64]:
    """Lower end of a one-sided beta-mixture confidence sequence for a Bernoulli mean (Ville's inequality).

    For a null value p the mixture M_n(p) = E_{q ~ Beta(a, b) | q >= p}[(q/p)^S ((1-q)/(1-p))^(n-S)] is a
    nonnegative martingale with M_0 = 1 under pA = p, so P[exists n: M_n(pA) >= 1/alpha] <= alpha (Ville).
    Closed form: log M = log B(a+S, b+n-S) + log sf_{Beta(a+S, b+n-S)}(p) - log B(a, b) - log sf_{Beta(a,b)}(p)
    - S log p - (n-S) log(1-p). The bound is the largest p' such that M_n(p) >= 1/alpha for all p < p'
    (found by bisection on a log-spaced grid of 1-p; M_n decreases in p below S/n).
    """
    k = np.atleast_1d(np.asarray(count, dtype=np.float64))
    n_arr = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    target = math.log(1.0 / alpha)

    def log_m(p: NDArray[np.float64]) -> NDArray[np.float64]:
        a1, b1 = a + k, b + n_arr - k
        with np.errstate(all="ignore"):
            return (betaln(a1, b1) + beta_dist.logsf(p, a1, b1) - betaln(a, b) - beta_dist.logsf(p, a, b)
                    - k * np.log(p) - (n_arr - k) * np.log1p(-p))

    lo = np.full(k.shape, 1e-12)
    hi = np.clip(k / n_arr, 1e-12, 1 - 1e-15)
    reject_hi = log_m(hi) >= target
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        rej = log_m(mid) >= target
        lo = np.where(rej, mid, lo)
        hi = np.where(rej, hi, mid)
    out = np.where(reject_hi, hi, lo)
    return np.where(k == 0, 0.0, out)

