"""The Redis online store while a Redis Cluster moves a slot between masters (a resharding),
driven step by step at known points (tests/backends.py: begin, move keys, end) on a private
3-master cluster, plain and TLS-only: a materialization writing through the migration
completes with every row readable (a re-run also deletes the generation it replaced on both
masters), and reads answer while a slot's keys are split between the two masters.

The rows of interest are put in one known slot with a hash tag in their entity key
(``{mig}7``): the store hashes a snapshot row's key as Redis does, tag included.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from contextkit.stores._redis_keyspace import slot_of
from contextkit.stores.redis_online import RedisOnlineStore
from tests.stores.test_online_contract import drop_prefix

SLOT = slot_of("mig")
KEY = [("entity", "string")]
COLUMNS = [("event_timestamp", "timestamp"), ("v", "float64")]
MOVING = [f"{{mig}}{i}" for i in range(30)]  # all in SLOT
OTHERS = [f"u{i}" for i in range(30)]  # over every master


def keys_in_slot(server, slot: int) -> int:
    with redis.Redis.from_url(server.url) as client:
        return client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)


@pytest.fixture(scope="module", params=["plain", "tls"])
def cluster(request, redis_cluster_factory):
    """A private cluster (plain, or TLS-only: ASKING and MIGRATE over TLS too): these tests
    move slots, which the session's cluster keeps as it is."""
    return redis_cluster_factory(tls=request.param == "tls")


@pytest.fixture
def store(cluster):
    prefix = "rs" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(cluster.cluster_url, prefix=prefix, chunk_rows=4)
    yield store
    store.close()
    drop_prefix(cluster.cluster_url, prefix)


def keys_of(server, prefix: str) -> list[bytes]:
    with redis.Redis.from_url(server.url) as client:
        return list(client.scan_iter(match=prefix + ":*", count=1000))


def entity_rows(scale: float) -> list[tuple]:
    """A row for each entity, the moving ones and the others interleaved."""
    pairs = zip(MOVING, OTHERS, strict=True)
    return [(e, 0, scale * n) for n, pair in enumerate(pairs) for e in pair]


def read_all(store: RedisOnlineStore) -> list:
    return store.read("prod__t", ["entity"], ["v"], [(e,) for e in MOVING + OTHERS])


def expected(scale: float) -> list:
    return [(scale * n,) for n in range(30)] * 2


def test_a_materialization_during_a_slot_migration_writes_every_row(cluster, store):
    """Chunks of 4 rows per master: the slot starts migrating after the first rows (later
    rows of the slot, new keys, are answered ASK: sent to the target behind ASKING), then the
    migration ends mid-write (the writer's slot map is stale: MOVED, sent to the new owner).
    The old code failed the write at the first ASK."""
    source = cluster.owner(SLOT)
    target = next(n for n in cluster.nodes if n is not source)

    def rows():
        for n, row in enumerate(entity_rows(1.0)):
            if n == 12:  # a few rows of the slot written (or in flight) to the source
                cluster.begin_migration(SLOT, source, target)
                cluster.migrate_keys(SLOT, source, target)
            if n == 36:
                cluster.migrate_keys(SLOT, source, target)  # what reached it meanwhile, if any
                cluster.end_migration(SLOT, target)
            yield row

    try:
        assert store.replace_table("prod__t", KEY, COLUMNS, rows()) == 60
    finally:  # a failed write leaves the slot moved all the same, for the next test
        if cluster.owner(SLOT) is not target:
            cluster.migrate_keys(SLOT, source, target)
            cluster.end_migration(SLOT, target)
    assert cluster.owner(SLOT) is target
    assert keys_in_slot(target, SLOT) == 30 and keys_in_slot(source, SLOT) == 0
    assert read_all(store) == expected(1.0)
    fresh = RedisOnlineStore(cluster.cluster_url, prefix=store.prefix)  # another process
    assert read_all(fresh) == expected(1.0)
    fresh.close()

    # A re-run after the move: the new generation written, the old one deleted everywhere.
    assert store.replace_table("prod__t", KEY, COLUMNS, entity_rows(2.0)) == 60
    assert read_all(store) == expected(2.0)
    assert keys_in_slot(target, SLOT) == 30


def test_reads_answer_while_a_slot_is_split_between_two_masters(cluster, store):
    """Half the slot's keys moved: the source answers the slot's MGET with TRYAGAIN (split
    into GETs: the source answers those it holds, ASK for the others); all moved: ASK (the
    target answers behind ASKING); migration ended: MOVED for a store that learnt the old
    map. Every read answers every row, in each state."""
    assert store.replace_table("prod__t", KEY, COLUMNS, entity_rows(3.0)) == 60
    assert read_all(store) == expected(3.0)  # the store learns the table's generation
    source = cluster.owner(SLOT)
    target = next(n for n in cluster.nodes if n is not source)
    cluster.begin_migration(SLOT, source, target)
    try:
        assert cluster.migrate_keys(SLOT, source, target, count=15) == 15
        assert keys_in_slot(source, SLOT) == 15 and keys_in_slot(target, SLOT) == 15
        assert read_all(store) == expected(3.0), "keys split: TRYAGAIN, then GET by GET"
        cluster.migrate_keys(SLOT, source, target)
        assert read_all(store) == expected(3.0), "all moved, the slot still the source's: ASK"

        # A re-run now: the new rows of the slot go to the target (ASK), and the replaced
        # generation's keys there are deleted too (the target acts on them behind ASKING).
        assert store.replace_table("prod__t", KEY, COLUMNS, entity_rows(4.0)) == 60
        assert read_all(store) == expected(4.0)
        stored = [k for n in cluster.nodes for k in keys_of(n, store.prefix)]
        per_node = {n.port: len(keys_of(n, store.prefix)) for n in cluster.nodes}
        assert len(stored) == 60 + 128, (
            f"an older generation's keys are left: keys per node {per_node} (the slot moved "
            f"from {source.port} to {target.port})"
        )
    finally:
        cluster.migrate_keys(SLOT, source, target)
        cluster.end_migration(SLOT, target)
    assert read_all(store) == expected(4.0), "the slot is the target's: MOVED"
    assert read_all(store) == expected(4.0)


def test_an_ingest_after_its_workspace_slot_moved_runs_on_the_new_owner(cluster, store):
    """A transaction (an ingest) runs on the master of its workspace's slot. Once a resharding
    moved that slot, the first try is answered MOVED with nothing written: the slot map is
    patched and ``transact`` runs it again on the new owner. Before, every ingest failed (503)
    until a read happened to refresh the slot map."""

    def ingest(v: float) -> None:
        def work(w) -> None:
            w.ensure_table("prod__s", [("k", "int64")], COLUMNS)
            w.upsert("prod__s", ["k", "event_timestamp", "v"], [(1, 0, v), (2, 0, v)])

        store.transact(work)

    ingest(1.0)
    slot = slot_of(store._keys.meta_key("prod__s"))
    source = cluster.owner(slot)
    target = next(n for n in cluster.nodes if n is not source)
    cluster.begin_migration(slot, source, target)
    cluster.migrate_keys(slot, source, target)
    cluster.end_migration(slot, target)
    ingest(2.0)
    assert store.read("prod__s", ["k"], ["v"], [(1,), (2,)]) == [(2.0,), (2.0,)]
    assert keys_in_slot(target, slot) > 0 and keys_in_slot(source, slot) == 0
