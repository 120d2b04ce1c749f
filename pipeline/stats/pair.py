"""The bounds behind a certificate for each ``--vote`` and ``--bound``, and Theorem 1's radius (numpy/scipy).

Let h_c(x) be the base classifier's vote for class c (hard: the indicator [f(x) = c]; soft: softmax(f(x)/T)_c
in [0, 1]) and p_c = E[h_c(x + e)] under the run's noise e. Cohen, Rosenfeld & Kolter (ICML 2019), Theorem 1,
for Gaussian noise: if p_cA >= pA_lower >= pB_upper >= max_{c != cA} p_c, then argmax_c p_c(x + delta) = cA for

    ||delta||_2 < R = sigma / 2 * (Phi^-1(pA_lower) - Phi^-1(pB_upper)).                       (eq. T1)

The proof (Neyman-Pearson for each class separately) holds for [0, 1]-valued votes as well as for
indicators; for soft votes it is Salman et al. (NeurIPS 2019), Lemma 2: Phi^-1(G_c) is 1/sigma-Lipschitz
in L2 for the smoothed soft classifier G(x) = E[softmax(f(x + e)/T)]. What is certified with
``--vote soft`` is that smoothed *soft* classifier, argmax_c G_c, not the vote-counting g.

Every family of :mod:`rscert.stats.families` states its radius R(p) from a lower bound p >= 1/2 on pA
(with pB <= 1 - pA). A pair (pA_lower, pB_upper) maps to an *equivalent bound* p_eq, and the certified
radius is R(p_eq) in the run's norm (conversions included), the largest of:

* every family, the **binary reduction** p_eq = (1 + pA_lower - pB_upper) / 2: for each c != cA, the
  [0, 1]-valued classifier h_cA + (1 - h_cA - h_c) / 2 has mean (1 + p_cA - p_c) / 2 >= p_eq, and its
  smoothed mean exceeds 1/2 exactly when p_cA > p_c; R(p_eq) keeps it above 1/2 (R holds for
  [0, 1]-valued classifiers: Neyman-Pearson with randomised tests, or total variation), so cA stays ahead
  of every c. For uniform noise this is exact: R = lambda (pA - pB) in l1.                       (eq. R2)
* gaussian, eq. T1: p_eq = Phi((Phi^-1(pA_lower) - Phi^-1(pB_upper)) / 2), so R(p_eq) = eq. T1 in l2.
  discrete-gaussian likewise: at an 8-bit input its smoothed classifier is the Gaussian one of f∘round
  (rscert.stats.discrete_gaussian, eq. 2), for which Theorem 1 holds as stated.
* laplace (Teng et al., ICLR 2020, Theorem 1; the likelihood ratio of Laplace noise shifted by delta lies
  in [exp(-||delta||_1 / lambda), exp(||delta||_1 / lambda)]): lambda / 2 ln(pA_lower / pB_upper), i.e.
  p_eq = 1 - sqrt(pB_upper / pA_lower) / 2 in the family's R = -lambda ln(2 (1 - p)).

* ``--bound pa`` (Cohen et al.'s CERTIFY): pB_upper = 1 - pA_lower (valid since sum_c p_c = 1), p_eq =
  pA_lower: the family's own radius; all of alpha goes to pA_lower. Certified iff pA_lower >= 1/2.
* ``--bound top2`` (Theorem 1 as stated): **Bonferroni split**, pA_lower at level alpha/2 and pB_upper at
  level alpha/2, so both hold together with probability >= 1 - alpha. pB_upper bounds the largest
  p_c, c != cA: let c* be the (fixed, unknown) class with the largest p_c among c != cA; the bound of
  the *observed* runner-up (the class with most estimation votes after cA; soft: the largest upper
  bound over c != cA) is >= the bound of c*, which covers p_c* with probability >= 1 - alpha/2, so no
  union over classes is needed. Then pB_upper is capped at 1 - pA_lower (valid on the same event), so
  top2 never certifies less than pa would at alpha/2. Certified (prediction cA) iff pA_lower > pB_upper.

Bounds per vote: hard votes, the one-sided Clopper-Pearson bounds of :mod:`rscert.stats.smoothing` on vote
counts; soft votes, the empirical Bernstein bounds of :mod:`rscert.stats.bernstein` on the sums of scores
and of their squares. cA is chosen from the selection samples, independent of the estimation samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm

from rscert.constants import BOUNDS, VOTES
from rscert.errors import ConfigError
from rscert.stats.bernstein import eb_lower, eb_upper
from rscert.stats.families import RadiusFormula, as_formula
from rscert.stats.smoothing import ABSTAIN, check_alpha, clopper_pearson_lower, clopper_pearson_upper

TOP2_SHARE = 0.5
"""Share of alpha for each of pA_lower and pB_upper under ``--bound top2`` (Bonferroni)."""


def check_bound(bound: str, field: str = "bound") -> str:
    if bound not in BOUNDS:
        raise ConfigError(field, f"must be one of {', '.join(BOUNDS)}, got {bound!r}")
    return bound


def check_vote(vote: str, field: str = "vote") -> str:
    if vote not in VOTES:
        raise ConfigError(field, f"must be one of {', '.join(VOTES)}, got {vote!r}")
    return vote


def check_temperature(temperature: float | None, vote: str, field: str = "temperature") -> float | None:
    """Soft votes need a finite temperature T > 0 (default 1); hard votes take none."""
    if vote == "hard":
        if temperature is not None:
            raise ConfigError(field, "applies only to --vote soft")
        return None
    if temperature is None:
        return 1.0
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ConfigError(field, f"must be a number, got {temperature!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(field, f"must be finite and > 0, got {temperature!r}")
    return value


@dataclass(frozen=True)
class Tally:
    """What the sampler accumulated for a batch of inputs over n samples each.

    Hard votes: ``total`` = vote counts [inputs x classes] (int), ``total_sq`` None. Soft votes:
    ``total`` = sum of softmax scores, ``total_sq`` = sum of their squares, both [inputs x classes] float64.
    """

    n: NDArray[np.int64]
    total: NDArray
    total_sq: NDArray[np.float64] | None = None

    @property
    def vote(self) -> str:
        return "hard" if self.total_sq is None else "soft"

    def __add__(self, other: Tally) -> Tally:
        sq = None if self.total_sq is None else self.total_sq + other.total_sq
        return Tally(self.n + other.n, self.total + other.total, sq)


def _others(values: NDArray, top: NDArray[np.int64]) -> NDArray:
    """values with the column of each row's top class removed: [inputs x (classes - 1)]."""
    mask = np.ones(values.shape, dtype=bool)
    mask[np.arange(values.shape[0]), top] = False
    return values[mask].reshape(values.shape[0], values.shape[1] - 1)


def runner_up(total: ArrayLike, top: ArrayLike) -> NDArray:
    """The largest entry of each row among the classes other than ``top`` (0 with a single class)."""
    values = np.asarray(total)
    top_arr = np.asarray(top, dtype=np.int64)
    if values.shape[1] < 2:
        return np.zeros(values.shape[0], dtype=values.dtype)
    return _others(values, top_arr).max(axis=1)


@dataclass(frozen=True)
class PairBounds:
    """pA_lower and pB_upper for each input (pa: pB_upper = 1 - pA_lower)."""

    p_lower: NDArray[np.float64]
    p_upper: NDArray[np.float64]


def pair_bounds(tally: Tally, top: ArrayLike, alpha: float, bound: str) -> PairBounds:
    """(pA_lower, pB_upper) of the class ``top`` at joint level alpha (module docstring)."""
    alpha = check_alpha(alpha)
    check_bound(bound)
    top_arr = np.asarray(top, dtype=np.int64)
    rows = np.arange(top_arr.size)
    level = alpha if bound == "pa" else alpha * TOP2_SHARE
    total = np.asarray(tally.total)
    if tally.vote == "hard":
        lower = clopper_pearson_lower(total[rows, top_arr], tally.n, level)
    else:
        sq = np.asarray(tally.total_sq, np.float64)
        lower = eb_lower(total[rows, top_arr], sq[rows, top_arr], tally.n, level)
    if bound == "pa":
        return PairBounds(lower, 1.0 - lower)
    if total.shape[1] < 2:
        upper = np.zeros(top_arr.size)
    elif tally.vote == "hard":
        upper = clopper_pearson_upper(runner_up(total, top_arr), tally.n, level)
    else:
        n_col = np.asarray(tally.n, np.float64)[:, None]
        upper = eb_upper(_others(total, top_arr), _others(sq, top_arr), n_col, level).max(axis=1)
    return PairBounds(lower, np.minimum(upper, 1.0 - lower))


def _gaussian_t1(lo: NDArray[np.float64], hi: NDArray[np.float64]) -> NDArray[np.float64]:
    return norm.cdf((norm.ppf(lo) - norm.ppf(hi)) / 2.0)  # sigma Phi^-1 of this is eq. T1


def _laplace_ratio(lo: NDArray[np.float64], hi: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 - 0.5 * np.sqrt(hi / lo)  # -lambda ln(2 (1 - this)) = lambda / 2 ln(lo / hi)


TOP2_FORMS = {"gaussian": _gaussian_t1, "discrete-gaussian": _gaussian_t1, "laplace": _laplace_ratio}
"""Family-specific equivalent bounds of a pair beyond the binary reduction (module docstring)."""


def equivalent_bound(family: str, p_lower: ArrayLike, p_upper: ArrayLike) -> NDArray[np.float64]:
    """The bound p_eq whose family radius R(p_eq) the pair certifies (module docstring): the largest of the
    binary reduction (1 + pA_lower - pB_upper) / 2 and the family's own form; below 1/2 when lo <= hi."""
    lo = np.asarray(p_lower, dtype=np.float64)
    hi = np.asarray(p_upper, dtype=np.float64)
    p = (1.0 + lo - hi) / 2.0
    form = TOP2_FORMS.get(family)
    if form is not None:
        with np.errstate(all="ignore"):
            p = np.where(lo > hi, np.fmax(p, form(lo, hi)), p)
    return p


def certified(p_lower: ArrayLike, p_upper: ArrayLike, bound: str) -> NDArray[np.bool_]:
    """Whether the pair certifies cA: top2, pA_lower > pB_upper; pa, pA_lower >= 1/2 (Cohen et al.'s rule)."""
    lo = np.asarray(p_lower, np.float64)
    return lo >= 0.5 if check_bound(bound) == "pa" else lo > np.asarray(p_upper, np.float64)


@dataclass(frozen=True)
class PairFormula:
    """A pair of bounds -> certified radius: the family's :class:`rscert.stats.families.RadiusFormula`
    (family, sigma, norm, dim) and ``--bound``. ``formula(p_lower, p_upper)`` is R(p_eq) where the pair
    certifies (with pa exactly the family's R(p_lower)), else 0."""

    radius: RadiusFormula
    bound: str = "pa"

    def __post_init__(self) -> None:
        check_bound(self.bound)

    @property
    def sigma(self) -> float:
        return self.radius.sigma

    def equivalent(self, p_lower: ArrayLike, p_upper: ArrayLike) -> NDArray[np.float64]:
        """The bound whose family radius is the pair's: p_lower with pa, :func:`equivalent_bound` with top2."""
        lo = np.asarray(p_lower, np.float64)
        return lo if self.bound == "pa" else equivalent_bound(self.radius.family.name, lo, p_upper)

    def __call__(self, p_lower: ArrayLike, p_upper: ArrayLike) -> NDArray[np.float64]:
        ok = self.certified(p_lower, p_upper)
        p = np.where(ok, self.equivalent(p_lower, p_upper), 0.5)
        return np.where(ok, self.radius(p), 0.0)

    def certified(self, p_lower: ArrayLike, p_upper: ArrayLike) -> NDArray[np.bool_]:
        return certified(p_lower, p_upper, self.bound)


def as_pair(radius: float | RadiusFormula | PairFormula) -> PairFormula:
    """A PairFormula as given; a family's RadiusFormula (or sigma: Gaussian l2) with ``--bound pa``."""
    return radius if isinstance(radius, PairFormula) else PairFormula(as_formula(radius), "pa")


@dataclass(frozen=True)
class PairCertificates:
    """CERTIFY's decision from a pair of bounds: prediction (top class or -1) and radius (eq. T1)."""

    top_class: NDArray[np.int64]
    p_lower: NDArray[np.float64]
    p_upper: NDArray[np.float64]
    prediction: NDArray[np.int64]
    radius: NDArray[np.float64]


def certify_pair(tally: Tally, top: ArrayLike, alpha: float, formula: PairFormula) -> PairCertificates:
    """CERTIFY with ``--bound`` and the vote of ``tally``: with probability >= 1 - alpha over the estimation
    samples, each returned prediction c != -1 satisfies argmax_c' p_c'(x + delta) = c for ||delta|| < radius
    (the formula's norm)."""
    top_arr = np.asarray(top, dtype=np.int64)
    b = pair_bounds(tally, top_arr, alpha, formula.bound)
    ok = formula.certified(b.p_lower, b.p_upper)
    prediction = np.where(ok, top_arr, ABSTAIN).astype(np.int64)
    radius = formula(b.p_lower, b.p_upper)
    return PairCertificates(top_arr, b.p_lower, b.p_upper, prediction, radius)
