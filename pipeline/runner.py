"""Ray execution: a pool of certifier actors fed unit by unit from the driver (the only Ray module).

* One actor per GPU (``num_gpus=1``) on GPU clusters; on CPU-only clusters ``cpus_per_actor`` each.
  An actor loads (and compiles) the model once and keeps it for all its units.
* The driver holds the queue of pending units and keeps at most ``max_in_flight`` of them on each
  actor, so fast actors take more work and a lost actor costs at most its in-flight units.
* The actor commits its unit's Parquet file itself and returns a small summary: the driver never
  holds result rows.
* A dead actor (process killed, node lost) is replaced (at most ``max_actor_restarts`` times) and
  its in-flight units go back on the queue; a unit that fails ``max_unit_tries`` times is reported.
  Noise depends only on (seed, key, phase), so retried units give identical rows.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError, WorkerCrashedError

from .config import CertifyConfig
from .data import Unit
from .job import Job
from .progress import Progress
from .results import OutputError


class CertifierActor:
    """Holds one UnitWorker (model loaded once) and certifies the units it is sent."""

    def __init__(self, config: dict, run: dict) -> None:
        from .worker import UnitWorker

        self.worker = UnitWorker(CertifyConfig(**config), run)

    def run(self, unit: dict) -> dict:
        return self.worker.run(Unit.from_json(unit))  # the driver logs the unit's line (once)

    def ready(self) -> bool:
        return True


_LOST = (ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError)


def init_ray(address: str | None = None, env_vars: dict[str, str] | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS, as inside ``ray job submit``); else start a local Ray whose
    dashboard binds to 127.0.0.1. Workers see this directory on PYTHONPATH, so ``module:factory``
    models resolve as they do here."""
    if ray.is_initialized():
        return
    path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    runtime_env = {"env_vars": {"PYTHONPATH": path, **(env_vars or {})}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=True)


def _actor_resources(config: CertifyConfig) -> tuple[int, dict]:
    resources = ray.cluster_resources()
    gpus = config.gpus_per_actor if config.gpus_per_actor is not None else (1 if resources.get("GPU", 0) else 0)
    options: dict = {"num_cpus": config.cpus_per_actor, "num_gpus": gpus, "max_restarts": 0}
    if config.num_actors:
        count = config.num_actors
    elif gpus:
        count = max(1, int(resources.get("GPU", 0) // gpus))
    else:
        count = max(1, int(resources.get("CPU", 1) // config.cpus_per_actor))
    return count, options


@dataclass
class _Pool:
    job: Job
    options: dict
    log: Callable[[str], None]
    actors: dict[int, object] = field(default_factory=dict)
    ready: set[int] = field(default_factory=set)  # actors whose model is loaded: only these get units
    starting: dict[object, int] = field(default_factory=dict)  # ready() ref -> actor id
    in_flight: dict[object, tuple[int, Unit]] = field(default_factory=dict)
    restarts: int = 0
    next_id: int = 0

    def spawn(self) -> None:
        handle = ray.remote(CertifierActor).options(**self.options).remote(
            self.job.config.model_dump(), self.job.run)
        self.actors[self.next_id] = handle
        self.starting[handle.ready.remote()] = self.next_id
        self.next_id += 1

    def load(self, actor_id: int) -> int:
        return sum(1 for a, _ in self.in_flight.values() if a == actor_id)

    def replace(self, actor_id: int) -> list[Unit]:
        """Drop a dead actor, return its in-flight units, start a replacement if restarts remain."""
        lost = [(ref, unit) for ref, (a, unit) in self.in_flight.items() if a == actor_id]
        for ref, _ in lost:
            del self.in_flight[ref]
        handle = self.actors.pop(actor_id, None)
        self.ready.discard(actor_id)
        self.starting = {ref: a for ref, a in self.starting.items() if a != actor_id}
        if handle is not None:
            ray.kill(handle, no_restart=True)
        if self.restarts < self.job.config.max_actor_restarts:
            self.restarts += 1
            self.spawn()
            self.log(f"actor {actor_id} lost; started a replacement ({self.restarts} so far)")
        else:
            self.log(f"actor {actor_id} lost; no restarts left (max_actor_restarts)")
        return [unit for _, unit in lost]


def run_ray(job: Job, log: Callable[[str], None] = print) -> None:
    """Run the job's pending units on Ray; failures end up in ``job.failed``."""
    config = job.config
    if not job.pending:
        return
    init_ray(config.ray_address)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if job.store.local and len(nodes) > 1 and not config.shared_filesystem:
        raise OutputError(
            f"out: {config.out!r} is a local path but the Ray cluster has {len(nodes)} nodes; write to storage "
            "every node reaches (an object store URL such as s3://...), or pass --shared-filesystem if this "
            "path is on a filesystem all nodes share (NFS, Lustre, ...)")
    count, options = _actor_resources(config)
    count = min(count, len(job.pending))
    pool = _Pool(job, options, log)
    for _ in range(count):
        pool.spawn()
    log(f"ray: {len(nodes)} node(s), {count} certifier actor(s) ({options['num_cpus']} CPU, "
        f"{options['num_gpus']} GPU each)")

    queue = collections.deque(job.pending)
    tries: collections.Counter[str] = collections.Counter()
    total_inputs = sum(len(u.positions) for u in job.pending)
    start, samples, units_done = time.perf_counter(), 0, 0
    last_ready = start  # when some actor was last ready to take units
    with Progress(total_inputs, job.verb) as bar:
        while queue or pool.in_flight:
            if pool.ready:
                last_ready = time.perf_counter()
            if not pool.actors or time.perf_counter() - last_ready > config.actor_start_timeout:
                for unit in list(queue):
                    job.failed[unit.unit_id] = "no certifier actor could run it (none left, or none started)"
                queue.clear()
                for _, unit in pool.in_flight.values():
                    job.failed[unit.unit_id] = "no certifier actor could run it (none left, or none started)"
                break
            for actor_id in sorted(pool.ready):
                while queue and pool.load(actor_id) < config.max_in_flight:
                    unit = queue.popleft()
                    pool.in_flight[pool.actors[actor_id].run.remote(unit.to_json())] = (actor_id, unit)
            ready, _ = ray.wait([*pool.starting, *pool.in_flight], num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in pool.starting:
                    actor_id = pool.starting.pop(ref)
                    try:
                        ray.get(ref)
                        pool.ready.add(actor_id)
                    except _LOST + (RayTaskError,) as exc:
                        log(f"actor {actor_id} failed to start: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                        for lost in pool.replace(actor_id):
                            queue.appendleft(lost)
                    continue
                if ref not in pool.in_flight:
                    continue
                actor_id, unit = pool.in_flight[ref]
                try:
                    summary = ray.get(ref)
                except _LOST as exc:
                    log(f"actor {actor_id} died ({type(exc).__name__}) while certifying {unit.unit_id}")
                    for lost in pool.replace(actor_id):
                        tries[lost.unit_id] += 1
                        if tries[lost.unit_id] >= config.max_unit_tries:
                            job.failed[lost.unit_id] = f"its actor died {tries[lost.unit_id]} times"
                            bar.update(len(lost.positions))
                        else:
                            queue.appendleft(lost)
                    continue
                except RayTaskError as exc:
                    del pool.in_flight[ref]
                    tries[unit.unit_id] += 1
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    message = f"{type(cause).__name__}: {cause}".splitlines()[0]
                    if tries[unit.unit_id] >= config.max_unit_tries:
                        job.failed[unit.unit_id] = f"{message} (after {tries[unit.unit_id]} tries)"
                        bar.update(len(unit.positions))
                        bar.write(f"unit {unit.unit_id} failed: {message}")
                    else:
                        queue.append(unit)
                    continue
                del pool.in_flight[ref]
                samples += summary["samples"]
                units_done += 1
                rate = samples / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(units=f"{units_done}/{len(job.pending)}", samples_per_s=f"{rate:.0f}")
                bar.update(len(unit.positions))
                bar.write(f"unit {unit.unit_id}: {summary['rows']} rows in {summary['seconds']:.1f}s on "
                          f"{summary['worker']}")
    for handle in pool.actors.values():
        ray.kill(handle, no_restart=True)
