"""Curve bands say what they are (issue 18, section 5): pointwise Clopper-Pearson intervals by default,
named as such under the figure, and bands simultaneous over every radius on request (DKW-Massart, or
Clopper-Pearson with Bonferroni over the grid; corrected for wrong certificates with --correction cp),
checked against their formulas, statsmodels and by simulation of whole curves."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy.stats import binom
from statsmodels.stats.proportion import proportion_confint

from rscert.analysis import analyze
from rscert.analysis.plots import curves_figure
from rscert.cli import main
from rscert.stats.bands import bonferroni_band, corrected_lower_band, dkw_band

from .test_analysis_runs import certify_rows, write_run

# -- bands ---------------------------------------------------------------------------------------


def test_simultaneous_bands_match_their_formulas_and_statsmodels():
    k, m, level, points = np.array([0, 3, 50, 97, 100]), 100, 0.95, 40
    lo, hi = dkw_band(k, m, level)
    eps = math.sqrt(math.log(2 / (1 - level)) / (2 * m))
    assert np.allclose(lo, np.clip(k / m - eps, 0, 1)) and np.allclose(hi, np.clip(k / m + eps, 0, 1))
    lo, hi = bonferroni_band(k, m, level, points)
    ref_lo, ref_hi = proportion_confint(k, m, alpha=(1 - level) / points, method="beta")
    assert np.allclose(lo, ref_lo) and np.allclose(hi, ref_hi)
    alpha, delta = 0.001, 1 - level
    wrong = binom.ppf(1 - delta / 2, m, alpha)
    got = corrected_lower_band("dkw", k, m, alpha, level, points)
    eps_half = math.sqrt(math.log(2 / delta) / (2 * m))  # one-sided DKW at delta / 2
    assert np.allclose(got, np.clip((k - wrong) / m - eps_half, 0, 1))
    got = corrected_lower_band("bonferroni", k, m, alpha, level, points)
    ref = proportion_confint(np.clip(k - wrong, 0, None), m, alpha=delta / points, method="beta")[0]
    assert np.allclose(got, np.where(k - wrong > 0, ref, 0.0))


def test_simultaneous_bands_cover_the_whole_curve_and_pointwise_ones_do_not():
    """Radii of correct inputs from a known distribution; the true curve is its survival function."""
    rng = np.random.default_rng(0)
    grid = np.arange(0, 2.0, 0.02)
    m, level, trials = 200, 0.9, 400
    truth = 0.8 * np.exp(-grid)  # P(correct and radius >= r): correct w.p. 0.8, radius ~ Exp(1)
    covered = {"pointwise": 0, "dkw": 0, "bonferroni": 0}
    for _ in range(trials):
        correct = rng.random(m) < 0.8
        radius = np.where(correct, rng.exponential(1.0, m), -1.0)
        k = (radius[None, :] >= grid[:, None]).sum(axis=1)
        bands = {"pointwise": proportion_confint(k, m, alpha=1 - level, method="beta"),
                 "dkw": dkw_band(k, m, level), "bonferroni": bonferroni_band(k, m, level, len(grid))}
        for name, (lo, hi) in bands.items():
            covered[name] += bool(np.all((lo <= truth + 1e-12) & (truth <= hi + 1e-12)))
    assert covered["dkw"] / trials >= level - 0.03 and covered["bonferroni"] / trials >= level - 0.03
    assert covered["pointwise"] / trials < level - 0.1  # pointwise intervals miss somewhere far more often


def test_curves_carry_the_chosen_band_and_the_figure_says_what_it_draws(tmp_path, capsys):
    out = write_run(tmp_path / "fixed", certify_rows(50, "fixed-run"))
    plain = analyze([str(out)], radii=[0.0])
    assert "band_lo" not in plain.curves.columns
    fig = curves_figure(plain, "toy", "test")
    words = " ".join([fig.axes[0].get_title(), *(t.get_text() for t in fig.texts),
                      *(t.get_text() for t in fig.axes[0].get_legend().get_texts())])
    assert "pointwise" in words and "Clopper-Pearson" in words and "no correction" in words
    result = analyze([str(out)], radii=[0.0], band="dkw", corrections=["cp"])
    curves = result.curves
    k = np.round(curves["certified_accuracy"].to_numpy() * 50).astype(int)
    lo, hi = dkw_band(k, 50, 0.95)
    assert np.allclose(curves["band_lo"], lo) and np.allclose(curves["band_hi"], hi)
    assert np.allclose(curves["band_lo_corrected"], corrected_lower_band("dkw", k, 50, 0.001, 0.95, len(k)))
    fig = curves_figure(result, "toy", "test")
    words = " ".join([fig.axes[0].get_title(), *(t.get_text() for t in fig.texts),
                      *(t.get_text() for t in fig.axes[0].get_legend().get_texts())])
    assert "simultaneous" in words and "DKW" in words
    assert main(["analyze", str(out), "--band", "bonferroni", "--curves-csv", str(tmp_path / "c.csv")]) == 0
    assert "band_lo" in pl.read_csv(tmp_path / "c.csv").columns
