"""Import certification logs written by other randomized-smoothing code bases (no torch, no Ray).

The published code (Cohen et al. 2019) and most code bases after it write tab-separated logs:

* CERTIFY: header ``idx label predict radius correct time``;
* PREDICT: header ``idx label predict correct time``;

with ``time`` as ``H:MM:SS.ffffff`` (a Python timedelta) or plain seconds, and ``predict = -1`` for an
abstention. Each log becomes one Parquet file of rscert's schema: fields the log does not have
(counts, n0, n, alpha) are null unless given, and ``source`` and ``run_id`` keep the log's path
relative to the import root, so each log is its own configuration in an analysis.

Folders of Yang et al.'s rs4a code base (``args.pkl`` and ``.npy`` columns) are imported too, one
configuration per norm (:mod:`rscert.analysis.import_rs4a`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from rscert.analysis.import_rs4a import Rs4aError, is_experiment, read_experiment
from rscert.constants import NOISE
from rscert.store.results import Store, table_from_rows

CERTIFY_HEADER = ["idx", "label", "predict", "radius", "correct", "time"]
PREDICT_HEADER = ["idx", "label", "predict", "correct", "time"]
_SIGMA = re.compile(r"sigma_([0-9]*\.?[0-9]+)")
_TRAIN_NOISE = re.compile(r"noise_([0-9]*\.?[0-9]+)")
_N = re.compile(r"(?:^|/)N_([0-9]+)(?:$|/)")
_DATASETS = ("imagenet", "cifar10", "cifar100", "mnist", "tinyimagenet")


class LogError(ValueError):
    """A log that cannot be imported, naming the file and line."""


def parse_time(text: str, where: str) -> float:
    """Seconds from ``H:MM:SS(.ffffff)`` or plain seconds."""
    text = text.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
            return hours * 3600 + minutes * 60 + seconds
        return float(text)
    except ValueError:
        raise LogError(f"{where}: time {text!r} is neither H:MM:SS.ffffff nor seconds") from None


@dataclass(frozen=True)
class LogFacts:
    sigma: float | None
    train_sigma: float | None
    dataset: str | None
    model: str | None
    split: str | None


def facts_from_path(relative: str) -> LogFacts:
    """sigma from ``sigma_X``, the training noise from ``noise_X``, dataset/model/split from the path
    layout of the published results (``certify/<dataset>/<model>/noise_<s>/<split>/sigma_<s>``)."""
    sigma = _SIGMA.search(relative)
    train = _TRAIN_NOISE.search(relative)
    parts = Path(relative).parts
    dataset = next((p for p in parts if p.lower() in _DATASETS), None)
    model = None
    if dataset is not None:
        after = parts.index(dataset) + 1
        if after < len(parts) - 1 and not parts[after].startswith(("noise_", "sigma_")):
            model = parts[after]
    split = next((p for p in parts if p in ("test", "train", "val", "valid")), None)
    return LogFacts(float(sigma.group(1)) if sigma else None, float(train.group(1)) if train else None,
                    dataset, model, split)


def read_log(path: Path, relative: str, sigma: float | None = None, dataset: str | None = None,
             model: str | None = None, alpha: float | None = None) -> pa.Table:
    """One log as a table of rscert's schema. Raises LogError naming the file and line. ``alpha``, when
    given, is recorded as the alpha the log was made with (logs do not say; the published ones: 0.001)."""
    text = path.read_text(errors="strict") if path.stat().st_size else ""
    lines = text.splitlines()
    if not lines:
        raise LogError(f"{relative}: empty file")
    header = lines[0].strip().split("\t")
    if header not in (CERTIFY_HEADER, PREDICT_HEADER):
        raise LogError(f"{relative}:1: header {lines[0].strip()!r} is neither CERTIFY's "
                       f"({' '.join(CERTIFY_HEADER)}) nor PREDICT's ({' '.join(PREDICT_HEADER)})")
    mode = "certify" if header == CERTIFY_HEADER else "predict"
    facts = facts_from_path(relative)
    # sigma: --sigma, else sigma_X in the path, else the training noise noise_X (the published
    # PREDICT logs ran at the training sigma and are only named by it)
    sigma = next((v for v in (sigma, facts.sigma, facts.train_sigma) if v is not None), None)
    if sigma is None:
        raise LogError(f"{relative}: no sigma: pass --sigma or name the file sigma_<value>")
    n_match = _N.search(relative)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        where = f"{relative}:{number}"
        if len(fields) != len(header):
            raise LogError(f"{where}: expected {len(header)} tab-separated fields, got {len(fields)}")
        values = dict(zip(header, fields, strict=True))
        try:
            idx, label, predict = int(values["idx"]), int(values["label"]), int(values["predict"])
            correct = int(values["correct"])
            radius = float(values["radius"]) if mode == "certify" else None
        except ValueError as exc:
            raise LogError(f"{where}: {exc}") from None
        if correct not in (0, 1):
            raise LogError(f"{where}: correct must be 0 or 1, got {correct}")
        if radius is not None and not (radius >= 0):  # also rejects NaN
            raise LogError(f"{where}: radius must be a number >= 0, got {values['radius']!r}")
        rows.append({
            "run_id": relative, "key": str(idx), "index": idx, "label": label, "prediction": predict,
            "radius": radius, "correct": bool(correct), "sigma": sigma, "noise": NOISE,
            "model": model or facts.model, "dataset": dataset or facts.dataset, "split": facts.split,
            "source": relative, "seconds": parse_time(values["time"], where), "status": "ok",
            "mode": mode, "train_sigma": facts.train_sigma, "n": int(n_match.group(1)) if n_match else None,
            "alpha": alpha,
        })
    return table_from_rows(rows, {"rscert.source": relative, "rscert.mode": mode})


def find_logs(paths: list[str]) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(file, path relative to the root it was found under) of every log, and (folder, relative path) of
    every rs4a experiment folder (:mod:`rscert.analysis.import_rs4a`), for files and folders (recursive).
    The files of an rs4a folder are its own, not logs."""
    found, experiments = [], []
    for raw in paths:
        root = Path(raw)
        if root.is_file():
            found.append((root, root.name))
        elif root.is_dir():
            folders = sorted(d for d in [root, *root.rglob("*")] if d.is_dir() and is_experiment(d))
            experiments += [(d, str(d.relative_to(root.parent if d == root else root))) for d in folders]
            for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if f.parent not in folders:
                    found.append((f, str(f.relative_to(root))))
        else:
            raise LogError(f"{raw}: no such file or folder")
    if not found and not experiments:
        raise LogError(f"no log files under {', '.join(paths)}")
    return found, experiments


def import_logs(paths: list[str], out: str, sigma: float | None = None, dataset: str | None = None,
                model: str | None = None, alpha: float | None = None) -> list[str]:
    """Convert every log found into ``OUT/legacy/<relative path>.parquet``, and every rs4a experiment
    folder into ``OUT/legacy/<relative path>__<norm>.parquet`` (one per norm). All are parsed first;
    nothing is written unless every one of them parses."""
    if alpha is not None and not 0 < alpha < 1:
        raise LogError(f"alpha: must satisfy 0 < alpha < 1, got {alpha}")
    logs, experiments = find_logs(paths)
    tables = [(rel, read_log(path, rel, sigma, dataset, model, alpha)) for path, rel in logs]
    try:
        for folder, rel in experiments:
            tables += [(f"{rel}__{norm}", table) for norm, table in read_experiment(folder, rel).items()]
    except Rs4aError as exc:
        raise LogError(str(exc)) from None
    store = Store(out)
    store.create_folders()
    written = []
    for rel, table in tables:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "__", rel)
        target = store.path("legacy", f"{name}.parquet")
        store.fs.makedirs(store.path("legacy"), exist_ok=True)
        store.put_table(target, table, compression="snappy")
        written.append(target)
    return written
