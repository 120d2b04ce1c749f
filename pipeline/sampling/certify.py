"""CERTIFY (fixed or sequential sampling) and PREDICT for a batch of inputs: votes through the statistics.

One record per input, with the fields of the results schema (docs/schema.md). The certificate's
guarantee is that of :func:`rscert.stats.smoothing.certify_from_counts` with the row's noise family and
norm (rscert.stats.families): with probability at least 1 - alpha over the sampling,
g(x + delta) = prediction for every ||delta|| < radius in the row's ``norm``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rscert.constants import BOUNDS, NOISE, VOTES
from rscert.errors import ConfigError
from rscert.sampling.sampler import Sampler
from rscert.stats.families import RadiusFormula, formula, resolve
from rscert.stats.sequential import Decision, Schedule, check_stop_radii, decide, default_stop_radii, look_schedule
from rscert.stats.smoothing import (
    ABSTAIN,
    certify_from_counts,
    check_alpha,
    check_count,
    check_labels,
    check_sigma,
    predict_from_counts,
    select_top_class,
)

StopRule = Callable[[np.ndarray, int, Schedule, Sequence[float], RadiusFormula], Decision]
"""(votes for cA so far, look index, schedule, radii, radius formula) -> Decision (rscert.stats.sequential.decide)."""


@dataclass(frozen=True)
class SmoothingParams:
    """The settings of CERTIFY: noise family and level, the radius' norm, sample counts, confidence,
    the noise seed, and how the radius is bounded (``bound``) from which votes (``vote``).
    ``norm`` None means the family's default norm (resolved here)."""

    sigma: float
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    seed: int = 0
    noise: str = NOISE
    norm: str | None = None
    bound: str = BOUNDS[0]
    vote: str = VOTES[0]

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))
        object.__setattr__(self, "n0", check_count(self.n0, "n0"))
        object.__setattr__(self, "n", check_count(self.n, "n"))
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        object.__setattr__(self, "seed", check_count(self.seed, "seed", minimum=0))
        object.__setattr__(self, "norm", resolve(self.noise, self.norm)[1])
        if self.bound not in BOUNDS:
            raise ConfigError("bound", f"must be one of {', '.join(BOUNDS)}, got {self.bound!r}")
        if self.vote not in VOTES:
            raise ConfigError("vote", f"must be one of {', '.join(VOTES)}, got {self.vote!r}")

    def formula(self, dim: int | None) -> RadiusFormula:
        """The radius formula for inputs of ``dim`` elements."""
        return formula(self.noise, self.sigma, self.norm, dim)


def _check_sampler(sampler: Sampler, params: SmoothingParams) -> None:
    if sampler.noise != params.noise:
        raise ValueError(f"noise: the sampler draws {sampler.noise} noise, the settings ask for {params.noise}")


def _dim(inputs: torch.Tensor) -> int:
    """The number of elements of one input (what dimension-dependent radii use)."""
    return int(np.prod(inputs.shape[1:], dtype=np.int64))


def _labels(labels: Sequence[int | None] | None, count: int, num_classes: int) -> list[int | None]:
    if labels is None:
        return [None] * count
    if len(labels) != count:
        raise ValueError(f"labels: got {len(labels)} labels for {count} inputs")
    known = [lab for lab in labels if lab is not None]
    check_labels(np.asarray(known, dtype=np.int64), num_classes)
    return list(labels)


def _settings(params: SmoothingParams, num_classes: int, seconds: float) -> dict:
    """The columns every successful row shares: the run's settings, the class count, the time."""
    return {"alpha": params.alpha, "sigma": params.sigma, **setting_columns(params), "seed": params.seed,
            "num_classes": num_classes, "seconds": seconds, "status": "ok", "error": None}


def setting_columns(params: SmoothingParams) -> dict:
    """The noise family, norm, bound and vote columns of every row of a run (failed rows too)."""
    return {"noise": params.noise, "norm": params.norm, "bound": params.bound, "vote": params.vote}


def _certify_row(key: str, label: int | None, top: int, count_select: int, count_top: int, p_lower: float,
                 n: int, params: SmoothingParams, num_classes: int, seconds: float, dim: int) -> dict:
    """One CERTIFY row: predict ``top`` with the radius of the family's formula at p_lower (sigma Phi^-1(p_lower)
    for Gaussian l2) if p_lower >= 1/2, else abstain."""
    certified = p_lower >= 0.5
    pred = top if certified else ABSTAIN
    return {
        "key": key,
        "label": label,
        "prediction": pred,
        "top_class": top,
        "radius": float(params.formula(dim)(p_lower)) if certified else 0.0,
        "dim": dim,
        "correct": None if label is None else bool(pred != ABSTAIN and pred == label),
        "n0": params.n0,
        "n": n,
        "count_select": count_select,
        "count_top": count_top,
        "p_lower": p_lower,
        **_settings(params, num_classes, seconds),
    }


def _certify_rows(keys: Sequence[str], labels: list[int | None], top: np.ndarray, selection: np.ndarray,
                  count_top: np.ndarray, p_lower: np.ndarray, drawn: np.ndarray, params: SmoothingParams,
                  num_classes: int, seconds: float, sampling: str, reasons: Sequence[str], dim: int,
                  radius: np.ndarray | None = None) -> list[dict]:
    """The rows of fixed and sequential CERTIFY alike: input i predicts ``top[i]`` from ``count_top[i]`` of
    ``drawn[i]`` estimation samples with bound ``p_lower[i]``; ``radius`` (when given) is the radius
    already computed for each input (certify_from_counts', kept bit for bit: Gaussian l2 only)."""
    records = []
    for i, key in enumerate(keys):
        t = int(top[i])
        row = _certify_row(key, labels[i], t, int(selection[i, t]), int(count_top[i]), float(p_lower[i]),
                           int(drawn[i]), params, num_classes, seconds, dim)
        if radius is not None and (params.noise, params.norm) == (NOISE, "l2"):
            row["radius"] = float(radius[i])
        row.update(n_max=params.n, sampling=sampling, stop_reason=str(reasons[i]))
        records.append(row)
    return records


def certify(
    sampler: Sampler,
    inputs: torch.Tensor,
    keys: Sequence[str],
    labels: Sequence[int | None] | None,
    params: SmoothingParams,
) -> list[dict]:
    """CERTIFY (Cohen et al. 2019, Section 3.2) for every input: n0 selection samples, then n
    independent estimation samples (other noise: another phase), the Clopper-Pearson bound and radius.

    ``seconds`` is the call's wall time shared equally among its inputs (their samples are packed
    into common batches, so per-input time is not separable).
    """
    _check_sampler(sampler, params)
    start = time.perf_counter()
    selection = sampler.counts(inputs, keys, params.sigma, params.n0, params.seed, "selection")
    estimation = sampler.counts(inputs, keys, params.sigma, params.n, params.seed, "estimation")
    num_classes = selection.shape[1]
    labs = _labels(labels, len(keys), num_classes)
    cert = certify_from_counts(selection, estimation, params.n, params.alpha, params.sigma)
    seconds = (time.perf_counter() - start) / max(len(keys), 1)
    return _certify_rows(keys, labs, cert.top_class, selection, cert.count_top, cert.p_lower,
                         np.full(len(keys), params.n), params, num_classes, seconds, "fixed",
                         ["cap"] * len(keys), _dim(inputs), radius=cert.radius)


def certify_sequential(
    sampler: Sampler,
    inputs: torch.Tensor,
    keys: Sequence[str],
    labels: Sequence[int | None] | None,
    params: SmoothingParams,
    radii: Sequence[float] | None = None,
    rule: StopRule = decide,
) -> list[dict]:
    """Sequential CERTIFY: n0 selection samples choose cA, then estimation samples in rounds up to the
    looks of :func:`rscert.stats.sequential.look_schedule` (cap ``params.n``), each input stopping by ``rule``.

    Guarantee (pipeline/stats/sequential.py, eq. 2): ``p_lower`` is the bound of the look the input stopped
    at, valid simultaneously at every look, so with probability at least 1 - alpha a returned prediction
    c != -1 satisfies g(x + delta) = c for every ||delta|| < radius (the row's norm), *whatever* ``rule`` is.
    Round k draws samples n_{k-1} .. n_k - 1 of each still-active input's estimation stream in one
    :meth:`Sampler.counts` call, so stopped inputs free their share of the batches, and an input's
    samples (hence where it stops) do not depend on which other inputs share its unit.
    ``radii``: the table whose cells decide stopping (default :func:`rscert.stats.sequential.default_stop_radii`).
    """
    _check_sampler(sampler, params)
    start = time.perf_counter()
    schedule = look_schedule(params.n, params.alpha)
    form = params.formula(_dim(inputs))
    if radii is None:
        radii = default_stop_radii(form, params.n, params.alpha)
    # the cap binds radii that do not depend on d here; those that do were checked at the probed input's d
    radii = check_stop_radii(radii, form, params.n, params.alpha, cap=not form.family.needs_dim(form.norm))
    selection = sampler.counts(inputs, keys, params.sigma, params.n0, params.seed, "selection")
    num_classes = selection.shape[1]
    labs = _labels(labels, len(keys), num_classes)
    top = select_top_class(selection)
    count = np.zeros(len(keys), dtype=np.int64)
    drawn = np.zeros(len(keys), dtype=np.int64)
    p_lower = np.zeros(len(keys), dtype=np.float64)
    reason = np.full(len(keys), "cap", dtype=object)
    active = np.arange(len(keys))
    done = 0
    for look, n_look in enumerate(schedule.looks):
        if active.size == 0:
            break
        votes = sampler.counts(inputs[torch.as_tensor(active)], [keys[i] for i in active], params.sigma,
                               n_look - done, params.seed, "estimation", start=done)
        count[active] += votes[np.arange(active.size), top[active]]
        drawn[active] = n_look
        decision = rule(count[active], look, schedule, radii, form)
        p_lower[active] = decision.p_lower
        reason[active[decision.stop]] = decision.reason[decision.stop]
        active = active[~decision.stop]
        done = n_look
    seconds = (time.perf_counter() - start) / max(len(keys), 1)
    return _certify_rows(keys, labs, top, selection, count, p_lower, drawn, params, num_classes, seconds,
                         "sequential", reason, _dim(inputs))


def predict(
    sampler: Sampler,
    inputs: torch.Tensor,
    keys: Sequence[str],
    labels: Sequence[int | None] | None,
    params: SmoothingParams,
) -> list[dict]:
    """PREDICT (Cohen et al. 2019, Section 3.1): n samples, binomial test of the top two counts.

    Guarantee (Proposition 2 there): with probability at least 1 - alpha, a prediction other than -1
    equals g(x). ``correct`` is False for an abstention.
    """
    _check_sampler(sampler, params)
    start = time.perf_counter()
    counts = sampler.counts(inputs, keys, params.sigma, params.n, params.seed, "prediction")
    num_classes = counts.shape[1]
    labs = _labels(labels, len(keys), num_classes)
    pred = predict_from_counts(counts, params.alpha)
    seconds = (time.perf_counter() - start) / max(len(keys), 1)
    return [
        {
            "key": key,
            "label": labs[i],
            "prediction": int(pred.prediction[i]),
            "top_class": int(pred.top_class[i]),
            "correct": None if labs[i] is None else bool(pred.prediction[i] == labs[i]),
            "n": params.n,
            "count_top": int(pred.count_top[i]),
            "count_second": int(pred.count_second[i]),
            "p_value": float(pred.p_value[i]),
            **_settings(params, num_classes, seconds),
        }
        for i, key in enumerate(keys)
    ]
