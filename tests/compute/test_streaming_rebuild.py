"""Restoring stream views after the scheduler pruned the ingest log (issue 14 item 3): rows the
log no longer holds were flushed to the offline Parquet log first, and ``rebuild_stream_views``
reads them back from there, then the rest from the log; each record is counted once.
Embedded stores (the SQLite online store is its own log)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import contextkit
from contextkit.compute.layout import log_table
from contextkit.compute.streaming import ingest_log, ingest_records, rebuild_stream_views

DEFS = """
from contextkit import (
    Aggregate, Attribute, ContextService, Entity, Field, Float64, Int64, PushSource,
    StreamFeatureView, Timestamp,
)

user = Entity(name="user", join_keys=["user_id"])
clicks = PushSource(
    name="clicks",
    schema=[Field("user_id", Int64), Field("price", Float64), Field("ts", Timestamp)],
    timestamp_field="ts",
)
last_click = StreamFeatureView(
    name="last_click", source=clicks, entities=[user], features=[Attribute("price")],
)
click_count = StreamFeatureView(
    name="click_count", source=clicks, entities=[user],
    features=[Aggregate("price", "count", "1d"), Aggregate("price", "sum", "1d")],
    aggregation_interval="1h",
)
svc = ContextService(name="svc", features=[last_click, click_count])
"""


def test_a_rebuild_after_a_partial_prune_reads_the_pruned_rows_from_the_offline_log(make_repo):
    root = make_repo({"defs.py": DEFS})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    now = datetime.now(UTC)

    def send(prices: list[float], minutes_ago: int) -> None:
        ts = (now - timedelta(minutes=minutes_ago)).isoformat()
        records = [{"user_id": i % 2, "price": p, "ts": ts} for i, p in enumerate(prices)]
        assert ingest_records(ctx, "clicks", records).accepted == len(prices)

    try:
        send([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], minutes_ago=30)  # seqs 1-6
        assert ctx.flush_ingest_logs() == {"clicks": 6}
        send([7.0, 8.0, 9.0], minutes_ago=10)  # seqs 7-9, not flushed
        table = log_table("prod", "clicks")
        with ingest_log(ctx).transaction() as writer:  # the scheduler's prune, of seqs 1-4
            assert writer.delete_before(table, "seq", 5) == 4
        reader = ctx.service_reader("svc")
        before = reader.read(ctx.online, {"user_id": [0, 1]})

        assert rebuild_stream_views(ctx) == {"clicks": 9}
        after = reader.read(ctx.online, {"user_id": [0, 1]})
        assert after.values == before.values
        values = dict(zip(after.names, after.values, strict=True))
        assert values["click_count.price_count_1d"] == [5, 4]
        assert values["click_count.price_sum_1d"] == [1.0 + 3 + 5 + 7 + 9, 2.0 + 4 + 6 + 8]
        assert values["last_click.price"] == [9.0, 8.0]
    finally:
        ctx.close()
