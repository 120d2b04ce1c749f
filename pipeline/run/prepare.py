"""A certify job, prepared: shared by every executor (no Ray here).

``prepare`` validates everything that can be validated before compute (configuration, model,
output folder, shards, an earlier run's configuration), plans the units, and returns the pending
ones. An executor runs them (:mod:`rscert.run.local` in this process, :mod:`rscert.run.ray_runner`
on Ray); :mod:`rscert.run.report` sums up.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rscert import __version__
from rscert.config.certify import CertifyConfig, fingerprint, same_results, without_selection
from rscert.data.layout import LAYOUT
from rscert.data.plan import Plan, Selection, Unit
from rscert.data.shard_identity import CHANGED
from rscert.data.shards import ShardError, expand_shards, shard_name
from rscert.errors import ConfigError
from rscert.run.model_facts import ModelFacts, load_facts
from rscert.run.plan_feed import PlanFeed
from rscert.store.lease import Lease
from rscert.store.results import MANIFEST, QUARANTINE_DIR, OutputError, Store, diff_configs
from rscert.store.selection_record import SELECTION_RECORD, make_record, no_longer_selected
from rscert.store.tally import RowFacts

if TYPE_CHECKING:
    from rscert.models.denoisers import LoadedDenoiser
    from rscert.models.load import LoadedModel

RECORD_BATCH = 256
NEW_CHUNK = 1024
"""Units' row facts are joined by this many (160,000 units of 32 at 5 million inputs: five small arrays
each would cost more than their rows)."""
RECORD_SECONDS = 30.0


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
    # inputs earlier submissions selected and this one does not, and how many of them have no row
    deselected: tuple[int, int] = (0, 0)
    denoiser: LoadedDenoiser | None = None  # likewise its denoiser (denoised smoothing), if any
    done: RowFacts = field(default_factory=RowFacts.empty)  # summary columns of the rows committed before
    new: list[RowFacts] = field(default_factory=list)  # ... and of the units committed by this run (in chunks)
    new_units: int = 0  # units committed by this run
    records: list[dict] = field(default_factory=list)  # executions not yet written
    flushed: float = field(default_factory=time.monotonic)
    log: Callable[[str], None] | None = None  # where the plan's line goes when planning is over (or nowhere)
    feed: PlanFeed | None = None  # planning, as it goes

    def planned(self, plan: Plan) -> None:
        """Planning is over (called by the feed): record the selection, report failed shards."""
        self.plan, self.pending = plan, plan.units
        dropped = _record_selection(self.store, self.config, self.run, plan)
        without_row = np.setdiff1d(dropped, self.done.index)
        self.deselected = (len(dropped), len(without_row))
        for url, reason in plan.failed_shards.items():
            self.failed[f"shard {url}"] = reason
        for url, reason in plan.changed_shards.items():
            self.failed[f"shard {url}"] = CHANGED.format(reason=reason)
        if plan.deferred_shards and self.config.subset is not None:
            self.failed["deferred"] = (f"{len(plan.deferred_shards)} shard(s) not planned: --subset draws from every "
                                       "candidate input, and those of the shards after a failed one are unknown "
                                       "until it reads")
        elif plan.deferred_shards:
            self.failed["deferred"] = (f"{len(plan.deferred_shards)} later shard(s) not planned: their dataset "
                                       "indices are unknown until the failed shard reads")
        if self.log is not None and plan.candidates is not None:
            self.log(f"subset: {plan.selected} of {plan.candidates} candidate inputs (--skip/--start/--end), drawn "
                     f"with subset seed {self.config.subset_seed}")
            if self.config.subset is not None and self.config.subset > plan.candidates:
                self.log(f"warning: --subset {self.config.subset} is more than the {plan.candidates} candidate "
                         f"inputs: all {plan.candidates} are kept")
        if self.log is not None:
            inputs = sum(len(u.positions) for u in plan.units)
            self.log(f"run {self.run['run_id']}: {plan.selected} inputs selected, {plan.done} certified before; "
                     f"units: {len(self.committed)} already committed, {len(plan.units)} to run ({inputs} inputs)")

    @property
    def verb(self) -> str:
        return "predicting" if self.config.mode == "predict" else "certifying"

    @property
    def selected_inputs(self) -> int:
        return self.plan.selected

    def finished(self, summary: dict) -> None:
        """A unit committed: keep its rows' summary columns, and record the execution (written in batches
        of :data:`RECORD_BATCH`, or every :data:`RECORD_SECONDS`, and when the job closes)."""
        facts = summary.pop("facts", None)
        if facts is not None:
            self.new.append(facts)
            self.new_units += 1
            if self.new_units % NEW_CHUNK == 0:  # the last NEW_CHUNK units' facts become one (5 arrays, not 5 each)
                whole = self.new_units // NEW_CHUNK - 1  # chunks before them
                self.new[whole:] = [RowFacts.concat(self.new[whole:])]
        self.records.append(summary)
        if len(self.records) >= RECORD_BATCH or time.monotonic() - self.flushed > RECORD_SECONDS:
            self.flush()

    def flush(self) -> None:
        records, self.records, self.flushed = self.records, [], time.monotonic()
        self.store.record_executions(records)

    def close(self) -> None:
        """Write the remaining execution records; give the output folder's driver lease back (see
        :mod:`rscert.store.lease`)."""
        try:
            self.flush()
        finally:
            if self.lease is not None:
                self.lease.release()


def _manifest(store: Store, config: CertifyConfig, fields: dict, fp: str, facts: dict, shards: list[str],
              dataset: str) -> dict:
    """The folder's manifest: created exclusively if absent, else checked against this configuration.
    The folder's fingerprint is the manifest's: a folder created before the shard list left the
    fingerprint keeps the one its rows carry (its result fields are compared without the list)."""
    manifest = store.read_json(MANIFEST)
    if manifest is None:
        manifest = {
            # unique per folder: the time, the configuration, and a random part (two folders of one
            # configuration may start in the same second)
            "run_id": f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{fp[:8]}-{os.urandom(3).hex()}",
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
    if manifest.get("fingerprint") != fp and not same_results(manifest.get("result_fields") or {}, fields):
        diffs = diff_configs(without_selection(manifest.get("result_fields") or {}), fields)
        raise OutputError(
            f"out: {config.out!r} holds results of another configuration; refusing to mix them.\n  "
            + "\n  ".join(diffs or ["(fingerprints differ)"])
            + "\nUse another --out, or the same settings to resume (the shards, the selection and --unit-size may "
              "change)."
        )
    earlier = (manifest.get("result_fields") or {}).get("shards")
    if earlier is not None and store.read_json(LAYOUT) is None and list(shards[: len(earlier)]) != list(earlier):
        # a folder from before the layout record: only its own list, as spelled, says what its indices mean
        raise OutputError(
            f"out: {config.out!r} was written by an earlier rscert whose runs kept one shard list, and it has no "
            f"layout record ({LAYOUT}) to check another list by content; give its {len(earlier)} shard(s) first, "
            f"spelled and ordered as in its manifest (data.shards), then any new ones, or use another --out")
    return manifest


SEED_BITS = 32
"""A drawn seed is uniform on [0, 2^32): short to write; two folders share one with probability 2^-32."""


def settle_seed(config: CertifyConfig, store: Store, log: Callable[[str], None]) -> CertifyConfig:
    """The configuration with its noise seed settled: as given; else the one recorded in the folder's
    manifest (a resume reproduces the run's noise); else a fresh random one for a new folder, so that
    no seed is a default every run shares and none is chosen after seeing results. It is recorded in
    the manifest, the rows and the selection record."""
    if config.seed is not None:
        return config
    manifest = store.read_json(MANIFEST) or {}
    recorded = (manifest.get("result_fields") or {}).get("seed")
    if recorded is not None:
        log(f"seed {recorded}: this folder's (from its manifest)")
        return config.model_copy(update={"seed": int(recorded)})
    seed = secrets.randbits(SEED_BITS)
    log(f"seed {seed}: drawn for this new output folder and recorded in its manifest (give --seed to choose one)")
    return config.model_copy(update={"seed": seed})


def prepare(config: CertifyConfig, log: Callable[[str], None] = print, early: bool = False,
            announce: bool = False, remote_facts: Callable[[CertifyConfig, str], ModelFacts] | None = None) -> Job:
    """Everything before compute. Raises ConfigError / OutputError / ModelError with a named field.

    Planning (indexing the shards, cutting units) runs in the background (:mod:`rscert.run.plan_feed`);
    with ``early`` this returns as soon as it has started, and executors run each shard's units while
    later shards are still being indexed; else it returns once the plan is complete. ``announce`` logs
    the plan's line (inputs selected, units to run) when planning is over. ``remote_facts`` computes the
    model's facts in another process (the Ray executor's task), else the model is loaded here.

    On success the returned job holds the output folder's driver lease: call :meth:`Job.close`
    when done (a second driver on the folder is refused meanwhile)."""
    options = config.storage_options
    store = Store(config.out, options)
    store.check()
    config = settle_seed(config, store, log)
    try:
        shards = expand_shards(config.data, options)
    except ShardError as exc:
        raise ConfigError("data", str(exc).removeprefix("data: ")) from None
    if not shards:
        raise ConfigError("data", f"no shards matched {config.data!r}")
    if remote_facts is None:  # the local executor: the model is loaded here, and kept for its worker
        model, loaded, denoiser = load_facts(config, shards[0])
    else:  # elsewhere (a Ray task): this process never imports torch
        model, loaded, denoiser = remote_facts(config, shards[0]), None, None
    for line in model.warnings:
        log(line)
    facts, input_shape, num_classes, dim = model.facts, model.input_shape, model.num_classes, model.dim
    # checks --radii against the cap at that dimension
    fields = config.result_fields(facts, dim, model.denoiser_facts)
    fp = fingerprint(fields)
    store.create_folders()
    lease = Lease.acquire(store, log)
    try:
        dataset = config.dataset or Path(shard_name(str(shards[0]))).name.split("-")[0].split(".")[0]
        manifest = _manifest(store, config, fields, fp, facts, shards, dataset)
        fp = manifest["fingerprint"]
        run = {"run_id": manifest["run_id"], "fingerprint": fp, "model": facts["spec"],
               "checkpoint_sha256": facts["checkpoint_sha256"], "weights_sha256": facts["weights_sha256"],
               "input_shape": None if input_shape is None else list(input_shape),
               "dataset": dataset, "split": config.split, "num_classes": num_classes,
               "denoiser": config.denoiser, "denoiser_sha256": model.denoiser_sha256}
        selection = Selection(skip=config.skip, start=config.start, end=config.end, max=config.max,
                              subset=config.subset, subset_seed=config.subset_seed or 0)
        if selection.subset is not None:
            _warn_another_draw(store, selection.subset_seed, log)
        done = store.committed(fp)
        for name in done.quarantined:
            log(f"warning: unreadable unit file set aside in {config.out}/{QUARANTINE_DIR}/: {name}")
        job = Job(config, store, run, Plan(units=[]), done.units, [], lease=lease, loaded=loaded, done=done.facts,
                  log=log if announce else None, denoiser=denoiser)
        job.feed = PlanFeed(store, shards, selection, config.unit_size, done.facts.index, log, options, job.planned)
        if not early:
            job.feed.wait()
    except BaseException:
        lease.release()
        raise
    return job


def _warn_another_draw(store: Store, seed: int, log: Callable[[str], None]) -> None:
    """A subset drawn with another seed than the folder's last one adds a second draw to the folder: its
    rows and denominators then hold the union of both (no fixed size), which the user should know."""
    before = (store.read_json(SELECTION_RECORD) or {}).get("selection") or {}
    if before.get("subset") is not None and before.get("subset_seed") != seed:
        log(f"warning: this folder's last submission drew its subset with --subset-seed {before.get('subset_seed')}; "
            f"--subset-seed {seed} draws another, and the folder's rows and denominators will hold both draws (their "
            "union, of no fixed size). Use another --out for another seed; widen a subset with the same seed.")


def _record_selection(store: Store, config: CertifyConfig, run: dict, plan: Plan) -> np.ndarray:
    """``OUT/_rscert_selection.json``: this submission's selected dataset indices, so that ``rscert
    analyze`` counts inputs whose unit never committed as failed (see :mod:`rscert.store.selection_record`).
    Written whole, under the lease, replacing an earlier submission's, whose selected indices that
    this one no longer selects are kept as ``earlier`` (returned)."""
    columns = config.run_columns(run)
    chosen = {"skip": config.skip, "start": config.start, "end": config.end, "max": config.max,
              "subset": config.subset, "subset_seed": config.subset_seed}
    unplanned = [*plan.failed_shards, *plan.deferred_shards]
    earlier = no_longer_selected(store.read_json(SELECTION_RECORD), run["fingerprint"], plan.selected_indices)
    store.write_json(SELECTION_RECORD, make_record(run["run_id"], run["fingerprint"], plan.selected_indices,
                                                   chosen, unplanned, columns, earlier, plan.candidates))
    return earlier
