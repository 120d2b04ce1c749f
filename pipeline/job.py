"""A certify job from configuration to closing summary, shared by every executor (no Ray here).

``prepare`` validates everything that can be validated before compute (configuration, model,
output folder, shards, an earlier run's configuration), plans the units, and returns the pending
ones. ``run_local`` executes them in this process. :mod:`pipeline.runner` does the same on Ray.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .config import CertifyConfig, fingerprint
from .data import Plan, Selection, Unit, plan_units
from .models import LoadedModel, ModelError, load_model
from .progress import Progress
from .results import MANIFEST, SHARD_INDEX, UNITS_DIR, OutputError, Store, diff_configs
from .shards import ShardError, expand_shards, scan
from .smoothing import ConfigError


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            return f"{__version__}+g{rev.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


@dataclass
class Job:
    config: CertifyConfig
    store: Store
    run: dict  # run_id, fingerprint, model facts, dataset, split
    plan: Plan
    committed: set[str]
    pending: list[Unit]
    failed: dict[str, str] = field(default_factory=dict)  # unit id or shard -> reason
    loaded: LoadedModel | None = None  # the model prepare() loaded, handed to the local worker

    @property
    def verb(self) -> str:
        return "predicting" if self.config.mode == "predict" else "certifying"

    @property
    def selected_inputs(self) -> int:
        return sum(len(u.positions) for u in self.plan.units)


def _scan_all(store: Store, shards: list[str], log: Callable[[str], None]) -> dict[str, list[str] | str]:
    cached = store.read_json(SHARD_INDEX) or {}
    result: dict[str, list[str] | str] = {}
    for url in tqdm(shards, desc="scanning shards", unit="shard", disable=len(shards) < 8, file=sys.stderr):
        if url in cached:
            result[url] = cached[url]
            continue
        try:
            result[url] = scan(url)
            cached[url] = result[url]
        except ShardError as exc:
            result[url] = str(exc)
            log(f"error: {exc}")
    store.write_json(SHARD_INDEX, cached)
    return result


def prepare(config: CertifyConfig, log: Callable[[str], None] = print) -> Job:
    """Everything before compute. Raises ConfigError / OutputError / ModelError with a named field."""
    store = Store(config.out)
    store.check()
    shards = expand_shards(config.data)
    if not shards:
        raise ConfigError("data", f"no shards matched {config.data!r}")
    loaded = load_model(config.model, config.checkpoint, config.num_classes, config.normalize,
                        config.trust_checkpoint)
    facts = {"spec": loaded.spec, "checkpoint": loaded.checkpoint, "checkpoint_sha256": loaded.checkpoint_sha256,
             "num_classes": loaded.num_classes, "normalize": loaded.normalize}
    fields = config.result_fields(shards, facts)
    fp = fingerprint(fields)
    store.prepare()
    manifest = store.read_json(MANIFEST)
    if manifest is not None and manifest.get("fingerprint") != fp:
        diffs = diff_configs(manifest.get("result_fields", {}), fields)
        raise OutputError(
            f"out: {config.out!r} holds results of another configuration; refusing to mix them.\n  "
            + "\n  ".join(diffs or ["(fingerprints differ)"])
            + "\nUse another --out, or the same settings to resume."
        )
    dataset = config.dataset or Path(str(shards[0])).name.split("-")[0].split(".")[0]
    if manifest is None:
        manifest = {
            "run_id": f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{fp[:8]}",
            "fingerprint": fp,
            "created": dt.datetime.now(dt.UTC).isoformat(),
            "code_version": code_version(),
            "result_fields": fields,
            "config": config.model_dump(mode="json"),
            "model": facts,
            "data": {"spec": config.data, "shards": shards, "dataset": dataset, "split": config.split},
            "host": {"python": sys.version.split()[0], "platform": platform.platform()},
        }
        store.write_json(MANIFEST, manifest)
    run = {"run_id": manifest["run_id"], "fingerprint": fp, "model": facts["spec"],
           "checkpoint_sha256": facts["checkpoint_sha256"], "dataset": dataset, "split": config.split}
    keys = _scan_all(store, shards, log)
    selection = Selection(skip=config.skip, start=config.start, end=config.end, max=config.max)
    plan = plan_units(shards, keys, selection, config.unit_size)
    committed = store.committed_units(fp)
    pending = [u for u in plan.units if u.unit_id not in committed]
    job = Job(config, store, run, plan, committed, pending, loaded=loaded)
    for url, reason in plan.failed_shards.items():
        job.failed[f"shard {url}"] = reason
    if plan.deferred_shards:
        job.failed["deferred"] = (f"{len(plan.deferred_shards)} later shard(s) not planned: their dataset indices "
                                  "are unknown until the failed shard reads")
    return job


def run_local(job: Job) -> None:
    """Run the pending units in this process, one after another, with the model prepare() loaded."""
    from .worker import UnitWorker  # torch import only when computing

    if not job.pending:
        return
    worker = UnitWorker(job.config, job.run, loaded=job.loaded)
    job.loaded = None  # the worker holds it now
    inputs = sum(len(u.positions) for u in job.pending)
    start, samples, done = time.perf_counter(), 0, 0
    with Progress(inputs, job.verb) as bar:
        for unit in job.pending:
            try:
                summary = worker.run(unit)
            except ShardError as exc:
                job.failed[unit.unit_id] = str(exc)
                bar.write(f"unit {unit.unit_id} failed: {exc}")
                bar.update(len(unit.positions))
                continue
            samples += summary["samples"]
            done += 1
            bar.set_postfix(units=f"{done}/{len(job.pending)}",
                            samples_per_s=f"{samples / (time.perf_counter() - start):.0f}")
            bar.update(len(unit.positions))
            bar.write(f"unit {unit.unit_id}: {summary['rows']} rows ({summary['errors']} errors) "
                      f"in {summary['seconds']:.1f}s")


def summarize(store: Store, radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> dict:
    """Counts, accuracy and certified accuracy over the committed units (read through the store's
    filesystem, so any fsspec URL works). Four columns of small files: pyarrow and numpy suffice
    (the analysis proper, with Polars, is ``rscert analyze``)."""
    import numpy as np
    import pyarrow.dataset as pads

    files = store.fs.glob(store.path(UNITS_DIR, "*.parquet"))
    if not files:
        return {"inputs": 0}
    columns = ["status", "prediction", "correct", "radius"]
    table = pads.dataset(files, filesystem=store.fs, format="parquet").to_table(columns=columns)
    ok = np.asarray(table["status"].to_pylist(), dtype=object) == "ok"
    prediction = table["prediction"].to_numpy(zero_copy_only=False)
    correct = table["correct"].fill_null(False).to_numpy(zero_copy_only=False).astype(bool) & ok
    radius = table["radius"].fill_null(-1.0).to_numpy(zero_copy_only=False)
    good = int(ok.sum())
    out = {"inputs": table.num_rows, "ok": good, "errors": table.num_rows - good,
           "abstained": int(((prediction == -1) & ok).sum()), "correct": int(correct.sum())}
    out["accuracy"] = out["correct"] / good if good else 0.0
    out["certified_accuracy"] = {r: (int((correct & (radius >= r)).sum()) / good if good else 0.0) for r in radii}
    return out


def report(job: Job, log: Callable[[str], None] = print) -> int:
    """Print where the results are and a short summary; the exit code (1 if anything failed)."""
    s = summarize(job.store)
    committed = len(job.store.committed_units(job.run["fingerprint"]))
    log(f"results: {job.config.out} ({len(job.plan.units)} units planned, {committed} committed)")
    if s["inputs"]:
        abstain = s["abstained"] / s["ok"] if s["ok"] else 0.0
        log(f"inputs: {s['inputs']} ({s['errors']} failed rows); abstain rate {abstain:.3f}")
        if job.config.mode == "predict":
            log(f"accuracy of the smoothed classifier g (abstentions count as wrong): {s['accuracy']:.3f}")
        else:
            acc = "  ".join(f"r={r:g}: {v:.3f}" for r, v in s["certified_accuracy"].items())
            log(f"certified accuracy  {acc}")
    if job.failed:
        log(f"FAILED ({len(job.failed)}); the {committed} committed units are kept:")
        for name, reason in job.failed.items():
            log(f"  {failure_advice(name, reason)}")
        log("Then rerun the same command: only the units that are not committed run.")
        return 1
    return 0


def failure_advice(name: str, reason: str) -> str:
    """One line per failure: what is wrong, said once, and what to do about it."""
    if name.startswith("shard "):
        url = name.removeprefix("shard ")
        detail = reason.removeprefix(f"shard {url}: ")
        if "no such file" in detail:
            return f"shard {url}: no such file; restore it or fix --data"
        return f"shard {url}: {detail}; repair or replace the file"
    if name == "deferred":
        return f"{reason}; they run once it reads"
    return f"unit {name}: {reason}; a rerun retries it"


__all__ = ["Job", "prepare", "run_local", "report", "summarize", "ConfigError", "OutputError", "ModelError"]
