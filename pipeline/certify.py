"""CERTIFY and PREDICT for a batch of inputs: the sampler's votes through the statistics.

One record per input, with the fields of the results schema (docs/schema.md). The certificate's
guarantee is that of :func:`pipeline.smoothing.certify_from_counts`: with probability at least
1 - alpha over the sampling, g(x + delta) = prediction for every ||delta||_2 < radius.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .sampler import Sampler
from .smoothing import (
    ABSTAIN,
    certify_from_counts,
    check_alpha,
    check_count,
    check_labels,
    check_sigma,
    predict_from_counts,
)

NOISE = "gaussian"


@dataclass(frozen=True)
class SmoothingParams:
    """The settings of CERTIFY: noise level, sample counts, confidence and the noise seed."""

    sigma: float
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))
        object.__setattr__(self, "n0", check_count(self.n0, "n0"))
        object.__setattr__(self, "n", check_count(self.n, "n"))
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        object.__setattr__(self, "seed", check_count(self.seed, "seed", minimum=0))


def _labels(labels: Sequence[int | None] | None, count: int, num_classes: int) -> list[int | None]:
    if labels is None:
        return [None] * count
    if len(labels) != count:
        raise ValueError(f"labels: got {len(labels)} labels for {count} inputs")
    known = [lab for lab in labels if lab is not None]
    check_labels(np.asarray(known, dtype=np.int64), num_classes)
    return list(labels)


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
    start = time.perf_counter()
    selection = sampler.counts(inputs, keys, params.sigma, params.n0, params.seed, "selection")
    estimation = sampler.counts(inputs, keys, params.sigma, params.n, params.seed, "estimation")
    num_classes = selection.shape[1]
    labs = _labels(labels, len(keys), num_classes)
    cert = certify_from_counts(selection, estimation, params.n, params.alpha, params.sigma)
    seconds = (time.perf_counter() - start) / max(len(keys), 1)
    records = []
    for i, key in enumerate(keys):
        pred = int(cert.prediction[i])
        records.append(
            {
                "key": key,
                "label": labs[i],
                "prediction": pred,
                "top_class": int(cert.top_class[i]),
                "radius": float(cert.radius[i]),
                "correct": None if labs[i] is None else bool(pred != ABSTAIN and pred == labs[i]),
                "n0": params.n0,
                "n": params.n,
                "count_select": int(selection[i, cert.top_class[i]]),
                "count_top": int(cert.count_top[i]),
                "p_lower": float(cert.p_lower[i]),
                "alpha": params.alpha,
                "sigma": params.sigma,
                "noise": NOISE,
                "seed": params.seed,
                "num_classes": num_classes,
                "seconds": seconds,
                "status": "ok",
                "error": None,
            }
        )
    return records


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
            "alpha": params.alpha,
            "sigma": params.sigma,
            "noise": NOISE,
            "seed": params.seed,
            "num_classes": num_classes,
            "seconds": seconds,
            "status": "ok",
            "error": None,
        }
        for i, key in enumerate(keys)
    ]
