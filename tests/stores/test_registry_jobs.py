"""Job ownership in the registry: a job whose process is gone is marked failed (abandoned) by
whoever looks next; a job whose process still runs never is.

Owners are real processes: a child that starts a job and is SIGKILLed, a child that keeps
running, and this test process itself with a forged start time (its pid reused).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from contextkit.stores.registry import _MIGRATIONS, _SCHEMA, SQLiteRegistry

OWNER = textwrap.dedent(
    """
    import sys, time
    from contextkit.stores.registry import SQLiteRegistry
    registry = SQLiteRegistry(sys.argv[1])
    print(registry.start_job("prod", "spend"), flush=True)
    time.sleep(600)
    """
)


@contextmanager
def owner_process(path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A child process that starts a job in the registry at ``path`` and then waits."""
    child = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        job_id = child.stdout.readline().strip()
        assert job_id, "the child did not start its job"
        yield child, job_id
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()


def sigkill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()  # reaped: no zombie left holding the pid


def wait_for(condition, what: str, limit_s: float = 120.0):
    deadline = time.monotonic() + limit_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def killed_registry(tmp_path_factory) -> Path:
    """A registry holding one job whose owner was SIGKILLed mid-run (a clean copy per test)."""
    path = tmp_path_factory.mktemp("killed") / "registry.db"
    SQLiteRegistry(path).close()
    with owner_process(path) as (child, _job_id):
        sigkill(child)
    return path


def copy_of(path: Path, tmp_path: Path) -> SQLiteRegistry:
    target = tmp_path / "registry.db"
    with sqlite3.connect(path) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return SQLiteRegistry(target)


READERS = {
    "list_jobs": lambda r: r.list_jobs(),
    "latest_jobs": lambda r: r.latest_jobs(),
    "job_summary": lambda r: r.job_summary(),
    "running_jobs": lambda r: r.running_jobs(),
    "start_job": lambda r: r.finish_job(r.start_job("prod", "other"), "succeeded"),
}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_marks_a_killed_owners_job_abandoned(killed_registry, tmp_path, reader):
    registry = copy_of(killed_registry, tmp_path)
    READERS[reader](registry)

    [job] = [j for j in registry.list_jobs() if j.view == "spend"]
    assert job.status == "failed" and job.abandoned
    assert job.display_status == "failed (abandoned)"
    assert job.error.startswith("abandoned: its process (pid ")
    assert job.finished_at is not None and job.lease_expires_at is None
    assert ("prod", "spend", "failed", 1) in registry.job_summary()
    assert registry.running_jobs() == []


def test_a_job_whose_owner_still_runs_stays_running(tmp_path):
    path = tmp_path / "registry.db"
    registry = SQLiteRegistry(path)
    with owner_process(path) as (_child, job_id):
        # Even with its lease long expired: on its own host, a live owner is trusted.
        with sqlite3.connect(path) as con:
            con.execute("UPDATE jobs SET lease_expires_at = 0 WHERE id = ?", (job_id,))
        [job] = registry.list_jobs()
        assert job.status == "running" and job.owner_pid == _child.pid
        assert registry.reap_abandoned_jobs() == []


def test_a_reused_pid_does_not_keep_a_dead_owners_job_alive(tmp_path):
    """This process's pid, but a start time of another process: the owner that had the pid."""
    registry = SQLiteRegistry(tmp_path / "registry.db")
    job_id = registry.start_job("prod", "spend")
    [job] = registry.list_jobs()
    assert job.status == "running" and job.owner_pid == os.getpid()
    forged = job.owner_start.rpartition("/")[0] + "/1"  # started at the first tick after boot
    with sqlite3.connect(registry.path) as con:
        con.execute("UPDATE jobs SET owner_start = ? WHERE id = ?", (forged, job_id))

    [job] = registry.list_jobs()

    assert job.abandoned, job
    registry.finish_job(job_id, "failed", error="test over")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="start tokens from /proc")
def test_an_owner_on_another_host_is_judged_by_its_lease(tmp_path):
    registry = SQLiteRegistry(tmp_path / "registry.db")
    fresh = registry.start_job("prod", "fresh")
    stale = registry.start_job("prod", "stale")
    now = time.time()
    with sqlite3.connect(registry.path) as con:
        con.execute("UPDATE jobs SET owner_host = 'elsewhere'")
        con.execute("UPDATE jobs SET lease_expires_at = ? WHERE id = ?", (now + 600, fresh))
        con.execute("UPDATE jobs SET lease_expires_at = ? WHERE id = ?", (now - 1, stale))

    jobs = {j.view: j for j in registry.list_jobs()}

    assert jobs["fresh"].status == "running"
    assert jobs["stale"].abandoned
    assert "lease expired" in jobs["stale"].error and "on elsewhere" in jobs["stale"].error
    registry.finish_job(fresh, "succeeded")


def test_the_owner_renews_its_lease_until_the_job_finishes(tmp_path):
    registry = SQLiteRegistry(tmp_path / "registry.db", job_lease_s=0.4)
    job_id = registry.start_job("prod", "spend")
    [first] = registry.list_jobs()

    renewed = wait_for(
        lambda: [j for j in registry.list_jobs() if j.heartbeat_at > first.heartbeat_at],
        "a heartbeat",
    )
    assert renewed[0].lease_expires_at > first.lease_expires_at
    registry.finish_job(job_id, "succeeded")

    wait_for(lambda: registry._leases._thread is None, "the lease thread to stop")
    [done] = registry.list_jobs()
    assert done.status == "succeeded" and done.lease_expires_at is None


def test_jobs_left_running_by_an_older_version_get_a_one_day_lease(tmp_path):
    """A schema-3 registry (no owners) with two running jobs: the one started two days ago is
    abandoned after the upgrade, the one started an hour ago is not (yet)."""
    path = tmp_path / "registry.db"
    now = time.time()
    with sqlite3.connect(path) as con:
        con.executescript(_SCHEMA + _MIGRATIONS[2] + _MIGRATIONS[3])
        con.execute("INSERT INTO meta VALUES ('schema_version', '3')")
        for job_id, started in (("old", now - 2 * 86400), ("recent", now - 3600)):
            con.execute(
                "INSERT INTO jobs (id, workspace, view, status, started_at, details) "
                "VALUES (?, 'prod', ?, 'running', ?, ?)",
                (job_id, job_id, started, json.dumps({})),
            )

    jobs = {j.id: j for j in SQLiteRegistry(path).list_jobs()}

    assert jobs["old"].abandoned and "unknown process" in jobs["old"].error
    assert jobs["recent"].status == "running"
    assert jobs["recent"].lease_expires_at == pytest.approx(now - 3600 + 86400)
