"""Lower bounds on certified accuracy that allow for wrong certificates (numpy/scipy only).

Setting: m test inputs, k of them counted as certified-correct at radius r by CERTIFY. Each of the m
certificates is wrong (its claim "g(x + delta) = prediction for all ||delta|| < radius" is false) with
probability at most alpha, independently across inputs (distinct noise per input), so the number W of
wrong certificates is stochastically dominated by Binomial(m, alpha). An input counted as
certified-correct whose certificate holds is truly certified-correct, so the true count is >= k - W.
The arguments are written out in docs/analysis.md ("Corrections for wrong certificates").

* ``cp_corrected_lower`` (rscert, ``--correction cp``): a lower confidence bound at level ``ci`` on the
  certified accuracy of g over the test *distribution*: CP_lower(k - B, m) at tail delta, with
  B = binom.ppf(1 - delta, m, alpha) and delta = (1 - ci) / 2 (a union bound over two delta events).
* ``testset_lower`` (``--correction testset``): a lower bound, with probability >= 1 - rho over
  CERTIFY's sampling, on the fraction of *these m inputs* on which g is truly certified-correct:
  (k - B) / m with B = binom.ppf(1 - rho, m, alpha) (the exact binomial quantile).
* ``published_lower`` (``--correction published``): the expression of the published analysis code
  (Cohen et al. 2019, ``analyze.py``, high-probability accuracy) for the same test-set quantity:
  k/m - alpha - sqrt(alpha (1 - alpha) log(1/rho) / m) - log(1/rho) / (3 m). Bernstein's inequality
  supports sqrt(2 ...) and 2 log(1/rho) / (3 m) instead; the published expression can miss with
  probability above rho (docs/analysis.md gives cases). Offered to reproduce published numbers.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import binom

from rscert.stats.smoothing import clopper_pearson_lower

CORRECTIONS = ("cp", "testset", "published")
"""Names accepted by ``--correction``; each adds its own column (see ``SUFFIX``)."""
SUFFIX = {"cp": "lo_corrected", "testset": "lo_testset", "published": "lo_published"}


def wrong_certificates_bound(m: ArrayLike, alpha: ArrayLike, delta: float) -> NDArray[np.float64]:
    """B such that P[W > B] <= delta for W ~ Binomial(m, alpha): scipy's binom.ppf(1 - delta, m, alpha).

    Any W stochastically dominated by that binomial obeys the same bound. NaN where alpha is unknown.
    """
    m_arr = np.asarray(m, dtype=np.float64)
    a_arr = np.asarray(alpha, dtype=np.float64)
    known = np.isfinite(a_arr)
    with np.errstate(all="ignore"):
        bound = binom.ppf(1.0 - delta, m_arr, np.where(known, a_arr, 0.0))
    return np.where(known, bound, np.nan)


def cp_corrected_lower(k: ArrayLike, m: ArrayLike, alpha: ArrayLike, ci: float) -> NDArray[np.float64]:
    """CP_lower(max(k - B, 0), m) at tail delta = (1 - ci) / 2, B = wrong_certificates_bound(m, alpha, delta).

    Guarantee (docs/analysis.md): with probability >= ci over the test sample and CERTIFY's sampling,
    it is <= the certified accuracy of g at r on the test distribution. NaN where m = 0 or alpha unknown.
    """
    delta = (1.0 - ci) / 2.0
    k_arr = np.asarray(k, dtype=np.int64)
    m_arr = np.asarray(m, dtype=np.int64)
    wrong = wrong_certificates_bound(m_arr, alpha, delta)
    usable = (m_arr > 0) & np.isfinite(wrong)
    kept = np.clip(k_arr - np.nan_to_num(wrong, nan=0.0).astype(np.int64), 0, None)
    lower = clopper_pearson_lower(np.where(usable, kept, 0), np.where(usable, m_arr, 1), delta)
    return np.where(usable, lower, np.nan)


def testset_lower(k: ArrayLike, m: ArrayLike, alpha: ArrayLike, rho: float) -> NDArray[np.float64]:
    """(k - B) / m with B = binom.ppf(1 - rho, m, alpha), floored at 0.

    Guarantee: with probability >= 1 - rho over CERTIFY's sampling (inputs fixed), it is <= the
    fraction of the m inputs on which g is truly correct and robust at r.
    """
    k_arr = np.asarray(k, dtype=np.float64)
    m_arr = np.asarray(m, dtype=np.float64)
    wrong = wrong_certificates_bound(m_arr, alpha, rho)
    with np.errstate(all="ignore"):
        value = np.maximum(k_arr - wrong, 0.0) / m_arr
    return np.where((m_arr > 0) & np.isfinite(wrong), value, np.nan)


def published_lower(k: ArrayLike, m: ArrayLike, alpha: ArrayLike, rho: float) -> NDArray[np.float64]:
    """k/m - alpha - sqrt(alpha (1 - alpha) log(1/rho) / m) - log(1/rho) / (3 m), as the published
    analysis code computes it (not floored, as there). Its coverage is discussed in docs/analysis.md."""
    k_arr = np.asarray(k, dtype=np.float64)
    m_arr = np.asarray(m, dtype=np.float64)
    a_arr = np.asarray(alpha, dtype=np.float64)
    log_term = np.log(1.0 / rho)
    with np.errstate(all="ignore"):
        value = k_arr / m_arr - a_arr - np.sqrt(a_arr * (1 - a_arr) * log_term / m_arr) - log_term / (3 * m_arr)
    return np.where((m_arr > 0) & np.isfinite(a_arr), value, np.nan)


def correction_columns(kind: str, k: ArrayLike, m: ArrayLike, alpha: ArrayLike, ci: float,
                       rho: float) -> NDArray[np.float64]:
    """The values of one correction (a name of CORRECTIONS) for counts k of m at the rows' alpha."""
    if kind == "cp":
        return cp_corrected_lower(k, m, alpha, ci)
    if kind == "testset":
        return testset_lower(k, m, alpha, rho)
    if kind == "published":
        return published_lower(k, m, alpha, rho)
    raise ValueError(f"correction: expected one of {', '.join(CORRECTIONS)}, got {kind!r}")
