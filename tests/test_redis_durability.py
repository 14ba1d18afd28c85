"""Ingest durability does not rely on Redis (issue 14 item 3): an acknowledged ingest is in the
durable ingest log before it is applied to Redis. A real ``redis-server`` is SIGKILLed while
threads ingest, restarted empty, and every acknowledged record is served again after the
automatic rebuild (what serving runs at start-up) and after ``rebuild`` (the CLI's function).
The stores are built explicitly: a Redis online store beside the SQLite registry and one node's
log, and again beside a PostgreSQL registry holding the shared log.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

import contextkit
from contextkit.compute.online_rebuild import rebuild_online, views_to_rebuild
from contextkit.compute.streaming import ingest_log, ingest_records
from contextkit.errors import ContextKitError, StoreUnavailableError
from contextkit.stores.redis_online import RedisOnlineStore

pytest_plugins = ["backends"]

T0 = datetime(2024, 1, 1, tzinfo=UTC)

DEFS = """
from contextkit import (
    Aggregate, Attribute, ContextService, Entity, Field, FileSource, Float64, Int64, PushSource,
    StreamFeatureView, Timestamp, batch_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[Attribute("x")])
def profile(events):
    return f"SELECT user_id, x, ts FROM {events}"

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
    features=[Aggregate("price", "count", "1d")], aggregation_interval="1h",
)
svc = ContextService(name="svc", features=[profile, last_click, click_count])
"""


@pytest.fixture(params=["sqlite log", "postgres log"])
def shop(request, make_repo, redis_factory):
    """A Redis online store beside the durable log: one node's SQLite file (SQLite registry),
    or the log shared in a PostgreSQL registry's database."""
    server = redis_factory()
    events = pa.table(
        {
            "user_id": pa.array(range(20), pa.int64()),
            "x": pa.array([float(i) for i in range(20)], pa.float64()),
            "ts": pa.array([T0] * 20, pa.timestamp("us", tz="UTC")),
        }
    )
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events})
    if request.param == "postgres log":
        database = request.getfixturevalue("postgres_server").create_database()
        config = (root / "contextkit.yaml").read_text()
        (root / "contextkit.yaml").write_text(
            config.replace("registry: .contextkit/registry.db", f"registry: {database}")
        )
    ctx = contextkit.connect(root, workspace="prod")
    assert (ctx.registry.ingest_log() is not None) == (request.param == "postgres log")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.runtime.online.close()
    ctx.runtime.online = RedisOnlineStore(
        server.url, prefix=f"ck:{uuid.uuid4().hex[:6]}", connect_timeout=0.5, socket_timeout=2
    )
    ctx.materialize(end=T0 + timedelta(days=1))
    yield ctx, server
    server.restart()


def served(ctx, users: list[int]) -> dict:
    result = ctx.service_reader("svc").read(ctx.online, {"user_id": users})
    return dict(zip(result.names, result.values, strict=True))


def test_every_acknowledged_record_survives_a_redis_sigkill(shop):
    ctx, server = shop
    acknowledged: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()
    next_user = iter(range(1000, 1_000_000))
    killed = threading.Event()

    def ingest_loop() -> None:
        for _ in range(400):
            with lock:
                user = next(next_user)
            now = datetime.now(UTC)
            record = {"user_id": user, "price": float(user), "ts": now.isoformat()}
            try:
                ingest_records(ctx, "clicks", [{"record": record, "idempotency_key": str(user)}])
            except ContextKitError as exc:
                with lock:
                    refused.append(exc.code)
                if killed.is_set():
                    return
                continue
            with lock:
                acknowledged.append(user)

    threads = [threading.Thread(target=ingest_loop) for _ in range(3)]
    for t in threads:
        t.start()
    while True:  # kill once some ingests were acknowledged, while the threads still run
        with lock:
            if len(acknowledged) >= 30:
                break
    server.kill()
    killed.set()
    for t in threads:
        t.join()
    assert refused and set(refused) == {"store_error"}  # a 503, never a silent loss
    assert len(acknowledged) >= 30

    server.restart()  # empty: Redis lost everything, the batch view's values too
    assert served(ctx, [3])["profile.x"] == [None]
    missing = set(views_to_rebuild(ctx.runtime))
    assert missing == {"profile", "last_click", "click_count"}

    for _step, run in ctx.warm_steps():  # serving's start-up (contextkit serve's warm-up)
        run()
    assert views_to_rebuild(ctx.runtime) == []
    got = served(ctx, acknowledged)
    assert got["last_click.price"] == [float(u) for u in acknowledged]
    assert got["click_count.price_count_1d"] == [1] * len(acknowledged)  # each applied once
    assert served(ctx, [3])["profile.x"] == [3.0]

    # The explicit rebuild (`contextkit online rebuild`) replays the same log: same answers.
    result = rebuild_online(ctx.runtime)
    logged = result.log_rows["clicks"]
    assert logged >= len(acknowledged)
    assert result.batch_rows == {"profile": 20}
    again = served(ctx, acknowledged)
    assert again == got


def test_an_ingest_while_redis_is_down_is_logged_and_applied_when_it_returns(shop):
    ctx, server = shop
    record = {"user_id": 5, "price": 9.5, "ts": datetime.now(UTC).isoformat()}
    server.kill()
    with pytest.raises(StoreUnavailableError) as err:
        ingest_records(ctx, "clicks", [{"record": record, "idempotency_key": "k1"}])
    assert err.value.http_status == 503 and "durable ingest log" in err.value.message
    server.restart()
    # The client retries with the same key: nothing is written twice, and the logged record
    # is applied (the emptied Redis is caught up from the log by this ingest).
    again = ingest_records(ctx, "clicks", [{"record": record, "idempotency_key": "k1"}])
    assert (again.accepted, len(again.duplicates)) == (0, 1)
    got = served(ctx, [5])
    assert got["last_click.price"] == [9.5] and got["click_count.price_count_1d"] == [1]
    log = ingest_log(ctx.runtime)
    assert log is not ctx.online and len(log.read_log("prod__clicks__log", [], 0, 10)) == 1


def test_contextkit_online_rebuild_restores_an_emptied_redis(make_repo, redis_factory, monkeypatch):
    """The CLI on a repo whose online store is Redis by configuration (CONTEXTKIT_ONLINE_STORE)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    server = redis_factory()
    monkeypatch.setenv("CONTEXTKIT_ONLINE_STORE", server.url)
    events = pa.table(
        {
            "user_id": pa.array(range(5), pa.int64()),
            "x": pa.array([float(i) for i in range(5)], pa.float64()),
            "ts": pa.array([T0] * 5, pa.timestamp("us", tz="UTC")),
        }
    )
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events})
    ctx = contextkit.connect(root, workspace="prod")
    assert isinstance(ctx.online, RedisOnlineStore)
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=T0 + timedelta(days=1))
    now = datetime.now(UTC).isoformat()
    ingest_records(ctx, "clicks", [{"user_id": 2, "price": 4.5, "ts": now}])
    server.kill()
    server.restart()
    assert served(ctx, [2]) == {
        "profile.x": [None], "last_click.price": [None], "click_count.price_count_1d": [None]
    }  # fmt: skip
    cli = Path(sys.executable).with_name("contextkit")
    done = subprocess.run(
        [str(cli), "online", "rebuild", "--repo", str(root), "--workspace", "prod", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(done.stdout)
    assert result["batch_rows"] == {"profile": 5} and result["log_rows"] == {"clicks": 1}
    assert served(ctx, [2]) == {
        "profile.x": [2.0], "last_click.price": [4.5], "click_count.price_count_1d": [1]
    }  # fmt: skip
    bad = subprocess.run(
        [str(cli), "online", "rebuild", "nope", "--repo", str(root), "--workspace", "prod"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "no online feature view named 'nope'" in bad.stderr + bad.stdout
    server.restart()
