"""Transactions of the Redis online store: WATCHed reads, queued writes, one MULTI/EXEC.

See the ``redis_online`` module docstring for the keys; ``OnlineWriter`` for the contract. On a
Redis Cluster every key a transaction touches carries its workspace's hash tag, so the writer
binds to that slot's master at its first table and runs there as on a single Redis; a table
of another workspace in the same transaction is refused.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import orjson

from contextkit.stores._redis_keyspace import (
    FLAT,
    LOG,
    PART,
    Keyspace,
    TableMeta,
    check_layout,
    key_part,
    now_us,
)
from contextkit.stores.errors import StoreFailure, WriteConflict
from contextkit.stores.online import OnlineWriter

# Deletes a partitioned table's rows whose last key is below ARGV[1] (see ``delete_before``).
_DELETE_BEFORE = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
for _, m in ipairs(members) do
  local cut = string.find(m, '\\0', 1, true)
  redis.call('HDEL', ARGV[2] .. string.sub(m, 1, cut - 1), string.sub(m, cut + 1))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return #members
"""
_log = logging.getLogger("contextkit.stores.redis_online")

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"


class RedisOnlineWriter(OnlineWriter):
    """Writes inside one ``RedisOnlineStore.transaction``: reads WATCH their keys, writes
    are queued and sent in one MULTI/EXEC at the end."""

    def __init__(self, keys: Keyspace, lock_timeout: float) -> None:
        self._keys = keys
        self._lock_timeout = lock_timeout
        self._redis: Any = None  # the client of the transaction's master, at the first table
        self._pipe: Any = None
        self._slot: int | None = None
        self._metas: dict[str, TableMeta] = {}
        self._new: dict[str, bytes] = {}  # metas to create at commit
        self._queued: list[tuple] = []
        self._overlay: dict[str, dict[tuple, list]] = {}  # rows upserted here, by table and key
        self._locks: dict[str, str] = {}  # lock key -> token

    def _translated(self, action: str):
        return self._keys.translated(action, transaction=True)

    # -- metas and locks --------------------------------------------------------------------------

    def _bind(self, table: str) -> None:
        """Pick the client at the first table: the store's, or on a cluster the master of the
        table's slot (every key of the transaction must be in that slot)."""
        if self._keys.cluster:
            slot = self._keys.slot(self._keys.meta_key(table))
            if self._slot is not None and slot != self._slot:
                raise StoreFailure(
                    f"online table {table!r} is in another workspace than the tables this "
                    "transaction already wrote: a Redis Cluster transaction stays in one "
                    "workspace's slot"
                )
            if self._redis is None:
                cluster = self._keys.client
                node = cluster.nodes_manager.get_node_from_slot(slot)
                self._redis = cluster.get_redis_connection(node)
            self._slot = slot
        elif self._redis is None:
            self._redis = self._keys.client
        if self._pipe is None:
            self._pipe = self._redis.pipeline(transaction=True)

    def _meta(self, table: str) -> TableMeta | None:
        self._bind(table)
        meta = self._metas.get(table)
        if meta is None:
            key = self._keys.meta_key(table)
            self._pipe.watch(key)
            raw = self._redis.get(key)
            if raw is None:
                return None
            meta = self._metas[table] = TableMeta.decode(raw, self._keys.prefix, table)
        if meta.spread:  # its rows are in other slots than the transaction's
            raise StoreFailure(
                f"online table {table!r} was published by a materialization, spread over the "
                "Redis Cluster's slots: it is replaced, not written in transactions",
                hint="write stream state to tables created with ensure_table",
            )
        if meta.layout == LOG:
            self._lock(table)
        return meta

    def _lock(self, table: str) -> None:
        key = self._keys.lock_key(table)
        if key in self._locks:
            return
        token = uuid.uuid4().hex
        ttl_ms = int(self._lock_timeout * 3000)
        deadline = time.monotonic() + self._lock_timeout
        pause = 0.001
        while not self._redis.set(key, token, nx=True, px=ttl_ms):
            if time.monotonic() > deadline:
                raise WriteConflict(
                    f"ingest log {table!r} stayed locked by another writer for "
                    f"{self._lock_timeout:.0f} s",
                    hint="another node is writing this source; retry the request",
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        self._locks[key] = token
        self._pipe.watch(key)  # if the lock expires and is taken, the commit fails

    def ensure_table(
        self,
        table: str,
        keys: Sequence[tuple[str, str]],
        columns: Sequence[tuple[str, str]],
        *,
        log: bool = False,
        ttl_seconds: int | None = None,
    ) -> None:
        with self._translated(f"creating online table {table!r}"):
            if self._meta(table) is not None:
                return
            gen = int(self._redis.incr(self._keys.gen_key(table)))
            layout = LOG if log else PART if len(keys) >= 2 else FLAT
            data = self._keys.stream_data(table, gen) if self._keys.cluster else None
            raw = TableMeta.encode(gen, layout, keys, columns, ttl_seconds or None, data=data)
            self._new[table] = raw
            self._metas[table] = TableMeta.decode(raw, self._keys.prefix, table)
            if log:
                self._lock(table)

    def _require(self, table: str) -> TableMeta:
        meta = self._meta(table)
        if meta is None:
            raise StoreFailure(
                f"online table {table!r} does not exist", hint="create it with ensure_table"
            )
        return meta

    # -- reads (watched) --------------------------------------------------------------------------

    def existing(self, table: str, column: str, values: Sequence[Any]) -> set[Any]:
        with self._translated(f"reading online table {table!r}"):
            meta = self._meta(table)
            if meta is None or not values:
                return set()
            if meta.layout == LOG and column == "ingest_id":
                # Under the log's lock: no other writer adds ids until we commit.
                found = self._redis.mget([f"{meta.aux}id:{v}" for v in values])
                return {v for v, seq in zip(values, found, strict=True) if seq is not None}
            wanted = set(values)
            return {v for _, row in self._keys.scan_rows(table) if (v := row.get(column)) in wanted}

    def get(
        self, table: str, keys: Sequence[str], key_rows: Sequence[tuple], columns: Sequence[str]
    ) -> dict[tuple, tuple]:
        with self._translated(f"reading online table {table!r}"):
            meta = self._meta(table)
            if meta is None or not key_rows:
                return {}
            if meta.layout == LOG:
                raise StoreFailure(f"online table {table!r} is a log: it has no keyed rows")
            norm = [meta.norm_key(k) for k in key_rows]
            if meta.layout == FLAT:
                names = [meta.data + meta.key_suffix(k) for k in norm]
                self._pipe.watch(*names)
                found = self._redis.mget(names)
            else:
                parts = sorted({meta.data + meta.key_suffix(k[:-1]) for k in norm})
                self._pipe.watch(*parts)
                reads = self._redis.pipeline(transaction=False)
                for k in norm:
                    reads.hget(meta.data + meta.key_suffix(k[:-1]), key_part(k[-1]))
                found = reads.execute()
        now = now_us()
        overlay = self._overlay.get(table, {})
        out: dict[tuple, tuple] = {}
        for k, raw in zip(norm, found, strict=True):
            row = overlay.get(k)
            if row is None and raw is not None:
                row = meta.fresh(orjson.loads(raw), now)
            if row is not None:
                out[k] = meta.project(k, row, columns)
        return out

    # -- writes (queued) --------------------------------------------------------------------------

    def append_log(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], ingested_at: int
    ) -> tuple[int, int]:
        if not rows:
            return (0, 0)
        with self._translated(f"appending to ingest log {table!r}"):
            meta = self._require(table)
            check_layout(meta, table, LOG, "append_log")
            last = int(self._redis.incrby(meta.aux + "seq", len(rows)))
        first = last - len(rows) + 1
        where = [meta.index[c] for c in columns]
        norms = meta.col_norms
        for seq, row in enumerate(rows, start=first):
            values: list[Any] = [None] * len(meta.columns)
            for i, v in zip(where, row[1:], strict=True):
                values[i] = norms[i](v)
            ingest_id = row[0]
            member = orjson.dumps([seq, ingest_id, ingested_at, *values])
            self._queued.append(("ZADD", meta.aux + "log", seq, member))
            if ingest_id is not None:
                self._queued.append(("SET", f"{meta.aux}id:{ingest_id}", seq))
        return (first, last)

    def upsert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._translated(f"writing online table {table!r}"):
            meta = self._require(table)
        if meta.layout == LOG:
            raise StoreFailure(f"online table {table!r} is a log: use append_log")
        if meta.rows is not None:
            # A replaced table's meta counts its keys, so that the next replace can tell it
            # unlinked them all by name; keys written here are not in that count: drop it, and
            # the next replace finds them by SCAN (see ``RedisOnlineStore._drop_generation``).
            meta.raw, meta.rows = meta.without_rows(), None
            self._queued.append(("SET", self._keys.meta_key(table), meta.raw))
        key_at = [list(columns).index(k) for k, _ in meta.keys]
        value_at = [(meta.index[c], i) for i, c in enumerate(columns) if c in meta.index]
        norms = meta.col_norms
        overlay = self._overlay.setdefault(table, {})
        now_ms = time.time_ns() // 1_000_000
        for row in rows:
            key = meta.norm_key([row[i] for i in key_at])
            values: list[Any] = [None] * len(meta.columns)
            for at, i in value_at:
                values[at] = norms[at](row[i])
            overlay[key] = values
            value = orjson.dumps(values)
            ms = meta.expires_ms(values)
            if meta.layout == FLAT:
                name = meta.data + meta.key_suffix(key)
                if ms is not None and ms <= now_ms:
                    self._queued.append(("DEL", name))
                elif ms is not None:
                    self._queued.append(("SET", name, value, "PXAT", ms))
                else:
                    self._queued.append(("SET", name, value))
                continue
            name, f = meta.data + meta.key_suffix(key[:-1]), key_part(key[-1])
            self._queued.append(("HSET", name, f, value))
            if isinstance(key[-1], int | float):
                member = meta.key_suffix(key[:-1]) + "\0" + f
                self._queued.append(("ZADD", meta.aux + "idx", key[-1], member))
            if ms is not None:  # the partition lives as long as its freshest row
                self._queued.append(("PEXPIREAT", name, ms, "NX"))
                self._queued.append(("PEXPIREAT", name, ms, "GT"))

    def delete_before(self, table: str, column: str, low: int) -> int:
        with self._translated(f"deleting from online table {table!r}"):
            meta = self._meta(table)
            if meta is None:
                return 0
            if meta.layout != PART or meta.keys[-1][0] != column:
                raise StoreFailure(
                    f"online table {table!r} deletes by its last key only, not {column!r}"
                )
            index = meta.aux + "idx"
            stored = int(self._redis.zcount(index, "-inf", f"({low}"))
        overlay = self._overlay.get(table, {})
        for key in [k for k in overlay if k[-1] < low]:
            del overlay[key]
        self._queued.append(("EVAL", _DELETE_BEFORE, 1, index, low, meta.data))
        return stored

    # -- commit -----------------------------------------------------------------------------------

    def _commit(self) -> None:
        """MULTI/EXEC the queued writes; nothing else, so that a Redis error here (translated
        by the caller: WATCH or MOVED as a WriteConflict) always means nothing was written.
        The caller then runs :meth:`_committed` (or :meth:`_rollback` when this raised)."""
        pipe = self._pipe
        if pipe is None:
            return  # no table was touched
        if self._queued or self._new or self._locks:
            pipe.multi()
            for table, raw in self._new.items():
                pipe.set(self._keys.meta_key(table), raw)
            for command in self._queued:
                pipe.execute_command(*command)
            for key in self._locks:
                pipe.delete(key)
            pipe.execute()
            self._locks.clear()

    def _committed(self) -> None:
        """After a successful EXEC: the writes are in, so a failed clean-up (UNWATCH, a lock
        release; a MOVED reply if a resharding just moved the slot) must not be reported as a
        failed write, which ``transact`` would run again. It is logged; the locks expire."""
        import redis

        try:
            self._release()
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            _log.warning(
                "online write committed; releasing its connection or locks failed: %s", exc
            )

    def _rollback(self) -> None:
        """Best effort: nothing was sent but WATCHes and locks, which also expire by themselves."""
        import redis

        with suppress(redis.RedisError, redis.exceptions.RedisClusterException):
            self._release()

    def _release(self) -> None:
        if self._pipe is None:
            return
        try:
            self._pipe.reset()  # UNWATCH, connection back to the pool
        finally:
            for key, token in self._locks.items():
                self._redis.eval(_RELEASE, 1, key, token)
            self._locks.clear()
