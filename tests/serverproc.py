"""``contextkit serve`` as a real process, for every test that needs one: start it, wait until
it is ready, stop it. The one place tests start a server and wait for it.

The server listens at once and warms up in the background (registry, embedding models, vector
tables, tokenizers); ``/health`` answers 503 ``starting`` until it is ready, then 200. Waiting is
on that answer, for up to :data:`READY_TIMEOUT_S`: on a loaded machine a start can take minutes,
and a fixed short timeout made fixtures give up on servers that were merely slow. A server that
exits or reports a failed warm-up fails the wait at once, with its log.

    with running_server("--no-auth", "--workspace", "prod", cwd=repo) as server:
        urllib.request.urlopen(server.base + "/v1/services")
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLI = str(Path(sys.executable).parent / "contextkit")
_LISTENING = re.compile(r"Uvicorn running on http://[^\s:]+:(\d+)")
READY_TIMEOUT_S = 300.0


class ServerNotReady(AssertionError):
    """The server exited, reported a failed warm-up, or was not ready in time (with its log)."""


class ServerProcess:
    """``contextkit serve ARGS --port PORT`` started now; its output goes to ``log_path`` (a
    temporary file when not given). Call :meth:`wait_ready` before use; then ``port`` and
    ``base`` (its URL) are set.

    Without ``port`` the server binds a free port itself (``--port 0``) and the port is read
    from its log: picking a free port here and passing it on would race with every other
    process on the machine that binds one meanwhile.
    """

    def __init__(
        self,
        *args: str,
        cwd: Path | str | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = port
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="contextkit-serve-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [CLI, "serve", *args, "--port", str(port or 0)],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        if self.port is None:
            raise RuntimeError("the server's port is known once it listens: call wait_ready()")
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> ServerProcess:
        """Poll ``/health`` until it answers 200; raise :class:`ServerNotReady` (and stop the
        server) if the process exits, its warm-up fails, or ``timeout`` seconds pass."""
        try:
            return self._wait_ready(timeout)
        except ServerNotReady:
            self.stop()
            raise

    def wait_listening(self, timeout: float = READY_TIMEOUT_S) -> ServerProcess:
        """Wait until the server has bound its port (it may still be warming up)."""
        deadline = time.monotonic() + timeout
        while self.port is None:
            self._check_running()
            bound = _LISTENING.search(self.log())
            if bound is not None:
                self.port = int(bound.group(1))
            elif time.monotonic() > deadline:
                raise ServerNotReady(f"not listening after {timeout:.0f} s:\n{self.log()}")
            else:
                time.sleep(0.1)
        return self

    def _check_running(self) -> None:
        if self.proc.poll() is not None:
            raise ServerNotReady(f"the server exited with {self.proc.returncode}:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> ServerProcess:
        deadline = time.monotonic() + timeout
        self.wait_listening(timeout)
        last = "no answer yet"
        while time.monotonic() < deadline:
            self._check_running()
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except urllib.error.HTTPError as err:  # 503 while warming up
                body = _json_or_text(err.read())
                if isinstance(body, dict) and body.get("status") == "failed":
                    raise ServerNotReady(f"the warm-up failed: {body}\n{self.log()}") from None
                last = str(body)
            except OSError as err:  # not listening yet
                last = str(err)
            time.sleep(0.1)
        raise ServerNotReady(f"not ready after {timeout:.0f} s ({last}):\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate (then kill, if it lingers) and wait; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if not self._log.closed:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@contextmanager
def running_server(*args: str, **options) -> Iterator[ServerProcess]:
    """A :class:`ServerProcess` (same arguments) that is ready; stopped on exit."""
    server = ServerProcess(*args, **options)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _json_or_text(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:200]
