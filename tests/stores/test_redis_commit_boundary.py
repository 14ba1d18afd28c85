"""Where a Redis Cluster transaction's MOVED reply means "nothing was written": only at the
EXEC. A MOVED that meets the clean-up after a successful EXEC (UNWATCH, the release of an
ingest log's lock) leaves the writes in: ``transact`` must not run the transaction again (an
ingest counted twice), and the clean-up's failure is logged, the lock expiring by itself.

A resharding that lands exactly between EXEC and the release cannot be timed from a test: the
release is made to meet a MOVED reply naming the slot's real owner, on a real cluster."""

from __future__ import annotations

import logging
import uuid

import pytest
from redis.exceptions import MovedError

from contextkit.stores._redis_keyspace import slot_of
from contextkit.stores._redis_writer import RedisOnlineWriter
from contextkit.stores.redis_online import RedisOnlineStore
from tests.stores.test_online_contract import drop_prefix

COLUMNS = [("event_timestamp", "timestamp"), ("n", "int64")]


@pytest.fixture
def store(redis_cluster):
    prefix = "cb" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(redis_cluster.cluster_url, prefix=prefix)
    yield store
    store.close()
    drop_prefix(redis_cluster.cluster_url, prefix)


def count_once(store: RedisOnlineStore) -> int:
    """Add one to a counter (read, then write: running it twice counts two)."""
    runs = []

    def work(w) -> None:
        runs.append(1)
        w.ensure_table("prod__c", [("k", "int64")], COLUMNS)
        have = w.get("prod__c", ["k"], [(1,)], ["n"]).get((1,))
        w.upsert("prod__c", ["k", "event_timestamp", "n"], [(1, 0, (have[0] if have else 0) + 1)])

    store.transact(work)
    return len(runs)


def test_a_moved_reply_after_a_successful_exec_is_no_conflict(
    redis_cluster, store, monkeypatch, caplog
):
    count_once(store)
    slot = slot_of(store._keys.meta_key("prod__c"))
    owner = redis_cluster.owner(slot)
    real = RedisOnlineWriter._release
    met = []

    def release(self) -> None:
        if not met:
            met.append(1)
            raise MovedError(f"{slot} 127.0.0.1:{owner.port}")
        real(self)

    monkeypatch.setattr(RedisOnlineWriter, "_release", release)
    with caplog.at_level(logging.WARNING, logger="contextkit.stores.redis_online"):
        runs = count_once(store)
    assert met and runs == 1, "the committed transaction was run again"
    assert store.read("prod__c", ["k"], ["n"], [(1,)]) == [(2,)]
    assert "online write committed; releasing" in caplog.text


def test_a_moved_reply_at_exec_is_still_a_conflict_run_again(redis_cluster, store, monkeypatch):
    count_once(store)
    slot = slot_of(store._keys.meta_key("prod__c"))
    owner = redis_cluster.owner(slot)
    real = RedisOnlineWriter._commit
    met = []

    def commit(self) -> None:
        if not met:  # answered MOVED before anything was queued to the server
            met.append(1)
            raise MovedError(f"{slot} 127.0.0.1:{owner.port}")
        real(self)

    monkeypatch.setattr(RedisOnlineWriter, "_commit", commit)
    assert count_once(store) == 2
    assert store.read("prod__c", ["k"], ["n"], [(1,)]) == [(2,)]
