"""``contextkit online rebuild`` restores batch views from the offline store (issue 14 item 3):
the latest row per entity within the ttl, from the view's Parquet rows (an aggregate view's
stored inputs, so its windows are exact), not from the sources; a view with no offline data
falls back to its sources. A real redis-server (tests/backends.py) is emptied between.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

import contextkit
from contextkit.compute.online_rebuild import rebuild_online
from contextkit.stores.redis_online import RedisOnlineStore

pytest_plugins = ["backends"]

T0 = datetime(2024, 1, 1, tzinfo=UTC)
END = T0 + timedelta(days=10)

DEFS = """
from contextkit import Aggregate, Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")

@batch_feature_view(sources=[orders], entities=[user], features=[Attribute("amount")], ttl="3d")
def last_order(orders):
    return f"SELECT user_id, amount, ts FROM {orders}"

@batch_feature_view(
    sources=[orders], entities=[user],
    features=[Aggregate("amount", "sum", "5d"), Aggregate("amount", "count", "5d")],
)
def spend(orders):
    return f"SELECT user_id, amount, ts FROM {orders}"

@batch_feature_view(
    sources=[orders], entities=[user], features=[Attribute("amount")], offline=False,
)
def online_only(orders):
    return f"SELECT user_id, amount, ts FROM {orders}"

svc = ContextService(name="svc", features=[last_order, spend, online_only])
"""


def orders(scale: float) -> pa.Table:
    """Five users, one order a day; user 4 stopped ordering on day 2 (outside the 3-day ttl)."""
    rows = [(u, d) for u in range(5) for d in range(10) if u != 4 or d < 2]
    return pa.table(
        {
            "user_id": pa.array([u for u, _ in rows], pa.int64()),
            "amount": pa.array([scale * (u * 10 + d) for u, d in rows], pa.float64()),
            "ts": pa.array([T0 + timedelta(days=d, hours=1) for _, d in rows],
                           pa.timestamp("us", tz="UTC")),
        }
    )  # fmt: skip


def served(ctx) -> dict:
    result = ctx.service_reader("svc").read(ctx.online, {"user_id": list(range(5))})
    return dict(zip(result.names, result.values, strict=True))


def test_rebuild_reads_the_offline_store_and_falls_back_to_sources(make_repo, redis_factory):
    server = redis_factory()
    root = make_repo({"defs.py": DEFS}, data={"orders.parquet": orders(1.0)})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.runtime.online.close()
    ctx.runtime.online = RedisOnlineStore(server.url, prefix=f"ck:{uuid.uuid4().hex[:6]}")
    try:
        ctx.materialize(end=END)
        before = served(ctx)
        assert before["last_order.amount"][4] is None and before["spend.amount_count_5d"][0] == 5

        # The sources change after the job: a rebuild from the offline store does not see it.
        pq.write_table(orders(100.0), root / "data" / "orders.parquet")
        server.restart()  # emptied
        assert served(ctx)["last_order.amount"] == [None] * 5
        result = rebuild_online(ctx.runtime)
        assert result.read_from == {
            "last_order": "offline", "spend": "offline", "online_only": "sources"
        }  # fmt: skip
        assert result.batch_rows == {"last_order": 4, "spend": 4, "online_only": 5}
        after = served(ctx)
        for name in ("last_order.amount", "spend.amount_sum_5d", "spend.amount_count_5d"):
            assert after[name] == before[name], name
        # The view without offline data was recomputed from the (changed) sources.
        assert after["online_only.amount"] == [a * 100 for a in before["online_only.amount"]]
    finally:
        ctx.close()
