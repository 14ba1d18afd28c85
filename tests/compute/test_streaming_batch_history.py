"""Stream views over a push source with a ``batch_source`` (issue 14): their online values
count the batch source's history and the ingest log, a record found in both once, and a rebuild
of the online store (`contextkit online rebuild`, serving's start-up on an emptied Redis) gives
the answers served before the store was lost. Offline reads see the same events.

Embedded SQLite; a real redis-server (tests/backends.py) beside the SQLite registry's log; a
node's SQLite online store beside the log of a real PostgreSQL registry.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

import contextkit
from contextkit.compute.layout import log_table
from contextkit.compute.online_rebuild import rebuild_if_empty, rebuild_online
from contextkit.compute.streaming import ingest_records, log_arrow
from contextkit.errors import StoreUnavailableError

pytest_plugins = ["backends"]

DEFS = """
from contextkit import (
    Aggregate, Attribute, ContextService, Entity, Field, FileSource, Float64, Int64, PushSource,
    StreamFeatureView, Timestamp,
)

user = Entity(name="user", join_keys=["user_id"])
history = FileSource(name="history", path="data/history.parquet", timestamp_field="ts")
clicks = PushSource(
    name="clicks",
    schema=[Field("user_id", Int64), Field("price", Float64), Field("ts", Timestamp)],
    timestamp_field="ts",
    batch_source=history,
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

NOW = datetime.now(UTC).replace(microsecond=0)


def ago(minutes: int) -> datetime:
    return NOW - timedelta(minutes=minutes)


# (user, price, minutes ago). Only in the file: two equal rows (two events) and two others;
# in the file and pushed: the 30.0 click; only pushed: 40.0 and 50.0.
FILE = [(0, 10.0, 50), (1, 5.0, 45), (1, 5.0, 45), (1, 20.0, 40), (0, 30.0, 30)]
PUSHES = [[(1, 40.0, 20)], [(0, 30.0, 30), (0, 50.0, 10)]]  # two ingests, the overlap later
EXPECTED = {
    "click_count.price_count_1d": [3, 4],
    "click_count.price_sum_1d": [90.0, 70.0],
    "last_click.price": [50.0, 40.0],
}


def history_file(rows=FILE) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([u for u, _, _ in rows], pa.int64()),
            "price": pa.array([p for _, p, _ in rows], pa.float64()),
            "ts": pa.array([ago(m) for _, _, m in rows], pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def shop(request, make_repo):
    root = make_repo({"defs.py": DEFS}, data={"history.parquet": history_file()})
    prefix = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        prefix = f"ck:{uuid.uuid4().hex[:8]}"
        config = (root / "contextkit.yaml").read_text()
        (root / "contextkit.yaml").write_text(
            config.replace(
                "online_store: {type: sqlite, path: .contextkit/online.db}",
                f"online_store: {{url: '{server.url}', prefix: '{prefix}'}}",
            )
        )
    elif request.param == "postgres":  # the log in the registry, the values in a node's file
        database = request.getfixturevalue("postgres_server").create_database()
        config = (root / "contextkit.yaml").read_text()
        (root / "contextkit.yaml").write_text(
            config.replace("registry: .contextkit/registry.db", f"registry: {database}")
        )
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    box = {"ctx": ctx, "root": root}
    yield box, prefix, request.param
    box["ctx"].close()


def served(ctx) -> dict:
    result = ctx.service_reader("svc").read(ctx.online, {"user_id": [0, 1]})
    return dict(zip(result.names, result.values, strict=True))


def test_a_rebuild_restores_the_batch_source_history_and_the_log_each_event_once(shop, request):
    box, prefix, backend = shop
    ctx = box["ctx"]
    for push in PUSHES:
        records = [{"user_id": u, "price": p, "ts": ago(m).isoformat()} for u, p, m in push]
        assert ingest_records(ctx, "clicks", records).accepted == len(push)
    before = served(ctx)
    assert before == EXPECTED
    source = ctx.specs().push_sources["clicks"]
    assert log_arrow(ctx, "prod", source).num_rows == 7  # offline: the same events, once

    if backend == "redis":  # Redis loses everything
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
        client.delete(*client.keys(f"{prefix}*"))
        client.close()
    if backend == "postgres":  # the node loses its disk (its online values): not the log
        ctx.close()
        for path in (box["root"] / ".contextkit").glob("online.db*"):
            path.unlink()
        ctx = box["ctx"] = contextkit.connect(box["root"], workspace="prod")
    if backend != "sqlite":  # serving's start-up restores what the online store lost
        assert served(ctx)["click_count.price_count_1d"] == [None, None]
        assert rebuild_if_empty(ctx.runtime) is not None
        assert served(ctx) == before
    result = rebuild_online(ctx.runtime, ["click_count"])  # `contextkit online rebuild VIEW`
    assert result.log_rows == {"clicks": 4 + 3}  # four history rows left, three logged
    assert served(ctx) == before
    # Flushed and rebuilt again: still each event once.
    assert ctx.flush_ingest_logs() == {"clicks": 3}
    rebuild_online(ctx.runtime)
    assert served(ctx) == before


def test_materialize_loads_the_history_before_any_record_is_pushed(make_repo):
    """Embedded stores: `contextkit materialize` loads the batch source's history; a record
    pushed later that equals a history row is that row's event, counted once."""
    root = make_repo({"defs.py": DEFS}, data={"history.parquet": history_file()})
    ctx = contextkit.connect(root, workspace="prod")
    try:
        ctx.create_workspace("prod", live=True)
        ctx.apply(ctx.plan(root))
        ctx.materialize()
        assert served(ctx)["click_count.price_count_1d"] == [2, 3]  # the file's rows only
        ctx.materialize()  # loaded once
        for push in PUSHES:
            records = [{"user_id": u, "price": p, "ts": ago(m).isoformat()} for u, p, m in push]
            assert ingest_records(ctx, "clicks", records).accepted == len(push)
        assert served(ctx) == EXPECTED
    finally:
        ctx.close()


def test_an_unreadable_batch_source_refuses_the_first_ingest_and_writes_nothing(make_repo):
    """The history loads with the first ingest; a batch file gone since apply is a 503 naming
    it, and the record is not half-written (embedded: one transaction)."""
    root = make_repo({"defs.py": DEFS}, data={"history.parquet": history_file([(0, 1.0, 5)])})
    ctx = contextkit.connect(root, workspace="prod")
    try:
        ctx.create_workspace("prod", live=True)
        ctx.apply(ctx.plan(root))
        (root / "data" / "history.parquet").unlink()
        record = {"user_id": 0, "price": 2.0, "ts": ago(1).isoformat()}
        with pytest.raises(StoreUnavailableError) as err:
            ingest_records(ctx, "clicks", [record])
        assert err.value.http_status == 503 and err.value.code == "store_error"
        assert "batch_source 'history' of push source 'clicks'" in err.value.message
        assert ctx.online.read_log(log_table("prod", "clicks"), [], 0, 5) == []
    finally:
        ctx.close()
