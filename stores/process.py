"""Which process owns a job, and whether that process still runs.

A job row records its owner as ``(host, pid, start)``: ``start`` is an opaque token of the
process's start that tells it apart from a later process given the same pid (pids are reused).
On Linux it is ``<boot id>/<pid namespace>/<start time in clock ticks since boot>``, read from
``/proc``: exact, and immune to wall-clock steps. Elsewhere it is psutil's create time when psutil
is installed, else empty (the pid alone is checked, with no protection against reuse).

:func:`owner_alive` answers True or False only when this process can see the owner's process
table (same host, and on Linux the same boot and pid namespace: a container that shares the
host name but not the pids cannot judge). Otherwise it answers None and the caller falls back to
the job's heartbeat lease.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid: int
    start: str

    @property
    def label(self) -> str:
        return f"pid {self.pid} on {self.host}"


_current: ProcessIdentity | None = None


def current_process() -> ProcessIdentity:
    """This process (recomputed after a fork: the child is another owner)."""
    global _current
    pid = os.getpid()
    if _current is None or _current.pid != pid:
        _current = ProcessIdentity(socket.gethostname(), pid, _start_token(pid) or "")
    return _current


def owner_alive(owner: ProcessIdentity) -> bool | None:
    """Whether ``owner`` still runs: True, False, or None when it cannot be told from here."""
    me = current_process()
    if owner.host != me.host:
        return None
    if sys.platform.startswith("linux"):
        scope = owner.start.rpartition("/")[0]
        if not me.start or scope != me.start.rpartition("/")[0]:
            return None  # another boot, or another pid namespace: its pid means nothing here
        token = _linux_start_token(owner.pid)
        return token is not None and token == owner.start
    try:
        import psutil
    except ImportError:
        return _pid_exists(owner.pid)
    try:
        process = psutil.Process(owner.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return not owner.start or repr(process.create_time()) == owner.start
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return None


def _start_token(pid: int) -> str | None:
    if sys.platform.startswith("linux"):
        return _linux_start_token(pid)
    try:
        import psutil

        return repr(psutil.Process(pid).create_time())
    except Exception:  # psutil missing or refusing: the pid alone will be checked
        return None


def _linux_start_token(pid: int) -> str | None:
    """``<boot id>/<pid namespace>/<start ticks>`` of a running process; None when there is no
    such process or it is a zombie (killed, not yet reaped by its parent: it runs no more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    state, start_ticks = fields[0], fields[19]
    if state in ("Z", "X"):
        return None
    return f"{boot}/{namespace}/{start_ticks}"


def _pid_exists(pid: int) -> bool | None:
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
