"""Connections to a PostgreSQL registry: a small pool, a change listener, and error translation.

**The pool.** Every call checks out one autocommit connection (at most ``pool_size`` at a time,
whatever the number of threads), runs one statement or one explicit transaction, and returns it.
A connection found broken (or, idle, found closed by the server: one ``poll``, no round trip)
is dropped, so a call after the server came back simply connects again. A process forked from
one holding connections starts with an empty pool (a child must never speak on its parent's
sockets).

**The change listener** keeps one more connection that listens (``LISTEN``) on
:data:`CHANNEL`; every write transaction of the registry sends ``NOTIFY`` on it as part of its
commit, so the listener counts the commits of every node of a deployment, a few milliseconds
after they land. Reading
the count is free (no round trip). While the listener is not connected, the count changes on
every read, so nobody caches what a missed notification might have changed; it reconnects by
itself and counts once more when it does. A connection that died silently is found by a
``SELECT 1`` every :data:`PING_S` seconds and TCP keepalives.

**Errors** become the stores' error classes within ``connect_timeout_s`` (never a hang), each
naming the registry by its URL with the password masked, and a hint: unreachable, refused
credentials, missing database, no permission (a read-only role), a read-only server, no free
connection slots. The password never reaches a message, a repr or a log line.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from contextkit.stores.errors import (
    StoreFailure,
    StoreServerUnavailable,
    WriteConflict,
    mask_url,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("contextkit.registry")

CHANNEL = "contextkit_registry"
# The class (first key) of every advisory lock the registry takes: "Ck" and the next few numbers.
ADVISORY_LOCK_CLASS = 0x436B
CONNECT_TIMEOUT_S = 5.0
POOL_SIZE = 8
# How long a call waits for a pooled connection when all are busy.
POOL_WAIT_S = 30.0
# The listener waits for notifications in slices this long (close() waits at most one), and
# checks its connection with a round trip this often.
LISTEN_SLICE_S = 0.2
PING_S = 5.0
# SQL states of a server that is going away or not yet there (admin or crash shutdown, starting).
_SERVER_GONE = ("57P01", "57P02", "57P03")


class PostgresConnector:
    """Opens, pools and checks connections to one PostgreSQL database given by URL."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.masked_url = mask_url(url)
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
            self._password = unquote(parts.password) if parts.password else None
            self.user = unquote(parts.username) if parts.username else None
            self.database = unquote(parts.path.lstrip("/")) or None
        except ValueError:
            raise StoreFailure(
                f"the registry URL {self.masked_url} cannot be parsed",
                hint="write it as postgresql://user:password@host:port/database",
            ) from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise StoreFailure(
                f"the registry URL {self.masked_url} is not a postgresql:// URL",
                hint="write it as postgresql://user:password@host:port/database",
            )
        self._url = url
        self.connect_timeout_s = connect_timeout_s
        self._pool_size = pool_size
        self._reset_pool()

    def __repr__(self) -> str:
        return f"PostgresConnector({self.masked_url!r})"

    # -- connections ---------------------------------------------------------------------
    def connect(self, action: str = "connecting") -> psycopg.Connection:
        """A new autocommit connection; a failure is the store error that names its cause."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        with self.translated(action):
            try:
                params: dict[str, Any] = conninfo_to_dict(self._url)
            except psycopg.ProgrammingError:
                raise StoreFailure(
                    f"the registry URL {self.masked_url} cannot be parsed",
                    hint="write it as postgresql://user:password@host:port/database",
                ) from None
            # The URL's own settings win; these only fill in what it leaves out.
            params.setdefault("connect_timeout", max(1, round(self.connect_timeout_s)))
            params.setdefault("application_name", "contextkit")
            params.setdefault("keepalives", 1)
            params.setdefault("keepalives_idle", 10)
            params.setdefault("keepalives_interval", 5)
            params.setdefault("keepalives_count", 3)
            return psycopg.connect(autocommit=True, **params)

    def _reset_pool(self) -> None:
        self._pid = os.getpid()
        self._idle: list[psycopg.Connection] = []
        self._slots = threading.BoundedSemaphore(self._pool_size)
        self._lock = threading.Lock()

    @contextmanager
    def connection(self, action: str) -> Iterator[psycopg.Connection]:
        """A pooled connection for one statement or transaction; errors raised in the block
        become store errors (a :class:`StoreFailure` raised there passes unchanged)."""
        if os.getpid() != self._pid:
            self._reset_pool()  # forked: the parent's connections are not ours to use or close
        if not self._slots.acquire(timeout=POOL_WAIT_S):
            raise StoreServerUnavailable(
                f"{action}: all {self._pool_size} connections to registry {self.masked_url} "
                f"stayed busy for {POOL_WAIT_S:.0f} s",
                hint="the registry database answers slowly; check its load and locks",
            )
        try:
            con = self._take_idle()
            if con is None:
                con = self.connect(action)
            reusable = False  # interrupted mid-statement (not by an error): state unknown
            try:
                with self.translated(action):
                    yield con
                reusable = True
            except Exception:
                reusable = True  # whether the connection still works is checked below
                raise
            finally:
                self._give_back(con, reusable)
        finally:
            self._slots.release()

    def _take_idle(self) -> psycopg.Connection | None:
        """An idle connection that still looks alive. A server that restarted, or ended the
        session, has sent its goodbye (or closed the socket): an idle connection has nothing
        to read otherwise, so one ``select`` finds those without a round trip."""
        import psycopg

        while True:
            with self._lock:
                if not self._idle:
                    return None
                con = self._idle.pop()
            try:
                if not _has_input(con.fileno()):
                    return con
            except (OSError, ValueError, psycopg.Error):
                pass
            _close_quietly(con)

    def _give_back(self, con: psycopg.Connection, reusable: bool) -> None:
        from psycopg.pq import TransactionStatus

        usable = (
            reusable
            and not con.closed
            and not con.broken
            and con.info.transaction_status == TransactionStatus.IDLE
        )
        if usable:
            with self._lock:
                if len(self._idle) < self._pool_size:
                    self._idle.append(con)
                    return
        _close_quietly(con)

    def close(self) -> None:
        """Close the idle connections (busy ones go back to the pool when their call ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        if os.getpid() == self._pid:
            for con in idle:
                _close_quietly(con)

    # -- errors --------------------------------------------------------------------------
    @contextmanager
    def translated(self, action: str) -> Iterator[None]:
        """psycopg's errors raised in the block as store errors naming the (masked) URL."""
        import psycopg

        try:
            yield
        except StoreFailure:
            raise
        except psycopg.Error as exc:
            raise self.failure(action, exc) from None

    def failure(self, action: str, exc: Exception) -> StoreFailure:
        """The store error for ``exc``, raised while doing ``action``."""
        from psycopg import errors

        text = self._clean(str(exc))
        where = f"registry {self.masked_url}"
        state = getattr(exc, "sqlstate", None) or ""
        lower = text.lower()
        if isinstance(exc, errors.InsufficientPrivilege):
            return StoreServerUnavailable(
                f"{action}: the role {self.user!r} may not do this in {where} ({text})",
                hint="use a role that may write to the registry's tables (plan, apply and jobs "
                "write; serving nodes may use a read-only role on an up-to-date registry)",
            )
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            return StoreServerUnavailable(
                f"{action}: {where} is read-only (a standby?) ({text})",
                hint="point the registry URL at the primary PostgreSQL server",
            )
        if isinstance(
            exc, errors.SerializationFailure | errors.DeadlockDetected | errors.LockNotAvailable
        ):
            return WriteConflict(
                f"{action}: a concurrent writer held or changed the same rows of {where}; "
                f"nothing was written ({text})",
                hint="run it again",
            )
        if state.startswith("53") or "too many connections" in lower or "connection slots" in lower:
            return StoreServerUnavailable(
                f"{action}: {where} has no room ({text})",
                hint="PostgreSQL is out of connections, memory or disk: raise max_connections "
                "or free resources, or lower the registry's pool size",
            )
        if state and not (state.startswith("08") or state in _SERVER_GONE):
            return StoreFailure(f"{action}: {where} failed ({text})")
        # No SQL state (libpq's own connection errors), a connection exception or a shutdown.
        if "authentication" in lower or "password" in lower or "pg_hba.conf" in lower:
            return StoreServerUnavailable(
                f"{action}: {where} refused the credentials of {self.user!r} ({text})",
                hint="check the user and password in the registry URL (CONTEXTKIT_REGISTRY), "
                "and that pg_hba.conf lets this host in",
            )
        if "role" in lower and "does not exist" in lower:
            return StoreServerUnavailable(
                f"{action}: {where} has no role {self.user!r} ({text})",
                hint="check the user in the registry URL (CONTEXTKIT_REGISTRY), or create the "
                "role in PostgreSQL",
            )
        if "database" in lower and "does not exist" in lower:
            return StoreServerUnavailable(
                f"{action}: the database {self.database!r} of {where} does not exist",
                hint=f'create it (CREATE DATABASE "{self.database}") or fix the database name '
                "in the registry URL",
            )
        return StoreServerUnavailable(
            f"{action}: {where} is unreachable ({text})",
            hint="check that PostgreSQL runs and answers at the URL's host and port (connect "
            f"timeout {self.connect_timeout_s:g} s); the registry reconnects by itself once it "
            "answers",
        )

    def _clean(self, text: str) -> str:
        """One line, with the password (should a message ever hold it) masked."""
        if self._password and len(self._password) >= 3:
            text = text.replace(self._password, "***")
        return " ".join(text.split())


def _has_input(fd: int) -> bool:
    """Whether the socket has something to read, or was closed (never blocks)."""
    if hasattr(select, "poll"):  # no limit on fd numbers, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


def _close_quietly(con: psycopg.Connection) -> None:
    with suppress(Exception):  # a broken connection may fail to say goodbye
        con.close()


class ChangeListener:
    """Counts the registry's commits, heard on :data:`CHANNEL` (see the module's docstring)."""

    def __init__(self, connector: PostgresConnector) -> None:
        self._connector = connector
        self._lock = threading.Lock()
        self._count = 0
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def count(self) -> int:
        """The number of commits heard so far (plus reconnects and own bumps). Starts the
        listener on first use: once this returns, every later commit changes the count."""
        if self._thread is None or os.getpid() != self._pid:
            self._start()
        if not self._connected.is_set():
            return self.bump()
        return self._count

    def bump(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def _start(self) -> None:
        with self._lock:
            if os.getpid() != self._pid:  # forked: the parent's thread is not running here
                self._pid, self._thread = os.getpid(), None
            if self._thread is not None:
                return
            # Each thread gets its own events: one that is still stopping cannot touch them.
            self._stop, self._connected = threading.Event(), threading.Event()
            tried = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(self._stop, self._connected, tried),
                name="contextkit-registry-listener",
                daemon=True,
            )
            self._thread.start()
        # Until the first attempt is over (bounded by the connect timeout), a commit could be
        # missed: wait for it, so that what the caller reads next is covered.
        tried.wait(self._connector.connect_timeout_s + 5)

    def _run(
        self, stop: threading.Event, connected: threading.Event, tried: threading.Event
    ) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                con = self._subscribe()
            except StoreFailure as exc:
                tried.set()
                if backoff == 0.1:  # the first failure of a streak; the retries stay quiet
                    log.warning("%s; retrying until it answers", exc.message)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.bump()  # anything may have changed while nobody listened
            connected.set()
            tried.set()
            try:
                self._listen(con, stop)
            except Exception as exc:  # noqa: BLE001 - any failure: count, reconnect, go on
                log.warning(
                    "lost the change listener's connection to registry %s: %s",
                    self._connector.masked_url,
                    self._connector.failure("listening", exc).message,
                )
            finally:
                connected.clear()
                self.bump()
                _close_quietly(con)

    def _subscribe(self) -> psycopg.Connection:
        action = "listening for registry changes"
        con = self._connector.connect(action)
        try:
            with self._connector.translated(action):
                con.execute(f"LISTEN {CHANNEL}")
        except StoreFailure:
            _close_quietly(con)
            raise
        return con

    def _listen(self, con: psycopg.Connection, stop: threading.Event) -> None:
        checked = time.monotonic()
        while not stop.is_set():
            for _ in con.notifies(timeout=LISTEN_SLICE_S):
                self.bump()
            if time.monotonic() - checked > PING_S:
                con.execute("SELECT 1")
                checked = time.monotonic()

    def close(self) -> None:
        """Stop listening (the next :meth:`count` starts again)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread not in (None, threading.current_thread()) and os.getpid() == self._pid:
            thread.join(timeout=LISTEN_SLICE_S * 5)
