"""The scheduler with injected time: due intervals, backfill chunks, order per view, idle ticks,
restarts, retries with backoff up to the limit and then an alert, dev workspaces, lease takeover,
and a job cancelled mid-run that leaves the stores as they were."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import duckdb
import pytest
from sched_fixtures import DAY, T0, build

import contextkit
from contextkit.errors import JobCancelledError
from contextkit.governance.jobs import run_view
from contextkit.governance.scheduler import ALERT_KIND, Scheduler, SchedulerSettings
from contextkit.stores.process import ProcessIdentity

NOW = (T0 + timedelta(days=5, hours=3)).timestamp()
SETTINGS = SchedulerSettings(
    concurrency=2, backfill_chunk_s=2 * DAY, max_attempts=3, backoff_s=60, lease_s=120
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def repo(tmp_path):
    return build(tmp_path / "repo", tmp_path / "gate")


@pytest.fixture
def ctx(repo):
    ctx = contextkit.connect(repo, "prod")
    yield ctx
    ctx.close()


def scheduled(ctx, view: str) -> list[tuple[float, float, str, bool, int]]:
    return [
        ((i.start - T0.timestamp()) / DAY, (i.end - T0.timestamp()) / DAY, i.status, i.full,
         i.attempts)
        for i in ctx.registry.list_intervals("prod", view)
    ]  # fmt: skip


def drain(scheduler: Scheduler) -> int:
    """Tick until nothing is claimed; returns how many intervals ran."""
    ran = 0
    while True:
        report = scheduler.tick(wait=True)
        if not report.claimed:
            return ran
        ran += len(report.claimed)


def test_backfill_in_chunks_then_daily_intervals(ctx, tmp_path):
    (tmp_path / "gate" / "break").unlink()  # every view succeeds here
    clock = Clock(NOW)
    scheduler = Scheduler(ctx.runtime, clock=clock, settings=SETTINGS)
    first = scheduler.tick(wait=True)
    # Days 0..5 are due: two 2-day chunks and a last day; the first recomputes from the start.
    assert scheduled(ctx, "daily")[0] == (0, 2, "done", True, 1)
    assert [s[:2] for s in scheduled(ctx, "daily")] == [(0, 2), (2, 4), (4, 5)]
    assert first.planned == 9  # daily, gated and broken
    drain(scheduler)
    assert [s[2] for s in scheduled(ctx, "daily")] == ["done"] * 3
    jobs = sorted(ctx.jobs("daily"), key=lambda j: j.started_at)
    assert [(j.range_start[:10], j.range_end[:10], j.status) for j in jobs] == [
        ("2024-05-01", "2024-05-03", "succeeded"),
        ("2024-05-03", "2024-05-05", "succeeded"),
        ("2024-05-05", "2024-05-06", "succeeded"),
    ]
    # Online values as of the last interval's end: user 1's newest event is day 4, 01:00 (x=8),
    # user 2's day 4, 13:00 (x=9).
    online = ctx.get_features("svc", entities={"user_id": [1, 2]}).to_dict()
    assert online["daily.x"] == [8.0, 9.0]

    # Idle: nothing new within the day, no claim.
    clock.now += 3600
    idle = scheduler.tick(wait=True)
    assert (idle.planned, idle.claimed) == (0, [])
    # A day later: one new daily interval, run on the next tick.
    clock.now += DAY
    later = scheduler.tick(wait=True)
    assert any(i.view == "daily" for i in later.claimed)
    assert scheduled(ctx, "daily")[-1][:3] == (5, 6, "done")


def test_retries_with_backoff_then_alert_and_restart_keeps_state(repo, ctx):
    clock = Clock(NOW)
    scheduler = Scheduler(ctx.runtime, clock=clock, settings=SETTINGS)
    drain(scheduler)
    first = scheduled(ctx, "broken")[0]
    assert first[2:] == ("pending", True, 1)  # failed once, waits for its retry
    interval = ctx.registry.list_intervals("prod", "broken")[0]
    assert interval.next_attempt_at == pytest.approx(clock.now + 60)
    assert "fails on purpose" in interval.error
    # A scheduler restarted on a new runtime sees the same state: nothing planned twice.
    other = contextkit.connect(repo, "prod")
    restarted = Scheduler(other.runtime, clock=clock, settings=SETTINGS)
    assert restarted.tick(wait=True).planned == 0
    clock.now += 60
    drain(restarted)
    assert scheduled(ctx, "broken")[0][2:] == ("pending", True, 2)
    assert ctx.registry.list_intervals("prod", "broken")[0].next_attempt_at == pytest.approx(
        clock.now + 120
    )  # backoff doubles
    assert not [a for a in ctx.registry.list_alerts("prod", "broken") if a.kind == ALERT_KIND]
    clock.now += 120
    drain(restarted)
    assert scheduled(ctx, "broken")[0][2:] == ("failed", True, 3)
    alerts = [a for a in ctx.registry.list_alerts("prod", "broken") if a.kind == ALERT_KIND]
    assert len(alerts) == 1 and alerts[0].severity == "error"
    assert "failed 3 times" in alerts[0].message
    # Given up: later ticks never run it again (the view's next intervals get their own tries).
    clock.now += 10_000
    claimed = restarted.tick(wait=True).claimed
    assert all(i.key != interval.key for i in claimed)
    assert scheduled(ctx, "broken")[0][2:] == ("failed", True, 3)
    other.close()


def test_dev_workspace_never_materializes(ctx):
    scheduler = Scheduler(ctx.runtime, clock=Clock(NOW), settings=SETTINGS)
    drain(scheduler)
    assert ctx.registry.list_intervals("dev") == []
    assert ctx.registry.list_jobs("dev") == []
    assert ctx.registry.list_intervals("prod")


def test_expired_lease_is_taken_over(ctx):
    clock = Clock(NOW)
    scheduler = Scheduler(ctx.runtime, clock=clock, settings=SETTINGS)
    scheduler._plan("prod", clock.now, ctx.registry.list_schedules())
    dead = ProcessIdentity("another-host", 4242, "gone")
    taken = ctx.registry.claim_interval(dead, clock.now, 120)
    assert taken is not None and taken.attempts == 1
    # Within the lease nobody else runs that view's interval.
    report = scheduler.tick(wait=True)
    assert all(i.view != taken.view for i in report.claimed)
    clock.now += 121
    report = scheduler.tick(wait=True)
    again = [i for i in report.claimed if i.key == taken.key]
    assert again and again[0].attempts == 2 and again[0].owner_host != "another-host"
    # The dead owner's late finish does not count.
    assert not ctx.registry.finish_interval(taken.key, dead, "done", clock.now)


def offline_state(ctx) -> tuple:
    files = sorted(str(p) for p in ctx.offline.files("prod/gated"))
    if not files:
        return ()
    con = duckdb.connect()
    return tuple(con.execute("SELECT * FROM read_parquet(?) ORDER BY ALL", [files]).fetchall())


def test_cancel_mid_job_leaves_the_stores_unchanged(repo, ctx, tmp_path):
    end = T0 + timedelta(days=3)
    run_view(ctx.runtime, "prod", "gated", end=end)
    before = (offline_state(ctx), ctx.get_features("svc", entities={"user_id": [1, 2]}).to_dict())
    assert before[0]

    gate = tmp_path / "gate"
    (gate / "armed").write_text("")
    job_id = ctx.registry.queue_job(
        "prod", "gated", range_start=None, range_end=None, request={"full": True}
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_view(ctx.runtime, "prod", "gated", end=T0 + timedelta(days=6), full=True,
                     job_id=job_id)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = 600
    while not (gate / "blocked").exists() and deadline:
        worker.join(0.1)
        deadline -= 1
    assert (gate / "blocked").exists(), "the job never reached its transformation"
    assert ctx.registry.request_cancel(job_id, 0.0) == "running"
    (gate / "armed").unlink()
    worker.join(120)
    assert failure and isinstance(failure[0], JobCancelledError)
    job = ctx.registry.get_job(job_id)
    assert job.status == "cancelled"
    after = (offline_state(ctx), ctx.get_features("svc", entities={"user_id": [1, 2]}).to_dict())
    assert after == before


def test_concurrency_limit_per_scheduler(ctx):
    one = Scheduler(ctx.runtime, clock=Clock(NOW), settings=replace(SETTINGS, concurrency=1))
    report = one.tick(wait=True)
    assert report.planned == 9 and len(report.claimed) == 1  # three views due, one at a time
    two = Scheduler(ctx.runtime, clock=Clock(NOW), settings=SETTINGS)
    assert len(two.tick(wait=True).claimed) == 2
