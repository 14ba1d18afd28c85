"""Transform server groups at serving time: realtime views run in worker processes of their own.

A repo declares ``TransformServerGroup(name, views=[...], workers=2, timeout=timedelta(...))``.
Each serving process (``contextkit serve``, or a ``Context`` in an app) then keeps one small pool
per group: ``workers`` processes, each a fresh ``python`` (the serving process's interpreter
and ``sys.path``) that imports only :mod:`contextkit.framework.realtime` and talks over two
pipes, never re-importing the application's main module (so an unguarded script may use it).
They start at the group's first call, so a process that never serves such a view starts none.
A lookup sends the view's spec (JSON) and its rows (the request-context values and input
features of every entity row, pickled plain Python values) to an idle worker and waits for the
computed rows, which are checked in the worker exactly as in process
(:func:`~contextkit.framework.realtime.run_realtime`), so the values are the same.

The caller's thread waits on the pipe, not on the interpreter lock: a slow function delays only
the requests that need its view, never the feature lookups of other services in the serving
process. Waiting is bounded too: at most ``workers`` callers wait for a free worker, and a
call beyond them answers at once (``503 transform_busy``), so a held group can occupy at most
``2 x workers`` of the threads the server shares between services. Failures answer at once and
leave the pool usable:

- a call that takes longer than the group's timeout: ``504 transform_timeout``; the worker is
  killed (it may be stuck for good) and replaced at the next call;
- every worker busy for the whole timeout: ``504 transform_timeout`` too, saying so;
- every worker busy and ``workers`` callers already waiting: ``503 transform_busy`` at once;
- a worker that dies during a call (``os._exit``, a crash of a native library, the OOM killer)
  or cannot start: ``503 transform_worker_failed`` with its exit code; the next call starts a
  new one;
- an error the function raises, or a wrong return value: the same ``realtime_feature_error``
  as in process.

Worker start-up (a new interpreter and its imports, about a second) is not counted in a call's
timeout. A worker ends when its serving process does: an idle one at the end of its pipe, a
busy one (held in its function) within ``PARENT_CHECK_S`` of being re-parented. Counters per
group (calls by outcome, workers running) feed ``/metrics``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from contextkit.errors import (
    ContextKitError,
    RealtimeFeatureError,
    TransformBusyError,
    TransformTimeoutError,
    TransformWorkerError,
)
from contextkit.framework.specs import RealtimeFeatureViewSpec, TransformServerGroupSpec

# How long a new worker may take to start (a fresh interpreter on a loaded machine).
START_TIMEOUT_S = 120.0
OUTCOMES = ("ok", "error", "timeout", "worker_failed", "busy")
# How often a worker checks that its serving process is still there (see serve_fds).
PARENT_CHECK_S = 0.5


class _Worker:
    """One worker process (a fresh ``python``) and the parent's ends of its two pipes."""

    def __init__(self, group: str) -> None:
        from_parent, to_child = os.pipe()  # (read end, write end)
        from_child, to_parent = os.pipe()
        # Not multiprocessing's spawn: it re-imports the parent's __main__ in the child, which
        # fails for an application script without ``if __name__ == "__main__":``.
        path = os.pathsep.join(p for p in sys.path if p)
        env = {**os.environ, "PYTHONPATH": path}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(from_parent), str(to_parent)],
                pass_fds=(from_parent, to_parent),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:  # no process (interpreter gone, fork refused): no pipes either
            os.close(to_child)
            os.close(from_child)
            raise
        finally:
            os.close(from_parent)
            os.close(to_parent)
        self.send_conn = Connection(to_child, readable=False)
        self.conn = Connection(from_child, writable=False)

    def send(self, message: Any) -> None:
        self.send_conn.send(message)

    def wait_ready(self) -> bool:
        try:
            return self.conn.poll(START_TIMEOUT_S) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            return False

    def exit_code(self) -> int | None:
        try:
            return self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5.0)
        self.send_conn.close()
        self.conn.close()


_WORKER_MAIN = (
    "import sys; from contextkit.framework.transform_workers import serve_fds; "
    "serve_fds(int(sys.argv[1]), int(sys.argv[2]))"
)


class TransformPool:
    """The worker processes of one transform server group in this process."""

    def __init__(self, workspace: str, group: TransformServerGroupSpec) -> None:
        self.workspace = workspace
        self.name = group.name
        self.workers = group.workers
        self.timeout = group.timeout_seconds
        self._slots = threading.BoundedSemaphore(group.workers)
        self.waiting = 0  # callers waiting for a free worker (at most ``workers``)
        self._idle: list[_Worker] = []
        self._running: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.calls: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._sources: dict[tuple[str, str], str] = {}  # (view, source) -> the spec as JSON

    @property
    def running(self) -> int:
        """Worker processes started and alive."""
        return len(self._running)

    def run(
        self,
        view: RealtimeFeatureViewSpec,
        requests: Sequence[Mapping[str, Any]],
        inputs: Sequence[Sequence[Mapping[str, Any]]],
    ) -> list[dict[str, Any]]:
        """``run_realtime(view, requests[i], inputs[i])`` for every row, in a worker."""
        began = time.monotonic()
        if not self._acquire_slot(view):
            self._count("timeout")
            raise TransformTimeoutError(
                f"realtime view {view.name!r}: every worker of transform server group "
                f"{self.name!r} stayed busy for {self.timeout:g}s",
                hint=f"raise workers= of TransformServerGroup {self.name!r}, or make its "
                "functions faster",
                details={"view": view.name, "transform_server_group": self.name},
            )
        try:
            waited = time.monotonic() - began  # for a free worker; starting one is not counted
            worker = self._checkout(view)
            left = max(self.timeout - waited, 0.001)
            try:
                worker.send((self._spec_json(view), list(requests), list(inputs)))
                if not worker.conn.poll(left):
                    self._discard(worker)
                    self._count("timeout")
                    raise TransformTimeoutError(
                        f"realtime view {view.name!r} did not answer within {self.timeout:g}s "
                        f"(transform server group {self.name!r})",
                        hint="make the function faster, or raise timeout= of "
                        f"TransformServerGroup {self.name!r}; its worker was replaced",
                        details={"view": view.name, "transform_server_group": self.name},
                    )
                status, payload = worker.conn.recv()
            except (EOFError, OSError) as exc:
                code = worker.exit_code()
                self._discard(worker)
                self._count("worker_failed")
                raise self._died(view, code, exc) from None
            self._checkin(worker)
            if status != "ok":
                self._count("error")
                raise payload
            self._count("ok")
            return payload
        finally:
            self._slots.release()

    def _acquire_slot(self, view: RealtimeFeatureViewSpec) -> bool:
        """A free worker's slot: at once, or after waiting at most the timeout (False: none came)
        when fewer than ``workers`` callers are waiting already; else ``TransformBusyError``."""
        if self._slots.acquire(blocking=False):
            return True
        with self._lock:
            queue_full = self.waiting >= self.workers
            if not queue_full:
                self.waiting += 1
        if queue_full:
            self._count("busy")
            raise TransformBusyError(
                f"realtime view {view.name!r}: every worker of transform server group "
                f"{self.name!r} is busy and {self.waiting} call(s) already wait for one",
                hint=f"retry shortly; raise workers= of TransformServerGroup {self.name!r}, or "
                "make its functions faster",
                details={"view": view.name, "transform_server_group": self.name},
            )
        try:
            return self._slots.acquire(timeout=self.timeout)
        finally:
            with self._lock:
                self.waiting -= 1

    def close(self) -> None:
        """Stop every worker (idle ones now, busy ones when their call returns)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            self._discard(worker)

    # -- internals --------------------------------------------------------------------------
    def _checkout(self, view: RealtimeFeatureViewSpec) -> _Worker:
        while True:
            with self._lock:
                idle = self._idle.pop() if self._idle else None
            if idle is None:
                break
            if idle.process.poll() is None:
                return idle
            self._discard(idle)  # died while idle (killed from outside): start another
        try:
            worker = _Worker(self.name)
        except OSError as exc:
            self._count("worker_failed")
            raise TransformWorkerError(
                f"a worker of transform server group {self.name!r} did not start ({exc})",
                hint="see the server's log; the next request tries a new worker",
                details={"view": view.name, "transform_server_group": self.name},
            ) from None
        with self._lock:
            self._running.add(worker)
        if not worker.wait_ready():
            code = worker.exit_code()
            self._discard(worker)
            self._count("worker_failed")
            raise TransformWorkerError(
                f"a worker of transform server group {self.name!r} did not start (exit code "
                f"{code})",
                hint="see the server's log; the next request tries a new worker",
                details={"view": view.name, "transform_server_group": self.name},
            )
        return worker

    def _checkin(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        self._discard(worker)

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._running.discard(worker)
        worker.kill()

    def _died(
        self, view: RealtimeFeatureViewSpec, code: int | None, exc: BaseException
    ) -> TransformWorkerError:
        how = f"exit code {code}" if code is not None else type(exc).__name__
        return TransformWorkerError(
            f"realtime view {view.name!r}: its worker process in transform server group "
            f"{self.name!r} died during the call ({how})",
            hint="the function crashed its process (os._exit, a native crash or the memory "
            "limit); the next request starts a new worker",
            details={"view": view.name, "transform_server_group": self.name, "exit_code": code},
        )

    def _spec_json(self, view: RealtimeFeatureViewSpec) -> str:
        key = (view.name, view.python_source)
        found = self._sources.get(key)
        if found is None:
            found = self._sources[key] = view.model_dump_json()
        return found

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.calls[outcome] += 1


_pools: dict[tuple[str, str], TransformPool] = {}
_pools_lock = threading.Lock()


def transform_pool(workspace: str, group: TransformServerGroupSpec) -> TransformPool:
    """This process's pool of ``group`` (created at its first call; replaced when an apply
    changed the group's size or timeout)."""
    key = (workspace, group.name)
    pool = _pools.get(key)
    if pool is not None and (pool.workers, pool.timeout) == (group.workers, group.timeout_seconds):
        return pool
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None or (pool.workers, pool.timeout) != (group.workers, group.timeout_seconds):
            old, pool = pool, TransformPool(workspace, group)
            _pools[key] = pool
            if old is not None:
                old.close()
    return pool


def pools() -> list[TransformPool]:
    """The pools this process has started (for ``/metrics``)."""
    return list(_pools.values())


def close_pools() -> None:
    """Stop every worker of every pool of this process."""
    with _pools_lock:
        found = list(_pools.values())
        _pools.clear()
    for pool in found:
        pool.close()


atexit.register(close_pools)


# -- the worker process -------------------------------------------------------------------------


def serve_fds(read_fd: int, write_fd: int) -> None:
    """A worker's loop (``python -c`` in the worker process): one call per message, until the
    parent closes its end (or dies)."""
    from contextkit.framework.realtime import run_realtime

    # A worker held in a function does not read its pipe, so it would not notice that its
    # serving process died (SIGKILL, the OOM killer) and would outlive it: watch the parent.
    threading.Thread(
        target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True
    ).start()
    incoming = Connection(read_fd, writable=False)
    conn = Connection(write_fd, readable=False)
    specs: dict[str, RealtimeFeatureViewSpec] = {}
    conn.send("ready")
    while True:
        try:
            source, requests, inputs = incoming.recv()
        except (EOFError, OSError):
            return
        try:
            view = specs.get(source)
            if view is None:
                if len(specs) > 256:
                    specs.clear()
                view = specs[source] = RealtimeFeatureViewSpec.model_validate_json(source)
            rows = [run_realtime(view, r, i) for r, i in zip(requests, inputs, strict=True)]
            conn.send(("ok", rows))
        except ContextKitError as exc:
            conn.send(("error", exc))
        except Exception as exc:  # anything else the worker itself hit: still the view's error
            conn.send(
                (
                    "error",
                    RealtimeFeatureError(
                        f"realtime view failed in its worker: {type(exc).__name__}: {exc}"
                    ),
                )
            )


def _exit_with_parent(parent: int) -> None:
    """End this worker at once when its serving process ``parent`` is gone (it was re-parented)."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)
