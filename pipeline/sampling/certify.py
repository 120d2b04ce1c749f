"""CERTIFY (fixed or sequential sampling) and PREDICT for a batch of inputs: votes through the statistics.

One record per input, with the fields of the results schema (docs/schema.md). The certificate's
guarantee is that of :func:`rscert.stats.smoothing.certify_from_counts` with the row's noise family and
norm (rscert.stats.families), or with ``--bound top2`` / ``--vote soft`` that of
:func:`rscert.stats.pair.certify_pair` (docs/bounds.md): with probability at least 1 - alpha over the
sampling, the smoothed classifier (of the votes, or of the soft scores) is constant, = prediction, on
the ball of the row's radius in the row's ``norm``.
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
from rscert.stats.families import formula, resolve
from rscert.stats.pair import PairFormula, Tally, certify_pair, check_temperature, runner_up
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
from rscert.stats.soft_predict import soft_predict

StopRule = Callable[[Tally, np.ndarray, int, Schedule, Sequence[float], PairFormula], Decision]
"""(tally of the estimation samples so far, cA per input, look index, schedule, radii, radius formula) ->
Decision (rscert.stats.sequential.decide)."""


@dataclass(frozen=True)
class SmoothingParams:
    """The settings of CERTIFY: noise family and level, the radius' norm, sample counts, confidence,
    the noise seed, and how the radius is bounded (``bound``) from which votes (``vote``, with the softmax
    ``temperature`` of soft votes: default 1). ``norm`` None means the family's default norm (resolved here)."""

    sigma: float
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    seed: int = 0
    noise: str = NOISE
    norm: str | None = None
    bound: str = BOUNDS[0]
    vote: str = VOTES[0]
    temperature: float | None = None

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
        object.__setattr__(self, "temperature", check_temperature(self.temperature, self.vote))

    def formula(self, dim: int | None) -> PairFormula:
        """The radius formula (family, norm, --bound) for inputs of ``dim`` elements."""
        return PairFormula(formula(self.noise, self.sigma, self.norm, dim), self.bound)

    def tally(self, sampler: Sampler, inputs: torch.Tensor, keys: Sequence[str], num_samples: int | Sequence[int],
              phase: str, start: int | Sequence[int] = 0) -> Tally:
        """The sampler's tally of these inputs with this run's vote and temperature."""
        return sampler.tally(inputs, keys, self.sigma, num_samples, self.seed, phase, start=start, vote=self.vote,
                             temperature=self.temperature)


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
    """The noise family, norm, bound, vote and temperature columns of every row of a run (failed rows too)."""
    return {"noise": params.noise, "norm": params.norm, "bound": params.bound, "vote": params.vote,
            "temperature": params.temperature}


def _certify_row(key: str, label: int | None, top: int, selection: Tally, estimation: Tally, i: int,
                 p_lower: float, p_upper: float, params: SmoothingParams, num_classes: int, seconds: float,
                 dim: int) -> dict:
    """One CERTIFY row: predict ``top`` with the radius of (p_lower, p_upper) (the family's formula at
    p_lower with --bound pa: sigma Phi^-1(p_lower) for Gaussian l2) if they certify it, else abstain.

    Hard votes keep the counts (``count_select``, ``count_top``, and with top2 ``count_second``); soft
    votes keep cA's ``soft_sum`` and ``soft_sumsq`` over the estimation samples."""
    form = params.formula(dim)
    certified = bool(form.certified(p_lower, p_upper))
    pred = top if certified else ABSTAIN
    hard = params.vote == "hard"
    top2 = params.bound == "top2"
    return {
        "key": key,
        "label": label,
        "prediction": pred,
        "top_class": top,
        "radius": float(form(p_lower, p_upper)) if certified else 0.0,
        "dim": dim,
        "correct": None if label is None else bool(pred != ABSTAIN and pred == label),
        "n0": params.n0,
        "n": int(estimation.n[i]),
        "count_select": int(selection.total[i, top]) if hard else None,
        "count_top": int(estimation.total[i, top]) if hard else None,
        "count_second": int(runner_up(estimation.total[i : i + 1], [top])[0]) if hard and top2 else None,
        "p_lower": p_lower,
        "p_upper": p_upper if top2 else None,
        "soft_sum": None if hard else float(estimation.total[i, top]),
        "soft_sumsq": None if hard else float(estimation.total_sq[i, top]),
        **_settings(params, num_classes, seconds),
    }


def _certify_rows(keys: Sequence[str], labels: list[int | None], top: np.ndarray, selection: Tally,
                  estimation: Tally, p_lower: np.ndarray, p_upper: np.ndarray, params: SmoothingParams,
                  num_classes: int, seconds: float, sampling: str, reasons: Sequence[str], dim: int,
                  radius: np.ndarray | None = None) -> list[dict]:
    """The rows of fixed and sequential CERTIFY alike: input i predicts ``top[i]`` from the tally of its
    ``estimation.n[i]`` estimation samples with bounds ``p_lower[i]``, ``p_upper[i]``; ``radius`` (when
    given) is the radius already computed for each input (certify_from_counts', kept bit for bit:
    Gaussian l2 only)."""
    records = []
    for i, key in enumerate(keys):
        t = int(top[i])
        row = _certify_row(key, labels[i], t, selection, estimation, i, float(p_lower[i]), float(p_upper[i]),
                           params, num_classes, seconds, dim)
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
    selection = params.tally(sampler, inputs, keys, params.n0, "selection")
    estimation = params.tally(sampler, inputs, keys, params.n, "estimation")
    num_classes = selection.total.shape[1]
    labs = _labels(labels, len(keys), num_classes)
    if params.vote == "hard" and params.bound == "pa":  # Cohen et al.'s CERTIFY, bit for bit
        cert = certify_from_counts(selection.total, estimation.total, params.n, params.alpha, params.sigma)
        p_upper = 1.0 - cert.p_lower
    else:
        cert = certify_pair(estimation, select_top_class(selection.total), params.alpha,
                            params.formula(_dim(inputs)))
        p_upper = cert.p_upper
    seconds = (time.perf_counter() - start) / max(len(keys), 1)
    return _certify_rows(keys, labs, cert.top_class, selection, estimation, cert.p_lower, p_upper, params,
                         num_classes, seconds, "fixed", ["cap"] * len(keys), _dim(inputs),
                         radius=cert.radius if params.bound == "pa" and params.vote == "hard" else None)


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

    Guarantee (pipeline/stats/sequential.py, eq. 2): ``p_lower`` (and, with top2, ``p_upper``) are the
    bounds of the look the input stopped at, valid simultaneously at every look, so with probability at
    least 1 - alpha a returned prediction c != -1 satisfies g(x + delta) = c for every ||delta|| < radius
    (the row's norm), *whatever* ``rule`` is. Round k draws samples n_{k-1} .. n_k - 1 of each
    still-active input's estimation stream in one :meth:`Sampler.tally` call, so stopped inputs free
    their share of the batches, and an input's samples (hence where it stops) do not depend on which
    other inputs share its unit. ``radii``: the table whose cells decide stopping (default
    :func:`rscert.stats.sequential.default_stop_radii`).
    """
    _check_sampler(sampler, params)
    start = time.perf_counter()
    schedule = look_schedule(params.n, params.alpha)
    form = params.formula(_dim(inputs))
    if radii is None:
        radii = default_stop_radii(form, params.n, params.alpha, params.vote)
    # the cap binds radii that do not depend on d here; those that do were checked at the probed input's d
    radii = check_stop_radii(radii, form, params.n, params.alpha,
                             cap=not form.radius.family.needs_dim(form.radius.norm), vote=params.vote)
    selection = params.tally(sampler, inputs, keys, params.n0, "selection")
    num_classes = selection.total.shape[1]
    labs = _labels(labels, len(keys), num_classes)
    top = select_top_class(selection.total)
    hard = params.vote == "hard"
    so_far = Tally(np.zeros(len(keys), np.int64), np.zeros((len(keys), num_classes), np.int64 if hard else np.float64),
                   None if hard else np.zeros((len(keys), num_classes)))
    p_lower = np.zeros(len(keys), dtype=np.float64)
    p_upper = np.ones(len(keys), dtype=np.float64)
    reason = np.full(len(keys), "cap", dtype=object)
    active = np.arange(len(keys))
    done = 0
    for look, n_look in enumerate(schedule.looks):
        if active.size == 0:
            break
        new = params.tally(sampler, inputs[torch.as_tensor(active)], [keys[i] for i in active], n_look - done,
                           "estimation", start=done)
        so_far.n[active] = n_look
        so_far.total[active] += new.total
        if not hard:
            so_far.total_sq[active] += new.total_sq
        mine = Tally(so_far.n[active], so_far.total[active], None if hard else so_far.total_sq[active])
        decision = rule(mine, top[active], look, schedule, radii, form)
        p_lower[active], p_upper[active] = decision.p_lower, decision.p_upper
        reason[active[decision.stop]] = decision.reason[decision.stop]
        active = active[~decision.stop]
        done = n_look
    seconds = (time.perf_counter() - start) / max(len(keys), 1)
    return _certify_rows(keys, labs, top, selection, so_far, p_lower, p_upper, params, num_classes, seconds,
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
    equals g(x). ``correct`` is False for an abstention. Soft votes: eq. P of
    :mod:`rscert.stats.soft_predict`, the same guarantee for the smoothed soft classifier.
    """
    _check_sampler(sampler, params)
    if params.bound != "pa":
        raise ConfigError("bound", "applies to certify only: PREDICT's test already compares the two leading "
                                   "classes (docs/bounds.md)")
    start = time.perf_counter()
    tally = params.tally(sampler, inputs, keys, params.n, "prediction")
    num_classes = tally.total.shape[1]
    labs = _labels(labels, len(keys), num_classes)
    if params.vote == "hard":
        pred = predict_from_counts(tally.total, params.alpha)
        per_row = [{"count_top": int(pred.count_top[i]), "count_second": int(pred.count_second[i])}
                   for i in range(len(keys))]
    else:
        pred = soft_predict(tally, params.alpha)
        per_row = [{"p_lower": float(pred.p_lower[i]), "p_upper": float(pred.p_upper[i]),
                    "soft_sum": float(tally.total[i, pred.top_class[i]]),
                    "soft_sumsq": float(tally.total_sq[i, pred.top_class[i]])} for i in range(len(keys))]
    seconds = (time.perf_counter() - start) / max(len(keys), 1)
    return [
        {
            "key": key,
            "label": labs[i],
            "prediction": int(pred.prediction[i]),
            "top_class": int(pred.top_class[i]),
            "correct": None if labs[i] is None else bool(pred.prediction[i] == labs[i]),
            "n": params.n,
            **per_row[i],
            "p_value": float(pred.p_value[i]),
            **_settings(params, num_classes, seconds),
        }
        for i, key in enumerate(keys)
    ]
