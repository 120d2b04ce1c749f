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
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .config import CertifyConfig, fingerprint
from .data import Plan, Selection, Unit, plan_units
from .lease import Lease
from .models import LoadedModel, ModelError, load_model
from .probe import class_count, probe
from .progress import Progress
from .results import MANIFEST, QUARANTINE_DIR, SHARD_INDEX, UNITS_DIR, OutputError, Store, diff_configs
from .selection_record import SELECTION_RECORD, make_record
from .shards import ShardError, expand_shards, scan, shard_name
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
    plan: Plan  # units over the selected inputs not yet committed
    committed: set[str]  # unit ids committed under this fingerprint (any selection, any unit size)
    pending: list[Unit]
    failed: dict[str, str] = field(default_factory=dict)  # unit id or shard -> reason
    lease: Lease | None = None
    loaded: LoadedModel | None = None  # the model prepare() loaded, handed to the local worker

    @property
    def verb(self) -> str:
        return "predicting" if self.config.mode == "predict" else "certifying"

    @property
    def selected_inputs(self) -> int:
        return self.plan.selected

    def close(self) -> None:
        """Give the output folder's driver lease back (see :mod:`pipeline.lease`)."""
        if self.lease is not None:
            self.lease.release()


def _scan_all(store: Store, shards: list[str], log: Callable[[str], None],
              storage_options: dict | None) -> dict[str, list[str] | str]:
    cached = store.read_json(SHARD_INDEX) or {}
    result: dict[str, list[str] | str] = {}
    for url in tqdm(shards, desc="scanning shards", unit="shard", disable=len(shards) < 8, file=sys.stderr):
        if url in cached:
            result[url] = cached[url]
            continue
        try:
            result[url] = scan(url, storage_options)
            cached[url] = result[url]
        except ShardError as exc:
            result[url] = str(exc)
            log(f"error: {exc}")
    store.write_json(SHARD_INDEX, cached)
    return result


def _manifest(store: Store, config: CertifyConfig, fields: dict, fp: str, facts: dict, shards: list[str],
              dataset: str) -> dict:
    """The folder's manifest: created exclusively if absent, else checked against this configuration."""
    manifest = store.read_json(MANIFEST)
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
        if store.create_json(MANIFEST, manifest):
            return manifest
        manifest = store.read_json(MANIFEST) or {}  # another driver created it first: check against it
    if manifest.get("fingerprint") != fp:
        diffs = diff_configs(manifest.get("result_fields", {}), fields)
        raise OutputError(
            f"out: {config.out!r} holds results of another configuration; refusing to mix them.\n  "
            + "\n  ".join(diffs or ["(fingerprints differ)"])
            + "\nUse another --out, or the same settings to resume (the selection and --unit-size may change)."
        )
    return manifest


def prepare(config: CertifyConfig, log: Callable[[str], None] = print) -> Job:
    """Everything before compute. Raises ConfigError / OutputError / ModelError with a named field.

    On success the returned job holds the output folder's driver lease: call :meth:`Job.close`
    when done (a second driver on the folder is refused meanwhile)."""
    options = config.storage_options
    store = Store(config.out, options)
    store.check()
    try:
        shards = expand_shards(config.data, options)
    except ShardError as exc:
        raise ConfigError("data", str(exc).removeprefix("data: ")) from None
    if not shards:
        raise ConfigError("data", f"no shards matched {config.data!r}")
    loaded = load_model(config.model, config.checkpoint, config.num_classes, config.normalize,
                        config.trust_checkpoint, config.random_init, storage_options=options)
    # the model's output width and the inputs' shape, before anything is written
    input_shape = probe(loaded.model, shards[0], config.preset, loaded.num_classes, storage_options=options)
    facts = {"spec": loaded.spec, "checkpoint": loaded.checkpoint, "checkpoint_sha256": loaded.checkpoint_sha256,
             "num_classes": loaded.num_classes, "normalize": loaded.normalize,
             "weights_sha256": loaded.weights_sha256}
    num_classes = loaded.num_classes  # as the rows will carry it (the facts keep what was configured)
    if num_classes is None and input_shape is not None:
        num_classes = class_count(loaded.model, input_shape)
    fields = config.result_fields(shards, facts)
    fp = fingerprint(fields)
    store.prepare()
    lease = Lease.acquire(store, log)
    try:
        dataset = config.dataset or Path(shard_name(str(shards[0]))).name.split("-")[0].split(".")[0]
        manifest = _manifest(store, config, fields, fp, facts, shards, dataset)
        run = {"run_id": manifest["run_id"], "fingerprint": fp, "model": facts["spec"],
               "checkpoint_sha256": facts["checkpoint_sha256"], "weights_sha256": facts["weights_sha256"],
               "input_shape": None if input_shape is None else list(input_shape),
               "dataset": dataset, "split": config.split, "num_classes": num_classes}
        keys = _scan_all(store, shards, log, options)
        selection = Selection(skip=config.skip, start=config.start, end=config.end, max=config.max)
        done = store.committed(fp)
        for name in done.quarantined:
            log(f"warning: unreadable unit file set aside in {config.out}/{QUARANTINE_DIR}/: {name}")
        plan = plan_units(shards, keys, selection, config.unit_size, committed=done.indices)
        _record_selection(store, config, run, plan)
    except BaseException:
        lease.release()
        raise
    job = Job(config, store, run, plan, done.units, plan.units, lease=lease, loaded=loaded)
    for url, reason in plan.failed_shards.items():
        job.failed[f"shard {url}"] = reason
    if plan.deferred_shards:
        job.failed["deferred"] = (f"{len(plan.deferred_shards)} later shard(s) not planned: their dataset indices "
                                  "are unknown until the failed shard reads")
    return job


def _record_selection(store: Store, config: CertifyConfig, run: dict, plan: Plan) -> None:
    """``OUT/_rscert_selection.json``: this submission's selected dataset indices, so that ``rscert
    analyze`` counts inputs whose unit never committed as failed (see :mod:`pipeline.selection_record`).
    Written whole, under the lease, replacing an earlier submission's."""
    from .certify import NOISE

    sequential = config.sampling == "sequential"
    columns = {"run_id": run["run_id"], "dataset": run["dataset"], "split": run["split"], "model": run["model"],
               "checkpoint_sha256": run["checkpoint_sha256"], "train_sigma": None, "noise": NOISE,
               "sigma": config.sigma, "n0": None if config.mode == "predict" else config.n0,
               "n": None if sequential else config.n, "n_max": config.n, "sampling": config.sampling,
               "alpha": config.alpha, "seed": config.seed, "precision": config.precision, "clamp": config.clamp,
               "preset": config.preset, "num_classes": run["num_classes"], "mode": config.mode, "source": None}
    chosen = {"skip": config.skip, "start": config.start, "end": config.end, "max": config.max}
    unplanned = [*plan.failed_shards, *plan.deferred_shards]
    store.write_json(SELECTION_RECORD, make_record(run["run_id"], run["fingerprint"], plan.selected_indices,
                                                   chosen, unplanned, columns))


def run_local(job: Job) -> None:
    """Run the pending units in this process, one after another. A unit that fails as a whole (a bad
    shard, anything unexpected) is recorded in ``job.failed`` and the job goes on; bad inputs fail
    only their rows (in the worker). A worker that cannot start (its model differs from the run's)
    fails every pending unit. The worker takes over the model prepare() loaded."""
    from .worker import UnitWorker  # torch import only when computing

    if not job.pending:
        return
    try:
        worker = UnitWorker(job.config, job.run, loaded=job.loaded)
    except ModelError as exc:
        for unit in job.pending:
            job.failed[unit.unit_id] = f"not run: {exc}"
        print(f"error: the certifier could not start: {exc}", file=sys.stderr)
        return
    finally:
        job.loaded = None  # the worker holds it now
    inputs = sum(len(u.positions) for u in job.pending)
    start, samples, done = time.perf_counter(), 0, 0
    with Progress(inputs, job.verb) as bar:
        for unit in job.pending:
            try:
                summary = worker.run(unit)
            except Exception as exc:  # noqa: BLE001 -- one unit's failure must not end the job
                message = str(exc) if isinstance(exc, ShardError) else f"{type(exc).__name__}: {exc}"
                job.failed[unit.unit_id] = message
                bar.write(f"unit {unit.unit_id} failed: {message}")
                bar.update(len(unit.positions))
                continue
            samples += summary["samples"]
            done += 1
            bar.set_postfix(units=f"{done}/{len(job.pending)}",
                            samples_per_s=f"{samples / (time.perf_counter() - start):.0f}")
            bar.update(len(unit.positions))
            bar.write(f"unit {unit.unit_id}: {summary['rows']} rows ({summary['errors']} errors) "
                      f"in {summary['seconds']:.1f}s")


RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def summarize(store: Store, radii: tuple[float, ...] = RADII, units: Iterable[str] | None = None,
              selected: int | Collection[int] | None = None) -> dict:
    """Counts, accuracy and certified accuracy over committed units (read through the store's
    filesystem, so any fsspec URL works; pyarrow and numpy suffice, the analysis proper is
    ``rscert analyze``).

    ``units`` limits the files read to those unit ids (default: every unit file). ``selected`` (dataset
    indices, or just their count) makes every selected input part of the denominator, and the indices
    also limit the rows to those inputs: an input without a row counts as failed; a failed row is
    not certified. ``certified_accuracy[r]``
    is the fraction of ``inputs`` with ``correct`` and ``radius >= r``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from .results import SCHEMA

    if units is None:
        files = store.fs.glob(store.path(UNITS_DIR, "*.parquet"))
    else:
        files = [store.unit_path(u) for u in sorted(units)]
    columns = ["index", "status", "prediction", "correct", "radius"]
    if files:
        table = pads.dataset(files, filesystem=store.fs, format="parquet").to_table(columns=columns)
    else:
        table = SCHEMA.empty_table().select(columns)
    if selected is not None and not isinstance(selected, int):
        table = table.filter(pc.is_in(table["index"], value_set=pa.array(sorted(selected), pa.int64())))
    rows = table.num_rows
    ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False)
    correct = pc.fill_null(table["correct"], False).to_numpy(zero_copy_only=False) & ok
    radius = pc.fill_null(table["radius"], -1.0).to_numpy(zero_copy_only=False)
    abstained = pc.fill_null(pc.equal(table["prediction"], -1), False).to_numpy(zero_copy_only=False) & ok
    count = selected if isinstance(selected, int) else None if selected is None else len(selected)
    inputs = rows if count is None else max(count, rows)
    good = int(ok.sum())
    out = {"rows": rows, "ok": good, "errors": rows - good, "inputs": inputs,
           "abstained": int(abstained.sum()), "correct": int(correct.sum())}
    out["failed"] = out["errors"] + (inputs - rows)  # failed rows + inputs without a row
    out["accuracy"] = out["correct"] / inputs if inputs else 0.0
    out["certified_accuracy"] = {r: (int((correct & (radius >= r)).sum()) / inputs if inputs else 0.0)
                                 for r in radii}
    return out


def report(job: Job, log: Callable[[str], None] = print) -> int:
    """Print where the results are and a short summary; the exit code (1 if anything failed).

    Rates are over every selected input (failed ones included, as not certified)."""
    committed = job.store.committed_units(job.run["fingerprint"])
    s = summarize(job.store, units=committed, selected=job.plan.selected_indices)
    log(f"results: {job.config.out} ({len(committed)} units committed)")
    if s["inputs"]:
        missing = s["inputs"] - s["rows"]
        done = "predicted" if job.config.mode == "predict" else "certified"
        log(f"inputs: {s['inputs']} selected, {s['ok']} {done}, {s['failed']} failed "
            f"({s['errors']} failed rows, {missing} in units not committed); "
            f"abstain rate {s['abstained'] / s['inputs']:.3f}")
        if job.config.mode == "predict":
            log(f"accuracy of the smoothed classifier g (abstentions count as wrong): {s['accuracy']:.3f}")
        else:
            acc = "  ".join(f"r={r:g}: {v:.3f}" for r, v in s["certified_accuracy"].items())
            log(f"certified accuracy (of all {s['inputs']} selected inputs)  {acc}")
    if job.failed:
        log(f"FAILED ({len(job.failed)}); the {len(committed)} committed units are kept:")
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
