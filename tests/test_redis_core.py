"""The core on the Redis online store (issue 14 item 3): a service request reads all of its keyed
views in one round trip, stream ingest runs in watched transactions, materialization writes
the same rows on a re-run, and a Redis that is down is a 503 ``store_error``, never values
reported MISSING. Real ``redis-server`` (tests/backends.py); the stores are built explicitly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.compute.streaming import ingest_records
from contextkit.errors import StoreUnavailableError
from contextkit.server.app import create_app
from contextkit.stores.redis_online import RedisOnlineStore

pytest_plugins = ["backends"]

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=10)

DEFS = """
from datetime import timedelta
from contextkit import (
    Aggregate, Attribute, ContextService, Entity, Field, FileSource, Float64, Int64, PushSource,
    StreamFeatureView, Timestamp, batch_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[Attribute("x")])
def latest(events):
    return f"SELECT user_id, x, ts FROM {events}"

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[
    Aggregate(column="x", function="sum", time_window=timedelta(days=30)),
])
def spend(events):
    return f"SELECT user_id, x, ts FROM {events}"

clicks = PushSource(
    name="clicks",
    schema=[Field("user_id", Int64), Field("price", Float64), Field("ts", Timestamp)],
    timestamp_field="ts",
)
last_click = StreamFeatureView(
    name="last_click", source=clicks, entities=[user], features=[Attribute("price")],
)
click_sum = StreamFeatureView(
    name="click_sum", source=clicks, entities=[user],
    features=[Aggregate("price", "sum", "1d")], aggregation_interval="1h",
)
svc = ContextService(name="svc", features=[latest, spend, last_click])
tiles = ContextService(name="tiles", features=[click_sum])
"""


def events_table(n: int) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([i % 50 for i in range(n)], pa.int64()),
            "x": pa.array([float(i) for i in range(n)], pa.float64()),
            "ts": pa.array(
                [T0 + timedelta(minutes=i) for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
        }
    )


@pytest.fixture
def shop(make_repo, redis_server):
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table(500)})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    store = RedisOnlineStore(redis_server.url, prefix=f"ck-test:{uuid.uuid4().hex[:8]}")
    ctx.runtime.online.close()
    ctx.runtime.online = store
    yield ctx, store
    store.close()


class PipelineCounter:
    """Counts the pipelines a store sends (one pipeline = one round trip)."""

    def __init__(self, store: RedisOnlineStore) -> None:
        self.count = 0
        self._redis = store._redis
        self._pipeline = self._redis.pipeline

        def pipeline(*args, **kwargs):
            pipe = self._pipeline(*args, **kwargs)
            execute = pipe.execute

            def counted(*a, **k):
                self.count += 1
                return execute(*a, **k)

            pipe.execute = counted
            return pipe

        self._redis.pipeline = pipeline


def features(result) -> dict:
    return {name: values for name, values in zip(result.names, result.values, strict=True)}


def test_a_request_reads_every_keyed_view_in_one_round_trip(shop):
    ctx, store = shop
    ctx.materialize(end=NOW)
    ingest_records(
        ctx,
        "clicks",
        [{"user_id": 3, "price": 2.5, "ts": (NOW - timedelta(minutes=1)).isoformat()}],
        now=NOW,
    )
    reader = ctx.service_reader("svc")
    reader.read(store, {"user_id": [1]}, now=NOW)  # learns the tables' generations
    counter = PipelineCounter(store)
    users = list(range(100))
    got = features(reader.read(store, {"user_id": users}, now=NOW))
    assert counter.count == 1  # three views, 100 keys: one pipeline
    assert got["latest.x"][3] == 453.0  # user 3's last event: i = 453
    assert got["spend.x_sum_30d"][3] == sum(float(i) for i in range(3, 500, 50))
    assert got["last_click.price"][3] == 2.5 and got["last_click.price"][4] is None
    assert got["latest.x"][60] is None  # no such user: MISSING, not an error


def test_stream_ingest_into_redis_serves_tiles_and_skips_duplicates(shop):
    ctx, store = shop
    records = [
        {"user_id": 1, "price": float(p), "ts": (NOW - timedelta(minutes=p)).isoformat()}
        for p in range(1, 6)
    ]
    keyed = [{"record": r, "idempotency_key": f"a{i}"} for i, r in enumerate(records)]
    first = ingest_records(ctx, "clicks", keyed, now=NOW)
    again = ingest_records(ctx, "clicks", keyed, now=NOW)
    assert (first.accepted, again.accepted, len(again.duplicates)) == (5, 0, 5)
    got = features(ctx.service_reader("tiles").read(store, {"user_id": [1, 2]}, now=NOW))
    assert got["click_sum.price_sum_1d"] == [15.0, None]


def test_rematerializing_into_redis_writes_the_same_rows(shop):
    ctx, store = shop
    ctx.materialize(end=NOW)
    reader = ctx.service_reader("svc")
    before = features(reader.read(store, {"user_id": list(range(50))}, now=NOW))
    jobs = ctx.materialize(end=NOW, full=True)
    assert all(j.rows_online == 50 for j in jobs if j.view in ("latest", "spend"))
    after = features(reader.read(store, {"user_id": list(range(50))}, now=NOW))
    assert after == before and None not in before["latest.x"]


def test_a_redis_that_is_down_is_a_503_never_missing_values(make_repo, redis_factory):
    server = redis_factory()
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table(100)})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.runtime.online = RedisOnlineStore(server.url, prefix="ck-down", connect_timeout=0.5)
    ctx.materialize(end=NOW)
    reader = ctx.service_reader("svc")
    assert features(reader.read(ctx.online, {"user_id": [1]}, now=NOW))["latest.x"] == [51.0]
    server.kill()
    try:
        with pytest.raises(StoreUnavailableError) as err:
            reader.read(ctx.online, {"user_id": [1]}, now=NOW)
        assert err.value.http_status == 503 and err.value.code == "store_error"
        client = TestClient(create_app(ctx, auth=False))
        answer = client.post("/v1/features", json={"service": "svc", "entities": {"user_id": [1]}})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "store_error"
        assert "MISSING" not in answer.text
    finally:
        server.restart()
    # The store reconnects by itself once the server is back (the data is gone: not persisted).
    assert features(reader.read(ctx.online, {"user_id": [1]}, now=NOW))["latest.x"] == [None]
