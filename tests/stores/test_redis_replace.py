"""Replacing a materialized table on Redis (``RedisOnlineStore.replace_table``): a re-run
leaves no key of the generation it replaced, on one server and on a cluster, whatever changed
between the runs; a failed re-run leaves the old rows served and nothing of its own behind.

Keys are counted with SCAN against real servers (tests/backends.py).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from contextkit.stores.online import TableRead
from contextkit.stores.redis_online import RedisOnlineStore

pytest_plugins = ["backends"]

SPEND = "prod__user_spend"
USER_KEY = [("user_id", "int64")]
COLS = [("event_timestamp", "timestamp"), ("amount", "float64"), ("tier", "string")]
T = 1_699_999_800_000_000


def rows(users, scale: float = 1.0, at: int = T) -> list[tuple]:
    return [(u, at + u, u * scale, f"tier{u % 3}") for u in users]


class Keys:
    """A client that counts a prefix's keys by SCAN (on every master of a cluster)."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis
        from redis.cluster import RedisCluster

        plain = url.replace("+cluster", "", 1)
        self.cluster = plain != url
        self.client = RedisCluster.from_url(plain) if self.cluster else redis.Redis.from_url(plain)
        self.prefix = prefix

    def all(self, table: str) -> list[str]:
        """Every data key of ``table`` (rows, and a generation's other keys), of any
        generation: ``P:d:TABLE:GEN:KEY`` or ``P:d:TABLE:GEN;...``."""
        found = self.client.scan_iter(match=f"{self.prefix}:d:{table}:*", count=1000)
        return sorted(k.decode()[len(f"{self.prefix}:d:{table}:") :] for k in found)

    def data(self, table: str) -> list[str]:
        """The row keys of ``table``, of any generation (``GEN:KEY``)."""
        return [k for k in self.all(table) if ":" in k.split(";", 1)[0]]

    def generations(self, table: str) -> set[str]:
        """The generations any data key of ``table`` belongs to."""
        return {re.split("[:;]", k, maxsplit=1)[0] for k in self.all(table)}

    def drop(self) -> None:
        for key in list(self.client.scan_iter(match=self.prefix + ":*", count=1000)):
            self.client.unlink(key)
        for key in list(self.client.scan_iter(match="{" + self.prefix + ":*", count=1000)):
            self.client.unlink(key)
        self.client.close()


@pytest.fixture(params=["redis", "redis-cluster"])
def replaced(request) -> Iterator[tuple[RedisOnlineStore, Keys]]:
    """A store writing in chunks of 100 rows (so a table spans many), and its key counter."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        url = request.getfixturevalue("redis_cluster").cluster_url
    prefix = "t" + uuid.uuid4().hex[:10]
    store = RedisOnlineStore(url, prefix=prefix, chunk_rows=100)
    keys = Keys(url, prefix)
    yield store, keys
    store.close()
    keys.drop()


def amounts(store: RedisOnlineStore, users) -> list:
    got = store.read(SPEND, ["user_id"], ["amount"], [(u,) for u in users])
    return [None if r is None else r[0] for r in got]


def test_a_rerun_leaves_no_key_of_the_generation_it_replaced(replaced):
    store, keys = replaced
    # The same rows (the common re-run), then rows gone, added, changed; past generation 9
    # (whose names are one character shorter than generation 10's).
    runs = [range(1000)] * 3 + [range(0, 1000, 2), range(500, 1700), range(1700)] * 3
    for n, users in enumerate(runs, start=1):
        assert store.replace_table(SPEND, USER_KEY, COLS, rows(users, scale=n)) == len(users)
        assert len(keys.data(SPEND)) == len(users)
        assert len(keys.generations(SPEND)) == 1
        first, last = users[0], users[-1]
        assert amounts(store, [first, last, 5000]) == [first * n, last * n, None]


def test_a_rerun_of_a_table_with_a_ttl_leaves_no_old_key(replaced):
    store, keys = replaced
    old = T  # rows of 2023: long past a one-hour ttl, so Redis drops them on write
    for _ in range(3):
        fresh = rows(range(200), at=(1 << 62) // 1000)  # far in the future: kept
        stale = rows(range(200, 260), at=old)
        store.replace_table(SPEND, USER_KEY, COLS, fresh + stale, ttl_seconds=3600)
        assert len(keys.data(SPEND)) == 200
        assert len(keys.generations(SPEND)) == 1
        assert amounts(store, [1, 201]) == [1.0, None]


def test_keys_a_transaction_added_to_a_replaced_table_go_with_its_next_rerun(redis_server):
    # A transaction may upsert into a materialized table on one Redis: the next re-run must
    # find those keys too, though they are not among the keys the table was written with.
    prefix = "t" + uuid.uuid4().hex[:10]
    store = RedisOnlineStore(redis_server.url, prefix=prefix, chunk_rows=100)
    keys = Keys(redis_server.url, prefix)
    try:
        store.replace_table(SPEND, USER_KEY, COLS, rows(range(300)))
        with store.transaction() as w:
            w.upsert(SPEND, ["user_id", "event_timestamp", "amount", "tier"], [(9999, T, 1.5, "x")])
        assert amounts(store, [9999]) == [1.5]
        store.replace_table(SPEND, USER_KEY, COLS, rows(range(300)))
        assert len(keys.data(SPEND)) == 300
        assert len(keys.generations(SPEND)) == 1
        assert amounts(store, [9999, 299]) == [None, 299.0]
    finally:
        store.close()
        keys.drop()


def test_a_failed_rerun_leaves_the_old_rows_served_and_nothing_of_its_own(replaced):
    store, keys = replaced
    store.replace_table(SPEND, USER_KEY, COLS, rows(range(1000)))
    before = keys.data(SPEND)

    def rows_then_crash():
        yield from rows(range(2000), scale=10.0)  # twenty chunks written, then the source fails
        raise RuntimeError("the source went away")

    with pytest.raises(RuntimeError, match="went away"):
        store.replace_table(SPEND, USER_KEY, COLS, rows_then_crash())
    assert keys.data(SPEND) == before
    assert amounts(store, [0, 999, 1500]) == [0.0, 999.0, None]
    other = RedisOnlineStore(store.url, prefix=store.prefix)  # a reader that never saw it
    try:
        reads = [TableRead(SPEND, ["user_id"], ["amount"], [(7,), (1500,)])]
        assert other.read_many(reads) == [[(7.0,), None]]
    finally:
        other.close()

    store.replace_table(SPEND, USER_KEY, COLS, rows(range(10), scale=3.0))  # and it recovers
    assert len(keys.data(SPEND)) == 10
    assert amounts(store, [9, 999]) == [27.0, None]


def test_a_rerun_of_the_same_keys_needs_no_scan_of_the_keyspace(redis_factory):
    # The old generation goes by name: on a Redis holding other data, a re-run's cost does
    # not grow with the keyspace (checked with Redis's own command counts).
    server = redis_factory()
    prefix = "t" + uuid.uuid4().hex[:10]
    store = RedisOnlineStore(server.url, prefix=prefix, chunk_rows=100)
    keys = Keys(server.url, prefix)
    try:
        store.replace_table(SPEND, USER_KEY, COLS, rows(range(1000)))
        keys.client.config_resetstat()
        store.replace_table(SPEND, USER_KEY, COLS, rows(range(1000), scale=2.0))
        stats = keys.client.info("commandstats")
        assert "cmdstat_scan" not in stats
        assert stats["cmdstat_unlink"]["calls"] == 10  # one per chunk written
        assert len(keys.data(SPEND)) == 1000
        assert amounts(store, [999]) == [1998.0]
    finally:
        store.close()
        keys.drop()


@pytest.mark.parametrize("why", ["too many keys to keep", "a meta of an earlier version"])
def test_when_the_old_generation_cannot_go_by_name_a_scan_finds_it(redis_server, monkeypatch, why):
    from contextkit.stores import redis_online
    from contextkit.stores._redis_keyspace import TableMeta

    prefix = "t" + uuid.uuid4().hex[:10]
    store = RedisOnlineStore(redis_server.url, prefix=prefix, chunk_rows=100)
    keys = Keys(redis_server.url, prefix)
    try:
        store.replace_table(SPEND, USER_KEY, COLS, rows(range(500)))
        if why == "too many keys to keep":
            monkeypatch.setattr(redis_online, "KEPT_KEYS_MAX_BYTES", 1000)
        else:  # a meta without the key count, as versions before it wrote them
            meta_key = f"{prefix}:m:{SPEND}"
            raw = keys.client.get(meta_key)
            keys.client.set(meta_key, TableMeta.decode(raw, prefix, SPEND).without_rows())
        store.replace_table(SPEND, USER_KEY, COLS, rows(range(500), scale=2.0))
        assert len(keys.data(SPEND)) == 500
        assert len(keys.generations(SPEND)) == 1
        assert amounts(store, [499]) == [998.0]
    finally:
        store.close()
        keys.drop()
