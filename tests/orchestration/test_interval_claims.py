"""Interval claims raced by real processes on one registry, SQLite and PostgreSQL: every due
interval is claimed by exactly one process, and a schedule's cursor moves once however many
planners race (compare-and-set)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

INTERVALS = 40
WORKER = """
import json, sys
from contextkit.stores.process import ProcessIdentity

url, name = sys.argv[1], sys.argv[2]
if url.startswith("postgresql://"):
    from contextkit.stores.postgres_registry import PostgresRegistry as Registry
else:
    from contextkit.stores.registry import SQLiteRegistry as Registry
registry = Registry(url)
me = ProcessIdentity("bench-host", 1, name)  # distinct owners, as on two machines
planned = registry.advance_schedule(
    "prod", "v", "h", None, 100.0 * INTERVALS,
    [(100.0 * i, 100.0 * (i + 1), "batch", i == 0) for i in range(INTERVALS)], 0.0,
)
claimed = []
while True:
    found = registry.claim_interval(me, 10.0, 60.0)
    if found is None:
        if not registry.due_intervals(10.0) and not registry.list_intervals(status="running"):
            break
        continue
    claimed.append(found.start)
    assert registry.finish_interval(found.key, me, "done", 10.0, job_id=name)
print(json.dumps({"planned": planned, "claimed": claimed}))
""".replace("INTERVALS", str(INTERVALS))


def race(url: str, processes: int = 3) -> list[dict]:
    running = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, f"p{i}"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(processes)
    ]  # fmt: skip
    out = []
    for proc in running:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


def check(results: list[dict], registry) -> None:
    assert sum(r["planned"] for r in results) == 1  # one planner moved the cursor
    claimed = [start for r in results for start in r["claimed"]]
    assert sorted(claimed) == [100.0 * i for i in range(INTERVALS)]  # each once, in order
    done = registry.list_intervals("prod", "v")
    assert len(done) == INTERVALS and {i.status for i in done} == {"done"}
    assert {i.attempts for i in done} == {1}


def test_sqlite_processes_claim_each_interval_once(tmp_path):
    from contextkit.stores.registry import SQLiteRegistry

    path = tmp_path / "registry.db"
    SQLiteRegistry(path).close()  # created (and migrated) once, before the race
    check(race(str(path)), SQLiteRegistry(path))


def test_postgres_processes_claim_each_interval_once(postgres_server):
    from contextkit.stores.postgres_registry import PostgresRegistry

    url = postgres_server.create_database()
    registry = PostgresRegistry(url)
    try:
        check(race(url), registry)
    finally:
        registry.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_queued_job_lifecycle(backend, tmp_path, request):
    """Queued -> running (by its worker) -> cancel requested -> cancelled, and a cancelled
    queued job is never started, on both registries."""
    if backend == "postgres":
        from contextkit.stores.postgres_registry import PostgresRegistry

        registry = PostgresRegistry(request.getfixturevalue("postgres_server").create_database())
    else:
        from contextkit.stores.registry import SQLiteRegistry

        registry = SQLiteRegistry(tmp_path / "registry.db")
    from contextkit.stores.errors import MissingError

    try:
        first = registry.queue_job("prod", "v", range_start=None, range_end="2024-05-02",
                                   request={"full": True})  # fmt: skip
        second = registry.queue_job("prod", "v", range_start=None, range_end=None, request={})
        assert [j.id for j in registry.active_jobs("prod", "v")] == [first, second]
        assert registry.job_request(first) == {"full": True}
        assert registry.start_job("prod", "v", job_id=first, spec_hash="h") == first
        assert registry.get_job(first).status == "running"
        assert not registry.cancel_requested(first)
        assert registry.request_cancel(first, 1.0) == "running"
        assert registry.cancel_requested(first)
        registry.finish_job(first, "cancelled", error="cancelled")
        assert registry.request_cancel(second, 1.0) == "cancelled"
        with pytest.raises(MissingError):
            registry.start_job("prod", "v", job_id=second)
        assert registry.get_job(second).status == "cancelled"
        assert registry.active_jobs() == []
        assert registry.request_cancel("nope", 1.0) is None
    finally:
        registry.close()
