"""One contract for every registry: SQLite and PostgreSQL answer the core's calls alike.

Each story runs against both registries (a real PostgreSQL 15 from tests/backends.py, one fresh
database per test), driving ``RegistryStore`` the way the core does: workspaces, applies with a
base version, jobs with owners and leases, monitoring statistics and alerts, API keys, settings,
and the change signals the server's caches key on. Concurrency is real: two processes apply at
once, a job's owner is SIGKILLed. Then the schema: the same tables and columns, migrations in
place, a registry of a newer contextkit refused. PostgreSQL-only stories cover what a file cannot
do: a server that is unreachable, refuses the password, lacks the database, or lets the role
only read; passwords never appear in what the registry says.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from contextkit.governance.access import Access, KeyRejected
from contextkit.stores._registry_schema import (
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    postgres_statements,
    statements,
)
from contextkit.stores.errors import (
    ApplyConflictError,
    MissingError,
    RegistryVersionError,
    StoreFailure,
    StoreServerUnavailable,
)
from contextkit.stores.postgres_registry import PostgresRegistry
from contextkit.stores.registry import (
    AlertRecord,
    ApiKeyRecord,
    JobStatsRecord,
    RegistryStore,
    SQLiteRegistry,
)
from tests.backends import PostgresServer, free_port

OPEN_REGISTRY = """
from contextkit.stores.postgres_registry import PostgresRegistry
from contextkit.stores.registry import SQLiteRegistry

def open_registry(location):
    if location.startswith("postgresql://"):
        return PostgresRegistry(location)
    return SQLiteRegistry(location)
"""


@dataclass
class Store:
    """One registry location (a SQLite file or a PostgreSQL database) and raw SQL on it."""

    kind: str
    location: str
    opened: list[Any] = field(default_factory=list)

    def open(self, **options: Any) -> RegistryStore:
        if self.kind == "postgres":
            registry: Any = PostgresRegistry(self.location, **options)
        else:
            registry = SQLiteRegistry(self.location, **options)
        self.opened.append(registry)
        return registry

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement outside the registry (``?`` placeholders) and commit it."""
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(self.location, autocommit=True) as con:
                cur = con.execute(statement.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        con = sqlite3.connect(self.location)
        try:
            with con:
                return con.execute(statement, params).fetchall()
        finally:
            con.close()

    def script(self, sql: str) -> None:
        """Run a schema script as this engine would (see ``_registry_schema``)."""
        for statement in postgres_statements(sql) if self.kind == "postgres" else statements(sql):
            self.sql(statement)

    def close_all(self) -> None:
        for registry in self.opened:
            registry.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> Iterator[Store]:
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        found = Store("postgres", server.create_database())
    else:
        found = Store("sqlite", str(tmp_path / "registry.db"))
    yield found
    found.close_all()


@pytest.fixture
def registry(store) -> RegistryStore:
    return store.open()


def wait_for(condition: Callable[[], Any], what: str, limit_s: float = 60.0) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def snapshot(registry: RegistryStore, workspace: str = "prod") -> tuple:
    """Everything an apply may change."""
    return (
        registry.get_workspace(workspace),
        registry.list_objects(workspace),
        registry.list_applies(workspace),
    )


# -- the interface ------------------------------------------------------------------------------


def test_both_registries_implement_every_method_of_the_interface():
    wanted = {
        name: inspect.signature(member)
        for name, member in vars(RegistryStore).items()
        if callable(member) and not name.startswith("_")
    }
    assert {"data_version", "close", "change_token", "apply"} <= set(wanted)
    for cls in (SQLiteRegistry, PostgresRegistry):
        for name, signature in wanted.items():
            assert hasattr(cls, name), f"{cls.__name__} lacks {name}"
            assert inspect.signature(getattr(cls, name)) == signature, (cls.__name__, name)


# -- workspaces ---------------------------------------------------------------------------------


def test_workspaces_are_created_listed_and_deleted(registry):
    assert registry.list_workspaces() == []
    prod = registry.create_workspace("prod", live=True)
    registry.create_workspace("Dev", live=False)

    assert (prod.name, prod.live, prod.version) == ("prod", True, 0)
    assert [(w.name, w.live) for w in registry.list_workspaces()] == [
        ("Dev", False),  # byte order, as SQLite sorts: upper case first
        ("prod", True),
    ]
    assert registry.get_workspace("prod") == prod
    with pytest.raises(ApplyConflictError, match="already exists"):
        registry.create_workspace("prod", live=False)

    registry.delete_workspace("Dev")
    assert [w.name for w in registry.list_workspaces()] == ["prod"]
    with pytest.raises(MissingError, match="'Dev' does not exist"):
        registry.get_workspace("Dev")
    with pytest.raises(MissingError):
        registry.delete_workspace("Dev")


def test_deleting_a_workspace_removes_everything_of_it_and_revokes_its_keys(registry):
    for name in ("prod", "dev"):
        registry.create_workspace(name, live=True)
        registry.apply(name, 0, [("feature_view", "spend", "{}")], [], "me", {})
        job = registry.start_job(name, "spend")
        registry.finish_job(job, "succeeded")
        registry.save_job_monitoring(stats(job, name), name, "spend", [alert(name)])
        registry.insert_api_key(api_key(f"key{name}", workspace=name))

    registry.delete_workspace("prod")

    assert registry.list_objects("prod") == [] and registry.list_applies("prod") == []
    assert registry.list_jobs("prod") == [] and registry.list_alerts("prod") == []
    assert registry.list_job_stats("prod", "spend") == []
    assert registry.find_api_key("keyprod").revoked_at is not None
    # The other workspace keeps all of it.
    assert len(registry.list_objects("dev")) == 1 and len(registry.list_jobs("dev")) == 1
    assert len(registry.list_alerts("dev")) == 1
    assert registry.find_api_key("keydev").revoked_at is None


# -- applies ------------------------------------------------------------------------------------


def test_an_apply_is_the_next_version_with_who_when_and_what(registry):
    registry.create_workspace("prod", live=True)
    before = time.time()
    v1 = registry.apply(
        "prod",
        0,
        [
            ("feature_view", "spend", '{"w": 7}'),
            ("entity", "user", "{}"),
            ("feature_view", "B", "{}"),
        ],
        [],
        "alice",
        {"added": ["spend", "user", "B"]},
    )
    v2 = registry.apply(
        "prod", 1, [("feature_view", "spend", '{"w": 30}')], [("feature_view", "B")], "bob", {}
    )

    assert (v1, v2) == (1, 2)
    assert registry.get_workspace("prod").version == 2
    assert [(o.kind, o.name, o.spec, o.version) for o in registry.list_objects("prod")] == [
        ("entity", "user", "{}", 1),
        ("feature_view", "spend", '{"w": 30}', 2),
    ]
    first, second = registry.list_applies("prod")
    assert (first.version, first.applied_by, first.summary) == (
        1,
        "alice",
        {"added": ["spend", "user", "B"]},
    )
    assert (second.version, second.applied_by, second.summary) == (2, "bob", {})
    assert before <= first.applied_at <= second.applied_at <= time.time()


def test_an_apply_from_a_stale_base_version_is_refused_and_changes_nothing(registry):
    registry.create_workspace("prod", live=True)
    registry.apply("prod", 0, [("feature_view", "spend", "{}")], [], "alice", {})
    before = snapshot(registry)

    with pytest.raises(ApplyConflictError, match=r"changed since the plan.*version 0 -> 1") as err:
        registry.apply(
            "prod", 0, [("feature_view", "other", "{}")], [("feature_view", "spend")], "bob", {}
        )

    assert "plan" in err.value.hint
    assert snapshot(registry) == before
    with pytest.raises(MissingError):
        registry.apply("nope", 0, [], [], "bob", {})


def test_an_apply_that_fails_half_way_writes_nothing(registry):
    registry.create_workspace("prod", live=True)
    registry.apply("prod", 0, [("feature_view", "spend", "{}")], [], "alice", {})
    before = snapshot(registry)

    # The delete runs, then an upsert breaks a NOT NULL constraint: all of it is rolled back.
    with pytest.raises((StoreFailure, sqlite3.Error)):
        registry.apply(
            "prod", 1, [("feature_view", "ok", "{}"), ("feature_view", "bad", None)],
            [("feature_view", "spend")], "bob", {},
        )  # fmt: skip

    assert snapshot(registry) == before
    assert registry.apply("prod", 1, [], [], "bob", {}) == 2  # and the workspace still applies


CONCURRENT_APPLY = OPEN_REGISTRY + textwrap.dedent(
    """
    import json, sys
    from contextkit.stores.errors import ApplyConflictError

    registry = open_registry(sys.argv[1])
    me = sys.argv[2]
    base = registry.get_workspace("prod").version
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    upserts = [("feature_view", f"{me}_{i}", json.dumps({"by": me})) for i in range(40)]
    try:
        deletes = [("feature_view", "shared")]
        version = registry.apply("prod", base, upserts, deletes, me, {"by": me})
        print(json.dumps({"won": version}), flush=True)
    except ApplyConflictError as exc:
        print(json.dumps({"conflict": exc.message}), flush=True)
    """
)


@contextmanager
def workspace_row_locked(store: Store) -> Iterator[Callable[[], int]]:
    """On PostgreSQL, hold the workspace's row lock (what an apply takes first) until the block
    ends, and yield a count of the registry connections waiting for a lock. SQLite's write lock
    cannot be held this way (opening a registry takes it too): there the block just runs."""
    if store.kind != "postgres":
        yield lambda: 0
        return
    import psycopg

    with psycopg.connect(store.location) as holder, psycopg.connect(store.location) as watch:
        holder.execute("SELECT 1 FROM workspaces WHERE name = 'prod' FOR UPDATE")
        watch.autocommit = True
        yield lambda: watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND application_name = 'contextkit'"
        ).fetchone()[0]
        holder.rollback()


def test_two_processes_applying_at_once_one_wins_and_the_other_conflicts(store):
    registry = store.open()
    registry.create_workspace("prod", live=True)
    registry.apply("prod", 0, [("feature_view", "shared", "{}")], [], "setup", {})
    names = ("left", "right")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_APPLY, store.location, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    for child in children:
        assert child.stdout.readline().strip() == "ready"  # both planned from version 1
    with workspace_row_locked(store) as waiting:
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        if store.kind == "postgres":  # both are inside apply at once, blocked on the same row
            wait_for(lambda: waiting() == 2, "both applies to wait for the workspace's lock")
    results = {}
    for name, child in zip(names, children, strict=True):
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0, out
        results[name] = json.loads(out.strip().splitlines()[-1])

    [winner] = [n for n, r in results.items() if "won" in r]
    [loser] = [n for n, r in results.items() if "conflict" in r]
    assert results[winner] == {"won": 2}
    assert "changed since the plan was made (version 1 -> 2)" in results[loser]["conflict"]
    # The winner's apply whole, nothing of the loser's.
    assert {o.name for o in registry.list_objects("prod")} == {f"{winner}_{i}" for i in range(40)}
    assert [(a.version, a.applied_by) for a in registry.list_applies("prod")] == [
        (1, "setup"),
        (2, winner),
    ]
    assert registry.get_workspace("prod").version == 2


# -- jobs ---------------------------------------------------------------------------------------


def test_jobs_are_recorded_from_start_to_finish(registry):
    job = registry.start_job(
        "prod", "spend", range_start="2024-01-01", range_end="2024-02-01", spec_hash="h1",
        details={"mode": "full"},
    )  # fmt: skip
    [running] = registry.running_jobs()
    assert (running.id, running.status, running.spec_hash) == (job, "running", "h1")
    assert running.owner_pid == os.getpid() and running.owner is not None
    assert running.lease_expires_at > running.heartbeat_at == running.started_at

    registry.finish_job(job, "succeeded", rows_offline=10, rows_online=4, details={"n": 1})
    failed = registry.start_job("prod", "spend")
    registry.finish_job(failed, "failed", error="boom")
    other = registry.start_job("dev", "clicks")
    registry.finish_job(other, "warning", rows_online=0)

    done = registry.get_job(job)
    assert (done.status, done.rows_offline, done.rows_online) == ("succeeded", 10, 4)
    assert done.details == {"n": 1} and done.lease_expires_at is None
    assert done.duration_s is not None and done.duration_s >= 0
    assert registry.get_job(failed).error == "boom"
    assert registry.get_job(failed).details == {}  # details kept when finish gives none
    assert registry.get_job("nope") is None
    assert registry.running_jobs() == []
    assert [j.id for j in registry.list_jobs()] == [other, failed, job]
    assert [j.id for j in registry.list_jobs("prod")] == [failed, job]
    assert [j.id for j in registry.list_jobs("prod", "spend", limit=1)] == [failed]
    assert registry.job_summary() == [
        ("dev", "clicks", "warning", 1),
        ("prod", "spend", "failed", 1),
        ("prod", "spend", "succeeded", 1),
    ]
    assert [j.id for j in registry.last_succeeded_jobs()] == [other, job]
    assert [j.id for j in registry.latest_jobs()] == [other, failed]
    assert [j.id for j in registry.latest_jobs("prod")] == [failed]


OWNER = OPEN_REGISTRY + textwrap.dedent(
    """
    import sys, time
    registry = open_registry(sys.argv[1])
    print(registry.start_job("prod", "spend"), flush=True)
    time.sleep(600)
    """
)


def test_a_job_whose_process_was_killed_is_marked_abandoned_by_the_next_reader(store):
    registry = store.open()
    child = subprocess.Popen(
        [sys.executable, "-c", OWNER, store.location], stdout=subprocess.PIPE, text=True
    )
    try:
        job_id = child.stdout.readline().strip()
        assert job_id, "the child did not start its job"
        [running] = registry.running_jobs()
        assert running.owner_pid == child.pid  # alive: left alone
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()

    [job] = registry.list_jobs()

    assert job.id == job_id and job.abandoned
    assert job.error.startswith("abandoned: its process (pid ")
    assert registry.running_jobs() == [] and registry.reap_abandoned_jobs() == []


def test_a_job_owned_on_another_host_is_judged_by_its_lease(store, registry):
    fresh = registry.start_job("prod", "fresh")
    stale = registry.start_job("prod", "stale")
    now = time.time()
    store.sql("UPDATE jobs SET owner_host = 'elsewhere'")
    store.sql("UPDATE jobs SET lease_expires_at = ? WHERE id = ?", (now + 600, fresh))
    store.sql("UPDATE jobs SET lease_expires_at = ? WHERE id = ?", (now - 1, stale))

    jobs = {j.view: j for j in registry.list_jobs()}

    assert jobs["fresh"].status == "running"
    assert jobs["stale"].abandoned and "lease expired" in jobs["stale"].error
    assert jobs["stale"].finished_at == pytest.approx(jobs["stale"].heartbeat_at)
    registry.finish_job(fresh, "succeeded")


def test_the_owner_renews_its_lease_until_the_job_finishes(store):
    registry = store.open(job_lease_s=0.4)
    job_id = registry.start_job("prod", "spend")
    [first] = registry.list_jobs()

    renewed = wait_for(
        lambda: [j for j in registry.list_jobs() if j.heartbeat_at > first.heartbeat_at],
        "a heartbeat",
    )
    assert renewed[0].lease_expires_at > first.lease_expires_at
    assert registry.renew_job_leases([]) == 0
    registry.finish_job(job_id, "succeeded")
    assert registry.renew_job_leases([job_id]) == 0  # a finished job is not revived

    [done] = registry.list_jobs()
    assert done.status == "succeeded" and done.lease_expires_at is None


# -- monitoring ---------------------------------------------------------------------------------


def stats(job_id: str, workspace: str = "prod", view: str = "spend", **kw: Any) -> JobStatsRecord:
    values = dict(created_at=time.time(), scope="online", rows=3, newest_event=1.7e9,
                  max_drift=0.25, stats={"columns": {"x": {"nulls": 0}}})  # fmt: skip
    values.update(kw)
    return JobStatsRecord(job_id=job_id, workspace=workspace, view=view, **values)


def alert(workspace: str = "prod", view: str = "spend", kind: str = "nulls", subject: str = "x",
          **kw: Any) -> AlertRecord:  # fmt: skip
    values = dict(severity="error", message=f"{kind} on {subject}", details={"n": 1},
                  job_id=None, created_at=0.0, updated_at=0.0)  # fmt: skip
    values.update(kw)
    return AlertRecord(
        id=uuid.uuid4().hex[:12], workspace=workspace, view=view, kind=kind, subject=subject,
        **values,
    )  # fmt: skip


def test_job_statistics_are_kept_per_job_and_the_latest_completed_is_found(registry):
    ok = registry.start_job("prod", "spend")
    registry.finish_job(ok, "succeeded")
    registry.save_job_monitoring(stats(ok, created_at=100.0), "prod", "spend", [])
    bad = registry.start_job("prod", "spend")
    registry.finish_job(bad, "failed", error="x")
    registry.save_job_monitoring(stats(bad, created_at=200.0, rows=0), "prod", "spend", [])
    other = registry.start_job("dev", "clicks")
    registry.finish_job(other, "warning")
    registry.save_job_monitoring(
        stats(other, "dev", "clicks", created_at=50.0), "dev", "clicks", []
    )
    # Saving a job's statistics again replaces them.
    registry.save_job_monitoring(stats(ok, created_at=100.0, rows=5), "prod", "spend", [])

    assert [s.job_id for s in registry.list_job_stats("prod", "spend")] == [bad, ok]
    assert [s.status for s in registry.list_job_stats("prod", "spend")] == ["failed", "succeeded"]
    assert [s.job_id for s in registry.list_job_stats("prod", "spend", completed_only=True)] == [ok]
    assert [s.job_id for s in registry.list_job_stats("prod", "spend", limit=1)] == [bad]
    got = registry.get_job_stats(ok)
    assert (got.rows, got.scope, got.newest_event, got.max_drift) == (5, "online", 1.7e9, 0.25)
    assert got.stats == {"columns": {"x": {"nulls": 0}}}
    assert registry.get_job_stats("nope") is None
    latest = registry.latest_job_stats()
    assert [(s.workspace, s.view, s.job_id) for s in latest] == [
        ("dev", "clicks", other),
        ("prod", "spend", ok),
    ]
    assert [s.job_id for s in registry.latest_job_stats("prod")] == [ok]
    assert [s.stats for s in registry.latest_job_stats(with_stats=False)] == [{}, {}]


def test_alerts_stay_open_until_a_job_passes_and_are_never_opened_twice(registry):
    first = registry.start_job("prod", "spend")
    registry.save_job_monitoring(
        stats(first), "prod", "spend", [alert(kind="nulls"), alert(kind="freshness", subject="")]
    )
    opened = {a.kind: a for a in registry.list_alerts("prod", "spend")}
    assert set(opened) == {"nulls", "freshness"}
    assert opened["nulls"].job_id is None and opened["nulls"].resolved_at is None

    # The next job still fails on nulls (the same alert, updated) but not on freshness.
    second = registry.start_job("prod", "spend")
    registry.save_job_monitoring(
        stats(second), "prod", "spend", [alert(kind="nulls", message="worse", severity="warning")]
    )
    [still] = registry.list_alerts("prod", "spend")
    assert still.id == opened["nulls"].id and still.message == "worse"
    assert still.severity == "warning" and still.updated_at >= opened["nulls"].updated_at
    resolved = [a for a in registry.list_alerts(open_only=False) if a.resolved_at is not None]
    assert [(a.kind, a.resolved_by) for a in resolved] == [("freshness", second)]

    # An alert raised outside a job updates the open one of its kind and subject, or opens one.
    registry.open_alert(alert(kind="nulls", message="pushed"))
    registry.open_alert(alert(kind="push_encode_failed", subject="", details={"records": 2}))
    now_open = {a.kind: a for a in registry.list_alerts("prod")}
    assert set(now_open) == {"nulls", "push_encode_failed"}
    assert now_open["nulls"].id == opened["nulls"].id and now_open["nulls"].message == "pushed"
    assert now_open["push_encode_failed"].details == {"records": 2}
    assert registry.list_alerts("dev") == [] and len(registry.list_alerts(limit=1)) == 1

    # A job that passes resolves them all.
    registry.save_job_monitoring(None, "prod", "spend", [])
    assert registry.list_alerts("prod") == []


def test_two_writers_raising_the_same_alert_at_once_open_it_once(store):
    """Each writer is its own registry object (its own connection), as two processes are."""
    writers = [store.open() for _ in range(4)]
    start = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def raise_alert(registry: RegistryStore) -> None:
        try:
            start.wait()
            for _ in range(5):
                registry.open_alert(alert(kind="push_encode_failed", subject=""))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=raise_alert, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(writers[0].list_alerts("prod", open_only=False)) == 1


# -- API keys and settings ----------------------------------------------------------------------


def api_key(
    key_id: str, workspace: str = "prod", principal: str = "app", **kw: Any
) -> ApiKeyRecord:
    values = dict(key_hash=f"hash-{key_id}", kind="service", role="reader", description="",
                  created_at=time.time(), expires_at=None, revoked_at=None)  # fmt: skip
    values.update(kw)
    return ApiKeyRecord(id=key_id, principal=principal, workspace=workspace, **values)


def test_api_keys_are_stored_listed_and_revoked(registry):
    registry.insert_api_key(api_key("k1", principal="b-app", created_at=1.0))
    registry.insert_api_key(api_key("k2", principal="a-app", created_at=2.0, expires_at=9.5))
    registry.insert_api_key(api_key("k3", workspace="dev", principal="b-app", created_at=3.0))

    assert registry.find_api_key("k2") == api_key(
        "k2", principal="a-app", created_at=2.0, expires_at=9.5
    )
    assert registry.find_api_key("nope") is None
    assert [k.id for k in registry.list_api_keys()] == ["k2", "k1", "k3"]
    assert [k.id for k in registry.list_api_keys(workspace="prod")] == ["k2", "k1"]
    assert [k.id for k in registry.list_api_keys(principal="b-app")] == ["k1", "k3"]
    assert registry.revoke_api_key("k1", at=5.0) is True
    assert registry.revoke_api_key("k1", at=6.0) is False
    assert registry.revoke_api_key("nope", at=6.0) is False
    assert registry.find_api_key("k1").revoked_at == 5.0


def test_a_key_revoked_through_another_registry_object_is_refused_on_the_next_request(store):
    """The server's key cache is keyed on ``change_token()``: a revoke by another process (here
    another registry object with its own connections) must reach it."""
    server, cli = store.open(), store.open()
    server.create_workspace("prod", live=True)
    new = Access(cli).create_key("app", workspace="prod", role="reader")
    checker = Access(server)
    assert checker.authenticate(new.key).id == new.record.id  # cached now

    Access(cli).revoke(new.record.id)

    def refused() -> bool:
        try:
            checker.authenticate(new.key)
        except KeyRejected:
            return True
        return False

    wait_for(refused, "the revoke to reach the server's cache")


def test_the_audit_log_keeps_each_action_newest_first(registry):
    common = {"key_id": "abc123def456", "via": "api", "target": None, "details": {"n": 1}}
    registry.record_audit(at=100.0, actor="ops", action="apply", workspace="prod",
                          outcome="ok", **common)  # fmt: skip
    registry.record_audit(at=200.0, actor="app", action="jobs.trigger", workspace="prod",
                          outcome="denied", **common)  # fmt: skip
    registry.record_audit(at=300.0, actor="root", action="keys.create", workspace="*",
                          outcome="ok", **common)  # fmt: skip
    registry.record_audit(at=400.0, actor="ops", action="apply", workspace="dev", outcome="ok",
                          **common)  # fmt: skip
    prod = registry.list_audit("prod")
    assert [(e.at, e.actor, e.outcome) for e in prod] == [
        (300.0, "root", "ok"), (200.0, "app", "denied"), (100.0, "ops", "ok")
    ]  # fmt: skip
    assert prod[-1].details == {"n": 1} and prod[-1].key_id == "abc123def456"
    assert [e.workspace for e in registry.list_audit(action="apply")] == ["dev", "prod"]
    assert [e.at for e in registry.list_audit(actor="ops", limit=1)] == [400.0]


def test_settings_are_read_and_overwritten(registry):
    assert registry.get_setting("selected_workspace") is None
    registry.set_setting("selected_workspace", "prod")
    registry.set_setting("selected_workspace", "dev")
    assert registry.get_setting("selected_workspace") == "dev"


# -- change signals -----------------------------------------------------------------------------


def test_the_change_signals_move_when_anyone_commits(store):
    node, other = store.open(), store.open()
    node.create_workspace("prod", live=True)
    version, token = node.data_version(), node.change_token()

    other.apply("prod", 0, [("feature_view", "spend", "{}")], [], "other", {})

    # Another object's commit: both signals move (on PostgreSQL once its NOTIFY is heard).
    wait_for(lambda: node.data_version() != version, "data_version to see the other commit")
    wait_for(lambda: node.change_token() != token, "change_token to see the other commit")
    assert [o.name for o in node.list_objects("prod")] == ["spend"]

    # Its own commit moves change_token at once.
    token = node.change_token()
    node.set_setting("anything", "1")
    assert node.change_token() != token


def test_a_closed_registry_stays_usable(registry):
    registry.create_workspace("prod", live=True)
    registry.data_version()
    registry.close()
    assert registry.get_workspace("prod").name == "prod"
    registry.set_setting("a", "b")
    registry.data_version()
    registry.close()
    registry.close()


# -- schema -------------------------------------------------------------------------------------


def columns(store: Store) -> dict[str, list[str]]:
    tables = ["meta", "workspaces", "objects", "applies", "jobs", "settings", "api_keys",
              "job_stats", "alerts"]  # fmt: skip
    if store.kind == "postgres":
        query = ("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                 "AND table_schema = current_schema() ORDER BY ordinal_position")  # fmt: skip
        return {t: [r[0] for r in store.sql(query, (t,))] for t in tables}
    return {t: [r[1] for r in store.sql(f"PRAGMA table_info({t})")] for t in tables}


def test_both_registries_have_the_same_tables_and_columns(postgres_server, tmp_path):
    sqlite = Store("sqlite", str(tmp_path / "registry.db"))
    postgres = Store("postgres", postgres_server.create_database())
    sqlite.open()
    postgres.open()
    try:
        assert columns(postgres) == columns(sqlite)
        assert all(columns(sqlite).values())
        # Timestamps keep their precision: no 4-byte float or int column on PostgreSQL.
        types = postgres.sql(
            "SELECT DISTINCT data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
        assert {t for (t,) in types} == {"text", "bigint", "double precision"}
        assert postgres.sql("SELECT value FROM meta WHERE key = 'schema_version'") == [
            (str(SCHEMA_VERSION),)
        ]
    finally:
        sqlite.close_all()
        postgres.close_all()


def test_a_version_1_registry_is_migrated_in_place_and_keeps_its_data(store):
    store.script(SCHEMA)
    store.sql("INSERT INTO meta VALUES ('schema_version', '1')")
    store.sql("INSERT INTO workspaces VALUES ('prod', 1, 1700000000.25, 3)")
    store.sql("INSERT INTO settings VALUES ('selected_workspace', 'prod')")

    registry = store.open(create=False)

    [prod] = registry.list_workspaces()
    assert (prod.name, prod.live, prod.created_at, prod.version) == ("prod", True, 1700000000.25, 3)
    assert registry.get_setting("selected_workspace") == "prod"
    new = Access(registry).create_key("app", workspace="prod", role="reader")
    assert store.sql("SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    # Opening it again is a no-op.
    assert store.open(create=False).find_api_key(new.record.id) is not None


def test_jobs_left_running_by_an_older_version_get_a_one_day_lease(store):
    now = time.time()
    store.script(SCHEMA + MIGRATIONS[2] + MIGRATIONS[3])
    store.sql("INSERT INTO meta VALUES ('schema_version', '3')")
    for job_id, started in (("old", now - 2 * 86400), ("recent", now - 3600)):
        store.sql(
            "INSERT INTO jobs (id, workspace, view, status, started_at, details) "
            "VALUES (?, 'prod', ?, 'running', ?, '{}')",
            (job_id, job_id, started),
        )

    jobs = {j.id: j for j in store.open().list_jobs()}

    assert jobs["old"].abandoned and "unknown process" in jobs["old"].error
    assert jobs["recent"].status == "running"
    assert jobs["recent"].lease_expires_at == pytest.approx(now - 3600 + 86400)


def test_a_registry_of_a_newer_contextkit_is_refused(store):
    store.open().create_workspace("prod", live=True)
    store.sql("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))

    with pytest.raises(RegistryVersionError, match="written by a newer contextkit") as err:
        store.open()

    assert f"registry schema {SCHEMA_VERSION + 1}" in err.value.message
    assert "upgrade contextkit" in err.value.hint


def test_a_database_that_is_not_a_registry_is_refused(store):
    if store.kind == "postgres":
        store.sql("CREATE TABLE meta (name TEXT, size BIGINT)")
    else:
        Path(store.location).write_bytes(b"this is not a database, just some bytes" * 200)

    with pytest.raises(RegistryVersionError, match="is not a contextkit registry"):
        store.open()


def test_opening_a_missing_registry_without_create_is_refused(store):
    with pytest.raises(MissingError, match="no registry"):
        store.open(create=False)


def test_nodes_starting_together_on_a_new_database_create_the_schema_once(postgres_server):
    store = Store("postgres", postgres_server.create_database())
    start = threading.Barrier(4)
    opened: list[Any] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(store.open())
        except BaseException as exc:  # noqa: BLE001 - reported below
            opened.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert all(isinstance(r, PostgresRegistry) for r in opened), opened
        assert store.sql("SELECT value FROM meta") == [(str(SCHEMA_VERSION),)]
    finally:
        store.close_all()


# -- PostgreSQL: servers that refuse ------------------------------------------------------------


@dataclass
class PasswordCluster:
    """A private PostgreSQL that checks passwords (the session's cluster trusts everyone)."""

    server: PostgresServer
    password: str
    reader_password: str

    def url(self, user: str = "app", password: str | None = None, database: str = "reg") -> str:
        secret = self.password if password is None else password
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.server.port}/{database}"

    def admin(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.server.url(database), autocommit=True) as con:
            con.execute(statement)


@pytest.fixture(scope="module")
def password_cluster(postgres_server) -> Iterator[PasswordCluster]:
    import psycopg

    root = Path(f"/tmp/ck-pgpw-{uuid.uuid4().hex[:8]}")
    root.mkdir()
    if os.geteuid() == 0:
        import shutil

        shutil.chown(root, user="postgres")
    server = PostgresServer(postgres_server.bin, root)
    server.start()
    cluster = PasswordCluster(server, "pw-" + uuid.uuid4().hex, "rd-" + uuid.uuid4().hex)
    try:
        with psycopg.connect(server.url(), autocommit=True) as con:
            hba = con.execute("SHOW hba_file").fetchone()[0]
            con.execute(f"CREATE ROLE app LOGIN PASSWORD '{cluster.password}'")
            con.execute(f"CREATE ROLE reader LOGIN PASSWORD '{cluster.reader_password}'")
            con.execute("CREATE DATABASE reg OWNER app")
            con.execute("CREATE DATABASE empty")
            # The fixture's own user keeps trust; every other role must give its password.
            Path(hba).write_text(
                "local all all trust\n"
                "host all ck 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
            con.execute("SELECT pg_reload_conf()")
        yield cluster
    finally:
        server.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def assert_masked(exc: StoreFailure, *secrets: str) -> None:
    said = f"{exc} {exc.message} {exc.hint} {exc!r}"
    for secret in secrets:
        assert secret not in said, said
    assert "***" in exc.message


def test_the_password_is_masked_in_the_repr_and_url(password_cluster):
    registry = PostgresRegistry(password_cluster.url())
    try:
        assert password_cluster.password not in repr(registry) + registry.url
        assert "app:***@" in repr(registry)
    finally:
        registry.close()


def test_a_wrong_password_is_a_clear_error_with_the_password_masked(password_cluster):
    wrong = "wrong-" + uuid.uuid4().hex
    with pytest.raises(StoreServerUnavailable, match="refused the credentials of 'app'") as err:
        PostgresRegistry(password_cluster.url(password=wrong))

    assert_masked(err.value, wrong, password_cluster.password)
    assert "password in the registry URL" in err.value.hint


def test_an_unreachable_server_is_a_clear_error(password_cluster):
    url = f"postgresql://app:{password_cluster.password}@127.0.0.1:{free_port()}/reg"
    with pytest.raises(StoreServerUnavailable, match="is unreachable") as err:
        PostgresRegistry(url)

    assert_masked(err.value, password_cluster.password)
    assert "host and port" in err.value.hint


def test_a_server_that_accepts_but_never_answers_times_out():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        with pytest.raises(StoreServerUnavailable, match="unreachable.*timeout") as err:
            PostgresRegistry(
                f"postgresql://app:s3cret-pw@127.0.0.1:{port}/reg", connect_timeout_s=2
            )
        assert_masked(err.value, "s3cret-pw")
    finally:
        silent.close()


def test_a_missing_database_is_a_clear_error(password_cluster):
    with pytest.raises(StoreServerUnavailable, match="database 'nope' .* does not exist") as err:
        PostgresRegistry(password_cluster.url(database="nope"))

    assert 'CREATE DATABASE "nope"' in err.value.hint
    assert_masked(err.value, password_cluster.password)


def test_a_newer_schema_error_names_the_masked_url(password_cluster):
    admin = PostgresRegistry(password_cluster.url())
    admin.close()
    password_cluster.admin(
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'", database="reg"
    )
    try:
        with pytest.raises(RegistryVersionError, match="newer contextkit") as err:
            PostgresRegistry(password_cluster.url())
        assert_masked(err.value, password_cluster.password)
    finally:
        password_cluster.admin(
            f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'",
            database="reg",
        )


def test_a_read_only_role_can_serve_but_its_writes_are_refused_and_change_nothing(
    password_cluster,
):
    owner = PostgresRegistry(password_cluster.url())
    if "prod" not in {w.name for w in owner.list_workspaces()}:
        owner.create_workspace("prod", live=True)
    base = owner.get_workspace("prod").version
    owner.close()
    password_cluster.admin("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader", "reg")
    reader = PostgresRegistry(password_cluster.url("reader", password_cluster.reader_password))
    try:
        before = snapshot(reader)
        assert reader.list_jobs() == []  # reads answer

        with pytest.raises(StoreServerUnavailable, match="role 'reader' may not") as err:
            reader.apply("prod", base, [("feature_view", "spend", "{}")], [], "reader", {})
        assert "read-only role" in err.value.hint
        assert_masked(err.value, password_cluster.reader_password)
        with pytest.raises(StoreServerUnavailable, match="may not"):
            reader.start_job("prod", "spend")

        assert snapshot(reader) == before
    finally:
        reader.close()


def test_a_read_only_role_cannot_create_a_registry_and_says_so(password_cluster):
    with pytest.raises(StoreServerUnavailable, match="may not create or migrate") as err:
        PostgresRegistry(password_cluster.url("reader", password_cluster.reader_password, "empty"))

    assert "CREATE" in err.value.hint
    assert_masked(err.value, password_cluster.reader_password)


def test_a_registry_whose_server_went_away_recovers_by_itself(password_cluster):
    registry = PostgresRegistry(password_cluster.url(), connect_timeout_s=2)
    try:
        registry.set_setting("k", "before")
        version = registry.data_version()
        assert registry.data_version() == version  # steady while nothing changes

        password_cluster.server.stop()
        # Nothing can be cached while changes cannot be heard; reads fail clearly.
        wait_for(lambda: registry.data_version() != registry.data_version(), "the listener")
        with pytest.raises(StoreServerUnavailable, match="unreachable") as err:
            registry.get_setting("k")
        assert_masked(err.value, password_cluster.password)

        password_cluster.server.start()
        wait_for(lambda: _answers(registry), "the registry to answer again")
        assert registry.get_setting("k") == "before"
        wait_for(lambda: registry.data_version() == registry.data_version(), "listening again")
    finally:
        registry.close()


def _answers(registry: PostgresRegistry) -> bool:
    try:
        registry.get_setting("k")
    except StoreServerUnavailable:
        return False
    return True
