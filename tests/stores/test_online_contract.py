"""One contract for every online store: SQLite and Redis answer the core's calls alike.

Each story runs against both stores (a real redis-server from tests/backends.py, plain and over
TLS: ``rediss://`` with a throwaway CA, and a 3-master Redis Cluster: ``redis+cluster://``, also
TLS-only: ``rediss+cluster://``),
driving the interface the way the core does:
materialization replaces a view's table, serving reads many entities across views in one call,
ingest writes the log, latest values and tiles in one transaction, and stream reads aggregate
tiles over a window. Then the core itself runs on each
store (apply, materialize, ingest, read) and must give the same answers. Redis-only stories
cover what SQLite cannot do: expiry, concurrent writers, a server that is down, read-only,
full, or killed and restarted.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from contextkit.stores.errors import StoreFailure, StoreServerUnavailable, WriteConflict
from contextkit.stores.online import OnlineStore, SQLiteOnlineStore, TableRead
from contextkit.stores.redis_online import RedisOnlineStore
from tests.backends import RedisServer, free_port

US = 1_000_000
SPEND = "prod__user_spend"
PROFILE = "prod__user_profile"
USER_KEY = [("user_id", "int64")]
SPEND_COLS = [("event_timestamp", "timestamp"), ("amount_7d", "float64"), ("tier", "string")]
PROFILE_COLS = [("event_timestamp", "timestamp"), ("vip", "bool"), ("visits", "int64")]
T = 1_699_999_800_000_000  # event times, microseconds (on a 10-minute tile boundary)


def drop_prefix(url: str, prefix: str) -> None:
    """Delete a test's keys: ``prefix:...``, and on a cluster also ``{prefix:...}...``."""
    import redis
    from redis.cluster import RedisCluster

    if url.split("://", 1)[0].endswith("+cluster"):
        client = RedisCluster.from_url(url.replace("+cluster", "", 1))
        for pattern in (prefix + ":*", "{" + prefix + ":*"):
            for key in list(client.scan_iter(match=pattern, count=1000)):
                client.unlink(key)
        client.close()
        return
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + ":*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()


def redis_url(request, param: str) -> str:
    """The URL of the session's server for a store param (redis, redis-tls, redis-cluster,
    redis-cluster-tls)."""
    if param in ("redis-cluster", "redis-cluster-tls"):
        name = "redis_tls_cluster" if param == "redis-cluster-tls" else "redis_cluster"
        return request.getfixturevalue(name).cluster_url
    name = "redis_tls_server" if param == "redis-tls" else "redis_server"
    server: RedisServer = request.getfixturevalue(name)
    return server.url


@pytest.fixture(params=["sqlite", "redis", "redis-tls", "redis-cluster", "redis-cluster-tls"])
def store(request, tmp_path: Path) -> Iterator[OnlineStore]:
    if request.param == "sqlite":
        store: OnlineStore = SQLiteOnlineStore(tmp_path / "online.db")
        yield store
        store.close()
        return
    url = redis_url(request, request.param)
    prefix = "t" + uuid.uuid4().hex[:10]
    store = RedisOnlineStore(url, prefix=prefix)
    yield store
    store.close()
    drop_prefix(url, prefix)


@pytest.fixture
def redis_store(redis_server) -> Iterator[RedisOnlineStore]:
    prefix = "t" + uuid.uuid4().hex[:10]
    store = RedisOnlineStore(redis_server.url, prefix=prefix)
    yield store
    store.close()
    drop_prefix(redis_server.url, prefix)


@pytest.fixture(params=["redis", "redis-cluster", "redis-cluster-tls"])
def watched_store(request) -> Iterator[RedisOnlineStore]:
    """A Redis store on one server or on the cluster, for the WATCH/MULTI stories."""
    url = redis_url(request, request.param)
    prefix = "t" + uuid.uuid4().hex[:10]
    store = RedisOnlineStore(url, prefix=prefix)
    yield store
    store.close()
    drop_prefix(url, prefix)


def spend_rows(users: range, scale: float = 1.0) -> list[tuple]:
    return [(u, T + u, u * scale, f"tier{u % 3}") for u in users]


# -- materialized snapshots ----------------------------------------------------------------------


def test_a_request_reads_many_entities_across_views_in_request_order(store):
    assert store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 6))) == 5
    profiles = [(1, T, True, 3), (4, T + 9, False, 0)]
    assert store.replace_table(PROFILE, USER_KEY, PROFILE_COLS, profiles) == 2

    got = store.read_many(
        [
            TableRead(SPEND, ["user_id"], ["amount_7d", "tier"], [(4,), (99,), (1,), (4,)]),
            TableRead(PROFILE, ["user_id"], ["event_timestamp", "vip"], [(4,), (99,), (1,), (4,)]),
            TableRead("prod__not_materialized", ["user_id"], ["x"], [(1,)]),
        ]
    )

    assert got == [
        [(4.0, "tier1"), None, (1.0, "tier1"), (4.0, "tier1")],
        [(T + 9, 0), None, (T, 1), (T + 9, 0)],  # bools as 0/1, as stored
        None,  # a view not materialized yet: None for its rows, not an error
    ]
    assert store.read(SPEND, ["user_id"], ["tier"], [(2,)]) == [("tier2",)]
    with pytest.raises(StoreFailure, match="does not exist") as info:
        store.read("prod__not_materialized", ["user_id"], ["x"], [(1,)])
    assert "materialize" in (info.value.hint or "")


def test_values_come_back_in_the_stored_form_sqlite_gives(store):
    columns = [("event_timestamp", "timestamp"), ("f", "float64"), ("i", "int64"),
               ("s", "string"), ("b", "bool")]  # fmt: skip
    rows = [
        ("1", T, 3, 4.0, 5, True),  # int into float, integral float into int, int into text
        ("2", T, 2.5, None, "x", False),
        ("3", None, None, 7, None, None),
    ]
    store.replace_table("prod__typed", [("name", "string")], columns, rows)

    got = store.read("prod__typed", ["name"], [c for c, _ in columns], [("1",), ("2",), ("3",)])

    assert got == [(T, 3.0, 4, "5", 1), (T, 2.5, None, "x", 0), (None, None, 7, None, None)]
    assert [type(v) for v in got[0]] == [int, float, int, str, int]


def test_composite_keys(store):
    keys = [("user_id", "int64"), ("merchant", "string")]
    rows = [(1, "a", T, 1.0, "x"), (1, "b", T, 2.0, "y"), (2, "a", T, 3.0, "z")]
    store.replace_table("prod__pairs", keys, SPEND_COLS, rows)

    got = store.read("prod__pairs", ["user_id", "merchant"], ["amount_7d"], [(1, "b"), (2, "b")])

    assert got == [(2.0,), None]


def test_a_failed_replace_changes_nothing_and_a_rerun_is_idempotent(store):
    store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 4)))

    def rows_then_crash():
        yield from spend_rows(range(1, 3000), scale=10.0)  # several chunks for Redis
        raise RuntimeError("the source went away")

    with pytest.raises(RuntimeError, match="went away"):
        store.replace_table(SPEND, USER_KEY, SPEND_COLS, rows_then_crash())
    keys = [(1,), (2,), (2999,)]
    assert store.read(SPEND, ["user_id"], ["amount_7d"], keys) == [(1.0,), (2.0,), None]

    for _ in range(2):  # the same run twice: the same table
        assert store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(2, 6), 2.0)) == 4
        got = store.read(SPEND, ["user_id"], ["amount_7d"], [(1,), (2,), (5,)])
        assert got == [None, (4.0,), (10.0,)]  # user 1 left the snapshot: gone

    twice = [*spend_rows(range(1, 3)), (1, T, 42.0, "last")]
    assert store.replace_table(SPEND, USER_KEY, SPEND_COLS, twice) == 2  # keys, not rows
    assert store.read(SPEND, ["user_id"], ["tier"], [(1,)]) == [("last",)]


def test_drop_table(store):
    assert not store.has_table(SPEND)
    store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 3)))
    assert store.has_table(SPEND)
    store.drop_table(SPEND)
    store.drop_table(SPEND)  # a no-op the second time
    assert not store.has_table(SPEND)
    assert store.read_many([TableRead(SPEND, ["user_id"], ["tier"], [(1,)])]) == [None]


def served(rows: list[tuple | None], ttl_s: int, now_us: int) -> list[tuple | None]:
    """What the core serves from rows with a ttl (retrieve filters stream views this way)."""
    return [r if r is not None and r[0] > now_us - ttl_s * US else None for r in rows]


def test_rows_past_their_ttl_are_not_served(store):
    ttl = 3600
    now = time.time_ns() // 1000
    rows = [(1, now - 2 * ttl * US, 1.0, "old"), (2, now - 10 * US, 2.0, "new"),
            (3, now - ttl * US + 2 * US, 3.0, "expiring")]  # fmt: skip
    store.replace_table(SPEND, USER_KEY, SPEND_COLS, rows, ttl_seconds=ttl)
    names = ["event_timestamp", "tier"]

    got = store.read(SPEND, ["user_id"], names, [(1,), (2,), (3,)])
    assert [r and r[1] for r in served(got, ttl, time.time_ns() // 1000)] == [
        None, "new", "expiring"
    ]  # fmt: skip

    deadline = time.monotonic() + 30  # wait (no timing assert) until row 3 is ttl old
    while time.monotonic() < deadline:
        got = store.read(SPEND, ["user_id"], names, [(3,)])
        if served(got, ttl, time.time_ns() // 1000) == [None]:
            break
        time.sleep(0.2)
    assert served(got, ttl, time.time_ns() // 1000) == [None]


def test_redis_evicts_rows_at_their_ttl(redis_store, redis_server):
    import redis

    ttl = 3600
    now = time.time_ns() // 1000
    rows = [(1, now - 2 * ttl * US, 1.0, "old"), (2, now - 10 * US, 2.0, "new")]
    redis_store.replace_table(SPEND, USER_KEY, SPEND_COLS, rows, ttl_seconds=ttl)

    assert redis_store.read(SPEND, ["user_id"], ["tier"], [(1,), (2,)]) == [None, ("new",)]
    client = redis.Redis.from_url(redis_server.url)
    keys = sorted(client.scan_iter(match=redis_store.prefix + ":d:*"))
    assert len(keys) == 1, "the old row was never kept"
    left_ms = client.pttl(keys[0])
    assert 0 < left_ms <= ttl * 1000, "the new row expires when it is ttl old"


# -- streaming: ingest transactions, latest values, tiles ----------------------------------------

LOG = "live__page_views__log"
LATEST = "live__last_view"
TILES = "live__recent__tiles"
LOG_COLS = [("user_id", "int64"), ("price", "float64"), ("ts", "timestamp")]
TILE_COLS = [("__n", "int64"), ("price__sum", "float64"), ("price__max", "float64")]
TILE = 600 * US


def ingest(store, records: list[tuple[str | None, int, float, int]]) -> list[int]:
    """What streaming._write does: log (skipping seen ids), latest values, tiles; one commit.
    Returns the seqs given to the records written."""
    with store.transaction() as w:
        w.ensure_table(LOG, [], LOG_COLS, log=True)
        seen = w.existing(LOG, "ingest_id", [r[0] for r in records if r[0] is not None])
        fresh = [r for r in records if r[0] is None or r[0] not in seen]
        if not fresh:
            return []
        first, last = w.append_log(LOG, ["user_id", "price", "ts"], [list(r) for r in fresh], 7)
        w.ensure_table(LATEST, USER_KEY, [("event_timestamp", "timestamp"), ("price", "float64")])
        stored = w.get(LATEST, ["user_id"], [(r[1],) for r in fresh], ["event_timestamp"])
        newest = {}
        for r in fresh:
            if (r[1],) not in stored or stored[(r[1],)][0] <= r[3]:
                newest[r[1]] = r
        w.upsert(LATEST, ["user_id", "event_timestamp", "price"],
                 [(u, r[3], r[2]) for u, r in newest.items()])  # fmt: skip
        w.ensure_table(TILES, [*USER_KEY, ("tile", "int64")], TILE_COLS)
        for r in fresh:
            tile = r[3] - r[3] % TILE
            old = w.get(TILES, ["user_id", "tile"], [(r[1], tile)], [c for c, _ in TILE_COLS])
            n, total, top = old.get((r[1], tile), (0, 0.0, None))
            state = (n + 1, total + r[2], r[2] if top is None else max(top, r[2]))
            w.upsert(TILES, ["user_id", "tile", *[c for c, _ in TILE_COLS]], [(r[1], tile, *state)])
        w.delete_before(TILES, "tile", T - 6 * TILE)
        return list(range(first, last + 1))


def test_ingest_writes_log_latest_and_tiles_in_one_transaction(store):
    seqs = ingest(store, [("a", 7, 4.0, T), ("b", 7, 6.0, T + TILE), (None, 8, 1.0, T)])
    assert len(seqs) == 3 and seqs == sorted(seqs)
    assert ingest(store, [("a", 7, 99.0, T + 2 * TILE)]) == []  # a seen idempotency key
    later = ingest(store, [("c", 7, 2.0, T - TILE)])  # late: older than the latest value
    assert later[0] > seqs[-1]

    log = store.read_log(LOG, ["user_id", "price"], 0, 100)
    assert [row[1:] for row in log] == [(7, 4.0), (7, 6.0), (8, 1.0), (7, 2.0)]
    assert [row[0] for row in log] == [*seqs, *later]
    assert store.read_log(LOG, ["price"], seqs[1], 1) == [(seqs[2], 1.0)]
    assert store.read_log("live__other__log", ["price"], 0, 10) == []
    assert store.max_by_key(LOG, ["user_id"], [(7,), (8,), (9,)], "ts") == {
        (7,): T + TILE,
        (8,): T,
    }

    latest = store.read(LATEST, ["user_id"], ["event_timestamp", "price"], [(7,), (8,), (9,)])
    assert latest == [(T + TILE, 6.0), (T, 1.0), None]

    assert store.read_range(TILES, ["user_id"], [(7,), (9,)], "tile", T, ["tile", "__n"]) == {
        (7,): [(T, 1), (T + TILE, 1)]
    }
    aggregates = [("sum", "__n", T - TILE), ("sum", "price__sum", T), ("max", "price__max", T)]
    keys = [(7,), (8,), (9,), (7,)]  # asked twice, counted once
    got = store.aggregate_range(TILES, ["user_id"], keys, "tile", T + TILE, aggregates)
    assert got == {(7,): (3, 10.0, 6.0), (8,): (1, 1.0, 1.0)}
    window = store.aggregate_range(TILES, ["user_id"], [(7,)], "tile", T, aggregates)
    assert window == {(7,): (2, 4.0, 4.0)}  # the tile after `high` is left out


def test_old_tiles_are_deleted_as_new_events_arrive(store):
    ingest(store, [("a", 7, 1.0, T - 10 * TILE), ("b", 8, 1.0, T - 9 * TILE)])
    ingest(store, [("c", 9, 1.0, T)])  # deletes every tile before T - 6 tiles
    got = store.read_range(TILES, ["user_id"], [(7,), (8,), (9,)], "tile", 0, ["tile"])
    assert got == {(9,): [(T,)]}


def test_a_transaction_that_raises_writes_nothing(store):
    ingest(store, [("a", 7, 4.0, T)])
    with pytest.raises(RuntimeError, match="crash"), store.transaction() as w:
        w.ensure_table(LOG, [], LOG_COLS, log=True)
        w.append_log(LOG, ["user_id", "price", "ts"], [["z", 7, 9.0, T]], 8)
        w.upsert(LATEST, ["user_id", "event_timestamp", "price"], [(7, T + 5, 9.0)])
        assert w.get(LATEST, ["user_id"], [(7,)], ["price"]) == {(7,): (9.0,)}
        raise RuntimeError("crash")
    assert [r[1] for r in store.read_log(LOG, ["price"], 0, 10)] == [4.0]
    assert store.read(LATEST, ["user_id"], ["price"], [(7,)]) == [(4.0,)]
    assert ingest(store, [("z", 7, 9.0, T + 5)]) != [], "the rolled back id was not kept"


def test_the_core_gets_the_same_answers_from_both_stores(
    make_repo, redis_server, redis_tls_server, redis_cluster, redis_tls_cluster
):
    """apply, materialize, ingest and read through the public SDK on each store (and Redis over
    TLS, and a Redis Cluster, plain and over TLS)."""
    import contextkit
    from contextkit.compute.streaming import ingest_records

    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    answers = []
    urls = {
        "redis": redis_server.url,
        "redis-tls": redis_tls_server.url,
        "redis-cluster": redis_cluster.cluster_url,
        "redis-cluster-tls": redis_tls_cluster.cluster_url,
    }
    for name in ("sqlite", *urls):
        root = make_repo({"defs.py": CORE_DEFS}, data={"orders.parquet": orders()}, name=name)
        ctx = contextkit.connect(root, workspace="live")
        prefix = "e2e" + uuid.uuid4().hex[:8]
        if name in urls:
            ctx.online.close()
            ctx.runtime.online = RedisOnlineStore(urls[name], prefix=prefix)
        try:
            ctx.create_workspace("live", live=True)
            ctx.apply(ctx.plan(root))
            ctx.materialize(end=now)
            records = [
                {"user_id": 1, "product_id": 5, "price": 4.0, "ts": now - timedelta(minutes=50)},
                {"user_id": 1, "product_id": 6, "price": 6.0, "ts": now - timedelta(minutes=5)},
                {"user_id": 2, "product_id": 5, "price": 1.0, "ts": now - timedelta(hours=3)},
            ]
            assert ingest_records(ctx, "views", records, now=now).accepted == 3
            ctx.materialize(end=now)  # flushes the ingest log to the offline store; a re-run
            reader = ctx.service_reader("shop")
            result = reader.read(ctx.online, {"user_id": [1, 2, 3, 1]}, now=now)
            answers.append((result.names, result.values, result.statuses, result.event_timestamps))
            log = ctx.get_features_for_events(
                pa.table({"user_id": [1], "ts": pa.array([now], pa.timestamp("us", tz="UTC"))}),
                "shop",
            )
            answers[-1] += (log.to_arrow().to_pylist(),)
        finally:
            ctx.close()
            if name in urls:
                drop_prefix(urls[name], prefix)
    sqlite, *redis_answers = answers
    assert redis_answers == [sqlite] * len(urls)
    values = dict(zip(sqlite[0], sqlite[1], strict=True))
    assert values["spend.amount_sum_2d"] == [30.0, 5.0, None, 30.0]
    assert values["recent.product_id_count_1h"] == [2, 0, None, 2]
    assert values["last_view.price"] == [6.0, 1.0, None, 6.0]


CORE_DEFS = """\
from datetime import timedelta
from contextkit import (
    Aggregate, Attribute, ContextService, Entity, Field, FileSource, Float64, Int64, PushSource,
    StreamFeatureView, Timestamp, batch_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")

@batch_feature_view(sources=[orders], entities=[user], mode="sql",
                    features=[Aggregate("amount", "sum", timedelta(days=2))])
def spend(orders):
    return f"SELECT user_id, amount, ts FROM {orders}"

views = PushSource(
    name="views",
    schema=[Field("user_id", Int64), Field("product_id", Int64), Field("price", Float64),
            Field("ts", Timestamp)],
    timestamp_field="ts",
)
recent = StreamFeatureView(
    name="recent", source=views, entities=[user], aggregation_interval="10m",
    features=[Aggregate("product_id", "count", "1h"), Aggregate("price", "max", "1d"),
              Aggregate("product_id", "last_distinct", "1d", n=2)],
)
last_view = StreamFeatureView(
    name="last_view", source=views, entities=[user], ttl=timedelta(days=1),
    features=[Attribute("product_id"), Attribute("price")],
)
shop = ContextService(name="shop", features=[spend, recent, last_view])
"""


def orders() -> pa.Table:
    base = datetime(2024, 6, 1, tzinfo=UTC)
    return pa.table(
        {
            "user_id": pa.array([1, 1, 2], pa.int64()),
            "amount": pa.array([10.0, 20.0, 5.0]),
            "ts": pa.array(
                [base - timedelta(hours=h) for h in (30, 2, 5)], pa.timestamp("us", tz="UTC")
            ),
        }
    )


# -- Redis only: concurrent writers and a server in trouble --------------------------------------


def test_a_concurrent_write_makes_the_commit_fail_and_transact_runs_it_again(watched_store):
    store = watched_store
    with store.transaction() as w:
        w.ensure_table(LATEST, USER_KEY, [("event_timestamp", "timestamp"), ("price", "float64")])
        w.upsert(LATEST, ["user_id", "event_timestamp", "price"], [(7, T, 1.0)])

    def bump(w) -> None:  # read-modify-write, as tile merges do
        (price,) = w.get(LATEST, ["user_id"], [(7,)], ["price"])[(7,)]
        w.upsert(LATEST, ["user_id", "event_timestamp", "price"], [(7, T, price + 1)])

    with pytest.raises(WriteConflict), store.transaction() as w:
        bump(w)
        store.transact(bump)  # another writer commits in between
    assert store.read(LATEST, ["user_id"], ["price"], [(7,)]) == [(2.0,)], "one bump, not two"

    attempts = []

    def bump_with_a_rival_once(w) -> None:
        bump(w)
        attempts.append(1)
        if len(attempts) == 1:
            store.transact(bump)

    store.transact(bump_with_a_rival_once)
    assert len(attempts) == 2
    assert store.read(LATEST, ["user_id"], ["price"], [(7,)]) == [(4.0,)], "no bump lost"


def test_concurrent_ingests_keep_seqs_in_commit_order_and_lose_nothing(watched_store):
    def worker(n: int) -> None:
        for i in range(10):
            watched_store.transact(lambda w, i=i: ingest_one(w, f"{n}-{i}", 7, float(i), T + i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = watched_store.read_log(LOG, ["price"], 0, 1000)
    assert len(log) == 40 and [r[0] for r in log] == sorted(r[0] for r in log)
    (count,) = watched_store.aggregate_range(
        TILES, ["user_id"], [(7,)], "tile", T + TILE, [("sum", "__n", 0)]
    )[(7,)]
    assert count == 40, "every tile merge counted once"


def ingest_one(w, ingest_id: str, user: int, price: float, ts: int) -> None:
    w.ensure_table(LOG, [], LOG_COLS, log=True)
    if w.existing(LOG, "ingest_id", [ingest_id]):
        return
    w.append_log(LOG, ["user_id", "price", "ts"], [[ingest_id, user, price, ts]], 1)
    w.ensure_table(TILES, [*USER_KEY, ("tile", "int64")], TILE_COLS)
    tile = ts - ts % TILE
    old = w.get(TILES, ["user_id", "tile"], [(user, tile)], ["__n", "price__sum", "price__max"])
    n, total, top = old.get((user, tile), (0, 0.0, None))
    w.upsert(TILES, ["user_id", "tile", "__n", "price__sum", "price__max"],
             [(user, tile, n + 1, total + price, max(top or price, price))])  # fmt: skip


def test_an_unreachable_server_is_a_clear_error_with_the_password_masked():
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    store = RedisOnlineStore(url, prefix="x")
    assert "hunter2" not in repr(store) and "***" in repr(store)
    with pytest.raises(StoreServerUnavailable) as info:
        store.read(SPEND, ["user_id"], ["tier"], [(1,)])
    assert "unreachable" in str(info.value) and "redis://:***@127.0.0.1" in str(info.value)
    assert "hunter2" not in str(info.value) and info.value.hint
    with pytest.raises(StoreServerUnavailable):
        store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 3)))


def test_rediss_from_the_configuration_and_an_untrusted_certificate(tmp_path, redis_tls_server):
    """``online_store: rediss://...?ssl_ca_certs=`` in contextkit.yaml opens a TLS store; without
    the CA the handshake fails with an error saying so, the password masked."""
    import contextkit

    (tmp_path / "contextkit.yaml").write_text(
        f"project: shop\nonline_store: {{url: '{redis_tls_server.url}', prefix: 'cfg'}}\n"
    )
    ctx = contextkit.connect(tmp_path)
    try:
        assert isinstance(ctx.online, RedisOnlineStore) and not ctx.online.has_table(SPEND)
        assert redis_tls_server.password not in repr(ctx.online)
    finally:
        ctx.close()
    untrusted = RedisOnlineStore(redis_tls_server.url.split("?")[0], prefix="x")
    with pytest.raises(StoreServerUnavailable, match="TLS handshake") as info:
        untrusted.has_table(SPEND)
    assert "ssl_ca_certs" in (info.value.hint or "")
    assert redis_tls_server.password not in str(info.value) + repr(untrusted)


def test_a_plain_url_to_a_cluster_node_says_to_name_the_cluster(redis_cluster):
    """A ``redis://`` URL that points at a Redis Cluster master: the first key another master
    owns is one clear error naming the store and the ``redis+cluster://`` form, not a MOVED
    reply."""
    store = RedisOnlineStore(redis_cluster.url, prefix="cl")
    with pytest.raises(StoreServerUnavailable, match="is a Redis Cluster node") as info:
        store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 200)))
    assert "redis+cluster://" in (info.value.hint or "")


def test_a_wrong_password_is_a_clear_error(redis_server):
    store = RedisOnlineStore(f"redis://:wrong-pass@127.0.0.1:{redis_server.port}/0", prefix="x")
    with pytest.raises(StoreServerUnavailable, match="credentials") as info:
        store.has_table(SPEND)
    assert "wrong-pass" not in str(info.value) and "password" in (info.value.hint or "")


def test_a_full_or_read_only_server_refuses_writes_and_keeps_serving_the_old_snapshot(
    redis_factory,
):
    import redis

    server = redis_factory()
    admin = redis.Redis.from_url(server.url)
    store = RedisOnlineStore(server.url, prefix="p")
    store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 4)))
    keys_before = admin.dbsize()

    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    with pytest.raises(StoreServerUnavailable, match="out of memory") as info:
        store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 100), 2.0))
    assert "maxmemory" in (info.value.hint or "")
    assert store.read(SPEND, ["user_id"], ["amount_7d"], [(2,)]) == [(2.0,)]
    with pytest.raises(StoreServerUnavailable, match="out of memory"), store.transaction() as w:
        w.ensure_table(LOG, [], LOG_COLS, log=True)
        w.append_log(LOG, ["user_id", "price", "ts"], [["a", 1, 1.0, T]], 1)
    admin.config_set("maxmemory", 0)
    assert admin.dbsize() <= keys_before + 2, "nothing half-written (generation counters aside)"

    admin.replicaof("127.0.0.1", free_port())  # a replica of nothing: read-only
    try:
        with pytest.raises(StoreServerUnavailable, match="read-only") as info:
            store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 3)))
        assert "primary" in (info.value.hint or "")
    finally:
        admin.replicaof("NO", "ONE")
    assert store.read(SPEND, ["user_id"], ["amount_7d"], [(3,)]) == [(3.0,)]


def test_a_killed_server_is_a_clear_error_and_the_same_store_recovers_when_it_is_back(
    redis_factory,
):
    server = redis_factory(password="pw-" + uuid.uuid4().hex[:6])
    store = RedisOnlineStore(server.url, prefix="k")
    store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 4)))
    assert store.read(SPEND, ["user_id"], ["tier"], [(1,)]) == [("tier1",)]

    ingest(store, [("a", 7, 1.0, T)])
    # Killed between the watched read and the commit: an outage, not a write conflict.
    with pytest.raises(StoreServerUnavailable, match="unreachable"), store.transaction() as w:
        w.get(LATEST, ["user_id"], [(7,)], ["price"])
        w.upsert(LATEST, ["user_id", "event_timestamp", "price"], [(7, T, 2.0)])
        server.kill()  # SIGKILL: no shutdown, no persistence
    with pytest.raises(StoreServerUnavailable, match="unreachable") as info:
        store.read(SPEND, ["user_id"], ["tier"], [(1,)])
    assert server.password not in str(info.value)
    with pytest.raises(StoreServerUnavailable):
        ingest(store, [("a", 7, 1.0, T)])

    server.restart()  # back, empty; the same store object reconnects by itself
    with pytest.raises(StoreFailure, match="does not exist"):
        store.read(SPEND, ["user_id"], ["tier"], [(1,)])
    store.replace_table(SPEND, USER_KEY, SPEND_COLS, spend_rows(range(1, 4)))
    assert store.read(SPEND, ["user_id"], ["tier"], [(1,), (2,)]) == [("tier1",), ("tier2",)]
    assert ingest(store, [("a", 7, 1.0, T)]) != []
