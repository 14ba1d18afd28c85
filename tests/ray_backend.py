"""A real Ray cluster for the distributed-engine tests: a head node plus a second node process.

``ray_cluster`` (session-scoped) runs ``ray start --head --block`` and ``ray start --address ...
--block`` on free loopback ports in a temp dir of its own, waits until both nodes are alive (a
driver subprocess reads ``ray.nodes()``), and at the end SIGKILLs the processes it started and
their descendants, by pid: never ``ray stop``, which would stop every cluster on the machine.
Both nodes get one CPU, so a job of several partitions really runs on two nodes.

``kill_worker(task)`` SIGKILLs a worker process of the second node that runs ``task``, for the
retry tests. Without ray installed the tests skip, except in CI (``CI=true``) where they fail.

Loaded by ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.backends import free_port, missing_server

RAY_READY_TIMEOUT_S = 480.0  # two nodes on a loaded 2-core machine take minutes at worst
PROBE_S = 45.0  # one driver's wait for the nodes, between checks that the node processes run
NODE_STARTS = 3  # `ray start` of the second node, at most (it may time out on a loaded machine)
_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _ray_binary() -> str | None:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else shutil.which("ray")


def _node_args() -> list[str]:
    """Every port of a node on a free one: several clusters share this machine."""
    args = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1"]
    for flag in (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
    ):
        args += [flag, str(free_port())]
    return args + ["--object-store-memory", str(256 * 1024 * 1024), "--disable-usage-stats"]


def _env() -> dict[str, str]:
    # `ray start` turns token authentication on by default; drivers of the tests send none.
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@dataclass
class RayCluster:
    """One head and one worker node, both ``ray start --block`` processes of this session."""

    binary: str
    dir: Path
    port: int = field(default_factory=free_port)
    head: subprocess.Popen | None = None
    node: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], log: str) -> subprocess.Popen:
        return subprocess.Popen(
            [self.binary, "start", *args, *_node_args()],
            stdout=(self.dir / log).open("w"),
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # its own process group, apart from pytest's
        )

    def start(self) -> None:
        self.head = self._start(
            [
                "--head",
                "--port",
                str(self.port),
                "--include-dashboard=false",
                "--temp-dir",
                str(self.dir / "ray"),
            ],
            "head.log",
        )
        self._wait_for_head()  # a node started before the head's GCS answers gives up
        self.node = self._start(["--address", self.address], "node.log")
        self._wait_for_nodes(2)

    def _wait_for_head(self) -> None:
        deadline = time.monotonic() + RAY_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.head is not None and self.head.poll() is not None:
                raise RuntimeError(f"ray start --head exited:\n{self.log('head.log')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the Ray head did not listen on {self.port}:\n{self.log('head.log')}")

    def _wait_for_nodes(self, count: int) -> None:
        """A driver subprocess waits until ``count`` nodes are alive (readiness, not sleeps).

        On a loaded machine ``ray start`` of the second node may give up ("timed out during
        startup"): it is started again, up to :data:`NODE_STARTS` times in all."""
        script = (
            "import json, sys, time, ray\n"
            f"ray.init(address={self.address!r}, include_dashboard=False, log_to_driver=False)\n"
            f"deadline = time.monotonic() + {PROBE_S}\n"
            "while time.monotonic() < deadline:\n"
            "    alive = [n for n in ray.nodes() if n['Alive']]\n"
            f"    if len(alive) >= {count}:\n"
            "        print(json.dumps(len(alive))); sys.exit(0)\n"
            "    time.sleep(0.2)\n"
            "sys.exit(3)\n"
        )
        deadline = time.monotonic() + RAY_READY_TIMEOUT_S
        starts = 1
        while True:
            if self.head is not None and self.head.poll() is not None:
                raise RuntimeError(f"ray start --head exited:\n{self.log('head.log')}")
            if self.node is not None and self.node.poll() is not None:
                if starts >= NODE_STARTS:
                    raise RuntimeError(
                        f"ray start exited with {self.node.returncode} {starts} times:\n"
                        f"{self.log('node.log')}"
                    )
                starts += 1
                self.node = self._start(["--address", self.address], f"node-{starts}.log")
            try:
                out = subprocess.run(
                    [sys.executable, "-c", script],
                    env=_env(),
                    capture_output=True,
                    text=True,
                    timeout=PROBE_S + 60,
                )
            except subprocess.TimeoutExpired:
                out = None
            if out is not None and out.returncode == 0 and json.loads(out.stdout) >= count:
                return
            if time.monotonic() >= deadline:
                detail = out.stderr[-2000:] if out is not None else "(timed out)"
                raise RuntimeError(
                    f"the Ray cluster at {self.address} did not have {count} nodes within "
                    f"{RAY_READY_TIMEOUT_S:.0f} s:\n{detail}\n{self.log('node.log')}"
                )

    def log(self, name: str) -> str:
        try:
            return "\n".join((self.dir / name).read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def _processes(self, proc: subprocess.Popen | None) -> list:
        import psutil

        if proc is None or proc.poll() is not None:
            return []
        try:
            parent = psutil.Process(proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self, task: str | None = None) -> list[int]:
        """Pids of the second node's worker processes (``ray::<task>`` when ``task`` given)."""
        pids = []
        for p in self._processes(self.node):
            try:
                title = " ".join(p.cmdline())
            except Exception:  # gone meanwhile
                continue
            if not title.startswith("ray::") or title.startswith(_AGENTS):
                continue
            if task is None or title.startswith(f"ray::{task}"):
                pids.append(p.pid)
        return pids

    def kill_worker(self, task: str | None = None, timeout_s: float = 120.0) -> int:
        """SIGKILL a worker process of the second node, once one runs ``task`` (a Ray task's
        function name); returns its pid."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = self.workers(task)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                return pids[0]
            time.sleep(0.02)
        titles = [" ".join(p.cmdline())[:80] for p in self._processes(self.node)]
        raise RuntimeError(
            f"no worker ran {task or 'a task'} on the second node in {timeout_s} s: {titles}"
        )

    def stop(self) -> None:
        """SIGKILL both node processes and everything they started (gcs, raylets, workers)."""
        processes = self._processes(self.node) + self._processes(self.head)
        for p in processes:
            try:
                p.send_signal(signal.SIGKILL)
            except Exception:  # already gone
                continue
        for proc in (self.node, self.head):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """The session's two-node Ray cluster (``.address`` is ``127.0.0.1:PORT``)."""
    binary = _ray_binary()
    if binary is None or importlib.util.find_spec("ray") is None:
        missing_server("ray is not installed (pip install 'contextkit[ray]')")
    # A short path: Ray's Unix sockets live under it (108 characters at most).
    cluster = RayCluster(binary, Path(tempfile.mkdtemp(prefix="ckray-", dir="/tmp")))  # type: ignore[arg-type]
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.dir, ignore_errors=True)
