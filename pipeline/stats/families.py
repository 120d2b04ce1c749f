"""Noise families and the norms their certificates are stated in (numpy and scipy only).

One registry, :data:`FAMILIES`, maps a family's name to what the rest of rscert needs of it: the
radius formula of each norm it certifies natively (and its inverse, the bound a table radius needs,
for sequential stopping), the norm it states radii in by default, the norms it offers, and the name
of the generator that draws it (``version``; the draw itself lives in the sampling layer, keyed by the
family's name). Adding a family is adding one :class:`Family` here and one draw there.

Convention (that of Yang et al. 2020 and their code base, tonyduan/rs4a): ``sigma`` is the noise's
standard deviation per coordinate for every family, so runs at one sigma compare across families.
Each family has a scale lambda = ``scale_per_sigma`` * sigma:

* gaussian: e ~ N(0, lambda^2 I), lambda = sigma;
* laplace: density prod_i exp(-|e_i| / lambda) / (2 lambda), lambda = sigma / sqrt(2);
* uniform: e ~ U([-lambda, lambda]^d), lambda = sqrt(3) sigma.

Native radii, for a lower bound p = pA_lower >= 1/2 on P[f(x + e) = cA] (with pB <= 1 - pA), each
certifying g(x + delta) = cA for every ||delta|| < R in its norm:

* gaussian, l2 (Cohen et al. 2019, Theorem 1):   R = lambda Phi^-1(p).                          (G2)
* laplace, l1 (Teng et al. 2020, "l1 adversarial robustness certificates: a randomized smoothing
  approach", Theorem 1; Yang et al. 2020, Table 1):  R = -lambda ln(2 (1 - p)).               (L1)
* uniform, l1 (Yang et al. 2020, Table 1 / Appendix, the cube's translate overlaps it in mass
  1 - ||delta||_1 / (2 lambda) at worst):  R = 2 lambda (p - 1/2).                              (U1)
* uniform, linf (Yang et al. 2020, Table 1; at ||delta||_inf = r the overlap is (1 - r / (2 lambda))^d
  at worst):  R = 2 lambda (1 - (3/2 - p)^(1/d)).                                             (Uinf)

Conversions between norms (sound for every delta in R^d): for a < b, ||delta||_a <= d^(1/a - 1/b)
||delta||_b, and for a > b, ||delta||_a <= ||delta||_b. So a ball of radius R in norm a contains the
ball of radius R / d^(1/a - 1/b) (a < b) or R (a > b) in norm b: a certificate in norm a converts to
norm b with that factor (rs4a does the same, ``_certify_lp_convert``). Where a family has several
native norms, a norm that is not one of them takes the largest of the conversions (each is sound, so
their max is); a native norm takes its own formula.
Every family offers every norm of :data:`NORMS`; a norm whose radius involves d (Uinf, or a factor
d^(1/a - 1/b)) needs the input's dimension ``dim`` (its number of elements), which rows record.

What is certified is the smoothed classifier under the exact law above; the floating-point draws
approximate it (see the sampling layer's noise module).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm as normal_dist

from rscert.constants import DISCRETE_NOISE_VERSION, LATTICE_NOISE, NOISE_VERSION
from rscert.errors import ConfigError
from rscert.stats.smoothing import check_sigma, gaussian_radius

NORMS = ("l1", "l2", "linf")
"""The norms a radius can be stated in."""
_ORDER = {"l1": 1.0, "l2": 2.0, "linf": math.inf}

Formula = Callable[[NDArray[np.float64], float, int | None], NDArray[np.float64]]
"""(array, lambda, dim) -> array: a native radius from p >= 1/2, or its inverse from a radius."""


@dataclass(frozen=True)
class Native:
    """A norm a family certifies directly: R = radius(p, lambda, dim) for p >= 1/2, increasing in p,
    and threshold(R, lambda, dim) its inverse (the smallest p whose radius reaches R; above 1 when no
    p can). ``needs_dim``: the formula involves the dimension d."""

    radius: Formula
    threshold: Formula
    equation: str
    needs_dim: bool = False


def _conversion(native: str, target: str, dim: int | None) -> float:
    """The factor c with R_target = R_native / c (module docstring): d^(1/a - 1/b) for a < b, else 1."""
    a, b = _ORDER[native], _ORDER[target]
    if a >= b:
        return 1.0
    assert dim is not None
    return float(dim) ** (1.0 / a - (0.0 if math.isinf(b) else 1.0 / b))


@dataclass(frozen=True)
class Family:
    """A noise family: its scale per sigma, native radii, default and offered norms, and ``version``, the
    name of its generator (Philox stream and transform; part of a run's fingerprint)."""

    name: str
    scale_per_sigma: float
    native: dict[str, Native]
    default_norm: str
    version: str
    law: str
    citation: str
    norms: tuple[str, ...] = NORMS

    def scale(self, sigma: float) -> float:
        """lambda for the noise of standard deviation ``sigma`` per coordinate."""
        return self.scale_per_sigma * check_sigma(sigma)

    def check_norm(self, norm: str) -> str:
        """``norm`` if this family offers it; else a ConfigError naming the pairs offered."""
        if norm not in self.norms:
            raise ConfigError("norm", f"{norm!r} is not offered with --noise {self.name}; offered: "
                                      f"{', '.join(self.norms)} (pairs offered: {offered_pairs()})")
        return norm

    def needs_dim(self, norm: str) -> bool:
        """Whether the radius in ``norm`` depends on the input's dimension."""
        return any(self.native[name].needs_dim or _ORDER[name] < _ORDER[norm] for name in self._paths(norm))

    def _paths(self, norm: str) -> tuple[str, ...]:
        """The native norms the radius in ``norm`` comes from: itself if native, else every native one."""
        self.check_norm(norm)
        return (norm,) if norm in self.native else tuple(self.native)

    def how(self, norm: str) -> str:
        """How the radius in ``norm`` is obtained (for docs, labels and errors)."""
        self.check_norm(norm)
        if norm in self.native:
            return self.native[norm].equation
        parts = []
        for name, nat in self.native.items():
            a, b = _ORDER[name], _ORDER[norm]
            factor = "" if a >= b else f" / d^{'1/2' if (a, b) in ((1.0, 2.0), (2.0, math.inf)) else '1'}"
            parts.append(f"({nat.equation}){factor}")
        return ("max of " if len(parts) > 1 else "") + ", ".join(parts) + f"  [{norm} from {'/'.join(self.native)}]"

    def _dim(self, norm: str, dim: int | None) -> int | None:
        if not self.needs_dim(norm):
            return None
        if dim is None or isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ConfigError("dim", f"the {norm} radius of {self.name} noise depends on the input's dimension: "
                                     f"give its number of elements (an integer >= 1), got {dim!r}")
        return int(dim)

    def radius(self, p_lower: ArrayLike, sigma: float, norm: str | None = None,
               dim: int | None = None) -> NDArray[np.float64]:
        """The certified radius in ``norm`` (default: the family's) for lower bounds ``p_lower``;
        0 where p_lower < 1/2 (no certificate: CERTIFY abstains there)."""
        norm = self.check_norm(norm or self.default_norm)
        d = self._dim(norm, dim)
        lam = self.scale(sigma)
        p = np.asarray(p_lower, dtype=np.float64)
        ok = p >= 0.5
        q = np.where(ok, p, 0.5)
        with np.errstate(all="ignore"):
            best = np.zeros(q.shape, dtype=np.float64)
            for name in self._paths(norm):
                best = np.maximum(best, self.native[name].radius(q, lam, d) / _conversion(name, norm, d))
        return np.where(ok, best, 0.0)

    def threshold(self, radius: ArrayLike, sigma: float, norm: str | None = None,
                  dim: int | None = None) -> NDArray[np.float64]:
        """The inverse of :meth:`radius`: the least p_lower >= 1/2 whose radius in ``norm`` reaches
        ``radius`` (so radius(p) >= r exactly when p >= threshold(r), the formulas being increasing);
        above 1 where no bound can. Sequential stopping uses it to turn a table radius into a target
        for the bound (docs/sequential.md)."""
        norm = self.check_norm(norm or self.default_norm)
        d = self._dim(norm, dim)
        lam = self.scale(sigma)
        r = np.asarray(radius, dtype=np.float64)
        if np.any(~np.isfinite(r)) or np.any(r < 0):
            raise ConfigError("radii", "must be finite and >= 0")
        with np.errstate(all="ignore"):
            need = np.full(r.shape, np.inf)
            for name in self._paths(norm):
                need = np.minimum(need, self.native[name].threshold(r * _conversion(name, norm, d), lam, d))
        return np.maximum(need, 0.5)


# -- the native formulas ------------------------------------------------------------------------------


def _gauss_l2(p: NDArray[np.float64], lam: float, _: int | None) -> NDArray[np.float64]:
    return gaussian_radius(p, lam)  # (G2), its home in stats.smoothing


def _gauss_l2_inv(r: NDArray[np.float64], lam: float, _: int | None) -> NDArray[np.float64]:
    return normal_dist.cdf(r / lam)


def _laplace_l1(p: NDArray[np.float64], lam: float, _: int | None) -> NDArray[np.float64]:
    return -lam * np.log(2.0 * (1.0 - p))  # (L1); +inf at p = 1


def _laplace_l1_inv(r: NDArray[np.float64], lam: float, _: int | None) -> NDArray[np.float64]:
    return 1.0 - 0.5 * np.exp(-r / lam)


def _uniform_l1(p: NDArray[np.float64], lam: float, _: int | None) -> NDArray[np.float64]:
    return 2.0 * lam * (p - 0.5)  # (U1)


def _uniform_l1_inv(r: NDArray[np.float64], lam: float, _: int | None) -> NDArray[np.float64]:
    return 0.5 + r / (2.0 * lam)


def _uniform_linf(p: NDArray[np.float64], lam: float, dim: int | None) -> NDArray[np.float64]:
    # (Uinf) written as -2 lambda expm1(ln(3/2 - p) / d): no cancellation when d is large
    return -2.0 * lam * np.expm1(np.log(1.5 - p) / dim)


def _uniform_linf_inv(r: NDArray[np.float64], lam: float, dim: int | None) -> NDArray[np.float64]:
    # p = 3/2 - (1 - r / (2 lambda))^d; beyond r = 2 lambda the supports no longer overlap: unreachable
    inside = r < 2.0 * lam
    return np.where(inside, 1.5 - np.exp(dim * np.log1p(-np.minimum(r, 2.0 * lam) / (2.0 * lam))), np.inf)


GAUSSIAN = Family(
    name="gaussian", scale_per_sigma=1.0, default_norm="l2", version=NOISE_VERSION,
    law="N(0, sigma^2 I)",
    native={"l2": Native(_gauss_l2, _gauss_l2_inv, "sigma Phi^-1(pA)")},
    citation="Cohen, Rosenfeld & Kolter 2019, Theorem 1")
LAPLACE = Family(
    name="laplace", scale_per_sigma=1.0 / math.sqrt(2.0), default_norm="l1", version="philox4x32-10/laplace-f32/v1",
    law="i.i.d. Laplace(0, lambda), lambda = sigma / sqrt(2)",
    native={"l1": Native(_laplace_l1, _laplace_l1_inv, "-lambda ln(2 (1 - pA))")},
    citation="Teng et al. 2020, Theorem 1; Yang et al. 2020, Table 1")
UNIFORM = Family(
    name="uniform", scale_per_sigma=math.sqrt(3.0), default_norm="l1", version="philox4x32-10/uniform-grid24-f32/v1",
    law="U([-lambda, lambda]^d), lambda = sqrt(3) sigma",
    native={"l1": Native(_uniform_l1, _uniform_l1_inv, "2 lambda (pA - 1/2)"),
            "linf": Native(_uniform_linf, _uniform_linf_inv, "2 lambda (1 - (3/2 - pA)^(1/d))", needs_dim=True)},
    citation="Yang et al. 2020, Table 1")

DISCRETE_GAUSSIAN = Family(
    name=LATTICE_NOISE, scale_per_sigma=1.0, default_norm="l2", version=DISCRETE_NOISE_VERSION,
    law="m/255 per coordinate, m = round(255 e), e ~ N(0, sigma^2): the Gaussian rounded to the 8-bit grid",
    native={"l2": Native(_gauss_l2, _gauss_l2_inv, "sigma Phi^-1(pA)")},
    citation="Voracek & Hein 2023 (rounding argument: rscert.stats.discrete_gaussian, eq. 2-3); "
             "Cohen, Rosenfeld & Kolter 2019, Theorem 1")
"""Sound in floating point: at an 8-bit input k/255 the smoothed classifier is Cohen et al.'s for the fixed
function f∘round(255 ·), so every Gaussian formula holds unchanged (rscert.stats.discrete_gaussian)."""

FAMILIES: dict[str, Family] = {f.name: f for f in (GAUSSIAN, DISCRETE_GAUSSIAN, LAPLACE, UNIFORM)}
"""Every noise family rscert certifies with, by the name ``--noise`` takes."""


def register(family: Family) -> Family:
    """Add a family to :data:`FAMILIES` (its draw must be added to the sampling layer under the same name)."""
    if family.name in FAMILIES:
        raise ValueError(f"noise family {family.name!r} is already registered")
    if family.default_norm not in family.norms or not set(family.native) <= set(family.norms):
        raise ValueError(f"{family.name}: default and native norms must be among its offered norms")
    FAMILIES[family.name] = family
    return family


def family(name: str) -> Family:
    """The family called ``name``; a ConfigError naming the families offered otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ConfigError("noise", f"unknown noise family {name!r}; offered: {', '.join(FAMILIES)}") from None


def resolve(noise: str, norm: str | None) -> tuple[Family, str]:
    """(family, norm) for ``--noise`` and ``--norm`` (None: the family's default norm); refused with
    the field named, and the pairs offered, when the pair is not offered."""
    fam = family(noise)
    return fam, fam.check_norm(norm or fam.default_norm)


@dataclass(frozen=True)
class RadiusFormula:
    """p_lower -> certified radius for one (family, sigma, norm, dim): what CERTIFY, sequential stopping
    and re-bounding apply to a bound. Build it with :func:`formula` (which checks every part)."""

    family: Family
    sigma: float
    norm: str
    dim: int | None = None

    def __call__(self, p_lower: ArrayLike) -> NDArray[np.float64]:
        return self.family.radius(p_lower, self.sigma, self.norm, self.dim)

    def threshold(self, radius: ArrayLike) -> NDArray[np.float64]:
        """The least bound whose radius reaches ``radius`` (above 1: out of reach)."""
        return self.family.threshold(radius, self.sigma, self.norm, self.dim)

    def unit(self) -> float:
        """The natural spacing unit of a radius table: sigma where the radius does not depend on d,
        else the radius at the bound Phi(1) (sigma itself for the Gaussian in l2), e.g. sigma / sqrt(d)
        for Gaussian linf radii."""
        if not self.family.needs_dim(self.norm):
            return self.sigma
        return float(self(normal_dist.cdf(1.0)))

    def describe(self) -> str:
        return f"{self.family.name} noise at sigma = {self.sigma:g}, {self.norm} radii"


def formula(noise: str, sigma: float, norm: str | None = None, dim: int | None = None) -> RadiusFormula:
    """The radius formula of ``--noise`` and ``--norm`` at ``sigma`` (for inputs of ``dim`` elements,
    needed only where the norm's radius involves d); every part checked, errors naming the field."""
    fam, nrm = resolve(noise, norm)
    return RadiusFormula(fam, check_sigma(sigma), nrm, fam._dim(nrm, dim))


def as_formula(value: float | RadiusFormula) -> RadiusFormula:
    """A RadiusFormula as given, or the Gaussian l2 formula at sigma = ``value`` (Cohen et al.'s)."""
    return value if isinstance(value, RadiusFormula) else formula("gaussian", value)


def offered_pairs() -> str:
    """'gaussian: l1, l2, linf; laplace: ...' (for error messages and docs)."""
    return "; ".join(f"{f.name}: {', '.join(f.norms)}" for f in FAMILIES.values())
