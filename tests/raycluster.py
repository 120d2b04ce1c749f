"""A real Ray cluster on loopback for tests: `ray start --head` plus worker nodes, token auth on.

Ray 2.60 rewrites ``--node-ip-address=127.0.0.1`` to the machine's outward address
(``services.resolve_ip_for_localhost``) and its gRPC servers listen on every interface, so the flags
alone cannot keep a multi-node cluster on loopback. The cluster therefore runs in a private network
namespace whose only interface is ``lo`` (``unshare -n``); every command that talks to it enters that
namespace (``nsenter -n``). Files are shared as usual. :meth:`LoopbackCluster.stop` ends every process
in that namespace, even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from .jobutil import ROOT

VENV_BIN = Path(os.sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    def __init__(self) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))
        self.port = free_port()
        self.dashboard_port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(16),
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` in jobs = this venv
            PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            OMP_NUM_THREADS="1",
            RAY_DEDUP_LOGS="0",
        )
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []
        # the namespace lives as long as this holder process
        self.holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 86400"],
                                       start_new_session=True)
        self.enter = ["nsenter", "-t", str(self.holder.pid), "-n"]
        deadline = time.time() + 10
        while time.time() < deadline:
            probe = subprocess.run([*self.enter, "ip", "-o", "link", "show", "up"], capture_output=True, text=True)
            if "lo" in probe.stdout:
                break
            time.sleep(0.1)
        self.namespace = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        assert self.namespace != os.readlink("/proc/self/ns/net"), "unshare -n did not give a new namespace"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str]) -> subprocess.Popen:
        log = open(self.temp / f"node{len(self.nodes)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([*self.enter, str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats",
                                 "--node-ip-address=127.0.0.1", *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=self.temp)
        self.nodes.append(proc)
        return proc

    def start_head(self, num_cpus: int = 1) -> None:
        self._start(["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", f"--num-cpus={num_cpus}",
                     f"--temp-dir={self.temp}", "--include-dashboard=true"])
        self.wait_for_nodes(1)

    def add_node(self, num_cpus: int = 1, resources: dict | None = None) -> subprocess.Popen:
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        proc = self._start(args)
        self.wait_for_nodes(sum(1 for p in self.nodes if p.poll() is None))  # killed nodes stay in self.nodes
        return proc

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter, str(VENV_BIN / "ray"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)

    def alive_nodes(self) -> int:
        script = (f"import ray; ray.init(address='{self.address}', logging_level='ERROR');"
                  "print('alive nodes:', sum(1 for n in ray.nodes() if n['Alive']))")
        out = subprocess.run([*self.enter, str(VENV_BIN / "python"), "-c", script], env=self.env, capture_output=True,
                             text=True, timeout=60)
        # Ray may print warnings on stdout too (e.g. "raylet has lagging heartbeats" on a busy machine)
        counts = [line.split(":", 1)[1] for line in out.stdout.splitlines() if line.startswith("alive nodes:")]
        return int(counts[-1]) if out.returncode == 0 and counts else 0

    def wait_for_nodes(self, count: int, timeout: float = 120, exact: bool = False) -> None:
        """Until Ray counts at least (or, with ``exact``, exactly) ``count`` alive nodes."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            alive = self.alive_nodes()
            if alive == count or (alive > count and not exact):
                return
            time.sleep(1)
        raise TimeoutError(f"Ray cluster did not reach {count} nodes; logs in {self.temp}")

    def submit(self, entrypoint: list[str], wait: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        args = ["job", "submit", "--address", self.dashboard, "--working-dir", str(ROOT)]
        if not wait:
            args.append("--no-wait")
        return self.ray(*args, "--", *entrypoint, timeout=timeout)

    def popen(self, args: list[str], **kw) -> subprocess.Popen:
        """A command inside the cluster's network namespace, with the cluster's environment."""
        return subprocess.Popen([*self.enter, *args], env=self.env, **kw)

    def kill_node(self, proc: subprocess.Popen) -> None:
        """Lose a node: SIGKILL its `ray start` and every process under it (raylet, workers, agents).

        (SIGTERM to `ray start --block` leaves the raylet running, and workers sit in sessions of
        their own, so the whole process tree is collected first.)"""
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait(timeout=30)

    @staticmethod
    def node_pids(proc: subprocess.Popen) -> set[int]:
        """Process ids of a node now: its `ray start`, raylet, workers and actors."""
        try:
            root = psutil.Process(proc.pid)
            return {root.pid, *(p.pid for p in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: all that share its private network namespace."""
        namespace, found = self.namespace, []
        for p in psutil.process_iter():
            try:
                if p.pid not in (os.getpid(), self.holder.pid) and os.readlink(f"/proc/{p.pid}/ns/net") == namespace:
                    found.append(p)
            except (OSError, psutil.Error):
                continue
        return found

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        for _ in range(5):  # sweep every process of this cluster (they all live in its namespace)
            leftovers = self.processes()
            for p in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            if not leftovers:
                break
            time.sleep(1)
        self.holder.kill()
        self.holder.wait(timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


@contextlib.contextmanager
def head_cluster(num_cpus: float = 2) -> Iterator[LoopbackCluster]:
    """A one-node loopback cluster for a test module, stopped by it whatever happens."""
    cluster = LoopbackCluster()
    try:
        cluster.start_head(num_cpus=num_cpus)
        yield cluster
    finally:
        cluster.stop()


def actor_processes() -> list[psutil.Process]:
    """Worker processes hosting a CertifierActor (Ray titles them ``ray::CertifierActor...``)."""
    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            title = " ".join(p.info["cmdline"] or [])
            if title.startswith("ray::CertifierActor"):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found
