"""Radius formulas of every noise family and norm, against independent computations.

* a two-class linear classifier: for noise symmetric about 0, P[w.(x + e) + b > 0] > 1/2 exactly when
  w.x + b > 0, so the smoothed classifier equals f and the true radius in norm q is m / ||w||_q*, with
  m = |w.x + b| and q* the dual norm. The exact pA comes from scipy's distributions (one coordinate,
  or a Gaussian sum) or, where no closed form is exact, from Monte Carlo with a Clopper-Pearson upper
  bound (a certificate from an upper bound on pA that is still within the true radius is sound at pA);
* rs4a's published formulas (Yang et al. 2020's code base, tonyduan/rs4a), transcribed as equations;
* the conversions' ball containment, on adversarial directions (one-hot and all-equal).
"""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from rscert.errors import ConfigError
from rscert.stats.families import FAMILIES, NORMS, family, resolve

SIGMAS = (0.12, 0.5, 1.0)
DUAL = {"l1": np.inf, "l2": 2, "linf": 1}  # the dual norm of each norm
ORDER = {"l1": 1, "l2": 2, "linf": np.inf}

# the scipy law of one coordinate, at standard deviation sigma (rs4a's convention)
LAW = {
    "gaussian": lambda s: stats.norm(scale=s),
    "laplace": lambda s: stats.laplace(scale=s / math.sqrt(2)),
    "uniform": lambda s: stats.uniform(loc=-math.sqrt(3) * s, scale=2 * math.sqrt(3) * s),
}


def test_registry_holds_the_three_families_with_their_default_norms():
    assert {name: f.default_norm for name, f in FAMILIES.items()}.items() >= {"gaussian": "l2", "laplace": "l1",
                                                                             "uniform": "l1"}.items()
    for name, law in LAW.items():  # sigma is the standard deviation per coordinate in every family
        assert math.isclose(law(0.37).std(), 0.37, rel_tol=1e-12), name


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("name", ["gaussian", "laplace", "uniform"])
def test_native_radius_is_the_margin_of_a_one_coordinate_linear_classifier(name, sigma):
    """w = e_1: the certificate of every family's default norm is tight, R(pA_exact) = m exactly
    (the true radius of f is m in every norm, ||e_1||_q* = 1)."""
    fam = family(name)
    law = LAW[name](sigma)
    top = 0.9 * math.sqrt(3) * sigma if name == "uniform" else 3 * sigma
    for m in np.linspace(0.0, top, 9):
        p_exact = law.sf(-m)  # P[x_1 + e_1 > 0] with x_1 = m
        assert fam.radius(p_exact, sigma) == pytest.approx(m, abs=1e-9)


def _true_radius(w: np.ndarray, m: float, norm: str) -> float:
    return m / np.linalg.norm(w, DUAL[norm])


@pytest.mark.parametrize("norm", NORMS)
def test_gaussian_radius_never_exceeds_a_linear_classifiers_true_radius(norm):
    """Gaussian sums are exact: pA = Phi(m / (sigma ||w||_2)). Tight in l2 for any w; tight in linf for
    w = ones (||w||_1 = sqrt(d) ||w||_2) and in l1 for w = e_1."""
    rng = np.random.default_rng(0)
    fam, sigma, d = family("gaussian"), 0.5, 50
    ws = [rng.standard_normal(d) for _ in range(20)] + [np.ones(d), np.eye(d)[0]]
    for w in ws:
        for m in (0.05, 0.4, 1.2):
            p = stats.norm.cdf(m / (sigma * np.linalg.norm(w)))
            r = float(fam.radius(p, sigma, norm, dim=d))
            assert r <= _true_radius(w, m, norm) * (1 + 1e-9)
    tight = {"l2": ws[0], "linf": np.ones(d), "l1": np.eye(d)[0]}[norm]
    p = stats.norm.cdf(0.4 / (sigma * np.linalg.norm(tight)))
    assert float(fam.radius(p, sigma, norm, dim=d)) == pytest.approx(_true_radius(tight, 0.4, norm), rel=1e-9)


def _uniform_sum_sf(w: np.ndarray, lam: float, x: float) -> float:
    """P[sum_i w_i e_i > x], e_i ~ U[-lam, lam] i.i.d.: the CDF of a sum of uniforms on [-a_i, a_i]
    (a_i = |w_i| lam) is sum over s in {-1, 1}^n of prod(s) (x + s.a)_+^n / (n! prod 2 a_i)."""
    a = np.abs(w) * lam
    n = len(a)
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * n)).reshape(n, -1).T
    cdf = np.sum(np.prod(signs, axis=1) * np.maximum(x + signs @ a, 0.0) ** n) / (math.factorial(n) * np.prod(2 * a))
    return float(1.0 - cdf)


def _laplace_sum_sf(w: np.ndarray, lam: float, x: float) -> float:
    """P[sum_i w_i e_i > x], e_i ~ Laplace(0, lam) i.i.d. Distinct |w_i|: the characteristic function
    prod 1 / (1 + b_i^2 t^2) (b_i = |w_i| lam) splits into partial fractions, so the law is the mixture
    sum_i c_i Laplace(0, b_i) with c_i = prod_{j != i} b_i^2 / (b_i^2 - b_j^2). Equal |w_i| = c: the sum
    is c lam (G - G') with G, G' ~ Gamma(n) independent (numerical quadrature)."""
    b = np.abs(w) * lam
    if np.allclose(b, b[0]):
        n, scale = len(b), b[0]
        value, _ = integrate.quad(lambda g: stats.gamma.pdf(g, n) * stats.gamma.sf(g + x / scale, n), 0, np.inf,
                                  epsabs=1e-13, epsrel=1e-12)
        return float(value)
    c = [np.prod([bi**2 / (bi**2 - bj**2) for j, bj in enumerate(b) if j != i]) for i, bi in enumerate(b)]
    return float(sum(ci * stats.laplace.sf(x, scale=bi) for ci, bi in zip(c, b, strict=True)))


SUM_SF = {"laplace": (_laplace_sum_sf, 1 / math.sqrt(2)), "uniform": (_uniform_sum_sf, math.sqrt(3))}
DIRECTIONS = [np.ones(4), np.array([1.0, 0.5, 0.25, 0.125]), np.array([2.1, -2.9, -0.4, 2.08]),
              np.array([1.0, -0.01, 0.02, 0.03])]


@pytest.mark.parametrize("name", ["laplace", "uniform"])
def test_exact_sums_agree_with_monte_carlo(name):
    """The oracle of the next test, checked: its exact pA against 400,000 draws (5 standard errors)."""
    rng = np.random.default_rng(1)
    sf, per_sigma = SUM_SF[name]
    sigma = 0.5
    noise = LAW[name](sigma).rvs(size=(400_000, 4), random_state=rng)
    for w in DIRECTIONS:
        for m in (0.05, 0.5, 1.5):
            exact = sf(w, per_sigma * sigma, -m)
            mc = float(np.mean(noise @ w > -m))
            assert abs(exact - mc) <= 5 * math.sqrt(exact * (1 - exact) / 400_000) + 1e-6, (w, m, exact, mc)


@pytest.mark.parametrize(("name", "norm"), [(f, n) for f in ("laplace", "uniform") for n in NORMS])
def test_radius_from_exact_pa_of_weighted_sums_stays_within_the_true_radius(name, norm):
    """Laplace and uniform noise through a linear classifier of several weights (dimension 4): pA is
    exact (closed forms above), and the certificate must never exceed m / ||w||_q*. The directions
    include ones (the conversions' tight case), one weight dominating (near the l1 formulas' worst
    case) and weights of mixed signs."""
    sf, per_sigma = SUM_SF[name]
    fam, sigma, d = family(name), 0.5, 4
    for w in DIRECTIONS:
        for m in (0.01, 0.1, 0.5, 1.0, 2.0):
            p = sf(w, per_sigma * sigma, -m)
            r = float(fam.radius(p, sigma, norm, dim=d))
            assert r <= _true_radius(w, m, norm) * (1 + 1e-9), (w, m, p, r)
            assert r > 0


def test_uniform_linf_is_tight_for_the_cube_overlap():
    """(Uinf)'s worst case: the set A = {z : z not in the cube shifted by delta} has mass
    1 - prod(1 - |delta_i| / (2 lambda)) at x and loses it all at x + delta. With pA = 1/2 + that mass,
    the certified linf radius is exactly r = ||delta||_inf for delta = r (1, ..., 1)."""
    fam, sigma, d = family("uniform"), 0.5, 7
    lam = math.sqrt(3) * sigma
    for r in (0.01, 0.2, 0.9):
        lost = 1 - (1 - r / (2 * lam)) ** d
        assert float(fam.radius(0.5 + lost, sigma, "linf", dim=d)) == pytest.approx(r, rel=1e-9)


# -- rs4a's formulas (transcribed from Yang et al. 2020 / tonyduan/rs4a src/noises/noises.py) ----------


def _rs4a(name: str, sigma: float, p: float, adv: float, dim: int) -> float:
    """rs4a's certify_l{adv}: lambda = sigma / _sigma() (_sigma: gaussian 1, laplace sqrt 2, uniform 3^-1/2),
    native radii, and _certify_lp_convert: divide by dim^(1/a - 1/adv) when adv > a, max over natives.
    Laplace: rs4a also lists linf as native, by default through an approximation (lambda Phi^-1(p) / sqrt d)
    that is not a certificate; rscert keeps the exact l1 formula only, so the comparison is with rs4a's
    exact part (docs/families.md)."""
    if name == "gaussian":
        lam, native = sigma, {2: lambda q: lam * stats.norm.ppf(q)}
    elif name == "laplace":
        lam = sigma / 2 ** 0.5
        native = {1: lambda q: -lam * math.log(2 * (1 - q))}
    else:
        lam = sigma * 3 ** 0.5
        native = {1: lambda q: 2 * lam * (q - 0.5), np.inf: lambda q: 2 * lam * (1 - (1.5 - q) ** (1 / dim))}
    if adv in native:
        return native[adv](p)
    return max(native[a](p) / (dim ** (1 / a - 1 / adv) if adv > a else 1) for a in native)


@pytest.mark.parametrize("name", ["gaussian", "laplace", "uniform"])
@pytest.mark.parametrize("norm", NORMS)
def test_radii_equal_rs4a_formulas(name, norm):
    fam = family(name)
    for dim in (3, 784, 3 * 32 * 32):
        for sigma in SIGMAS:
            for p in (0.5, 0.51, 0.7, 0.9, 0.999, 0.99999):
                ours = float(fam.radius(p, sigma, norm, dim=dim))
                assert ours == pytest.approx(_rs4a(name, sigma, p, ORDER[norm], dim), rel=1e-9, abs=1e-14)


# -- inverse, conversions, refusals ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gaussian", "laplace", "uniform"])
@pytest.mark.parametrize("norm", NORMS)
def test_threshold_inverts_the_radius(name, norm):
    """radius(p) >= r exactly when p >= threshold(r): the sequential rule's target for a table radius."""
    fam, sigma, dim = family(name), 0.5, 64
    ps = np.linspace(0.5, 0.9999, 400)
    radii = fam.radius(ps, sigma, norm, dim=dim)
    for r in radii[::37]:
        t = float(fam.threshold(r, sigma, norm, dim=dim))
        assert float(fam.radius(t, sigma, norm, dim=dim)) == pytest.approx(r, rel=1e-9, abs=1e-12)
        clear = np.abs(ps - t) > 1e-9
        assert np.array_equal((radii >= r)[clear], (ps >= t)[clear])
    assert float(fam.threshold(0.0, sigma, norm, dim=dim)) == 0.5
    assert float(fam.threshold(1e6, sigma, norm, dim=dim)) >= 1.0  # out of reach of any bound


@pytest.mark.parametrize("name", ["gaussian", "laplace", "uniform"])
def test_below_one_half_there_is_no_certificate(name):
    for norm in NORMS:
        assert family(name).radius([0.0, 0.3, 0.4999], 0.5, norm, dim=10).tolist() == [0.0, 0.0, 0.0]


def test_converted_balls_lie_inside_the_native_ball():
    """For each converted pair: every delta of the target norm's radius-R ball has native norm < the
    native radius, on random and adversarial (one-hot, all-equal, mixed) directions."""
    rng = np.random.default_rng(2)
    d, sigma, p = 30, 0.5, 0.93
    dirs = [rng.standard_normal(d), np.eye(d)[0], np.ones(d), np.r_[np.ones(d // 2), np.zeros(d - d // 2)]]
    dirs += [rng.laplace(size=d) for _ in range(50)]
    for fam in FAMILIES.values():
        for norm in fam.norms:
            if norm in fam.native:
                continue
            r = float(fam.radius(p, sigma, norm, dim=d))
            best_native = max(float(fam.radius(p, sigma, a, dim=d)) for a in fam.native)
            for v in dirs:
                delta = r * v / np.linalg.norm(v, ORDER[norm])  # on the target ball's boundary
                inside = [np.linalg.norm(delta, ORDER[a]) <= float(fam.radius(p, sigma, a, dim=d)) * (1 + 1e-12)
                          for a in fam.native]
                assert any(inside), (fam.name, norm, v[:3], best_native)


def test_bad_pairs_are_refused_naming_the_field_and_the_pairs_offered():
    with pytest.raises(ConfigError) as exc:
        resolve("laplace", "l3")
    assert exc.value.field == "norm" and "gaussian: l1, l2, linf" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        resolve("cauchy", None)
    assert exc.value.field == "noise" and "gaussian" in str(exc.value) and "laplace" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        family("uniform").radius(0.9, 0.5, "linf")
    assert exc.value.field == "dim"
    assert resolve("uniform", None) == (family("uniform"), "l1")
    assert not family("gaussian").needs_dim("l1") and family("gaussian").needs_dim("linf")
