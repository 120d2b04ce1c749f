"""Ray execution on a real two-node loopback cluster: job submission, killed actors, a lost node, a
node that joins mid-job, actors no node can place, a killed driver. Results must be exactly once and
identical to an uninterrupted in-process run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from rscert.cli import main
from rscert.store.results import Store

from .jobutil import ROOT, certify_args, table
from .raycluster import LoopbackCluster, actor_processes
from .shardutil import write_shards

COLS = ["key", "index", "label", "prediction", "top_class", "count_select", "count_top", "p_lower", "radius"]
SLOW = {"n0": 100, "n": 30000, "unit_size": 2, "batch_size": 1000, "sigma": 0.5, "seed": 7}


@pytest.fixture(scope="module")
def cluster():
    c = LoopbackCluster()
    try:
        c.start_head(num_cpus=1)
        c.node2 = c.add_node(num_cpus=1, resources={"node2": 1})
        yield c
    finally:
        c.stop()
        assert not c.processes(), "the cluster left processes behind"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raydata")
    write_shards(folder, shards=3, per_shard=8, size=20)
    return str(folder / "data-{000000..000002}.tar")


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The uninterrupted in-process run every Ray result is compared with."""
    out = tmp_path_factory.mktemp("ref") / "out"
    args = certify_args(dataset, out, **{k.replace("_", "-"): v for k, v in SLOW.items()})
    assert main(args) == 0
    return table(out)


def _config(path: Path, dataset: str, out: Path, **extra) -> Path:
    settings = {"data": dataset, "out": str(out), "model": "tests.zoo:tiny_cnn", "random_init": True, **SLOW,
                "cpus_per_actor": 1, "shared_filesystem": True, **extra}
    path.write_text(yaml.safe_dump(settings))
    return path


def _submit_bg(cluster: LoopbackCluster, config: Path) -> subprocess.Popen:
    return cluster.popen([str(Path(os.sys.executable).parent / "ray"), "job", "submit", "--address",
                          cluster.dashboard, "--working-dir", str(ROOT), "--", "python", "jobs/certify.py",
                          "--config", str(config)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)


def _wait_units(out: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list((out / "units").glob("*.parquet"))) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError("the job ended before the fault was injected:\n" + proc.stdout.read())
        time.sleep(0.1)
    raise TimeoutError("units were not committed in time")


def _assert_same(out: Path, reference) -> None:
    got = table(out)
    assert got["key"].n_unique() == got.height == reference.height
    assert got.select(COLS).equals(reference.select(COLS))


def test_job_submit_on_two_nodes_matches_in_process_run(cluster, dataset, reference, tmp_path):
    out = tmp_path / "out"
    result = cluster.submit(["python", "jobs/certify.py", "--config", str(_config(tmp_path / "a.yaml", dataset, out))])
    assert result.returncode == 0, result.stdout + result.stderr
    logs = result.stdout + result.stderr
    assert "2 node(s), 2 certifier actor(s)" in logs
    _assert_same(out, reference)
    assert "\r" not in logs and "certifying: 24/24 inputs (100%)" in logs  # whole lines, not a bar
    workers = {e["worker"] for e in Store(str(out)).executions()}
    assert len(workers) == 2  # both actors (one per node) did work


def test_predict_job_on_ray_matches_in_process_run(cluster, dataset, tmp_path):
    settings = {"n": 2000, "unit-size": 4, "batch-size": 1000, "sigma": 0.5, "seed": 7}
    local = certify_args(dataset, tmp_path / "local", **settings)
    local[0] = "predict"
    del local[local.index("--n0") : local.index("--n0") + 2]
    assert main(local) == 0
    config = _config(tmp_path / "p.yaml", dataset, tmp_path / "ray", n=2000, unit_size=4)
    result = cluster.submit(["python", "jobs/predict.py", "--config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    logs = result.stdout + result.stderr
    assert "predicting: 24/24 inputs (100%)" in logs and "\r" not in logs  # whole lines, not a bar
    for unit in {p.stem for p in (tmp_path / "ray" / "units").glob("*.parquet")}:
        assert logs.count(f"unit {unit}: ") == 1, unit  # the driver's line only, not the actor's too
    cols = ["key", "index", "label", "mode", "prediction", "top_class", "count_top", "count_second", "p_value"]
    got, want = table(tmp_path / "ray"), table(tmp_path / "local")
    assert (got["mode"] == "predict").all() and got.height == 24
    assert got.select(cols).equals(want.select(cols))


def test_local_path_is_refused_on_a_multi_node_cluster(cluster, dataset, tmp_path):
    config = _config(tmp_path / "b.yaml", dataset, tmp_path / "out", shared_filesystem=False)
    result = cluster.submit(["python", "jobs/certify.py", "--config", str(config)])
    assert result.returncode != 0
    assert "is a local path but the Ray cluster has 2 nodes" in result.stdout + result.stderr


class _Output:
    """A submitted job's output lines, read as they come (a thread), for tests that act on them."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self.reader = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        """The first line matching ``pattern`` (a regular expression), waiting for it."""
        deadline = time.time() + timeout
        while True:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            assert self.proc.poll() is None and time.time() < deadline, f"no {pattern!r} in:\n" + self.text()
            time.sleep(0.1)

    def finish(self, timeout: float = 600) -> str:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=30)
        return self.text()

    def text(self) -> str:
        return "".join(self.lines)


def test_sigkill_of_an_actor_mid_unit(cluster, dataset, reference, tmp_path):
    """The actor that has just committed the job's first unit is killed: with 11 of 12 units left it
    already runs its next one (handed out behind the first), so the kill lands mid-unit."""
    out = tmp_path / "out"
    job = _Output(_submit_bg(cluster, _config(tmp_path / "c.yaml", dataset, out)))
    pid = int(job.wait_for(r"unit \S+: \d+ rows in \S+ on \S+:(\d+)").group(1))
    actor = job.wait_for(rf"actor (\d+) ready on \S+:{pid}\b").group(1)
    assert pid in {p.pid for p in actor_processes()}, "the unit's actor is not a certifier actor process"
    os.kill(pid, signal.SIGKILL)
    output = job.finish()
    assert job.proc.returncode == 0, output
    assert re.search(rf"actor {actor} died \(\w+\) while certifying ", output), output
    assert "started a replacement" in output
    _assert_same(out, reference)


def test_driver_killed_then_resubmitted_resumes(cluster, dataset, reference, tmp_path):
    out = tmp_path / "out"
    config = _config(tmp_path / "d.yaml", dataset, out)
    proc = _submit_bg(cluster, config)
    _wait_units(out, 3, proc)
    drivers = [p for p in psutil.process_iter(["cmdline"])
               if "jobs/certify.py" in " ".join(p.info["cmdline"] or []) and "submit" not in p.info["cmdline"]]
    assert drivers, "driver process not found"
    for p in drivers:
        p.kill()
    proc.communicate(timeout=120)
    assert proc.returncode != 0  # the job failed with its driver
    committed = len(list((out / "units").glob("*.parquet")))
    before = len(Store(str(out)).executions())
    result = cluster.submit(["python", "jobs/certify.py", "--config", str(config)])
    assert result.returncode == 0, result.stdout
    assert f"{committed} already committed, {12 - committed} to run" in result.stdout
    executions = Store(str(out)).executions()
    assert len(executions) - before == 12 - committed  # only uncommitted units ran again
    per_unit = {}
    for e in executions:
        per_unit[e["unit_id"]] = per_unit.get(e["unit_id"], 0) + 1
    assert max(per_unit.values()) == 1
    _assert_same(out, reference)


def test_second_node_lost_mid_job(cluster, dataset, reference, tmp_path):
    out = tmp_path / "out"
    proc = _submit_bg(cluster, _config(tmp_path / "e.yaml", dataset, out))
    _wait_units(out, 2, proc)
    cluster.kill_node(cluster.node2)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert "lost" in output
    _assert_same(out, reference)


def test_embedded_local_ray_without_address(dataset, reference, tmp_path):
    """`--executor ray` with no address starts (and stops) its own local Ray."""
    out = tmp_path / "out"
    args = certify_args(dataset, out, **{k.replace("_", "-"): v for k, v in SLOW.items()}, executor="ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               OMP_NUM_THREADS="1")
    result = subprocess.run([os.sys.executable, "-m", "rscert.cli", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "1 node(s)" in result.stderr
    _assert_same(out, reference)


def test_node_joining_mid_job_gets_actors_and_units(cluster, dataset, reference, tmp_path):
    """One node when the job starts; a second joins while it runs: the pool grows onto it.

    The first actor is paused (SIGSTOP: a stalled node) from its first committed unit until the new
    node's actor is ready, so the join lands mid-job however slow this machine is; then both work."""
    if cluster.node2.poll() is None:  # (after test_second_node_lost_mid_job it is gone already)
        cluster.kill_node(cluster.node2)
    cluster.wait_for_nodes(1, exact=True)
    out = tmp_path / "out"
    # one input per unit, one unit per actor at a time: work stays queued for the actor that joins
    proc = _submit_bg(cluster, _config(tmp_path / "f.yaml", dataset, out, unit_size=1, max_in_flight=1))
    job = _Output(proc)
    assert "1 node(s), 1 certifier actor(s)" in job.wait_for(".*certifier actor[(]s[)]").group(0)
    first = int(job.wait_for(r"actor 0 ready on \S+:(\d+)").group(1))
    _wait_units(out, 1, proc)
    os.kill(first, signal.SIGSTOP)
    try:
        joined = cluster.node2 = cluster.add_node(num_cpus=1, resources={"node2": 1})
        on_joined = cluster.node_pids(joined)  # every process the new node ran while the job did
        while not any("actor 1 ready on" in line for line in job.lines):
            on_joined |= cluster.node_pids(joined)
            assert proc.poll() is None, job.text()
            time.sleep(0.2)
    finally:
        os.kill(first, signal.SIGCONT)
    while proc.poll() is None:
        on_joined |= cluster.node_pids(joined)
        time.sleep(0.2)
    output = job.finish()
    assert proc.returncode == 0, output
    assert "ray: 2 node(s) alive; pool now 2 actor(s)" in output
    pids = {int(e["worker"].rsplit(":", 1)[1]) for e in Store(str(out)).executions()}
    assert pids & on_joined, f"no unit ran on the node that joined:\n{output}"
    assert first in pids, f"no unit ran on the first node:\n{output}"
    _assert_same(out, reference)


def test_actors_no_node_can_place_wait_then_fail_naming_the_resource(cluster, dataset, tmp_path):
    """GPU actors on a CPU-only cluster wait (pending, not failed) for actor_start_timeout; then the
    units fail with a message that names the missing resource, and nothing is committed."""
    out = tmp_path / "out"
    config = _config(tmp_path / "g.yaml", dataset, out, gpus_per_actor=1, actor_start_timeout=4, max=4)
    result = cluster.submit(["python", "jobs/certify.py", "--config", str(config)])
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "actor(s) wait for a node with 1 CPU, 1 GPU" in output
    assert "no certifier actor ready for actor_start_timeout=4s" in output and "missing: GPU" in output
    assert " lost;" not in output and "failed to start" not in output  # waiting actors are not failures
    assert not list((out / "units").glob("*.parquet"))
