"""Import the certification outputs of Yang et al. 2020's code base (tonyduan/rs4a) (no torch, no Ray).

An rs4a experiment folder, as its ``src/train.py`` and ``src/test.py`` leave it, holds ``args.pkl`` (the
pickled argparse Namespace of the run: ``noise``, ``sigma`` or ``lambd``, ``dataset``, ``dataset_skip``,
``sample_size_pred``, ``sample_size_cert``, ``model``) and one ``.npy`` per result column: ``preds``
(the class frequencies of the ``sample_size_pred`` prediction samples), ``labels``, ``prob_lb`` (the
lower confidence bound on pA from ``sample_size_cert`` samples: statsmodels' two-sided Clopper-Pearson
interval at alpha = 0.001, i.e. one-sided 0.0005) and ``radius_l1``, ``radius_l2``, ``radius_linf``.

That is what a row needs: each experiment becomes one configuration per norm (three Parquet files),
with ``top_class`` = argmax of ``preds``, ``prediction`` = it where ``prob_lb`` >= 1/2 (rs4a's radius is
negative below, so it never counts as certified) else -1 (abstain), ``p_lower`` = ``prob_lb``, and the
radius recomputed from ``prob_lb`` by rscert's formula of the family and norm (rscert.stats.families),
for rs4a's input dimension of the dataset. The stored radii are not taken: they agree with rscert's
where rs4a's certificate is exact, but rs4a's default Laplace linf radius (and the l2 radius it feeds)
is an approximation, lambda Phi^-1(p) / sqrt(d), not a certificate. Vote counts are not stored, so
these rows cannot be re-bounded at another alpha. Families other than Gaussian, Laplace and uniform
are refused, naming the folder.

``args.pkl`` is read with an unpickler that builds nothing but an argparse Namespace of plain values.
"""

from __future__ import annotations

import argparse
import io
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa

from rscert.stats.families import FAMILIES, NORMS, formula
from rscert.store.results import table_from_rows

RS4A_FILES = ("args.pkl", "preds.npy", "labels.npy", "prob_lb.npy")
"""The files that make a folder an rs4a experiment."""
RS4A_ALPHA = 0.0005
"""One-sided level of rs4a's bound (statsmodels' proportion_confint(alpha=0.001, method="beta"))."""
DIMS = {"cifar": 3 * 32 * 32, "svhn": 3 * 32 * 32, "ds-imagenet": 3 * 32 * 32, "mnist": 28 * 28,
        "imagenet": 3 * 224 * 224, "fashion": 28 * 28}
"""rs4a's input dimension per dataset name (its src/datasets.py, get_dim)."""


class Rs4aError(ValueError):
    """An rs4a folder that cannot be imported, naming it."""


class _NamespaceOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in (("argparse", "Namespace"), ("copyreg", "_reconstructor"), ("builtins", "object")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in args.pkl")


def is_experiment(folder: Path) -> bool:
    return all((folder / name).is_file() for name in RS4A_FILES)


def _settings(folder: Path, where: str) -> argparse.Namespace:
    try:
        args = _NamespaceOnly(io.BytesIO((folder / "args.pkl").read_bytes())).load()
    except Exception as exc:
        raise Rs4aError(f"{where}/args.pkl: not an argparse Namespace of plain values ({exc})") from None
    if not isinstance(args, argparse.Namespace):
        raise Rs4aError(f"{where}/args.pkl: holds {type(args).__name__}, not an argparse Namespace")
    return args


def read_experiment(folder: Path, where: str) -> dict[str, pa.Table]:
    """One table of rscert's schema per norm (keys l1, l2, linf) for the rs4a experiment in ``folder``."""
    args = _settings(folder, where)
    noise = str(getattr(args, "noise", "")).lower()
    if noise not in FAMILIES:
        raise Rs4aError(f"{where}: rs4a noise {getattr(args, 'noise', None)!r} has no rscert family; "
                        f"importable: {', '.join(f.capitalize() for f in FAMILIES)}")
    fam = FAMILIES[noise]
    sigma = getattr(args, "sigma", None)
    if sigma is None and getattr(args, "lambd", None) is not None:
        sigma = float(args.lambd) / fam.scale_per_sigma  # rs4a: lambda = sigma / _sigma()
    dataset = getattr(args, "dataset", None)
    if sigma is None or dataset not in DIMS:
        raise Rs4aError(f"{where}/args.pkl: needs sigma (or lambd) and a dataset of {', '.join(DIMS)}; "
                        f"got sigma={sigma!r}, dataset={dataset!r}")
    try:
        preds, labels, prob_lb = (np.load(folder / f"{name}.npy", allow_pickle=False)
                                  for name in ("preds", "labels", "prob_lb"))
    except (OSError, ValueError) as exc:
        raise Rs4aError(f"{where}: unreadable .npy ({exc})") from None
    n = len(prob_lb)
    if preds.ndim != 2 or len(preds) != n or len(labels) != n or not np.all(np.isfinite(prob_lb)):
        raise Rs4aError(f"{where}: preds, labels and prob_lb disagree in length or hold non-numbers")
    skip = int(getattr(args, "dataset_skip", 1) or 1)
    top = preds.argmax(axis=1)
    certified = prob_lb >= 0.5
    prediction = np.where(certified, top, -1)
    tables = {}
    for norm in NORMS:
        radius = np.where(certified, formula(noise, float(sigma), norm, DIMS[dataset])(prob_lb), 0.0)
        rows = [{
            "run_id": where, "key": str(i * skip), "index": i * skip, "label": int(labels[i]),
            "prediction": int(prediction[i]), "top_class": int(top[i]), "radius": float(radius[i]),
            "correct": bool(prediction[i] == int(labels[i])), "p_lower": float(prob_lb[i]),
            "n0": getattr(args, "sample_size_pred", None), "n": getattr(args, "sample_size_cert", None),
            "n_max": getattr(args, "sample_size_cert", None),
            "alpha": RS4A_ALPHA, "sigma": float(sigma), "train_sigma": float(sigma), "noise": noise, "norm": norm,
            "dim": DIMS[dataset], "bound": "pa", "vote": "hard", "num_classes": preds.shape[1],
            "model": getattr(args, "model", None), "dataset": dataset, "split": "test", "source": where,
            "mode": "certify", "sampling": "fixed", "status": "ok",
        } for i in range(n)]
        tables[norm] = table_from_rows(rows, {"rscert.source": where, "rscert.mode": "certify"})
    return tables
