"""The Redis online store: the ``OnlineStore`` interface on one Redis server or a Redis Cluster,
for several serving nodes.

**Keys.** Every key starts with the store's prefix (one per project, e.g. ``ck:shop``); table
names already hold the workspace (``<workspace>__<view>``)::

    P:m:TABLE                   the table's meta: a JSON pointer to its live generation, with the
                                layout, key and value columns and ttl (one GET tells a reader all)
    P:g:TABLE                   generation counter (INCR)
    P:d:TABLE:GEN:KEY           flat layout: one JSON array of the row's values per key
    P:d:TABLE:GEN:PART          partitioned layout (keyed tables created by ``ensure_table`` with
                                2+ keys, e.g. tiles): one hash per entity, field = the last key
                                (the tile), value = the row; so a window read is one HGETALL
    P:d:TABLE:GEN;idx           partitioned: a sorted set of (entity, field) by the last key, for
                                ``delete_before``
    P:d:TABLE:GEN;log|seq|id:X  log layout: rows in a sorted set by seq, the seq counter, one key
                                per ingest id
    P:l:TABLE                   a log's write lock (seqs must increase in commit order)

**Reads** of any number of tables go out as one pipeline: per table the data commands for the
generation this store last saw (MGET for flat tables, HGET/HGETALL for partitioned ones) between
two MGETs of the metas. If a meta changed (a new snapshot), the changed tables are read again; so a
read is one round trip except right after a flip, and it always sees one snapshot per table.

**Replacing a table** writes a new generation in pipelined chunks (MSET, or SET PXAT when the
table has a ttl), then flips the meta with ``SET ... GET`` and deletes the generation it
replaced. Readers see the old rows or the new ones, never a mix; a failed write deletes its
partial generation (SCAN + UNLINK) and changes nothing. Re-running it writes the same rows
again. The meta records how many keys its generation was written with (``rows``), and on one
Redis a replace keeps the names of the keys it wrote (up to ``KEPT_KEYS_MAX_BYTES``): after the
flip it UNLINKs those names under the old generation's prefix, and when that removed as many
keys as the old meta counts, the old generation is gone without a SCAN of the keyspace (which
walks the new generation's keys too, and every other table's). Otherwise (keys that left the
table, rows expired by their ttl, keys a transaction added, a meta written before the count
existed, too many keys kept, generation 9 -> 10) a SCAN + UNLINK finds the rest, as before. On
a cluster the old generation is found by SCAN on every master.

**Transactions** (ingest) WATCH what they read (metas, the rows merged into, the log lock),
queue every write, and commit them in one MULTI/EXEC; a concurrent change makes the commit fail
with :class:`WriteConflict` and nothing is written (``OnlineStore.transact`` runs it again). A
log is written under a short lock so that seqs increase in commit order, as in SQLite.

**TTL.** A table given ``ttl_seconds`` keeps rows with an ``event_timestamp``: each key expires
(PEXPIREAT) when its row becomes that old, and reads drop rows already that old. Redis may lose
recent writes on a crash: durability of ingest belongs to a durable log (issue 14), not here.

**Errors** become :class:`StoreServerUnavailable` (unreachable, auth, READONLY, OOM, loading) or
:class:`StoreFailure`, naming the URL with its password masked, within the socket timeouts;
the connection pool reconnects by itself when the server is back.

Values are JSON (orjson), normalized by column type as SQLite's column affinity would store
them, so both stores return the same Python values. Not supported: non-finite floats (stored as
null). A Redis at maxmemory keeps serving reads.

**Redis Cluster** (``redis+cluster://`` or ``rediss+cluster://``, naming any one master; the
client learns the others). A cluster runs a multi-key command, a WATCH or a MULTI/EXEC only
when all its keys hash to one slot, so the keys are placed by what must be atomic:

- *A materialization's publish* is the flip of one key (the meta): atomic wherever the rows
  are. So a replaced table's rows carry no hash tag (``P:d:TABLE:GEN:KEY``): each entity hashes
  to its own slot and a view spreads over every master, which is where the bulk of the data
  (batch views) belongs. Rows are written as ``SET .. GET`` per key (a cluster MSET must stay
  in one slot), packed per master, one chunk per master in flight.
- *An ingest* (the log's applied marker, the latest values and the tiles of every stream view
  of a source, merged read-modify-write) must commit whole, or a retried batch would count
  tiles twice. It spans entities and views, so no per-entity or per-view tag can hold it; the
  unit is the workspace: metas, counters, locks and the rows of tables written in transactions
  carry the tag ``{P:WORKSPACE}`` (``{P:WORKSPACE}:m:TABLE``, ``{P:WORKSPACE}:d:TABLE:GEN:...``),
  so a transaction is one MULTI/EXEC on that slot's master (the writer binds to it at its first
  table), and a tile window read is one HGETALL there. The cost: a workspace's stream state
  lives on one master (its reads and writes do not spread). Workspaces spread over masters.
- *A request's reads* go out as one batch (``_redis_cluster.ClusterBatch``): each master it
  touches gets its pre-packed commands at once, then the answers are read, so a request costs
  one round trip per master (in parallel), never one per key or view. Metas (one slot per
  workspace) are read by one MGET before and one after the data; rows of a spread table by one
  MGET per slot. The order of commands holds only on one master, so a spread table with a
  missing row has its meta read once more (that row may be a key a concurrent flip just
  deleted); see :meth:`_read_tables`. (redis-py's cluster pipeline does the same but resolves
  a routing policy per command: 8 ms for a 100-key request, against 1.4 ms here.)

The meta names where its rows live (``data``; ``spread`` for the untagged ones), and a meta
without it has them where a single Redis puts them. So the **single-node layout is unchanged**:
data written by earlier versions is read as it is, with nothing to migrate. A deployment moving
from a single Redis to a cluster starts the cluster empty and fills it with ``contextkit online
rebuild`` (data does not travel between servers).

A slot migration (resharding) does not fail a materialization or a read: a command answered
MOVED goes to the slot's new owner (the slot map patched), ASK to the migration's target
behind ASKING, and a read's MGET answered TRYAGAIN (the slot's keys split between the two)
as one GET per key (``_redis_cluster``: ``SpreadWriter``, ``ClusterBatch``; the old
generation's delete acts on an importing master's keys behind ASKING too). A transaction
answered MOVED (its workspace's slot moved) patches the slot map and is a ``WriteConflict``
(nothing written), so ``transact`` runs it again on the new owner; one during the migration
of its very slot (ASK) fails with a clear error, as does a write during a failover
(CLUSTERDOWN), to be run again; reads refresh the slot map and retry once.
A master that is down is a ``503 store_error`` naming the store; the store recovers by itself
when the cluster serves every slot again. A master restarted empty lost its rows: a lost
workspace master takes metas and counters too (so a snapshot's rows live under a unique
``GEN.TOKEN`` name that a counter starting over never reuses, and ``has_table`` says the
table is gone); another master takes a slice of each snapshot, which the generation's marker
keys reveal (:meth:`RedisOnlineStore.lost_tables`). Serving's start-up rebuilds both.

**TLS**: ``rediss://`` URLs verify the server's certificate; ``?ssl_ca_certs=/path/ca.pem`` (any
of redis-py's ``ssl_*`` URL options) names a private CA. A failed handshake says so.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from contextkit.stores._redis_cluster import (
    ClusterBatch,
    SpreadWriter,
    lost_generations,
    unlink_on,
)
from contextkit.stores._redis_keyspace import (
    EVENT_TIMESTAMP,
    FLAT,
    LOG,
    PART,
    Keyspace,
    TableMeta,
    as_int,
    check_layout,
    key_part,
    log_columns,
    normalizer,
    now_us,
    resp_bulk,
    resp_head,
    slot_of,
)
from contextkit.stores._redis_writer import RedisOnlineWriter
from contextkit.stores.errors import StoreFailure, mask_url
from contextkit.stores.online import OnlineStore, TableRead

_NETLOC = re.compile(r"^(?P<scheme>[^:]+://)(?P<auth>[^@/?]*@)?(?P<hosts>[^/?]*)(?P<tail>.*)$")


def _first_host_url(url: str) -> str:
    """``url`` naming only the first of its comma-separated hosts."""
    m = _NETLOC.match(url)
    if m is None:
        return url
    return m["scheme"] + (m["auth"] or "") + m["hosts"].split(",")[0] + m["tail"]


def _seed_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) of each comma-separated host of a cluster URL (port 6379 if none)."""
    m = _NETLOC.match(url)
    if m is None or not m["hosts"]:
        raise ValueError("no host")
    seeds = []
    for part in m["hosts"].split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part, "", "6379")
        if not host or not port.isdigit():
            raise ValueError(f"{part!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    return seeds


# What a replace keeps of the key names it wrote (RESP-packed, ~40 bytes a key), to unlink the
# generation it replaces by name; past it, that generation is found by SCAN.
KEPT_KEYS_MAX_BYTES = 128 << 20


class WrittenKeys:
    """The keys a generation was written with (up to ``limit`` bytes of them), kept per chunk
    as the RESP bulk strings packed for its ``EXISTS``; :meth:`renamed` makes them the UNLINKs
    of the same keys in another generation."""

    def __init__(self, data: str, limit: int) -> None:
        self.data = data.encode()
        self.limit = limit
        self.size = 0
        self.chunks: list[tuple[int, bytes]] | None = []  # (keys, packed names); None: too many

    def add(self, count: int, names: bytes) -> None:
        if self.chunks is None:
            return
        self.size += len(names)
        if self.size > self.limit:
            self.chunks = None
        else:
            self.chunks.append((count, names))

    def renamed(self, data: str) -> Iterator[bytes] | None:
        """UNLINK commands of these keys under the prefix ``data`` instead of theirs; None when
        they were not all kept, or the prefixes differ in length (generation 9 -> 10: each
        name is renamed in place, so that its packed length stays right). A name renamed
        anywhere but at its start (a key value that holds ``\\r\\n`` and the prefix) makes
        the count of renames differ from the count of keys: None too."""
        other = data.encode()
        if self.chunks is None or len(other) != len(self.data):
            return None
        mine, theirs = b"\r\n" + self.data, b"\r\n" + other
        if any(names.count(mine) != n for n, names in self.chunks):
            return None
        return (
            b"*%d\r\n$6\r\nUNLINK\r\n%b" % (n + 1, names.replace(mine, theirs))
            for n, names in self.chunks
        )


class RedisOnlineStore(OnlineStore):
    """The online store on Redis (``redis://`` or ``rediss://``, password in the URL) or on a
    Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``, naming one master or several,
    comma-separated: ``redis+cluster://:pw@node1:6379,node2:6379/0``; the client learns the
    others from the first that answers)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "contextkit",
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        chunk_rows: int = 5_000,
        lock_timeout: float = 10.0,
    ) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.url = url
        self.prefix = prefix
        self._masked = mask_url(url)
        self._chunk = chunk_rows
        self._lock_timeout = lock_timeout
        self._metas: dict[str, TableMeta] = {}
        scheme, _, rest = url.partition("://")
        self.cluster = scheme.lower().endswith("+cluster")
        client_url = f"{scheme[: -len('+cluster')]}://{rest}" if self.cluster else url
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            # One quick retry on a broken connection: after a server restart the pool's old
            # connections fail once, and the retry reconnects. Timeouts are not retried.
            "retry": Retry(ExponentialBackoff(0.2, 0.02), 1, (redis.ConnectionError,)),
        }
        try:
            parsed = redis.connection.parse_url(
                _first_host_url(client_url) if self.cluster else client_url
            )
            if self.cluster:
                _seed_nodes(client_url)
        except ValueError as exc:
            raise StoreFailure(
                f"online store URL {self._masked} is not valid: {exc}",
                hint="use redis://[:password@]host:port/db, rediss:// for TLS, or "
                "redis+cluster://[:password@]host:port/0 for a Redis Cluster",
            ) from None
        if self.cluster:
            connect = self._cluster_connector(client_url, parsed, options)
        else:
            client = redis.Redis.from_url(client_url, **options, health_check_interval=30)

            def connect() -> Any:
                return client

        self._keys = Keyspace(
            connect, prefix, self._masked, cluster=self.cluster, password=parsed.get("password")
        )

    def _cluster_connector(
        self, client_url: str, parsed: dict[str, Any], options: dict[str, Any]
    ) -> Callable[[], Any]:
        """What connects the cluster client (on first use: it reads the slot map then)."""
        if "{" in self.prefix or "}" in self.prefix:
            raise StoreFailure(
                f"the Redis key prefix {self.prefix!r} holds a brace; on a Redis Cluster the "
                "store puts hash tags ({...}) in its keys itself",
                hint="set online_store.prefix without { or }",
            )
        if int(parsed.get("db") or 0) != 0:
            raise StoreFailure(
                f"online store URL {self._masked} names database {parsed['db']}; a Redis "
                "Cluster has database 0 only",
                hint="end the URL with /0 or leave the database out",
            )

        seeds = _seed_nodes(client_url)

        def connect() -> Any:
            from redis.cluster import ClusterNode, RedisCluster

            others = [ClusterNode(host, port) for host, port in seeds[1:]]
            return RedisCluster.from_url(first, startup_nodes=others, **options)

        first = _first_host_url(client_url)
        return connect

    @property
    def _redis(self) -> Any:
        return self._keys.client

    def __repr__(self) -> str:
        kind = "Redis Cluster " if self.cluster else ""
        return f"RedisOnlineStore({kind}{self._masked!r}, prefix={self.prefix!r})"

    def _batch(self) -> Any:
        """A read pipeline: redis-py's on one Redis, a :class:`ClusterBatch` on a cluster (one
        round trip per master either way)."""
        if self.cluster:
            return ClusterBatch(self._redis)
        return self._redis.pipeline(transaction=False)

    def _queue_mget(self, pipe, keys: Sequence[str]) -> Callable[[list], list]:
        """Queue the reads of ``keys`` (one MGET; on a cluster one per slot, as a cluster MGET
        must stay in one slot); returns what assembles their values, in order, from the
        pipeline's replies."""
        start = len(pipe)
        if not self.cluster:
            pipe.execute_command("MGET", *keys)
            return lambda replies: replies[start]
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(slot_of(key), []).append(i)
        order = list(groups.values())
        for slot, positions in groups.items():
            pipe.mget(slot, [keys[i] for i in positions])

        def assemble(replies: list) -> list:
            if len(order) == 1:
                return replies[start]
            out: list[Any] = [None] * len(keys)
            for n, positions in enumerate(order):
                for i, value in zip(positions, replies[start + n], strict=True):
                    out[i] = value
            return out

        return assemble

    # -- reads ------------------------------------------------------------------------------------

    def _read_tables(
        self,
        tables: Sequence[str],
        queue: Callable[[Any, int, TableMeta], Callable[[list], Any] | None],
        unsure: Callable[[Any], bool] | None = None,
    ) -> list[tuple[TableMeta | None, Any]]:
        """Per table, its meta and the replies of the data commands ``queue(pipe, i, meta)``
        added for it (or what the function it returns makes of the pipeline's replies), all in
        one pipeline (again for the tables whose meta changed).

        The data commands sit between two MGETs of the tables' metas. When both show the
        generation this store expected, the data was read from that generation whole: metas
        only move to newer generations, and an old one is deleted after the flip. (No MULTI:
        a Redis at maxmemory refuses to queue even reads, and it must keep serving.)

        On a cluster the pipeline goes to every master at once, and only the commands on the
        metas' master keep that order. The rows of a replaced table, spread over the masters,
        may be read after the second MGET: a value read there is still the generation's (it
        never changes), but a missing one may be a key that the next flip deleted. So a spread
        table whose answer ``unsure`` finds wanting (a missing row) has its meta read once more
        before it counts: one more round trip, only then."""
        out: list[tuple[TableMeta | None, Any] | None] = [None] * len(tables)
        todo = list(range(len(tables)))
        for _ in range(4):
            pipe = self._batch()
            meta_keys = [self._keys.meta_key(tables[i]) for i in todo]
            metas_before = self._queue_mget(pipe, meta_keys)
            spans = []
            for i in todo:
                meta = self._metas.get(tables[i])
                before = len(pipe)
                finish = queue(pipe, i, meta) if meta is not None else None
                spans.append((i, meta, before, len(pipe), finish))
            metas_after = self._queue_mget(pipe, meta_keys)
            replies = pipe.execute()
            again, confirm = [], []
            for (i, meta, before, after, finish), raw, raw_after in zip(
                spans, metas_before(replies), metas_after(replies), strict=True
            ):
                if raw is None:
                    self._metas.pop(tables[i], None)
                    out[i] = (None, [])
                elif meta is not None and raw == meta.raw == raw_after:
                    data = finish(replies) if finish is not None else replies[before:after]
                    out[i] = (meta, data)
                    if meta.spread and unsure is not None and unsure(data):
                        confirm.append(i)
                else:
                    if raw == raw_after:
                        self._metas[tables[i]] = TableMeta.decode(raw, self.prefix, tables[i])
                    again.append(i)
            if confirm:
                again += self._changed_metas([tables[i] for i in confirm], confirm)
            if not again:
                return out  # type: ignore[return-value]
            todo = again
        raise StoreFailure(
            f"online tables {', '.join(tables[i] for i in todo)} keep changing during reads",
            hint="a materialization flips them in a loop; retry",
        )

    def _changed_metas(self, tables: Sequence[str], positions: Sequence[int]) -> list[int]:
        """The positions of those of ``tables`` whose meta is no longer the one this store read
        them by (their cached meta updated); one round trip."""
        pipe = self._batch()
        metas = self._queue_mget(pipe, [self._keys.meta_key(t) for t in tables])
        changed = []
        for table, i, raw in zip(tables, positions, metas(pipe.execute()), strict=True):
            meta = self._metas.get(table)
            if meta is not None and raw == meta.raw:
                continue
            if raw is None:
                self._metas.pop(table, None)
            else:
                self._metas[table] = TableMeta.decode(raw, self.prefix, table)
            changed.append(i)
        return changed

    def read_many(self, reads: Sequence[TableRead]) -> list[list[tuple | None] | None]:
        def queue(pipe, i: int, meta: TableMeta) -> Callable[[list], list] | None:
            r = reads[i]
            if meta.layout == FLAT:
                if r.key_rows:
                    return self._queue_mget(pipe, [meta.flat_key(k) for k in r.key_rows])
            elif meta.layout == PART:
                for k in r.key_rows:
                    key = meta.norm_key(k)
                    pipe.hget(meta.data + meta.key_suffix(key[:-1]), key_part(key[-1]))
            return None

        with self._keys.translated("reading online features"):
            found = self._read_tables(
                [r.table for r in reads], queue, unsure=lambda values: None in values
            )
        now = now_us()
        out: list[list[tuple | None] | None] = []
        for r, (meta, data) in zip(reads, found, strict=True):
            if meta is None:
                out.append(None)
                continue
            if meta.layout == LOG:
                raise StoreFailure(f"online table {r.table!r} is a log: it has no keyed rows")
            values = data
            pick = meta.picker(r.columns)
            rows: list[tuple | None] = []
            if pick is not None and not meta.ttl:  # the common case, kept lean
                loads = orjson.loads
                rows = [None if raw is None else pick(loads(raw)) for raw in values]
            else:
                for k, raw in zip(r.key_rows, values, strict=True):
                    row = meta.fresh(orjson.loads(raw), now) if raw is not None else None
                    if row is None:
                        rows.append(None)
                    else:
                        rows.append(
                            pick(row) if pick else meta.project(meta.norm_key(k), row, r.columns)
                        )
            out.append(rows)
        return out

    def read(
        self, table: str, keys: Sequence[str], columns: Sequence[str], key_rows: Sequence[tuple]
    ) -> list[tuple | None]:
        if not key_rows:
            return []
        rows = self.read_many([TableRead(table, keys, columns, key_rows)])[0]
        if rows is None:
            raise StoreFailure(
                f"online table {table!r} does not exist",
                hint="materialize the view first with `contextkit materialize`",
            )
        return rows

    def _partitions(
        self, table: str, key_rows: Sequence[tuple]
    ) -> tuple[TableMeta | None, list[tuple], list[dict]]:
        """A partitioned table's rows per key tuple (all keys but the last): field -> row."""

        unique: list[tuple] = []  # each key once, or its rows would count twice

        def queue(pipe, _i: int, meta: TableMeta) -> None:
            unique[:] = dict.fromkeys(meta.norm_key(k) for k in key_rows)
            if meta.layout == PART:
                for k in unique:
                    pipe.hgetall(meta.data + meta.key_suffix(k))
            return None

        with self._keys.translated("reading online tiles"):
            ((meta, data),) = self._read_tables([table], queue)
        if meta is None:
            return None, [], []
        check_layout(meta, table, PART, "range reads")
        return meta, unique, data

    def _range_rows(
        self, meta: TableMeta, hashes: list[dict], keys: list[tuple], low: int, high: int | None
    ) -> Iterator[tuple[tuple, int, list]]:
        """(key, range value, row) of each row with ``low <= range value [<= high]``, ascending
        per key. Rows past the table's ttl are left out."""
        now = now_us()
        for key, fields in zip(keys, hashes, strict=True):
            picked = []
            for f, raw in fields.items():
                at = as_int(f.decode())
                if at >= low and (high is None or at <= high):
                    row = meta.fresh(orjson.loads(raw), now)
                    if row is not None:
                        picked.append((at, row))
            picked.sort(key=lambda p: p[0])
            for at, row in picked:
                yield key, at, row

    def read_range(
        self,
        table: str,
        keys: Sequence[str],
        key_rows: Sequence[tuple],
        range_column: str,
        low: int,
        columns: Sequence[str],
    ) -> dict[tuple, list[tuple]]:
        if not key_rows:
            return {}
        meta, norm, hashes = self._partitions(table, key_rows)
        if meta is None:
            return {}
        self._check_range(meta, table, keys, range_column)
        out: dict[tuple, list[tuple]] = {}
        for key, at, row in self._range_rows(meta, hashes, norm, low, None):
            out.setdefault(key, []).append(meta.project((*key, at), row, columns))
        return out

    def aggregate_range(
        self,
        table: str,
        keys: Sequence[str],
        key_rows: Sequence[tuple],
        range_column: str,
        high: int,
        aggregates: Sequence[tuple[str, str, int]],
    ) -> dict[tuple, tuple]:
        if not key_rows or not aggregates:
            return {}
        meta, norm, hashes = self._partitions(table, key_rows)
        if meta is None:
            return {}
        self._check_range(meta, table, keys, range_column)
        lowest = min(low for _, _, low in aggregates)
        picked: dict[tuple, list[tuple[int, list]]] = {}
        for key, at, row in self._range_rows(meta, hashes, norm, lowest, high):
            picked.setdefault(key, []).append((at, row))
        out: dict[tuple, tuple] = {}
        for key, rows in picked.items():
            values = []
            for op, column, low in aggregates:
                i = meta.index.get(column)
                if i is None:
                    raise StoreFailure(f"online table {table!r} has no column {column!r}")
                got = [row[i] for at, row in rows if at >= low and row[i] is not None]
                if not got:
                    values.append(None)
                elif op == "sum":
                    values.append(sum(got))
                elif op == "min":
                    values.append(min(got))
                elif op == "max":
                    values.append(max(got))
                else:
                    raise StoreFailure(f"unknown aggregate {op!r}")
            out[key] = tuple(values)
        return out

    @staticmethod
    def _check_range(meta: TableMeta, table: str, keys: Sequence[str], range_column: str) -> None:
        names = [k for k, _ in meta.keys]
        if names[-1] != range_column or list(keys) != names[:-1]:
            raise StoreFailure(
                f"online table {table!r} is keyed by {names}: range reads go by {names[-1]!r} "
                f"within {names[:-1]}, not by {range_column!r} within {list(keys)}"
            )

    def max_by_key(
        self, table: str, keys: Sequence[str], key_rows: Sequence[tuple], column: str
    ) -> dict[tuple, Any]:
        """Scans the table (the core calls it on logs, whose durable copy belongs elsewhere)."""
        if not key_rows:
            return {}
        wanted: set[tuple] | None = None
        out: dict[tuple, Any] = {}
        for meta, row in self._keys.scan_rows(table):
            if wanted is None:
                wanted = {self._norm_by(meta, keys, k) for k in key_rows}
            k = tuple(row.get(name) for name in keys)
            value = row.get(column)
            if k in wanted and value is not None and (k not in out or value > out[k]):
                out[k] = value
        return out

    @staticmethod
    def _norm_by(meta: TableMeta, names: Sequence[str], values: Sequence[Any]) -> tuple:
        types = dict(meta.keys) | dict(meta.columns)
        return tuple(
            normalizer(types.get(n, "string"))(v) for n, v in zip(names, values, strict=True)
        )

    def read_log(
        self, table: str, columns: Sequence[str], after_seq: int, limit: int
    ) -> list[tuple]:
        with self._keys.translated("reading an ingest log"):
            raw = self._redis.get(self._keys.meta_key(table))
            if raw is None:
                return []
            meta = TableMeta.decode(raw, self.prefix, table)
            check_layout(meta, table, LOG, "read_log")
            members = self._redis.zrangebyscore(
                meta.aux + "log", f"({after_seq}", "+inf", start=0, num=min(limit, 2**62)
            )
        at = {name: i for i, name in enumerate(log_columns(meta))}
        out = []
        for m in members:
            row = orjson.loads(m)
            out.append((row[0], *(row[at[c]] for c in columns)))
        return out

    def has_table(self, table: str) -> bool:
        with self._keys.translated("looking up an online table"):
            return bool(self._redis.exists(self._keys.meta_key(table)))

    # -- writes -----------------------------------------------------------------------------------

    def replace_table(
        self,
        table: str,
        keys: Sequence[tuple[str, str]],
        columns: Sequence[tuple[str, str]],
        rows: Iterable[Sequence[Any]],
        *,
        ttl_seconds: int | None = None,
    ) -> int:
        with self._keys.translated(f"replacing online table {table!r}"):
            gen = int(self._redis.incr(self._keys.gen_key(table)))
            data = self._keys.snapshot_data(table, gen) if self.cluster else None
            shape = (gen, FLAT, keys, columns, ttl_seconds or None)
            raw = TableMeta.encode(*shape, data=data, spread=self.cluster)
            meta = TableMeta.decode(raw, self.prefix, table)
            written = None if self.cluster else WrittenKeys(meta.data, KEPT_KEYS_MAX_BYTES)
            try:
                if self.cluster:
                    count = self._write_spread(meta, rows)
                else:
                    count = self._write_generation(meta, rows, written)
                raw = TableMeta.encode(*shape, data=data, spread=self.cluster, rows=count)
                meta = TableMeta.decode(raw, self.prefix, table)
                old = self._redis.set(self._keys.meta_key(table), raw, get=True)
            except BaseException:
                self._unlink_matching(meta.pattern())
                raise
            self._metas[table] = meta
            if old is not None:
                self._drop_generation(TableMeta.decode(old, self.prefix, table), written)
        return count

    def _drop_generation(self, old: TableMeta, written: WrittenKeys | None) -> None:
        """Delete the generation ``old`` once a flip replaced it. First by name, when this
        replace kept the keys it wrote and ``old`` recorded how many it had: the same keys
        under ``old``'s prefix. A re-run writes the same keys, so that removes all of them,
        and then no SCAN is needed (a SCAN walks the whole keyspace, the new generation
        included: 3-6 s per 1M keys). Otherwise (keys added or gone since, rows expired by
        their ttl, a meta without a count) a SCAN over the keyspace finds the rest."""
        if written is not None and old.rows is not None and not old.spread:
            commands = written.renamed(old.data)
            if commands is not None and self._unlink_named(commands) == old.rows:
                return
        self._unlink_matching(old.pattern())

    def _unlink_named(self, commands: Iterable[bytes]) -> int:
        """Send pre-packed UNLINK commands on one connection, one in flight while the next is
        sent; returns the number of keys they removed."""
        removed, pending = 0, 0
        with self._connection() as conn:
            for command in commands:
                conn.send_packed_command([command], check_health=False)
                pending += 1
                if pending > 1:
                    removed += int(conn.read_response())
                    pending -= 1
            for _ in range(pending):
                removed += int(conn.read_response())
        return removed

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A connection of the pool for pre-packed commands, closed if anything fails: its
        replies may be left unread, so it must not be reused."""
        pool = self._redis.connection_pool
        conn = pool.get_connection()
        try:
            yield conn
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _write_generation(
        self, meta: TableMeta, rows: Iterable[Sequence[Any]], written: WrittenKeys | None = None
    ) -> int:
        """Write rows into ``meta``'s generation; returns the number of distinct keys, and
        keeps their names in ``written``.

        Chunks go out as pre-packed commands on one connection, the next chunk packed while
        Redis stores the previous one (redis-py's per-argument encoding would cost more than
        Redis itself). Each chunk is ``EXISTS keys`` (keys an earlier chunk wrote count once)
        then ``MSET``, or one ``SET .. PXAT`` per row when the table has a ttl (a time in the
        past makes Redis drop the key at once)."""
        width = len(meta.keys)
        ttl = bool(meta.ttl) and EVENT_TIMESTAMP in meta.index
        pending: deque[tuple[int, int]] = deque()  # per chunk sent: (replies, keys) unread
        count = 0
        with self._connection() as conn:
            chunk: dict[bytes, bytes] = {}
            expiry: dict[bytes, int] = {}
            for row in rows:
                values = row[width:]
                key = meta.flat_key(row[:width]).encode()
                chunk[key] = meta.encode_values(values)
                if ttl:
                    ms = meta.expires_ms(values)
                    if ms is not None:
                        expiry[key] = ms
                if len(chunk) >= self._chunk:
                    count += self._send_chunk(
                        conn, chunk, expiry if ttl else None, pending, written
                    )
                    chunk, expiry = {}, {}
            if chunk:
                count += self._send_chunk(conn, chunk, expiry if ttl else None, pending, written)
            while pending:
                count += self._read_chunk(conn, pending)
        return count

    def _send_chunk(
        self, conn, chunk, expiry, pending: deque[tuple[int, int]], written: WrittenKeys | None
    ) -> int:
        """Send one chunk, then read the replies of the chunk before it (one stays in flight);
        returns the new keys of the chunks whose replies were read."""
        keys = list(chunk)
        names = b"".join(map(resp_bulk, keys))
        if written is not None:
            written.add(len(keys), names)
        parts = [resp_head(1 + len(keys)), b"$6\r\nEXISTS\r\n", names]
        if expiry is None:
            parts += [resp_head(1 + 2 * len(chunk)), b"$4\r\nMSET\r\n"]
            pair = b"$%d\r\n%b\r\n$%d\r\n%b\r\n"  # resp_bulk(k) + resp_bulk(v) in one step
            parts += [pair % (len(k), k, len(v), v) for k, v in chunk.items()]
            replies = 2
        else:
            for k, v in chunk.items():
                ms = expiry.get(k)
                if ms is None:
                    parts.append(b"*3\r\n$3\r\nSET\r\n" + resp_bulk(k) + resp_bulk(v))
                else:
                    parts.append(
                        b"*5\r\n$3\r\nSET\r\n" + resp_bulk(k) + resp_bulk(v)
                        + b"$4\r\nPXAT\r\n" + resp_bulk(b"%d" % ms)
                    )  # fmt: skip
            replies = 1 + len(chunk)
        conn.send_packed_command([b"".join(parts)], check_health=False)
        pending.append((replies, len(chunk)))
        added = 0
        while len(pending) > 1:
            added += self._read_chunk(conn, pending)
        return added

    @staticmethod
    def _read_chunk(conn, pending: deque[tuple[int, int]]) -> int:
        """Read the oldest chunk's replies (an error reply raises); returns its new keys."""
        replies, keys = pending.popleft()
        existed = conn.read_response()
        for _ in range(replies - 1):
            conn.read_response()
        return keys - int(existed)

    def _write_spread(self, meta: TableMeta, rows: Iterable[Sequence[Any]]) -> int:
        """:meth:`_write_generation` on a cluster: each row's key hashes to its own slot, so
        rows go to their master as pre-packed ``SET key value [PXAT ms] GET`` commands (a
        cluster MSET must stay in one slot), one chunk per master in flight at a time
        (:class:`SpreadWriter`, which follows MOVED/ASK during a resharding). A nil reply is a
        key new to the generation; returns their number. The generation's marker keys go with
        the rows (see :meth:`lost_tables`)."""
        from redis.crc import key_slot

        writer = SpreadWriter(self._redis, self._chunk)
        width = len(meta.keys)
        ttl = bool(meta.ttl) and EVENT_TIMESTAMP in meta.index
        failed = True
        try:
            for row in rows:
                values = row[width:]
                key = meta.flat_key(row[:width]).encode()
                command = resp_bulk(key) + resp_bulk(meta.encode_values(values))
                ms = meta.expires_ms(values) if ttl else None
                if ms is None:
                    command = b"*4\r\n$3\r\nSET\r\n" + command + b"$3\r\nGET\r\n"
                else:
                    command = (
                        b"*6\r\n$3\r\nSET\r\n" + command + b"$4\r\nPXAT\r\n"
                        + resp_bulk(b"%d" % ms) + b"$3\r\nGET\r\n"
                    )  # fmt: skip
                writer.add(key_slot(key), command)
            writer.mark(meta.aux)
            count = writer.finish()
            failed = False
        finally:
            writer.close(failed)
        return count

    def lost_tables(self, tables: Sequence[str]) -> list[str]:
        """On a cluster: those of ``tables`` published by a materialization (rows spread over
        the masters) of which a master lost rows since, having restarted empty. Each
        generation has marker keys spread over the slots like its rows (one in every 128
        slots), written with them: some markers there and some gone is a lost slice. Two round
        trips (the metas, then the markers on every master) whatever the tables' size, a third
        (the metas again) only when a table is found lost."""
        if not self.cluster or not tables:
            return []
        with self._keys.translated("checking online tables for lost rows"):
            metas = dict(zip(tables, self._raw_metas(tables), strict=True))
            spread = {}
            for table, raw in metas.items():
                meta = TableMeta.decode(raw, self.prefix, table) if raw is not None else None
                if meta is not None and meta.spread:
                    spread[table] = meta.aux
            gone = lost_generations(self._redis, list(spread.values()))
            lost = [table for table, g in zip(spread, gone, strict=True) if g]
            if not lost:
                return []
            # A table flipped meanwhile had its old generation deleted master by master: not a
            # loss. Those whose meta is still the one checked are.
            now = self._raw_metas(lost)
        return [table for table, raw in zip(lost, now, strict=True) if raw == metas[table]]

    def _raw_metas(self, tables: Sequence[str]) -> list[bytes | None]:
        pipe = self._batch()
        metas = self._queue_mget(pipe, [self._keys.meta_key(t) for t in tables])
        return metas(pipe.execute())

    def _unlink_matching(self, pattern: str) -> None:
        """UNLINK every key matching ``pattern``, SCAN by SCAN (one round trip per SCAN); on a
        cluster on every master, one UNLINK per key (their slots differ)."""
        if not self.cluster:
            unlink_on(self._redis.connection_pool, pattern, per_key=False)
            return
        cluster = self._redis
        for node in cluster.get_primaries():
            unlink_on(cluster.get_redis_connection(node).connection_pool, pattern, per_key=True)

    def drop_table(self, table: str) -> None:
        with self._keys.translated(f"dropping online table {table!r}"):
            self._redis.delete(self._keys.meta_key(table))
            self._metas.pop(table, None)
            for pattern in self._keys.patterns(table):
                self._unlink_matching(pattern)

    @contextmanager
    def transaction(self) -> Iterator[RedisOnlineWriter]:
        writer = RedisOnlineWriter(self._keys, self._lock_timeout)
        try:
            yield writer
        except BaseException:
            writer._rollback()
            raise
        try:
            # Only the EXEC: a MOVED after it is no conflict, the writes are in.
            with self._keys.translated("committing an online write", transaction=True):
                writer._commit()
        except BaseException:
            writer._rollback()
            raise
        writer._committed()

    def close(self) -> None:
        client = self._keys.connected()
        if client is not None:
            client.close()
