"""Empirical Bernstein confidence bounds on the mean of a [0, 1] variable (numpy only).

Maurer & Pontil, "Empirical Bernstein Bounds and Sample Variance Penalization" (COLT 2009), Theorem 4:
for n >= 2 i.i.d. Z_1 .. Z_n in [0, 1] with mean mu and any delta in (0, 1),

    P[ mu >= Zbar - sqrt(2 V_n log(2/delta) / n) - 7 log(2/delta) / (3 (n - 1)) ] >= 1 - delta     (eq. EB)

where Zbar is the sample mean and V_n = (sum Z_i^2 - n Zbar^2) / (n - 1) the unbiased sample variance
(the theorem is stated for the upper deviation; applied to 1 - Z_i it gives the lower one, and the
upper bound :func:`eb_upper` is the theorem as stated). The bound needs only n, sum Z_i and
sum Z_i^2, so a sampler keeps two numbers per class whatever n is. It is a finite-sample bound,
valid for every distribution on [0, 1] (not a normal approximation), and it is within a constant of
the Bernoulli-exact Clopper-Pearson bound when the variance is small.

Floating point: the sums arrive in float64 (each term in [0, 1]); recursive or pairwise summation of
n such terms errs by at most (n - 1) u sum |Z_i| <= n^2 u in absolute terms (u = 2^-53, Higham,
"Accuracy and Stability of Numerical Algorithms", eq. 4.4). The bounds widen the mean by
``SLACK_ULPS * n * u`` and the variance by ``SLACK_ULPS * n * u`` more than that error, so they hold for
the exact sums of the float32 scores the base classifier produced (about 1e-10 at n = 10^5: nothing).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rscert.errors import ConfigError

UNIT_ROUNDOFF = 2.0 ** -53
SLACK_ULPS = 8.0
"""Multiples of n u added against float64 summation error (see the module docstring)."""


def _sums(total: ArrayLike, total_sq: ArrayLike, n: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    s = np.asarray(total, dtype=np.float64)
    q = np.asarray(total_sq, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    s, q, n_arr = np.broadcast_arrays(s, q, n_arr)
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(q))):
        raise ConfigError("scores", "sums of scores must be finite")
    if np.any(n_arr < 1) or np.any(n_arr != np.round(n_arr)):
        raise ConfigError("n", "must be a whole number >= 1")
    tol = 1e-6 * np.maximum(n_arr, 1.0)
    if np.any(s < -tol) or np.any(s > n_arr + tol) or np.any(q < -tol) or np.any(q > s + tol):
        raise ConfigError("scores", "scores must lie in [0, 1] (need 0 <= sum of squares <= sum <= n)")
    return s, q, n_arr


def sample_variance(total: ArrayLike, total_sq: ArrayLike, n: ArrayLike) -> NDArray[np.float64]:
    """The unbiased sample variance V_n = (sum Z^2 - (sum Z)^2 / n) / (n - 1), floored at 0 (0 when n = 1)."""
    s, q, n_arr = _sums(total, total_sq, n)
    with np.errstate(all="ignore"):
        var = (q - s * s / n_arr) / np.maximum(n_arr - 1.0, 1.0)
    return np.where(n_arr >= 2, np.maximum(var, 0.0), 0.0)


def eb_width(variance: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> NDArray[np.float64]:
    """The half-width of eq. EB: sqrt(2 V log(2/alpha) / n) + 7 log(2/alpha) / (3 (n - 1)), for n >= 2.

    Also what sequential stopping projects to a later look from the variance seen so far (no guarantee
    is claimed for such a projection; it only chooses when to stop)."""
    a = np.asarray(alpha, dtype=np.float64)
    if not np.all((a > 0.0) & (a < 1.0)):
        raise ConfigError("alpha", f"must satisfy 0 < alpha < 1, got {alpha!r}")
    n_arr = np.asarray(n, dtype=np.float64)
    log_term = np.log(2.0 / a)
    var = np.asarray(variance, np.float64)
    with np.errstate(all="ignore"):
        return np.sqrt(2.0 * var * log_term / n_arr) + 7.0 * log_term / (3.0 * (n_arr - 1.0))


def _width(total: ArrayLike, total_sq: ArrayLike, n: ArrayLike, alpha: ArrayLike
           ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    s, _, n_arr = _sums(total, total_sq, n)
    slack = SLACK_ULPS * n_arr * UNIT_ROUNDOFF
    width = eb_width(sample_variance(total, total_sq, n) + slack, n_arr, alpha)
    return s / n_arr, width + slack, n_arr


def eb_lower(total: ArrayLike, total_sq: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> NDArray[np.float64]:
    """One-sided (1 - alpha) lower confidence bound on E[Z], Z in [0, 1], from n, sum Z and sum Z^2 (eq. EB).

    Guarantee: P[eb_lower(...) <= E Z] >= 1 - alpha for i.i.d. samples (Maurer & Pontil 2009, Thm 4).
    0 when n < 2 (the theorem needs two samples). Clipped to [0, 1].
    """
    mean, width, n_arr = _width(total, total_sq, n, alpha)
    return np.where(n_arr >= 2, np.clip(mean - width, 0.0, 1.0), 0.0)


def eb_upper(total: ArrayLike, total_sq: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> NDArray[np.float64]:
    """One-sided (1 - alpha) upper confidence bound on E[Z] (eq. EB for 1 - Z; 1 when n < 2)."""
    mean, width, n_arr = _width(total, total_sq, n, alpha)
    return np.where(n_arr >= 2, np.clip(mean + width, 0.0, 1.0), 1.0)
