"""Issue 18.1: a base classifier that reads the floating-point structure of its input (Voracek & Hein 2023).

The grid classifier says 1 if any coordinate of its input is off the grid 2^-30 Z, else 0. Under exact
Gaussian noise every noisy input is off the grid, so g is 1 everywhere. With float32 noise around
x' = 2^-6 every noisy value is a float32 of magnitude >= 2^-7 or an exact Sterbenz difference, both on
the grid: the default (gaussian) mode certifies class 0 there, and class 1 at x = 0, 0.866 away; one of
the two certificates is false. The default mode's certificate therefore holds only under the assumption,
now stated in the README and the rows' documentation, that f does not exploit the floating-point
representation of its input. The discrete-gaussian mode's certificates hold without it: checked here
against the exact smoothed classifier, computed over the lattice.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rscert.sampling.certify import SmoothingParams, certify
from rscert.sampling.sampler import Sampler, SamplerOptions
from rscert.stats import discrete_gaussian as dg

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
DIM = math.prod(SHAPE)
GRID = 2.0**30


class GridClassifier(nn.Module):
    """Class 1 if any coordinate is off 2^-30 Z (x * 2^30 is exact in float32: a power of two)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x.float() * GRID
        off = (scaled != torch.round(scaled)).flatten(1).any(dim=1)
        return torch.stack([(~off).float(), off.float()], dim=1)


def _certify(noise: str, points: list[torch.Tensor], sigma: float = 0.5, n: int = 1000) -> list[dict]:
    sampler = Sampler(GridClassifier(), SamplerOptions(batch_size=2000), device="cpu", num_classes=2, noise=noise)
    params = SmoothingParams(sigma=sigma, n0=100, n=n, alpha=0.001, seed=0, noise=noise)
    return certify(sampler, torch.stack(points), [f"p{i}" for i in range(len(points))], None, params)


def test_default_mode_is_exploitable_and_the_docs_say_under_which_assumption() -> None:
    x, x2 = torch.zeros(SHAPE), torch.full(SHAPE, 2.0**-6)
    distance = float((x2 - x).norm())
    assert abs(distance - 0.866) < 1e-3
    a, b = _certify("gaussian", [x, x2])
    # the contradiction reproduced: two certificates of different classes, each reaching the other point
    assert (a["prediction"], b["prediction"]) == (1, 0)
    assert a["radius"] > distance and b["radius"] > distance
    # ... so the default mode's claim must carry its assumption, where users read what a row certifies
    readme = " ".join((ROOT / "README.md").read_text().split())  # prose wraps: compare words
    schema = " ".join((ROOT / "docs" / "schema.md").read_text().split())
    assert "a sound certificate of a fixed classifier in every precision" not in readme
    for text in (readme, schema):
        assert re.search(r"does not exploit the floating-point representation", text), "assumption not stated"
        assert "discrete-gaussian" in text


def _on_grid_probability(k: int, sigma: float) -> float:
    """P[fl32((k + m) / 255) lies on 2^-30 Z] for m of eq. 1, exactly (to double precision): the lattice
    values the sampler hands the classifier are the float32 of n/255, a function of n alone."""
    tab = dg.table(sigma)
    lo, hi = tab.i_lo - 1, tab.i_lo + tab.thresholds.size + 1  # beyond: mass below 2^-63 on each side
    m = np.arange(lo, hi + 1)
    values = (torch.from_numpy(k + m).to(torch.int32).float() / dg.LEVELS).numpy().astype(np.float64)
    on = values * GRID == np.round(values * GRID)
    probs = np.array([float(dg.atom_probability(int(v), sigma)) for v in m[on]])
    return float(probs.sum())


def test_discrete_mode_gives_no_contradictory_certificates_on_the_grid_classifier() -> None:
    sigma = 0.5
    x, x2 = torch.zeros(SHAPE), torch.full(SHAPE, 4 / 255)  # two 8-bit images 0.869 apart
    distance = float((x2 - x).norm())
    rows = _certify("discrete-gaussian", [x, x2], sigma)
    # the exact smoothed classifier at both points (every coordinate alike: P[class 0] = q^d)
    p0 = {0: _on_grid_probability(0, sigma) ** DIM, 4: _on_grid_probability(4, sigma) ** DIM}
    for row, k in zip(rows, (0, 4), strict=True):
        assert row["status"] == "ok" and row["noise"] == "discrete-gaussian"
        c = row["prediction"]
        if c == -1:
            continue
        for other in (0, 4):  # every point the certificate reaches has g = c, by the exact oracle
            if abs(other - k) / 255 * math.sqrt(DIM) < row["radius"]:
                assert (p0[other] if c == 0 else 1 - p0[other]) > 0.5
    certified = [r for r in rows if r["prediction"] != -1 and r["radius"] > distance]
    assert len({r["prediction"] for r in certified}) <= 1


def _threshold_model(level: float) -> nn.Module:
    """f = [x_0 > level] on the first coordinate: a linear classifier placed near the input."""

    class Threshold(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            up = (x.flatten(1)[:, 0] > level).float()
            return torch.stack([1 - up, up], dim=1)

    return Threshold()


def test_discrete_radius_never_exceeds_the_distance_to_the_exact_decision_boundary() -> None:
    """A threshold on one pixel, inputs on both sides of it: the exact smoothed classifier over the lattice
    changes class at a known level, and every certified radius stays within the distance to it."""
    sigma, level = 0.25, 0.5  # f = 1 iff x_0 > 0.5, i.e. lattice level n_0 >= 128
    tab = dg.table(sigma)
    atoms = np.arange(tab.i_lo - 1, tab.i_lo + tab.thresholds.size + 1)
    probs = np.array([float(dg.atom_probability(int(v), sigma)) for v in atoms])

    def p_up(k: int) -> float:  # P[k + m >= 128]: exact, by the law's atoms
        return float(probs[k + atoms >= 128].sum())

    g = {k: int(p_up(k) > 0.5) for k in range(256)}
    flips = [k for k in range(255) if g[k] != g[k + 1]]
    assert flips == [127]  # g flips between levels 127 and 128 (by symmetry of the law)
    levels = [100, 115, 122, 126, 127, 128, 129, 133, 140, 160]
    x = torch.zeros((len(levels), 1, 2, 2))
    for i, k in enumerate(levels):
        x[i, 0, 0, 0] = k / 255
    sampler = Sampler(_threshold_model(level), SamplerOptions(batch_size=4000), device="cpu", num_classes=2,
                      noise="discrete-gaussian")
    params = SmoothingParams(sigma=sigma, n0=100, n=4000, alpha=0.001, seed=3, noise="discrete-gaussian")
    rows = certify(sampler, x, [f"k{k}" for k in levels], None, params)
    for k, row in zip(levels, rows, strict=True):
        if row["prediction"] == -1:
            continue
        assert row["prediction"] == g[k]
        nearest_other = min(abs(j - k) for j in range(256) if g[j] != g[k]) / 255
        assert row["radius"] <= nearest_other + 1e-12, (k, row["radius"], nearest_other)
    assert sum(r["prediction"] != -1 for r in rows) >= 6  # not vacuous


def test_discrete_mode_refuses_inputs_off_the_8_bit_grid() -> None:
    sampler = Sampler(GridClassifier(), SamplerOptions(batch_size=100), device="cpu", num_classes=2,
                      noise="discrete-gaussian")
    with pytest.raises(ValueError, match="8-bit"):
        sampler.counts(torch.full((1, *SHAPE), 2.0**-6), ["a"], 0.5, 10, 0, "estimation")
