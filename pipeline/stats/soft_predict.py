"""PREDICT for soft votes: is argmax_c G_c(x) the class with the largest mean score? (numpy/scipy only)

G(x) = E[softmax(f(x + e)/T)] (Salman et al. 2019). From n samples, cA is the class with the largest mean
score (ties: lowest index); the prediction is cA unless the data cannot rule out another class:

    predict cA  iff  EB_lower(cA; alpha / (2 (C - 1)))  >  max_{c != cA} EB_upper(c; alpha / 2)      (eq. P)

(:mod:`.bernstein`, C classes). Guarantee: with probability >= 1 - alpha, a returned prediction equals
argmax_c G_c(x) (when that is unique). Proof: let c* be the true argmax. A wrong prediction cA != c*
with G_cA <= G_c* needs EB_lower(cA) > EB_upper(c*), so either EB_lower(cA) > G_cA or EB_upper(c*) < G_c*.
c* is fixed, so the second has probability <= alpha/2; cA is chosen from the data, so the first is
bounded by a union over the C - 1 classes c != c*, each at alpha / (2 (C - 1)): <= alpha/2 in all.
Hard votes keep Cohen et al.'s binomial test (:func:`.smoothing.predict_from_counts`).

``p_value`` is the smallest alpha at which eq. P predicts (both bounds tighten as alpha grows, so the
decision is monotone in alpha), found by bisection on log alpha and rounded *up*: eq. P at level
alpha predicts iff p_value <= alpha, except in a sliver [alpha*, p_value) where it abstains (more
conservative); so re-deciding at another alpha, as ``rscert analyze --alpha`` does, needs no resampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from rscert.errors import ConfigError
from rscert.stats.bernstein import eb_lower, eb_upper
from rscert.stats.pair import Tally, _others
from rscert.stats.smoothing import ABSTAIN, check_alpha

BISECTIONS = 64
"""Halvings of the log-alpha bracket [1e-300, 1) for the p-value (relative resolution ~ 1e-17 in log)."""


@dataclass(frozen=True)
class SoftPredictions:
    """Soft PREDICT's output: prediction (-1 = abstain), cA, the p-value and the two sides of eq. P at alpha."""

    prediction: NDArray[np.int64]
    top_class: NDArray[np.int64]
    p_value: NDArray[np.float64]
    p_lower: NDArray[np.float64]
    p_upper: NDArray[np.float64]


def _sides(s: NDArray, q: NDArray, n: NDArray, top: NDArray[np.int64], alpha: NDArray
           ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    rows = np.arange(top.size)
    classes = s.shape[1]
    lower = eb_lower(s[rows, top], q[rows, top], n, alpha / (2.0 * (classes - 1)))
    upper = eb_upper(_others(s, top), _others(q, top), n[:, None], (alpha / 2.0)[:, None]).max(axis=1)
    return lower, upper


def soft_predict(tally: Tally, alpha: float) -> SoftPredictions:
    """Eq. P for each input of a soft ``tally`` (sums of scores and of their squares over n samples)."""
    alpha = check_alpha(alpha)
    if tally.vote != "soft":
        raise ConfigError("vote", "soft_predict needs the sums of soft scores (--vote soft)")
    s = np.asarray(tally.total, np.float64)
    q = np.asarray(tally.total_sq, np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ConfigError("scores", f"must be a 2-D [inputs x classes>=2] array, got shape {s.shape}")
    n = np.broadcast_to(np.asarray(tally.n, np.float64), (s.shape[0],))
    top = np.argmax(s, axis=1).astype(np.int64)
    lower, upper = _sides(s, q, n, top, np.full(s.shape[0], alpha))
    # bisection in log alpha: predicts(hi) always holds once hi < 1 was found to predict
    lo_log = np.full(s.shape[0], np.log(1e-300))
    hi_log = np.full(s.shape[0], np.log1p(-1e-12))
    at_hi = np.greater(*_sides(s, q, n, top, np.exp(hi_log)))
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo_log + hi_log)
        ok = np.greater(*_sides(s, q, n, top, np.exp(mid)))
        hi_log = np.where(ok, mid, hi_log)
        lo_log = np.where(ok, lo_log, mid)
    p_value = np.where(at_hi, np.exp(hi_log), 1.0)
    prediction = np.where(p_value <= alpha, top, ABSTAIN).astype(np.int64)
    return SoftPredictions(prediction, top, p_value, lower, upper)
