"""Confidence bands for a whole certified-accuracy curve, simultaneous over every radius (numpy/scipy only).

Setting: m test inputs drawn i.i.d.; Y_i = the certified radius of input i if it is certified and
correct, else -1; the curve is A(r) = P[Y >= r] and its estimate k(r) / m counts the Y_i >= r. A
pointwise interval (Clopper-Pearson at each r, ``analysis.aggregate``) covers A(r) at *one* radius with
probability ``level``; over a whole curve some radius is missed far more often. A simultaneous band
covers A(r) at every radius at once with probability >= ``level``:

* ``dkw``: k(r)/m +- eps with eps = sqrt(ln(2 / delta) / (2 m)), delta = 1 - level. The
  Dvoretzky-Kiefer-Wolfowitz inequality with Massart's constant (Ann. Probab. 18(3), 1990):
  P[sup_r |F_m(r) - F(r)| > eps] <= 2 exp(-2 m eps^2) for the empirical distribution function of i.i.d.
  reals, and so for the survival function k(r)/m (left limits included). Every r, not only a grid.
* ``bonferroni``: the two-sided Clopper-Pearson interval at level 1 - delta / G at each of the G grid
  radii (a union bound over the grid: the band holds at those G radii).

Corrected for wrong certificates (``--correction cp``, docs/analysis.md): each certificate is wrong
with probability at most alpha independently, so the number W of wrong ones among the m is dominated
by Binomial(m, alpha) and the true count K*(r) >= k(r) - W at *every* r at once (one W for the whole
curve). With B = binom.ppf(1 - delta / 2, m, alpha), P[W > B] <= delta / 2, and the lower band for
K*(r) / m at delta / 2 (one-sided DKW: eps' = sqrt(ln(2 / delta) / (2 m)); or Clopper-Pearson lower at
delta / (2 G) per grid radius) gives a lower band on the true certified accuracy of the smoothed
classifier that holds at every radius with probability >= level.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rscert.stats.corrections import wrong_certificates_bound
from rscert.stats.smoothing import clopper_pearson_lower, clopper_pearson_upper

BANDS = ("pointwise", "dkw", "bonferroni")
"""Names accepted by ``rscert analyze --band``; ``pointwise`` draws the per-radius intervals."""
BAND_NAMES = {
    "pointwise": "pointwise {level:.0%} Clopper-Pearson intervals (not simultaneous)",
    "dkw": "simultaneous {level:.0%} DKW band (every radius at once)",
    "bonferroni": "simultaneous {level:.0%} Clopper-Pearson band, Bonferroni over the grid",
}


def _check(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level: must satisfy 0 < level < 1, got {level}")
    return 1.0 - level


def dkw_epsilon(m: ArrayLike, delta: float) -> NDArray[np.float64]:
    """sqrt(ln(2 / delta) / (2 m)): the DKW-Massart half-width at failure probability delta (two-sided),
    or the one-sided half-width at delta / 2."""
    m_arr = np.maximum(np.asarray(m, dtype=np.float64), 1.0)
    return np.sqrt(np.log(2.0 / delta) / (2.0 * m_arr))


def dkw_band(k: ArrayLike, m: ArrayLike, level: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(lower, upper): k/m -+ dkw_epsilon(m, 1 - level), clipped to [0, 1]; simultaneous over every radius."""
    delta = _check(level)
    share = np.asarray(k, dtype=np.float64) / np.maximum(np.asarray(m, dtype=np.float64), 1.0)
    eps = dkw_epsilon(m, delta)
    return np.clip(share - eps, 0.0, 1.0), np.clip(share + eps, 0.0, 1.0)


def bonferroni_band(k: ArrayLike, m: ArrayLike, level: float, points: int
                    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(lower, upper): two-sided Clopper-Pearson at level 1 - (1 - level) / points at each point;
    simultaneous over those ``points`` radii."""
    delta = _check(level)
    tail = delta / (2.0 * max(int(points), 1))
    k_arr, m_arr = np.asarray(k), np.maximum(np.asarray(m), 1)
    return clopper_pearson_lower(k_arr, m_arr, tail), clopper_pearson_upper(k_arr, m_arr, tail)


def corrected_lower_band(kind: str, k: ArrayLike, m: ArrayLike, alpha: float, level: float, points: int
                         ) -> NDArray[np.float64]:
    """A lower band on the true certified accuracy of g at every radius (``dkw``) or every grid radius
    (``bonferroni``), allowing for wrong certificates (each wrong with probability <= ``alpha``);
    simultaneous with probability >= ``level``. NaN where alpha is unknown."""
    delta = _check(level)
    k_arr = np.asarray(k, dtype=np.int64)
    m_arr = np.asarray(m, dtype=np.int64)
    wrong = wrong_certificates_bound(m_arr, alpha, delta / 2.0)
    if not np.all(np.isfinite(wrong)):
        return np.full(np.broadcast(k_arr, m_arr).shape, np.nan)
    kept = np.clip(k_arr - wrong.astype(np.int64), 0, None)
    if kind == "dkw":
        share = kept / np.maximum(m_arr, 1)
        return np.clip(share - dkw_epsilon(m_arr, delta), 0.0, 1.0)
    if kind == "bonferroni":
        return clopper_pearson_lower(kept, np.maximum(m_arr, 1), delta / (2.0 * max(int(points), 1)))
    raise ValueError(f"band: expected dkw or bonferroni, got {kind!r}")


def band(kind: str, k: ArrayLike, m: ArrayLike, level: float, points: int
         ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The simultaneous band ``kind`` (``dkw`` or ``bonferroni``) for counts k of m."""
    if kind == "dkw":
        return dkw_band(k, m, level)
    if kind == "bonferroni":
        return bonferroni_band(k, m, level, points)
    raise ValueError(f"band: expected dkw or bonferroni, got {kind!r}")
