"""Stream views under the scheduler: the ingest log is flushed to the offline store on its
schedule, and log rows flushed longer ago than the retention are pruned (newer ones stay, so a
recently pushed idempotency key is still recognized)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow.parquet as pq

import contextkit
from contextkit.compute.layout import log_table
from contextkit.governance.scheduler import Scheduler, SchedulerSettings

CONFIG = "project: streams\n"
DEFS = """
from contextkit import Aggregate, Entity, Field, Float64, Int64, PushSource, StreamFeatureView
from contextkit import Timestamp

user = Entity(name="user", join_keys=["user_id"])
clicks = PushSource(name="clicks", schema=[Field("user_id", Int64), Field("price", Float64),
                    Field("ts", Timestamp)], timestamp_field="ts")
spend = StreamFeatureView(name="spend", source=clicks, entities=[user],
                          features=[Aggregate("price", "sum", "1h")])
"""


def records(ids: range) -> list[dict]:
    at = datetime(2024, 5, 1, tzinfo=UTC).isoformat()
    return [
        {"record": {"user_id": i, "price": 1.0, "ts": at}, "idempotency_key": f"r{i}"} for i in ids
    ]


def log_rows(ctx) -> list[int]:
    return [r[0] for r in ctx.online.read_log(log_table("prod", "clicks"), ["user_id"], 0, 10**6)]


def flushed_rows(ctx) -> int:
    return sum(pq.read_metadata(f).num_rows for f in ctx.offline.files(log_table("prod", "clicks")))


def test_flush_on_schedule_then_prune_after_retention(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "contextkit.yaml").write_text(CONFIG)
    (root / "stream_defs.py").write_text(DEFS)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    assert ctx.ingest("clicks", records(range(3))).accepted == 3

    now = [1_000_000.0]
    settings = SchedulerSettings(flush_every_s=300, log_retention_s=3600)
    scheduler = Scheduler(ctx.runtime, clock=lambda: now[0], settings=settings)
    report = scheduler.tick(wait=True)
    assert report.flushed == {"prod/clicks": 3} and not report.pruned
    assert flushed_rows(ctx) == 3 and len(log_rows(ctx)) == 3  # kept within the retention

    ctx.ingest("clicks", records(range(3, 5)))
    now[0] += 60
    assert scheduler.tick(wait=True).flushed == {}  # not due yet
    now[0] += 300
    assert scheduler.tick(wait=True).flushed == {"prod/clicks": 2}
    assert flushed_rows(ctx) == 5

    now[0] += 3600 - 300  # the first flush is past the retention, the second not yet
    report = scheduler.tick(wait=True)
    assert report.pruned == {"prod/clicks": 3}
    assert len(log_rows(ctx)) == 2
    # A key still in the log is recognized.
    assert ctx.ingest("clicks", records(range(4, 5))).accepted == 0
    now[0] += 3600
    assert scheduler.tick(wait=True).pruned == {"prod/clicks": 2}
    assert log_rows(ctx) == [] and flushed_rows(ctx) == 5
    ctx.close()
