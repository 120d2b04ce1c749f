"""A certify job, prepared: shared by every executor (no Ray here).

``prepare`` validates everything that can be validated before compute (configuration, model,
output folder, shards, an earlier run's configuration), plans the units, and returns the pending
ones. An executor runs them (:mod:`rscert.run.local` in this process, :mod:`rscert.run.ray_runner`
on Ray); :mod:`rscert.run.report` sums up.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from rscert import __version__
from rscert.config.certify import CertifyConfig, fingerprint
from rscert.data.plan import Plan, Selection, Unit, plan_units
from rscert.data.shard_identity import CHANGED
from rscert.data.shard_identity import FORMAT as IDENTITY_FORMAT
from rscert.data.shard_identity import scan as scan_identified
from rscert.data.shard_identity import verify as verify_shard
from rscert.data.shards import ShardError, expand_shards, shard_name
from rscert.errors import ConfigError
from rscert.models.denoisers import Denoised, LoadedDenoiser, load_denoiser
from rscert.models.load import LoadedModel, load_model
from rscert.run.probe import class_count, probe
from rscert.stats.families import family
from rscert.store.lease import Lease
from rscert.store.results import (
    MANIFEST,
    QUARANTINE_DIR,
    SHARD_IDENTITY,
    SHARD_INDEX,
    OutputError,
    Store,
    diff_configs,
)
from rscert.store.selection_record import SELECTION_RECORD, make_record, no_longer_selected


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

    @property
    def verb(self) -> str:
        return "predicting" if self.config.mode == "predict" else "certifying"

    @property
    def selected_inputs(self) -> int:
        return self.plan.selected

    def close(self) -> None:
        """Give the output folder's driver lease back (see :mod:`rscert.store.lease`)."""
        if self.lease is not None:
            self.lease.release()


@dataclass
class ShardScan:
    """Planning's view of the shards: key lists (or why a shard could not be read), the shards whose
    content is no longer the one the folder's run indexed, and every shard's identity record."""

    keys: dict[str, list[str] | str]
    changed: dict[str, str]
    identity: dict[str, dict]


def _scan_all(store: Store, shards: list[str], log: Callable[[str], None],
              storage_options: dict | None) -> ShardScan:
    """Key lists from the folder's index, scanning (and identifying) shards not in it; each indexed
    shard is checked against its identity record (:mod:`rscert.data.shard_identity`), so a resume
    never plans from an index of other content. Both files are rewritten whole (under the lease)."""
    cached = store.read_json(SHARD_INDEX) or {}
    recorded = dict((store.read_json(SHARD_IDENTITY) or {}).get("shards") or {})
    keys: dict[str, list[str] | str] = {}
    changed: dict[str, str] = {}
    for url in tqdm(shards, desc="scanning shards", unit="shard", disable=len(shards) < 8, file=sys.stderr):
        if url in cached:
            keys[url] = cached[url]
            if url in recorded:
                reason, recorded[url] = verify_shard(url, recorded[url], storage_options, keys=cached[url])
            else:  # indexed before identities were recorded: record it now (its keys must still match)
                try:
                    now, recorded[url] = scan_identified(url, storage_options)
                    reason = None if now == cached[url] else "its sample keys differ from the folder's index"
                except ShardError as exc:
                    reason = str(exc).removeprefix(f"shard {url}: ")
                if reason is not None:
                    recorded.pop(url, None)
            if reason is not None:
                changed[url] = reason
                log(f"error: shard {url}: not the content this folder's rows were planned from ({reason})")
            continue
        try:
            keys[url], recorded[url] = scan_identified(url, storage_options)
            cached[url] = keys[url]
        except ShardError as exc:
            keys[url] = str(exc)
            log(f"error: {exc}")
    store.write_json(SHARD_INDEX, cached)
    store.write_json(SHARD_IDENTITY, {"format": IDENTITY_FORMAT, "shards": recorded})
    return ShardScan(keys, changed, {url: recorded[url] for url in shards if url in recorded})


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


def prepare(config: CertifyConfig, log: Callable[[str], None] = print) -> Job:
    """Everything before compute. Raises ConfigError / OutputError / ModelError with a named field.

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
    loaded = load_model(config.model, config.checkpoint, config.num_classes, config.normalize,
                        config.trust_checkpoint, config.random_init, storage_options=options)
    denoiser, base = None, loaded.model
    if config.denoiser is not None:  # denoised smoothing: the base classifier is f∘d
        denoiser = load_denoiser(config.denoiser, config.sigma, config.trust_checkpoint, options,
                                 output_size=loaded.input_size)
        base = Denoised(denoiser.module, loaded.model)
    # the model's output width and the inputs' shape, before anything is written
    input_shape = probe(base, shards[0], config.preset, loaded.num_classes, storage_options=options)
    facts = {"spec": loaded.spec, "checkpoint": loaded.checkpoint, "checkpoint_sha256": loaded.checkpoint_sha256,
             "num_classes": loaded.num_classes, "normalize": loaded.normalize,
             "weights_sha256": loaded.weights_sha256}
    if denoiser is not None:
        facts["denoiser"] = denoiser.facts()
    num_classes = loaded.num_classes  # as the rows will carry it (the facts keep what was configured)
    if num_classes is None and input_shape is not None:
        num_classes = class_count(base, input_shape)
    dim = None if input_shape is None else math.prod(input_shape)
    if config.sampling == "sequential" and dim is None and family(config.noise).needs_dim(config.norm):
        raise ConfigError("radii", f"the {config.norm} radii of {config.noise} noise depend on the inputs' dimension, "
                                   "and no input of the first shard decoded to measure it")
    # checks --radii against the cap at that dimension
    fields = config.result_fields(shards, facts, dim, None if denoiser is None else denoiser.facts())
    fp = fingerprint(fields)
    store.create_folders()
    lease = Lease.acquire(store, log)
    try:
        dataset = config.dataset or Path(shard_name(str(shards[0]))).name.split("-")[0].split(".")[0]
        manifest = _manifest(store, config, fields, fp, facts, shards, dataset)
        run = {"run_id": manifest["run_id"], "fingerprint": fp, "model": facts["spec"],
               "checkpoint_sha256": facts["checkpoint_sha256"], "weights_sha256": facts["weights_sha256"],
               "input_shape": None if input_shape is None else list(input_shape),
               "dataset": dataset, "split": config.split, "num_classes": num_classes,
               "denoiser": config.denoiser, "denoiser_sha256": None if denoiser is None else denoiser.weights_sha256}
        scanned = _scan_all(store, shards, log, options)
        run["shard_identity"] = scanned.identity  # each unit checks the shard it opens against it
        selection = Selection(skip=config.skip, start=config.start, end=config.end, max=config.max)
        done = store.committed(fp)
        for name in done.quarantined:
            log(f"warning: unreadable unit file set aside in {config.out}/{QUARANTINE_DIR}/: {name}")
        plan = plan_units(shards, scanned.keys, selection, config.unit_size, committed=done.indices,
                          changed=scanned.changed)
        dropped = _record_selection(store, config, run, plan)
        deselected = (len(dropped), len(dropped - set(done.indices)))
    except BaseException:
        lease.release()
        raise
    job = Job(config, store, run, plan, done.units, plan.units, lease=lease, loaded=loaded, deselected=deselected,
              denoiser=denoiser)
    for url, reason in plan.failed_shards.items():
        job.failed[f"shard {url}"] = reason
    for url, reason in plan.changed_shards.items():
        job.failed[f"shard {url}"] = CHANGED.format(reason=reason)
    if plan.deferred_shards:
        job.failed["deferred"] = (f"{len(plan.deferred_shards)} later shard(s) not planned: their dataset indices "
                                  "are unknown until the failed shard reads")
    return job


def _record_selection(store: Store, config: CertifyConfig, run: dict, plan: Plan) -> set[int]:
    """``OUT/_rscert_selection.json``: this submission's selected dataset indices, so that ``rscert
    analyze`` counts inputs whose unit never committed as failed (see :mod:`rscert.store.selection_record`).
    Written whole, under the lease, replacing an earlier submission's, whose selected indices that
    this one no longer selects are kept as ``earlier`` (returned)."""
    columns = config.run_columns(run)
    chosen = {"skip": config.skip, "start": config.start, "end": config.end, "max": config.max}
    unplanned = [*plan.failed_shards, *plan.deferred_shards]
    earlier = no_longer_selected(store.read_json(SELECTION_RECORD), run["fingerprint"], plan.selected_indices)
    store.write_json(SELECTION_RECORD, make_record(run["run_id"], run["fingerprint"], plan.selected_indices,
                                                   chosen, unplanned, columns, earlier))
    return earlier
