"""Schedulers as real processes on one SQLite registry: two racing never run an interval twice,
and the claim of a SIGKILLed scheduler is taken over once its lease expired."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import time
from datetime import timedelta

import pytest
from sched_fixtures import T0, build
from serverproc import CLI

import contextkit
from contextkit.governance.scheduler import Scheduler, SchedulerSettings

NOW = T0 + timedelta(days=5, hours=3)
LIMIT_S = 240.0


def scheduler(repo, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [CLI, "scheduler", "--repo", str(repo), "--once", "--now", NOW.isoformat(), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@pytest.fixture
def repo(tmp_path):
    root = build(tmp_path / "repo", tmp_path / "gate", dev=False)
    (tmp_path / "gate" / "break").unlink()  # every view succeeds
    return root


# On PostgreSQL (15 s on a quiet machine: 8 scheduler processes) the race runs in `make test-slow`.
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def test_two_schedulers_racing_never_run_an_interval_twice(backend, tmp_path, request):
    if backend == "postgres":  # the same race on a PostgreSQL registry
        url = request.getfixturevalue("postgres_server").create_database()
        repo = build(tmp_path / "repo", tmp_path / "gate", dev=False, registry=url)
        (tmp_path / "gate" / "break").unlink()
    else:
        repo = request.getfixturevalue("repo")
    claimed = 0
    for _round in range(4):  # a view's intervals run in order: one per view and round
        racing = [
            scheduler(repo, "--concurrency", "3", "--backfill-chunk", "172800") for _ in range(2)
        ]
        outputs = [p.communicate(timeout=LIMIT_S)[0] for p in racing]
        assert all(p.returncode == 0 for p in racing), outputs
        claimed += sum(int(re.search(r"ran (\d+)", out).group(1)) for out in outputs)
    assert claimed == 9  # every interval claimed once, by one of the two
    ctx = contextkit.connect(repo, "prod")
    intervals = ctx.registry.list_intervals("prod")
    assert len(intervals) == 9 and {i.status for i in intervals} == {"done"}, intervals
    jobs = [j for view in ("daily", "gated", "broken") for j in ctx.jobs(view, 100)]
    runs = collections.Counter((j.view, j.range_end) for j in jobs)
    assert len(runs) == 9 and set(runs.values()) == {1}, runs
    assert {j.status for j in jobs} == {"succeeded"}
    ctx.close()


def test_a_killed_schedulers_claim_is_taken_over_after_its_lease(repo, tmp_path):
    gate = tmp_path / "gate"
    (gate / "armed").write_text("")
    victim = scheduler(repo, "--concurrency", "3", "--lease", "30", "--backfill-chunk", "172800")
    deadline = time.monotonic() + LIMIT_S
    while not (gate / "blocked").exists():
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "the gated job never started"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    (gate / "armed").unlink()

    ctx = contextkit.connect(repo, "prod")
    held = [i for i in ctx.registry.list_intervals("prod", "gated") if i.status == "running"]
    assert len(held) == 1 and held[0].owner_pid == victim.pid
    settings = SchedulerSettings(concurrency=3, lease_s=30, backfill_chunk_s=172800)
    now = NOW.timestamp()
    # Within the lease the dead scheduler's claim stands: nobody runs that view.
    before = Scheduler(ctx.runtime, clock=lambda: now + 29, settings=settings)
    assert all(i.view != "gated" for i in before.tick(wait=True).claimed)
    after = Scheduler(ctx.runtime, clock=lambda: now + 31, settings=settings)
    taken = [i for i in after.tick(wait=True).claimed if i.view == "gated"]
    assert [(i.key, i.attempts) for i in taken] == [(held[0].key, 2)]
    done = ctx.registry.get_interval(held[0].key)
    assert done.status == "done" and done.owner_pid == os.getpid()
    jobs = ctx.jobs("gated", 10)
    assert sorted(j.display_status for j in jobs) == ["failed (abandoned)", "succeeded"]
    ctx.close()
