"""The statistics of randomized smoothing, from vote counts (numpy and scipy only).

Notation follows Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized
Smoothing" (ICML 2019). The smoothed classifier is g(x) = argmax_c P[f(x + e) = c], e ~ N(0, sigma^2 I).

* Theorem 1 (with the runner-up bounded by pB <= 1 - pA): if P[f(x + e) = cA] >= pA_lower > 1/2, then
  g(x + delta) = cA for every ||delta||_2 < R = sigma * Phi^-1(pA_lower).
* CERTIFY (Section 3.2, pseudocode): n0 selection samples choose cA; n *independent* estimation
  samples give nA votes for cA; pA_lower is the one-sided (1 - alpha) Clopper-Pearson lower bound
  on nA / n; abstain if pA_lower < 1/2. With probability at least 1 - alpha over the sampling, a
  returned (cA, R) satisfies g(x + delta) = cA for all ||delta||_2 < R.
* PREDICT (Section 3.1, Proposition 2): the top two counts among n samples; a two-sided binomial
  test of nA against nA + nB at p = 1/2; abstain when its p-value exceeds alpha. With probability at
  least 1 - alpha, a non-abstaining prediction equals g(x).

Convention (that of the published code, and of rscert): the bound is *one-sided* at level alpha,
``scipy.stats.beta.ppf(alpha, k, n - k + 1)``, i.e. statsmodels' two-sided interval at ``2 * alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import beta, binomtest, norm

from rscert.errors import ConfigError

ABSTAIN = -1


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def check_sigma(sigma: float, field: str = "sigma") -> float:
    """sigma must be a finite number > 0."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise ConfigError(field, f"must be a number, got {sigma!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(field, f"must be finite and > 0, got {sigma!r}")
    return value


def check_alpha(alpha: float, field: str = "alpha") -> float:
    """alpha must lie strictly between 0 and 1."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(field, f"must be a number, got {alpha!r}") from None
    if not (0.0 < value < 1.0):
        raise ConfigError(field, f"must satisfy 0 < alpha < 1, got {alpha!r}")
    return value


def check_count(value: int, field: str, minimum: int = 1) -> int:
    """A sample count (n0, n, ...) must be an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(field, f"must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(field, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_counts(k: ArrayLike, n: ArrayLike, field: str = "k") -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    k_arr = np.asarray(k)
    n_arr = np.asarray(n)
    for name, arr in ((field, k_arr), ("n", n_arr)):
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ConfigError(name, "counts must be whole numbers")
        elif arr.dtype.kind not in "iu":
            raise ConfigError(name, f"counts must be integers, got dtype {arr.dtype}")
    k_int = k_arr.astype(np.int64)
    n_int = n_arr.astype(np.int64)
    if np.any(n_int < 1):
        raise ConfigError("n", "must be >= 1")
    if np.any(k_int < 0) or np.any(k_int > n_int):
        raise ConfigError(field, "counts must lie in [0, n]")
    return k_int, n_int


# ---------------------------------------------------------------------------------------------
# bounds and radius
# ---------------------------------------------------------------------------------------------


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    Guarantee: for K ~ Binomial(n, p), P[clopper_pearson_lower(K, n, alpha) <= p] >= 1 - alpha.
    Formula: the alpha quantile of Beta(k, n - k + 1), and 0 when k = 0 (Clopper & Pearson, 1934).
    Equals ``statsmodels ... proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``.
    """
    alpha = check_alpha(alpha)
    k_int, n_int = _as_counts(k, n)
    with np.errstate(all="ignore"):
        bound = beta.ppf(alpha, k_int, n_int - k_int + 1)
    return np.where(k_int == 0, 0.0, bound).astype(np.float64)


def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on a binomial proportion.

    Guarantee: P[clopper_pearson_upper(K, n, alpha) >= p] >= 1 - alpha.
    Formula: the (1 - alpha) quantile of Beta(k + 1, n - k), and 1 when k = n.
    """
    alpha = check_alpha(alpha)
    k_int, n_int = _as_counts(k, n)
    with np.errstate(all="ignore"):
        bound = beta.isf(alpha, k_int + 1, n_int - k_int)
    return np.where(k_int == n_int, 1.0, bound).astype(np.float64)


def gaussian_radius(p_lower: ArrayLike, sigma: float) -> NDArray[np.float64]:
    """Certified L2 radius sigma * Phi^-1(p_lower) (Theorem 1 with pB = 1 - pA), 0 where p_lower < 1/2."""
    sigma = check_sigma(sigma)
    p = np.asarray(p_lower, dtype=np.float64)
    with np.errstate(all="ignore"):
        radius = sigma * norm.ppf(p)
    return np.where(p < 0.5, 0.0, radius)


# ---------------------------------------------------------------------------------------------
# decisions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """CERTIFY's output for a batch of inputs (arrays of equal length).

    ``top_class`` is the class chosen from the selection votes (kept even when abstaining, so the
    bound can be recomputed at another alpha); ``prediction`` is ``top_class`` or -1 (abstain).
    """

    top_class: NDArray[np.int64]
    count_top: NDArray[np.int64]
    p_lower: NDArray[np.float64]
    prediction: NDArray[np.int64]
    radius: NDArray[np.float64]


def select_top_class(selection_counts: ArrayLike) -> NDArray[np.int64]:
    """The class with most votes per row; ties go to the lowest class index."""
    counts = np.asarray(selection_counts)
    if counts.ndim != 2 or counts.shape[1] < 1:
        raise ConfigError("selection_counts", f"must be a 2-D [inputs x classes] array, got shape {counts.shape}")
    return np.argmax(counts, axis=1).astype(np.int64)


def certify_from_top(count_top: ArrayLike, top_class: ArrayLike, n: int, alpha: float, sigma: float) -> Certificates:
    """CERTIFY's decision given the selected class and its count among n estimation samples.

    Also the way to re-bound stored counts at another alpha without sampling again.
    """
    n = check_count(n, "n")
    sigma = check_sigma(sigma)
    top = np.asarray(top_class, dtype=np.int64)
    k, _ = _as_counts(count_top, n, field="count_top")
    p_lower = clopper_pearson_lower(k, n, alpha)
    certified = p_lower >= 0.5
    prediction = np.where(certified, top, ABSTAIN).astype(np.int64)
    radius = np.where(certified, gaussian_radius(np.where(certified, p_lower, 0.5), sigma), 0.0)
    return Certificates(top_class=top, count_top=k, p_lower=p_lower, prediction=prediction, radius=radius)


def certify_from_counts(
    selection_counts: ArrayLike, estimation_counts: ArrayLike, n: int, alpha: float, sigma: float
) -> Certificates:
    """CERTIFY (Cohen et al. 2019, Section 3.2) from the two independent sets of vote counts.

    Guarantee: with probability at least 1 - alpha over the estimation samples, each returned
    prediction c != -1 satisfies g(x + delta) = c for every ||delta||_2 < radius.
    ``selection_counts`` and ``estimation_counts`` are [inputs x classes]; each row of the latter
    must sum to n.
    """
    n = check_count(n, "n")
    sel = np.asarray(selection_counts)
    est = np.asarray(estimation_counts)
    if est.shape != sel.shape:
        raise ConfigError("estimation_counts", f"shape {est.shape} differs from selection_counts {sel.shape}")
    _as_counts(est, n, field="estimation_counts")
    if np.any(est.sum(axis=1) != n):
        raise ConfigError("estimation_counts", f"each row must sum to n = {n}")
    top = select_top_class(sel)
    count_top = est[np.arange(est.shape[0]), top]
    return certify_from_top(count_top, top, n, alpha, sigma)


@dataclass(frozen=True)
class Predictions:
    """PREDICT's output: the prediction (-1 = abstain) and the binomial test's p-value."""

    prediction: NDArray[np.int64]
    top_class: NDArray[np.int64]
    count_top: NDArray[np.int64]
    count_second: NDArray[np.int64]
    p_value: NDArray[np.float64]


def predict_from_counts(counts: ArrayLike, alpha: float) -> Predictions:
    """PREDICT (Cohen et al. 2019, Section 3.1, Proposition 2) from vote counts [inputs x classes].

    Guarantee: with probability at least 1 - alpha, a returned prediction c != -1 equals g(x).
    The test is scipy's two-sided exact ``binomtest(nA, nA + nB, 0.5)``; abstain if p > alpha.
    """
    alpha = check_alpha(alpha)
    arr = np.asarray(counts)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ConfigError("counts", f"must be a 2-D [inputs x classes>=2] array, got shape {arr.shape}")
    _as_counts(arr, np.maximum(arr.sum(axis=1, keepdims=True), 1), field="counts")
    order = np.argsort(-arr, axis=1, kind="stable")
    rows = np.arange(arr.shape[0])
    top, second = order[:, 0], order[:, 1]
    n_a = arr[rows, top].astype(np.int64)
    n_b = arr[rows, second].astype(np.int64)
    p_values = np.array(
        [binomtest(int(a), int(a + b), 0.5).pvalue if a + b > 0 else 1.0 for a, b in zip(n_a, n_b, strict=True)],
        dtype=np.float64,
    )
    prediction = np.where(p_values > alpha, ABSTAIN, top).astype(np.int64)
    return Predictions(prediction, top.astype(np.int64), n_a, n_b, p_values)


def check_labels(labels: ArrayLike, num_classes: int) -> NDArray[np.int64]:
    """Labels must be integers in [0, num_classes)."""
    arr = np.asarray(labels)
    if arr.size and (arr.dtype.kind not in "iu"):
        raise ConfigError("labels", f"must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= num_classes)
    if np.any(bad):
        raise ConfigError("labels", f"label {int(arr[bad][0])} does not fit {num_classes} classes")
    return arr


def smallest_useful_n(alpha: float, mode: str = "certify") -> int:
    """The fewest estimation samples with which any input can get an answer at ``alpha``.

    CERTIFY abstains unless p_lower >= 1/2; the best case, all n votes for the class, gives
    p_lower = clopper_pearson_lower(n, n, alpha) = alpha^(1/n), so n >= log2(1/alpha) is needed.
    PREDICT abstains unless the two-sided binomial test has p <= alpha; its best case, n votes
    against none, gives p = 2^(1 - n), so n >= log2(2/alpha). Found with the functions used to decide
    (not the closed forms), so it agrees with them exactly."""
    alpha = check_alpha(alpha)
    n = 1
    while True:
        if mode == "predict":
            if binomtest(n, n, 0.5).pvalue <= alpha:
                return n
        elif clopper_pearson_lower(n, n, alpha)[()] >= 0.5:
            return n
        n += 1
