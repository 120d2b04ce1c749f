"""The in-process executor: a job's pending units, one after another, in this process (no Ray)."""

from __future__ import annotations

import sys
import time

from rscert.data.shards import ShardError
from rscert.errors import ModelError
from rscert.run.prepare import Job
from rscert.run.progress import Progress


def run_local(job: Job) -> None:
    """Run the pending units in this process, one after another. A unit that fails as a whole (a bad
    shard, anything unexpected) is recorded in ``job.failed`` and the job goes on; bad inputs fail
    only their rows (in the worker). A worker that cannot start (its model differs from the run's)
    fails every pending unit. The worker takes over the model prepare() loaded."""
    from rscert.run.worker import UnitWorker  # torch import only when computing

    feed = job.feed
    feed.wait_first()
    if feed.exhausted:  # nothing to run (or planning failed: raised here)
        feed.wait()
        return
    try:
        worker = UnitWorker(job.config, job.run, loaded=job.loaded, denoiser=job.denoiser)
    except ModelError as exc:
        for unit in feed.rest():
            job.failed[unit.unit_id] = f"not run: {exc}"
        print(f"error: the certifier could not start: {exc}", file=sys.stderr)
        return
    finally:
        job.loaded = job.denoiser = None  # the worker holds them now
    start, samples, done, planned = time.perf_counter(), 0, 0, 0
    with Progress(0, job.verb) as bar:
        while not feed.exhausted:
            units = feed.take(timeout=1.0)  # units planned so far (later shards may still be indexing)
            planned += len(units)
            bar.add_total(sum(len(u.positions) for u in units))
            for unit in units:
                try:
                    summary = worker.run(unit)
                except Exception as exc:  # noqa: BLE001 -- one unit's failure must not end the job
                    message = str(exc) if isinstance(exc, ShardError) else f"{type(exc).__name__}: {exc}"
                    job.failed[unit.unit_id] = message
                    bar.write(f"unit {unit.unit_id} failed: {message}")
                    bar.update(len(unit.positions))
                    continue
                job.finished(summary)
                samples += summary["samples"]
                done += 1
                bar.write(f"unit {unit.unit_id}: {summary['rows']} rows ({summary['errors']} errors) "
                          f"in {summary['seconds']:.1f}s")
                bar.set_postfix(units=f"{done}/{planned}",
                                samples_per_s=f"{samples / (time.perf_counter() - start):.0f}")
                bar.update(len(unit.positions))
    feed.wait()  # a planning error is raised here
