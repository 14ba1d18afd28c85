"""The Redis online store on a real 3-master Redis Cluster (``redis+cluster://``), beyond the
contract that tests/stores/test_online_contract.py runs on it: where the keys land (snapshots
over every master, a workspace's stream state in one slot), what a request costs (one
pipeline: one round trip per master), a re-run and a rebuild through the core, expiry, a
master that dies (a 503 ``store_error``, and the same store serving again once it is back),
and one that restarts empty (the next serving start-up notices and rebuilds). Resharding:
test_redis_cluster_resharding.py; TLS: the contract's ``redis-cluster-tls`` store.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.compute.online_rebuild import rebuild_online
from contextkit.compute.streaming import ingest_records
from contextkit.errors import StoreUnavailableError
from contextkit.server.app import create_app
from contextkit.stores.errors import StoreFailure
from contextkit.stores.online import TableRead
from contextkit.stores.redis_online import RedisOnlineStore
from tests.stores.test_online_contract import drop_prefix
from tests.test_redis_core import DEFS, T0, events_table, features

# DEFS: batch views latest (x) and spend (sum of x), stream views last_click and click_sum
# (tiles) over the push source clicks; services svc (latest, spend, last_click) and tiles.
# events_table(n): n events of users i % 50 with x = i, a minute apart from T0.

NOW = T0 + timedelta(days=10)
US = 1_000_000


def masters(cluster) -> list:
    import redis

    return [redis.Redis.from_url(node.url) for node in cluster.nodes]


def keys_on(client, prefix: str) -> list[bytes]:
    return [*client.scan_iter(match=prefix + ":*"), *client.scan_iter(match="{" + prefix + ":*")]


@pytest.fixture
def shop(make_repo, redis_cluster):
    """A repo on the session's cluster, under a key prefix of its own."""
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table(50)})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    prefix = "ckc" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(redis_cluster.cluster_url, prefix=prefix)
    ctx.runtime.online.close()
    ctx.runtime.online = store
    yield ctx, store
    ctx.close()
    drop_prefix(redis_cluster.cluster_url, prefix)


def test_snapshots_spread_over_every_master_and_stream_state_stays_in_one_slot(shop, redis_cluster):
    ctx, store = shop
    ctx.materialize(end=NOW)
    clicks = [{"user_id": u, "price": 1.0, "ts": NOW - timedelta(minutes=5)} for u in range(20)]
    assert ingest_records(ctx, "clicks", clicks, now=NOW).accepted == 20

    per_master = [keys_on(client, store.prefix) for client in masters(redis_cluster)]
    snapshot = [[k for k in keys if k.startswith(f"{store.prefix}:d:".encode())]
                for keys in per_master]  # fmt: skip
    rows = [[k for k in keys if b";live{" not in k] for keys in snapshot]  # less the markers
    assert all(len(keys) > 10 for keys in rows), "2 views x 50 users over all three masters"
    assert sum(map(len, rows)) == 100
    assert sum(map(len, snapshot)) - 100 == 2 * 128, "each view's markers, one per 128 slots"
    assert all(len(keys) - len(r) > 30 for keys, r in zip(snapshot, rows, strict=True))
    tagged = [k for keys in per_master for k in keys if k.startswith(b"{")]
    assert {k.split(b"}")[0] for k in tagged} == {b"{" + store.prefix.encode() + b":prod"}
    assert sum(1 for keys in per_master if any(k.startswith(b"{") for k in keys)) == 1, (
        "the workspace's metas, tiles and latest values on one master"
    )


class PipelineCounter:
    """Counts the read pipelines a store sends (each one round trip to every master it
    touches, all at once)."""

    def __init__(self, store: RedisOnlineStore) -> None:
        self.count = 0
        self.masters: list[int] = []
        make = store._batch

        def batch():
            pipe = make()
            execute = pipe.execute

            def counted():
                self.count += 1
                nodes = store._redis.nodes_manager
                self.masters.append(
                    len({nodes.get_node_from_slot(slot).name for slot, _ in pipe._commands})
                )
                return execute()

            pipe.execute = counted
            return pipe

        store._batch = batch


def test_a_request_over_every_master_is_one_pipeline(shop):
    ctx, store = shop
    ctx.materialize(end=NOW)
    ingest_records(ctx, "clicks", [{"user_id": 3, "price": 2.5, "ts": NOW}], now=NOW)
    reader = ctx.service_reader("svc")
    reader.read(store, {"user_id": [1]}, now=NOW)  # learns the tables' generations
    counter = PipelineCounter(store)
    got = features(reader.read(store, {"user_id": list(range(50))}, now=NOW))
    assert counter.count == 1, "three views, 50 keys on three masters: one pipeline"
    assert counter.masters == [3], "to every master at once"
    assert got["latest.x"][:4] == [0.0, 1.0, 2.0, 3.0] and got["last_click.price"][3] == 2.5

    got = features(reader.read(store, {"user_id": [3, 999]}, now=NOW))
    assert got["latest.x"] == [3.0, None]
    assert counter.count == 3, "a missing row of a spread view: its meta confirmed once more"


def test_a_rerun_writes_the_same_rows_and_a_rebuild_restores_a_lost_workspace(shop, redis_cluster):
    ctx, store = shop
    ctx.materialize(end=NOW)
    now = datetime.now(UTC)  # a rebuild keeps the tiles of the last day before the real now
    ingest_records(ctx, "clicks", [{"user_id": 7, "price": 4.5, "ts": now}], now=now)
    users = {"user_id": list(range(50))}

    def served() -> dict:
        return {
            **features(ctx.service_reader("svc").read(store, users, now=now)),
            **features(ctx.service_reader("tiles").read(store, users, now=now)),
        }

    before = served()
    assert before["latest.x"][7] == 7.0 and before["click_sum.price_sum_1d"][7] == 4.5
    keys_before = sum(len(keys_on(c, store.prefix)) for c in masters(redis_cluster))

    jobs = ctx.materialize(end=NOW, full=True)
    assert [j.rows_online for j in jobs if j.view == "latest"] == [50]
    assert served() == before
    keys_after = sum(len(keys_on(c, store.prefix)) for c in masters(redis_cluster))
    assert keys_after == keys_before, "the replaced generation is deleted on every master"

    drop_prefix(redis_cluster.cluster_url, store.prefix)  # the cluster lost everything
    assert served()["latest.x"][7] is None
    result = rebuild_online(ctx.runtime)
    assert result.batch_rows == {"latest": 50, "spend": 50}
    assert result.log_rows == {"clicks": 1}
    assert served() == before


def test_rows_expire_at_their_ttl_on_the_master_that_holds_them(redis_cluster):
    prefix = "ttl" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(redis_cluster.cluster_url, prefix=prefix)
    ttl, now = 3600, time.time_ns() // 1000
    rows = [(u, now - 2 * ttl * US, 1.0) for u in range(10)]  # already past their ttl
    rows += [(u, now - 10 * US, 2.0) for u in range(10, 40)]
    columns = [("event_timestamp", "timestamp"), ("v", "float64")]
    try:
        store.replace_table("prod__t", [("user_id", "int64")], columns, rows, ttl_seconds=ttl)
        got = store.read("prod__t", ["user_id"], ["v"], [(0,), (10,), (39,)])
        assert got == [None, (2.0,), (2.0,)]
        clients = masters(redis_cluster)
        stored = [(c, k) for c in clients for k in c.scan_iter(match=prefix + ":d:*")]
        marks = [(c, k) for c, k in stored if b";live{" in k]
        stored = [(c, k) for c, k in stored if b";live{" not in k]
        assert len(stored) == 30, "rows past their ttl were never kept"
        assert all(0 < c.pttl(k) <= ttl * 1000 for c, k in stored)
        assert len(marks) == 128 and all(c.pttl(k) == -1 for c, k in marks), (
            "the generation's markers last as long as it does"
        )
    finally:
        store.close()
        drop_prefix(redis_cluster.cluster_url, prefix)


def test_a_transaction_over_two_workspaces_is_refused(redis_cluster):
    store = RedisOnlineStore(redis_cluster.cluster_url, prefix="tx" + uuid.uuid4().hex[:8])
    columns = [("event_timestamp", "timestamp"), ("v", "float64")]
    try:
        with pytest.raises(StoreFailure, match="one workspace's slot"), store.transaction() as w:
            w.ensure_table("a__t", [("k", "int64")], columns)
            w.ensure_table("b__t", [("k", "int64")], columns)
        assert not store.has_table("a__t"), "nothing written"
    finally:
        store.close()
        drop_prefix(redis_cluster.cluster_url, store.prefix)


@pytest.mark.slow  # a private cluster (~5 s to start) and a master's restart
def test_a_dead_master_is_a_503_store_error_and_the_store_recovers_when_it_is_back(
    make_repo, redis_cluster_factory, monkeypatch
):
    """The store configured by CONTEXTKIT_ONLINE_STORE; a master (not the workspace's) killed:
    503 store_error; restarted empty: the same store serves again by itself, the lost rows are
    missing, and the real ``contextkit online rebuild`` writes them back."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from contextkit.stores._redis_keyspace import slot_of

    cluster = redis_cluster_factory()
    monkeypatch.setenv("CONTEXTKIT_ONLINE_STORE", cluster.cluster_url)
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table(30)})
    ctx = contextkit.connect(root, workspace="prod")
    store = ctx.online
    assert isinstance(store, RedisOnlineStore) and store.cluster
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=NOW)
    reader = ctx.service_reader("svc")
    assert features(reader.read(store, {"user_id": [1]}, now=NOW))["latest.x"] == [1.0]
    users = {"user_id": list(range(30))}
    nodes = store._redis.nodes_manager
    owner = nodes.get_node_from_slot(slot_of(store._keys.meta_key("prod__latest"))).port
    victim = next(n for n in cluster.nodes if n.port != owner)

    victim.kill()
    try:
        with pytest.raises(StoreUnavailableError) as err:
            reader.read(store, users, now=NOW)
        assert err.value.http_status == 503 and err.value.code == "store_error"
        assert "a master of Redis Cluster online store redis+cluster://" in err.value.message
        client = TestClient(create_app(ctx, auth=False))
        answer = client.post("/v1/features", json={"service": "svc", "entities": users})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "store_error"
        assert "MISSING" not in answer.text
    finally:
        victim.restart()  # back, empty, with its slots (nodes.conf kept)
    cluster.wait_ok()
    got = None
    for _ in range(100):  # the store finds the master again by itself: no restart
        try:
            got = features(reader.read(store, users, now=NOW))
            break
        except StoreUnavailableError:
            time.sleep(0.1)
    assert got is not None, "the store did not serve again"
    lost = [u for u, x in zip(users["user_id"], got["latest.x"], strict=True) if x is None]
    assert 0 < len(lost) < 30, "the restarted master's rows are gone, the others' served"

    cli = Path(sys.executable).with_name("contextkit")
    done = subprocess.run(
        [str(cli), "online", "rebuild", "--repo", str(root), "--workspace", "prod", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)["batch_rows"] == {"latest": 30, "spend": 30}
    got = features(reader.read(store, users, now=NOW))
    assert got["latest.x"] == [float(u) for u in range(30)]
    ctx.close()


def test_a_read_of_two_tables_in_two_workspaces_reads_both(redis_cluster):
    prefix = "ws" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(redis_cluster.cluster_url, prefix=prefix)
    columns = [("event_timestamp", "timestamp"), ("v", "float64")]
    try:
        store.replace_table("a__t", [("k", "int64")], columns, [(1, 0, 1.0)])
        store.replace_table("b__t", [("k", "int64")], columns, [(1, 0, 2.0)])
        reads = [TableRead(t, ["k"], ["v"], [(1,), (2,)]) for t in ("a__t", "b__t", "c__t")]
        assert store.read_many(reads) == [[(1.0,), None], [(2.0,), None], None]
    finally:
        store.close()
        drop_prefix(redis_cluster.cluster_url, prefix)


def test_the_configuration_names_a_cluster_and_bad_cluster_settings_are_clear(
    tmp_path, monkeypatch, redis_cluster
):
    """``CONTEXTKIT_ONLINE_STORE=redis+cluster://...`` opens the store on the cluster; a database
    other than 0 or a prefix with a brace is refused at once, saying why."""
    (tmp_path / "contextkit.yaml").write_text(
        "project: shop\nonline_store: {url: 'redis://127.0.0.1:1/0', prefix: 'cfg'}\n"
    )
    monkeypatch.setenv("CONTEXTKIT_ONLINE_STORE", redis_cluster.cluster_url)
    ctx = contextkit.connect(tmp_path)
    try:
        assert isinstance(ctx.online, RedisOnlineStore) and ctx.online.cluster
        assert ctx.online.prefix == "cfg" and not ctx.online.has_table("prod__spend")
    finally:
        ctx.close()
    port = redis_cluster.nodes[0].port
    with pytest.raises(StoreFailure, match="database 0 only"):
        RedisOnlineStore(f"redis+cluster://:pw@127.0.0.1:{port}/3", prefix="x")
    with pytest.raises(StoreFailure, match="brace") as info:
        RedisOnlineStore(redis_cluster.cluster_url, prefix="ck:{shop}")
    assert "prefix" in (info.value.hint or "")


def test_a_transaction_never_writes_into_a_published_snapshot(redis_cluster):
    """A materialized table's rows are spread over the masters: a transaction (one slot) that
    reaches it is refused, saying why, and writes nothing."""
    prefix = "sn" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(redis_cluster.cluster_url, prefix=prefix)
    columns = [("event_timestamp", "timestamp"), ("v", "float64")]
    try:
        store.replace_table("prod__t", [("k", "int64")], columns, [(1, 0, 1.0)])
        refused = pytest.raises(StoreFailure, match="published by a materialization")
        with refused, store.transaction() as w:
            w.upsert("prod__t", ["k", "event_timestamp", "v"], [(1, 0, 9.0)])
        assert store.read("prod__t", ["k"], ["v"], [(1,)]) == [(1.0,)]
    finally:
        store.close()
        drop_prefix(redis_cluster.cluster_url, prefix)


def test_a_lost_workspace_master_leaves_no_stale_rows_in_the_next_snapshot(redis_cluster):
    """The workspace's master restarting empty takes the table's meta and generation counter,
    while other masters keep rows of that generation: the next snapshot (counter at 1 again)
    never serves them."""
    from redis.cluster import RedisCluster

    prefix = "lost" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(redis_cluster.cluster_url, prefix=prefix)
    columns = [("event_timestamp", "timestamp"), ("v", "float64")]
    admin = RedisCluster.from_url(redis_cluster.url)
    try:
        store.replace_table("prod__t", [("k", "int64")], columns, [(k, 0, 1.0) for k in range(40)])
        for key in list(admin.scan_iter(match="{" + prefix + ":prod}*")):
            admin.unlink(key)  # what the workspace's master lost; the rows elsewhere stay
        fresh = RedisOnlineStore(redis_cluster.cluster_url, prefix=prefix)  # a new process
        fresh.replace_table("prod__t", [("k", "int64")], columns, [(1, 0, 2.0)])
        got = fresh.read("prod__t", ["k"], ["v"], [(k,) for k in range(40)])
        assert got == [None, (2.0,)] + [None] * 38
        fresh.close()
    finally:
        admin.close()
        store.close()
        drop_prefix(redis_cluster.cluster_url, prefix)


def test_several_seed_nodes_reach_the_cluster_when_the_first_is_down(redis_cluster):
    """``redis+cluster://:pw@a:1,b:2/0``: the first seed that answers is enough; the password of
    such a URL is masked like any other's."""
    from tests.backends import free_port

    nodes = ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster.nodes)
    url = f"redis+cluster://127.0.0.1:{free_port()},{nodes}/0"  # the first seed: nothing there
    prefix = "seed" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(url, prefix=prefix)
    columns = [("event_timestamp", "timestamp"), ("v", "float64")]
    try:
        store.replace_table("prod__t", [("k", "int64")], columns, [(1, 0, 1.0)])
        assert store.read("prod__t", ["k"], ["v"], [(1,)]) == [(1.0,)]
    finally:
        store.close()
        drop_prefix(redis_cluster.cluster_url, prefix)
    masked = repr(RedisOnlineStore(url.replace("://", "://:hunter2@"), prefix="x"))
    assert "hunter2" not in masked and ":***@127.0.0.1:" in masked and nodes in masked


@pytest.mark.slow  # a private cluster (~5 s to start), a master's restart and a server start
def test_a_master_restarted_empty_is_noticed_at_start_up_and_its_rows_rebuilt(
    make_repo, redis_cluster_factory, monkeypatch
):
    """A master that holds no workspace tag (so metas and stream state survive) restarts
    empty: a slice of every batch view's entities is gone. The next serving start-up notices
    (the generations' markers on that master are gone), rebuilds those views, and every
    entity answers what it answered before."""
    from contextkit.compute.online_rebuild import views_to_rebuild
    from contextkit.stores._redis_keyspace import slot_of

    cluster = redis_cluster_factory()
    monkeypatch.setenv("CONTEXTKIT_ONLINE_STORE", cluster.cluster_url)
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table(30)})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=NOW)
    ingest_records(ctx, "clicks", [{"user_id": 3, "price": 2.5, "ts": NOW}], now=NOW)
    body = {"service": "svc", "entities": {"user_id": list(range(30))}}
    before = TestClient(create_app(ctx, auth=False)).post("/v1/features", json=body).json()
    names = before["metadata"]["feature_names"]
    assert names[:2] == ["user_id", "latest.x"]
    assert before["results"][1]["values"] == [float(u) for u in range(30)]
    assert views_to_rebuild(ctx.runtime) == []
    store = ctx.online
    owner = cluster.owner(slot_of(store._keys.meta_key("prod__latest")))
    victim = next(n for n in cluster.nodes if n is not owner)
    ctx.close()

    victim.restart()  # empty, with its slots (nodes.conf kept)
    cluster.wait_ok()
    ctx = contextkit.connect(root, workspace="prod")  # a new serving process
    got = features(ctx.service_reader("svc").read(ctx.online, {"user_id": list(range(30))}))
    lost = [u for u, x in enumerate(got["latest.x"]) if x is None]
    assert 0 < len(lost) < 30, "the restarted master's rows are gone, the others' served"
    assert sorted(views_to_rebuild(ctx.runtime)) == ["latest", "spend"]

    with TestClient(create_app(ctx, auth=False, warm=True)) as client:
        for _ in range(600):  # the warm-up rebuilds the lost views, then says ready
            health = client.get("/health")
            if health.json()["status"] != "starting":
                break
            time.sleep(0.1)
        assert health.status_code == 200, health.text
        after = client.post("/v1/features", json=body).json()
    assert after["results"] == before["results"]
    assert views_to_rebuild(ctx.runtime) == []
    ctx.close()
