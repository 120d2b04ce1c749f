"""Ray execution: a pool of certifier actors fed unit by unit from the driver (the only Ray module).

* One actor per GPU (``num_gpus=1``) on GPU clusters; on CPU-only clusters ``cpus_per_actor`` each.
  An actor loads (and compiles) the model once and keeps it for all its units.
* The pool follows the cluster (pool.py): every few seconds the driver reads the alive nodes and
  keeps one actor per slot they offer, at least ``min_actors`` and at most ``max_actors``, never
  more than units left. Actors that no node can place yet wait in Ray's queue; that pending
  demand is what an autoscaler answers with new nodes. A node that joins mid-job gets actors
  and, once they have loaded the model, units.
* The driver holds the queue of pending units and keeps at most ``max_in_flight`` of them on each
  actor, so fast actors take more work and a lost actor costs at most its in-flight units. Every idle
  actor gets a unit before any actor gets a second, and a second (queued) unit is handed out only
  while the queue holds more units than the actors that will ask for one (unit_queue.dispatch), so
  at the end of a job units go to whichever actor frees up first. A ``pipe:`` shard's units all go
  to one actor, in order, which streams the shard once (unit_queue.py).
* A local ``--out`` pins the actors to the driver's node; if that node can never hold one (a GPU
  job on a node without GPUs), the job says so at once, with the message an object-store job gets
  after ``actor_start_timeout``.
* The actor commits its unit's Parquet file itself and returns a small summary: the driver never
  holds result rows.
* A dead actor (process killed, node lost) is replaced (at most ``max_actor_restarts`` times) and
  its in-flight units go back on the queue; a unit that fails ``max_unit_tries`` times is reported.
* Units fail for want of actors only when none has been ready for ``actor_start_timeout`` seconds
  (or none is left); the message names what resources no node offers.
  Noise depends only on (seed, dataset index, phase, draw), so retried units give identical rows.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rscert.config.certify import CertifyConfig
from rscert.data.plan import Unit
from rscert.data.shards import sequential
from rscert.errors import ConfigError
from rscert.run.pool import actor_demand, capacity, missing_resources, pool_target
from rscert.run.prepare import Job
from rscert.run.progress import Progress
from rscert.run.unit_queue import UnitQueue, dispatch
from rscert.store.results import OutputError


class CertifierActor:
    """Holds one UnitWorker (model loaded once) and certifies the units it is sent."""

    def __init__(self, config: dict, run: dict) -> None:
        from rscert.run.worker import UnitWorker

        self.worker = UnitWorker(CertifyConfig(**config), run)

    def run(self, unit: dict) -> dict:
        return self.worker.run(Unit.from_json(unit))  # the driver logs the unit's line (once)

    def ready(self) -> str:
        """Where this actor runs (host:pid), once its model is loaded."""
        import socket

        return f"{socket.gethostname()}:{os.getpid()}"


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
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError("ray-address", _connection_advice(address, exc)) from None
    else:
        ray.init(dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=True)


def _connection_advice(address: str, exc: BaseException) -> str:
    """One line for a cluster this driver cannot join: a token the cluster refuses, or no cluster there."""
    chain, err = [], exc
    while err is not None and len(chain) < 10:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    text = " ".join(chain).lower()
    if "token" in text or "unauthenticated" in text or "auth" in text:
        return (f"the Ray cluster at {address} refused this driver's authentication token: with token auth "
                "(RAY_AUTH_MODE=token) set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) to the "
                "cluster's token, the one its nodes were started with")
    return (f"cannot connect to a Ray cluster at {address} ({chain[0]}): is it running and reachable from here "
            f"(`ray status --address {address}`)? Leave --ray-address and RAY_ADDRESS unset to start a local Ray")


POLL_SECONDS = 2.0  # how often the driver re-reads the cluster's nodes to grow the pool


def _actor_options(config: CertifyConfig, pinned: str | None) -> dict:
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
    options: dict = {"num_cpus": config.cpus_per_actor, "num_gpus": gpus, "max_restarts": 0}
    if pinned:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=pinned, soft=False)
    return options


@dataclass
class _Pool:
    job: Job
    options: dict
    log: Callable[[str], None]
    pinned: str | None = None  # the only node actors may use (a local --out), else None
    actors: dict[int, object] = field(default_factory=dict)
    ready: set[int] = field(default_factory=set)  # actors whose model is loaded: only these get units
    starting: dict[object, int] = field(default_factory=dict)  # ready() ref -> actor id
    in_flight: dict[object, tuple[int, Unit]] = field(default_factory=dict)
    lost: int = 0  # actors lost (died, failed to start) over the job
    last_error: str = ""
    next_id: int = 0

    @property
    def demand(self) -> dict[str, float]:
        return actor_demand(self.options["num_cpus"], self.options["num_gpus"])

    def nodes(self) -> list[dict]:
        """Total resources of each alive node the pool may use."""
        alive = [n for n in ray.nodes() if n.get("Alive")]
        return [n.get("Resources", {}) for n in alive if self.pinned is None or n.get("NodeID") == self.pinned]

    def can_spawn(self) -> bool:
        return self.lost <= self.job.config.max_actor_restarts

    def spawn(self) -> None:
        handle = ray.remote(CertifierActor).options(**self.options).remote(
            self.job.config.model_dump(), self.job.run)
        self.actors[self.next_id] = handle
        self.starting[handle.ready.remote()] = self.next_id
        self.next_id += 1

    def grow(self, queued: int, nodes: list[dict]) -> int:
        """Start actors up to the target for these nodes; the number started. Actors not yet ready never
        outnumber the queued units (each that becomes ready takes one)."""
        if not self.can_spawn():
            return 0
        config = self.job.config
        target = pool_target(capacity(nodes, self.demand), queued + len(self.ready), config.min_actors,
                             config.max_actors)
        started = 0
        while len(self.actors) < target:
            self.spawn()
            started += 1
        return started

    def drop_idle_starting(self) -> None:
        """Nothing is queued: actors still waiting or loading would get no unit. Dropping them also
        withdraws their resource demand, so an autoscaler adds no node for them."""
        for ref, actor_id in list(self.starting.items()):
            del self.starting[ref]
            ray.kill(self.actors.pop(actor_id), no_restart=True)

    def loads(self) -> dict[int, int]:
        """Units in flight on each ready actor."""
        counts = collections.Counter(a for a, _ in self.in_flight.values())
        return {actor_id: counts[actor_id] for actor_id in self.ready}

    def replace(self, actor_id: int, error: str) -> list[Unit]:
        """Drop a dead actor, return its in-flight units, start a replacement if restarts remain."""
        self.lost += 1
        self.last_error = error
        lost = [(ref, unit) for ref, (a, unit) in self.in_flight.items() if a == actor_id]
        for ref, _ in lost:
            del self.in_flight[ref]
        handle = self.actors.pop(actor_id, None)
        self.ready.discard(actor_id)
        self.starting = {ref: a for ref, a in self.starting.items() if a != actor_id}
        if handle is not None:
            ray.kill(handle, no_restart=True)
        if self.can_spawn():
            self.spawn()
            self.log(f"actor {actor_id} lost; started a replacement ({self.lost} so far)")
        else:
            self.log(f"actor {actor_id} lost; no restarts left (max_actor_restarts)")
        return [unit for _, unit in lost]

    def stop(self) -> None:
        for handle in self.actors.values():
            ray.kill(handle, no_restart=True)


def _show_demand(demand: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in demand.items())


def run_ray(job: Job, log: Callable[[str], None] = print) -> None:
    """Run the job's pending units on Ray; failures end up in ``job.failed``."""
    config = job.config
    feed = job.feed
    feed.wait_first()  # Ray starts only if there is something to run
    if feed.exhausted:
        feed.wait()  # a planning error is raised here
        return
    init_ray(config.ray_address)
    alive = [n for n in ray.nodes() if n.get("Alive")]
    pinned = None
    if job.store.local and not config.shared_filesystem:
        if len(alive) > 1:
            raise OutputError(
                f"out: {config.out!r} is a local path but the Ray cluster has {len(alive)} nodes; write to storage "
                "every node reaches (an object store URL such as s3://...), or pass --shared-filesystem if this "
                "path is on a filesystem all nodes share (NFS, Lustre, ...)")
        pinned = ray.get_runtime_context().get_node_id()  # nodes that join later cannot write here
    pool = _Pool(job, _actor_options(config, pinned), log, pinned)
    queue = UnitQueue(feed.take(), sequential)  # more come while later shards are indexed
    planned = len(queue)
    nodes = pool.nodes()
    if pinned and capacity(nodes, pool.demand) == 0:  # no node can ever join a pinned pool: say it now
        reason = (missing_resources(nodes, pool.demand, ray.available_resources())
                  + "; --out is a local path, so actors may only use this node: write to an object store URL "
                    "(or pass --shared-filesystem) to use other nodes")
        for unit in queue:
            job.failed[unit.unit_id] = reason
        log(f"ray: {reason}")
        return
    pool.grow(len(queue), nodes)
    room = capacity(nodes, pool.demand)
    log(f"ray: {len(alive)} node(s), {len(pool.actors)} certifier actor(s) ({_show_demand(pool.demand)} each; "
        f"pool {config.min_actors}..{config.max_actors or 'cluster'}, following the cluster)")
    if room < len(pool.actors):
        log(f"ray: {len(pool.actors) - room} actor(s) wait for a node with {_show_demand(pool.demand)} "
            "(an autoscaler adds nodes for them)")
    if pinned:
        log("ray: --out is a local path: actors stay on this node (nodes that join later get none)")

    tries: collections.Counter[str] = collections.Counter()
    total_inputs = sum(len(u.positions) for u in queue)
    start, samples, units_done = time.perf_counter(), 0, 0
    last_ready = last_poll = start  # when some actor was last ready to take units; when nodes were last read
    node_count = len(nodes)
    with Progress(total_inputs, job.verb) as bar:
        while queue or pool.in_flight or not feed.exhausted:
            new = feed.take(hungry=not queue)
            for unit in new:
                queue.append(unit)
            planned += len(new)
            bar.add_total(sum(len(u.positions) for u in new))
            now = time.perf_counter()
            if pool.ready:
                last_ready = now
            if queue and now - last_poll >= POLL_SECONDS:
                last_poll, nodes = now, pool.nodes()
                started = pool.grow(len(queue), nodes)
                if started or len(nodes) != node_count:
                    log(f"ray: {len(nodes)} node(s) alive; pool now {len(pool.actors)} actor(s) "
                        f"({len(pool.ready)} ready)")
                    node_count = len(nodes)
            elif not queue and pool.starting and feed.exhausted:
                pool.drop_idle_starting()
            reason = None
            if not pool.actors:
                reason = (f"no certifier actor left: {pool.lost} lost, max_actor_restarts="
                          f"{config.max_actor_restarts} spent (last: {pool.last_error})")
            elif now - last_ready > config.actor_start_timeout:
                reason = (f"no certifier actor ready for actor_start_timeout={config.actor_start_timeout:g}s: "
                          + missing_resources(pool.nodes(), pool.demand, ray.available_resources()))
            if reason:
                for unit in [*queue, *(u for _, u in pool.in_flight.values()), *feed.rest()]:
                    job.failed[unit.unit_id] = reason
                log(f"ray: {reason}")
                queue.clear()
                break
            for actor_id, unit in dispatch(queue, pool.loads(), len(pool.starting), config.max_in_flight):
                pool.in_flight[pool.actors[actor_id].run.remote(unit.to_json())] = (actor_id, unit)
            refs = [*pool.starting, *pool.in_flight]
            if not refs:  # every actor was dropped or lost, or units are still being planned
                feed.wait_some(1.0)
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in pool.starting:
                    actor_id = pool.starting.pop(ref)
                    try:
                        where = ray.get(ref)
                        pool.ready.add(actor_id)
                        log(f"actor {actor_id} ready on {where}")
                    except _LOST + (RayTaskError, ActorUnschedulableError) as exc:
                        error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                        log(f"actor {actor_id} failed to start: {error}")
                        queue.release(actor_id)
                        for lost in pool.replace(actor_id, error):
                            queue.appendleft(lost)
                    continue
                if ref not in pool.in_flight:
                    continue
                actor_id, unit = pool.in_flight[ref]
                try:
                    summary = ray.get(ref)
                except _LOST as exc:
                    log(f"actor {actor_id} died ({type(exc).__name__}) while certifying {unit.unit_id}")
                    queue.release(actor_id)
                    for lost in pool.replace(actor_id, f"{type(exc).__name__} while certifying {unit.unit_id}"):
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
                        bar.write(f"unit {unit.unit_id} failed: {message}")
                        bar.update(len(unit.positions))
                    else:
                        queue.append(unit)
                    continue
                del pool.in_flight[ref]
                job.finished(summary)
                samples += summary["samples"]
                units_done += 1
                rate = samples / max(time.perf_counter() - start, 1e-9)
                bar.write(f"unit {unit.unit_id}: {summary['rows']} rows in {summary['seconds']:.1f}s on "
                          f"{summary['worker']}")
                bar.set_postfix(units=f"{units_done}/{planned}", samples_per_s=f"{rate:.0f}")
                bar.update(len(unit.positions))
    pool.stop()
    feed.wait()  # a planning error is raised here
