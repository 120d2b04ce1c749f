"""Published results built in as reference rows (``rscert analyze --reference cohen2019``; no torch, no Ray).

``cohen2019``: Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing"
(ICML 2019), the "vary noise" tables of its repository (locuslab/smoothing, commit 78a4d94,
``analysis/{markdown,latex}/vary_noise_{imagenet,cifar10}``): the models trained and certified at the
same sigma, every 100th ImageNet validation image (ResNet-50) and every 20th CIFAR-10 test image
(ResNet-110), N0 = 100, N = 100,000.

Only counts are kept here, never the logs (the repository carries no license): ``inputs`` is the
number of rows of the published CERTIFY log, ``certified[r]`` the number with ``correct == 1`` and
``radius >= r`` (certified accuracy at r = certified[r] / inputs, the paper's definition). The counts
were taken from the published logs; tests/test_references.py counts them again from the logs and
checks them against the published tables (two digits). The ImageNet sigma = 0.25 log stops after 427
rows, so that row's denominator is 427. The logs state alpha = 0.001, but their largest radii match
alpha = 0.01 (see shared/reference/cohen2019/README.md beside the checkout): the reference rows leave
alpha unknown (null).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceRow:
    dataset: str
    model: str
    sigma: float
    inputs: int
    certified: dict[float, int]  # radius -> certified-correct count


_IMAGENET_RADII = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
_CIFAR_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def _rows(dataset: str, model: str, radii: tuple[float, ...], table: dict[float, tuple[int, list[int]]]
          ) -> list[ReferenceRow]:
    return [ReferenceRow(dataset, model, sigma, inputs, dict(zip(radii, counts, strict=True)))
            for sigma, (inputs, counts) in table.items()]


REFERENCES: dict[str, dict] = {
    "cohen2019": {
        "source": "Cohen et al. 2019 (published)",
        "citation": "Cohen, Rosenfeld & Kolter, ICML 2019; locuslab/smoothing 78a4d94, analysis/vary_noise_*",
        "n0": 100,
        "n": 100_000,
        "rows": [
            *_rows("imagenet", "resnet50", _IMAGENET_RADII, {
                0.25: (427, [285, 211, 0, 0, 0, 0, 0]),
                0.50: (500, [286, 229, 186, 143, 0, 0, 0]),
                1.00: (500, [218, 189, 163, 130, 97, 74, 61]),
            }),
            *_rows("cifar10", "resnet110", _CIFAR_RADII, {
                0.12: (500, [407, 293, 0, 0, 0, 0, 0]),
                0.25: (500, [374, 300, 214, 133, 0, 0, 0]),
                0.50: (500, [326, 273, 207, 160, 117, 76, 47]),
                1.00: (500, [236, 196, 170, 139, 108, 87, 70]),
            }),
        ],
    },
}


REFERENCE_PREFIX = "reference:"
"""Reference rows' run_id starts with this (tables label them with their source)."""


def reference_rows(name: str, radii: tuple[float, ...], datasets: list[str | None], ci: float):  # noqa: ANN201
    """Summary rows (polars) of reference ``name`` for the datasets being analysed (all of its datasets
    when none matches): certified accuracy at the radii it has counts for (null at the others), with
    Clopper-Pearson intervals at level ``ci``."""
    import polars as pl

    from rscert.analysis.result import cert_col
    from rscert.stats.smoothing import clopper_pearson_lower, clopper_pearson_upper

    if name not in REFERENCES:
        raise ValueError(f"--reference: expected one of {', '.join(REFERENCES)}, got {name!r}")
    ref = REFERENCES[name]
    rows = [r for r in ref["rows"] if r.dataset in datasets] or list(ref["rows"])
    tail = (1 - ci) / 2
    out = []
    for row in rows:
        values: dict = {"run_id": f"{REFERENCE_PREFIX}{name}:{row.dataset}:{row.sigma:.2f}", "dataset": row.dataset,
                        "split": "test", "model": row.model, "train_sigma": row.sigma, "noise": "gaussian",
                        "norm": "l2", "sigma": row.sigma, "n0": ref["n0"], "n": ref["n"], "n_max": ref["n"],
                        "sampling": "fixed",
                        "mode": "certify", "source": ref["source"], "inputs": row.inputs, "missing": 0,
                        "ok": row.inputs, "failed": 0}
        zero = row.certified.get(0.0)
        values["correct_count"] = zero
        values["accuracy"] = None if zero is None else zero / row.inputs
        for r in radii:
            k = row.certified.get(float(r))
            values[cert_col(r)] = None if k is None else k / row.inputs
            values[cert_col(r, "lo")] = None if k is None else float(clopper_pearson_lower(k, row.inputs, tail))
            values[cert_col(r, "hi")] = None if k is None else float(clopper_pearson_upper(k, row.inputs, tail))
        out.append(values)
    return pl.DataFrame(out, infer_schema_length=None)
