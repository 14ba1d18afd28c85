"""The Redis online store: the ``OnlineStore`` interface on one Redis server, for several nodes.

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
replaced (SCAN + UNLINK). Readers see the old rows or the new ones, never a mix; a failed write
deletes its partial generation and changes nothing. Re-running it writes the same rows again.

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
them, so both stores return the same Python values. Not supported: Redis Cluster (MULTI needs
one slot), non-finite floats (stored as null). A Redis at maxmemory keeps serving reads.
"""

from __future__ import annotations

import operator
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson

from contextkit.stores.errors import (
    StoreFailure,
    StoreServerUnavailable,
    WriteConflict,
    mask_url,
)
from contextkit.stores.online import OnlineStore, OnlineWriter, TableRead

EVENT_TIMESTAMP = "event_timestamp"  # the column that carries a row's event time (microseconds)
US = 1_000_000
_FLAT, _PART, _LOG = "flat", "part", "log"

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
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"


# -- values: normalized as SQLite's column affinity stores them --------------------------------


def _as_int(v: Any) -> Any:
    if type(v) is int or v is None:
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return _as_int(float(v))
            except ValueError:
                return v
    return v


def _as_float(v: Any) -> Any:
    if type(v) is float or v is None:
        return v
    if isinstance(v, int):  # bool included
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _as_text(v: Any) -> Any:
    if type(v) is str or v is None:
        return v
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int | float):
        return str(v)
    return v


_KEY_TYPES = {"int64": int, "bool": int, "timestamp": int, "string": str}
_STORED_TYPES = {"int64": int, "bool": int, "timestamp": int, "float64": float}  # else str

_NORMALIZE: dict[str, Callable[[Any], Any]] = {
    "int64": _as_int,
    "bool": _as_int,
    "timestamp": _as_int,
    "float64": _as_float,
}


def _normalizer(dtype: str) -> Callable[[Any], Any]:
    return _NORMALIZE.get(dtype, _as_text)


def _key_part(value: Any) -> str:
    return value if type(value) is str else orjson.dumps(value).decode()


@dataclass
class _Meta:
    """A table's meta, as stored at ``P:m:TABLE`` (``raw``) and decoded."""

    raw: bytes
    gen: int
    layout: str
    keys: list[tuple[str, str]]
    columns: list[tuple[str, str]]
    ttl: int | None
    data: str  # key prefix of this generation's rows: P:d:TABLE:GEN:
    aux: str  # key prefix of its other keys (index, log): P:d:TABLE:GEN;
    index: dict[str, int] = field(default_factory=dict)  # value column -> position
    key_norms: list[Callable[[Any], Any]] = field(default_factory=list)
    col_norms: list[Callable[[Any], Any]] = field(default_factory=list)
    single: type | None = None  # the Python type of a lone int or string key (fast paths)
    canonical: dict[tuple, bool] = field(default_factory=dict)  # row type signature -> stored as is
    pickers: dict[tuple, Callable[[list], tuple] | None] = field(default_factory=dict)

    @classmethod
    def decode(cls, raw: bytes, prefix: str, table: str) -> _Meta:
        d = orjson.loads(raw)
        meta = cls(
            raw,
            d["gen"],
            d["layout"],
            [tuple(k) for k in d["keys"]],
            [tuple(c) for c in d["columns"]],
            d.get("ttl"),
            f"{prefix}:d:{table}:{d['gen']}:",
            f"{prefix}:d:{table}:{d['gen']};",
        )
        meta.index = {name: i for i, (name, _) in enumerate(meta.columns)}
        meta.key_norms = [_normalizer(t) for _, t in meta.keys]
        meta.col_norms = [_normalizer(t) for _, t in meta.columns]
        if len(meta.keys) == 1:
            meta.single = _KEY_TYPES.get(meta.keys[0][1], str)
        return meta

    @staticmethod
    def encode(gen: int, layout: str, keys, columns, ttl: int | None) -> bytes:
        return orjson.dumps(
            {
                "gen": gen,
                "layout": layout,
                "keys": [list(k) for k in keys],
                "columns": [list(c) for c in columns],
                "ttl": ttl,
            }
        )

    def norm_key(self, key_row: Sequence[Any]) -> tuple:
        norms = self.key_norms
        return tuple(norms[i](v) for i, v in enumerate(key_row))

    def flat_key(self, key_row: Sequence[Any]) -> str:
        """The Redis key of a flat row, from its (not yet normalized) key values."""
        if self.single is not None:
            v = key_row[0]
            if type(v) is self.single:
                return self.data + (v if self.single is str else str(v))
        return self.data + self.key_suffix(self.norm_key(key_row))

    def encode_values(self, values: Sequence[Any]) -> bytes:
        """The stored form of a row's values; rows already in it skip normalization."""
        signature = tuple(map(type, values))
        ok = self.canonical.get(signature)
        if ok is None:
            ok = self.canonical[signature] = all(
                t is type(None) or t is _STORED_TYPES.get(dtype, str)
                for t, (_, dtype) in zip(signature, self.columns, strict=True)
            )
        if ok:
            return orjson.dumps(values)  # a tuple or a list: a JSON array either way
        return self.row_value(values)

    def picker(self, columns: Sequence[str]) -> Callable[[list], tuple] | None:
        """A function from a stored row to the values of ``columns``; None when they include
        key columns (then :meth:`project` is needed)."""
        wanted = tuple(columns)
        pick = self.pickers.get(wanted, False)
        if pick is False:
            if not all(c in self.index for c in wanted):
                pick = None
            elif len(wanted) == 1:
                at = self.index[wanted[0]]
                pick = lambda row: (row[at],)  # noqa: E731
            else:
                getter = operator.itemgetter(*(self.index[c] for c in wanted))
                pick = lambda row: getter(row)  # noqa: E731
            self.pickers[wanted] = pick
        return pick

    def key_suffix(self, key: tuple) -> str:
        """The encoded key of a flat row, or of a partition (all keys but the last)."""
        if len(key) == 1:
            return _key_part(key[0])
        return orjson.dumps(list(key)).decode()

    def row_value(self, values: Sequence[Any]) -> bytes:
        return orjson.dumps([n(v) for n, v in zip(self.col_norms, values, strict=True)])

    def expires_ms(self, values: Sequence[Any]) -> int | None:
        """When the row becomes ttl old (ms since the epoch); None when it never does."""
        if not self.ttl or EVENT_TIMESTAMP not in self.index:
            return None
        ts = values[self.index[EVENT_TIMESTAMP]]
        return None if ts is None else (ts + self.ttl * US) // 1000

    def fresh(self, row: list | None, now_us: int) -> list | None:
        """``row`` unless the table has a ttl and the row is that old."""
        if row is None or not self.ttl or EVENT_TIMESTAMP not in self.index:
            return row
        ts = row[self.index[EVENT_TIMESTAMP]]
        return row if ts is not None and ts > now_us - self.ttl * US else None

    def project(self, key: tuple, row: list, columns: Sequence[str]) -> tuple:
        """The values of ``columns`` (key or value columns) of a full row."""
        out = []
        for c in columns:
            i = self.index.get(c)
            if i is not None:
                out.append(row[i])
                continue
            for j, (name, _) in enumerate(self.keys):
                if name == c:
                    out.append(key[j])
                    break
            else:
                raise StoreFailure(f"online table has no column {c!r}")
        return tuple(out)


def _resp_head(n: int) -> bytes:
    return b"*%d\r\n" % n


def _resp_bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _resp_command(args: Sequence[bytes]) -> bytes:
    return _resp_head(len(args)) + b"".join(map(_resp_bulk, args))


def _now_us() -> int:
    return time.time_ns() // 1000


def _check_layout(meta: _Meta, table: str, layout: str, what: str) -> None:
    if meta.layout != layout:
        raise StoreFailure(f"online table {table!r} ({meta.layout} layout) does not support {what}")


class RedisOnlineStore(OnlineStore):
    """The online store on Redis (``redis://`` or ``rediss://``, password in the URL)."""

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
        self._metas: dict[str, _Meta] = {}
        try:
            self._redis = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                # One quick retry on a broken connection: after a server restart the pool's
                # old connections fail once, and the retry reconnects. Timeouts are not retried.
                retry=Retry(ExponentialBackoff(0.2, 0.02), 1, (redis.ConnectionError,)),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise StoreFailure(
                f"online store URL {self._masked} is not valid: {exc}",
                hint="use redis://[:password@]host:port/db or rediss:// for TLS",
            ) from None

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self._masked!r}, prefix={self.prefix!r})"

    # -- keys and errors --------------------------------------------------------------------------

    def _meta_key(self, table: str) -> str:
        return f"{self.prefix}:m:{table}"

    def _pattern(self, table: str, gen: int | None = None) -> str:
        """SCAN pattern of a table's data keys: one generation's, or all of them."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in f"{self.prefix}:d:{table}:")
        return escaped + (f"{gen}[:;]*" if gen is not None else "*")

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """Redis errors as store errors naming the (masked) URL, with a hint."""
        import redis

        try:
            yield
        except StoreFailure:
            raise
        except redis.WatchError:
            raise WriteConflict(
                f"{action}: a concurrent write to online store {self._masked} changed the same "
                "keys; nothing was written",
                hint="run the request again",
            ) from None
        except redis.RedisError as exc:
            raise self._failure(action, exc) from None

    def _failure(self, action: str, exc: Exception) -> StoreFailure:
        import redis

        text = str(exc)
        password = self._redis.connection_pool.connection_kwargs.get("password")
        if password:
            text = text.replace(str(password), "***")
        where = f"online store {self._masked}"
        upper = text.upper()
        if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in upper or "NOAUTH" in upper:
            return StoreServerUnavailable(
                f"{action}: {where} refused the credentials ({text})",
                hint="check the password in the online store URL (CONTEXTKIT_ONLINE_STORE)",
            )
        if isinstance(exc, redis.ReadOnlyError) or upper.startswith("READONLY"):
            return StoreServerUnavailable(
                f"{action}: {where} is read-only (a replica?)",
                hint="point the online store at the primary Redis, not a replica",
            )
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "> 'MAXMEMORY'" in upper:
            return StoreServerUnavailable(
                f"{action}: {where} is out of memory (maxmemory reached)",
                hint="raise maxmemory, free memory (drop unused views) or add a Redis with room",
            )
        if isinstance(exc, redis.BusyLoadingError):
            return StoreServerUnavailable(
                f"{action}: {where} is loading its dataset",
                hint="wait until Redis has loaded its data, then retry",
            )
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            return StoreServerUnavailable(
                f"{action}: {where} is unreachable ({text})",
                hint="check that Redis runs and the URL's host and port; reads and writes "
                "resume by themselves once it answers",
            )
        if isinstance(exc, redis.exceptions.NoPermissionError) or "NOPERM" in upper:
            return StoreServerUnavailable(
                f"{action}: {where} denied a command ({text})",
                hint="the Redis user needs read and write access to the store's key prefix",
            )
        return StoreFailure(f"{action}: {where} failed: {text}")

    # -- reads ------------------------------------------------------------------------------------

    def _read_tables(
        self, tables: Sequence[str], queue: Callable[[Any, int, _Meta], None]
    ) -> list[tuple[_Meta | None, list[Any]]]:
        """Per table, its meta and the replies of the data commands ``queue(pipe, i, meta)``
        added for it, all in one pipeline (again for the tables whose meta changed).

        The data commands sit between two MGETs of the tables' metas. When both show the
        generation this store expected, the data was read from that generation whole: metas
        only move to newer generations, and an old one is deleted after the flip. (No MULTI:
        a Redis at maxmemory refuses to queue even reads, and it must keep serving.)"""
        out: list[tuple[_Meta | None, list[Any]] | None] = [None] * len(tables)
        todo = list(range(len(tables)))
        for _ in range(4):
            pipe = self._redis.pipeline(transaction=False)
            meta_keys = [self._meta_key(tables[i]) for i in todo]
            pipe.mget(meta_keys)
            spans = []
            for i in todo:
                meta = self._metas.get(tables[i])
                before = len(pipe.command_stack)
                if meta is not None:
                    queue(pipe, i, meta)
                spans.append((i, meta, before, len(pipe.command_stack)))
            pipe.mget(meta_keys)
            replies = pipe.execute()
            again = []
            for (i, meta, before, after), raw, raw_after in zip(
                spans, replies[0], replies[-1], strict=True
            ):
                if raw is None:
                    self._metas.pop(tables[i], None)
                    out[i] = (None, [])
                elif meta is not None and raw == meta.raw == raw_after:
                    out[i] = (meta, replies[before:after])
                else:
                    if raw == raw_after:
                        self._metas[tables[i]] = _Meta.decode(raw, self.prefix, tables[i])
                    again.append(i)
            if not again:
                return out  # type: ignore[return-value]
            todo = again
        raise StoreFailure(
            f"online tables {', '.join(tables[i] for i in todo)} keep changing during reads",
            hint="a materialization flips them in a loop; retry",
        )

    def read_many(self, reads: Sequence[TableRead]) -> list[list[tuple | None] | None]:
        def queue(pipe, i: int, meta: _Meta) -> None:
            r = reads[i]
            if meta.layout == _FLAT:
                if r.key_rows:
                    pipe.mget([meta.flat_key(k) for k in r.key_rows])
            elif meta.layout == _PART:
                for k in r.key_rows:
                    key = meta.norm_key(k)
                    pipe.hget(meta.data + meta.key_suffix(key[:-1]), _key_part(key[-1]))

        with self._translated("reading online features"):
            found = self._read_tables([r.table for r in reads], queue)
        now = _now_us()
        out: list[list[tuple | None] | None] = []
        for r, (meta, data) in zip(reads, found, strict=True):
            if meta is None:
                out.append(None)
                continue
            if meta.layout == _LOG:
                raise StoreFailure(f"online table {r.table!r} is a log: it has no keyed rows")
            values = (data[0] if data else []) if meta.layout == _FLAT else data
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
    ) -> tuple[_Meta | None, list[tuple], list[dict]]:
        """A partitioned table's rows per key tuple (all keys but the last): field -> row."""

        unique: list[tuple] = []  # each key once, or its rows would count twice

        def queue(pipe, _i: int, meta: _Meta) -> None:
            unique[:] = dict.fromkeys(meta.norm_key(k) for k in key_rows)
            if meta.layout == _PART:
                for k in unique:
                    pipe.hgetall(meta.data + meta.key_suffix(k))

        with self._translated("reading online tiles"):
            ((meta, data),) = self._read_tables([table], queue)
        if meta is None:
            return None, [], []
        _check_layout(meta, table, _PART, "range reads")
        return meta, unique, data

    def _range_rows(
        self, meta: _Meta, hashes: list[dict], keys: list[tuple], low: int, high: int | None
    ) -> Iterator[tuple[tuple, int, list]]:
        """(key, range value, row) of each row with ``low <= range value [<= high]``, ascending
        per key. Rows past the table's ttl are left out."""
        now = _now_us()
        for key, fields in zip(keys, hashes, strict=True):
            picked = []
            for f, raw in fields.items():
                at = _as_int(f.decode())
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
    def _check_range(meta: _Meta, table: str, keys: Sequence[str], range_column: str) -> None:
        names = [k for k, _ in meta.keys]
        if names[-1] != range_column or list(keys) != names[:-1]:
            raise StoreFailure(
                f"online table {table!r} is keyed by {names}: range reads go by {names[-1]!r} "
                f"within {names[:-1]}, not by {range_column!r} within {list(keys)}"
            )

    def _scan_rows(self, table: str) -> Iterator[tuple[_Meta, dict[str, Any]]]:
        """Every row of a table as {column: value}, keys included. Cost grows with the table:
        only for calls the core makes on logs (whose durable copy belongs elsewhere)."""
        with self._translated("scanning an online table"):
            raw = self._redis.get(self._meta_key(table))
            if raw is None:
                return
            meta = _Meta.decode(raw, self.prefix, table)
            names = [k for k, _ in meta.keys]
            if meta.layout == _LOG:
                fields = _log_columns(meta)
                start = "-inf"
                while True:
                    members = self._redis.zrangebyscore(
                        meta.aux + "log", start, "+inf", start=0, num=5000
                    )
                    for m in members:
                        yield meta, dict(zip(fields, orjson.loads(m), strict=True))
                    if len(members) < 5000:
                        return
                    start = f"({orjson.loads(members[-1])[0]}"
            for name in self._redis.scan_iter(match=self._pattern(table, meta.gen), count=5000):
                suffix = name.decode()[len(meta.data) :]
                if not name.decode().startswith(meta.data):
                    continue  # the index
                if meta.layout == _FLAT:
                    value = self._redis.get(name)
                    if value is not None:
                        key = meta.norm_key(orjson.loads(suffix) if len(names) > 1 else [suffix])
                        yield meta, self._full(meta, key, orjson.loads(value))
                    continue
                part = orjson.loads(suffix) if len(names) > 2 else [suffix]
                for f, value in self._redis.hgetall(name).items():
                    key = meta.norm_key([*part, f.decode()])
                    yield meta, self._full(meta, key, orjson.loads(value))

    def max_by_key(
        self, table: str, keys: Sequence[str], key_rows: Sequence[tuple], column: str
    ) -> dict[tuple, Any]:
        """Scans the table (the core calls it on logs, whose durable copy belongs elsewhere)."""
        if not key_rows:
            return {}
        wanted: set[tuple] | None = None
        out: dict[tuple, Any] = {}
        for meta, row in self._scan_rows(table):
            if wanted is None:
                wanted = {self._norm_by(meta, keys, k) for k in key_rows}
            k = tuple(row.get(name) for name in keys)
            value = row.get(column)
            if k in wanted and value is not None and (k not in out or value > out[k]):
                out[k] = value
        return out

    @staticmethod
    def _norm_by(meta: _Meta, names: Sequence[str], values: Sequence[Any]) -> tuple:
        types = dict(meta.keys) | dict(meta.columns)
        return tuple(
            _normalizer(types.get(n, "string"))(v) for n, v in zip(names, values, strict=True)
        )

    @staticmethod
    def _full(meta: _Meta, key: tuple, row: list) -> dict[str, Any]:
        return {
            **dict(zip([k for k, _ in meta.keys], key, strict=True)),
            **dict(zip(meta.index, row, strict=True)),
        }

    def read_log(
        self, table: str, columns: Sequence[str], after_seq: int, limit: int
    ) -> list[tuple]:
        with self._translated("reading an ingest log"):
            raw = self._redis.get(self._meta_key(table))
            if raw is None:
                return []
            meta = _Meta.decode(raw, self.prefix, table)
            _check_layout(meta, table, _LOG, "read_log")
            members = self._redis.zrangebyscore(
                meta.aux + "log", f"({after_seq}", "+inf", start=0, num=min(limit, 2**62)
            )
        at = {name: i for i, name in enumerate(_log_columns(meta))}
        out = []
        for m in members:
            row = orjson.loads(m)
            out.append((row[0], *(row[at[c]] for c in columns)))
        return out

    def has_table(self, table: str) -> bool:
        with self._translated("looking up an online table"):
            return bool(self._redis.exists(self._meta_key(table)))

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
        with self._translated(f"replacing online table {table!r}"):
            gen = int(self._redis.incr(f"{self.prefix}:g:{table}"))
            raw = _Meta.encode(gen, _FLAT, keys, columns, ttl_seconds or None)
            meta = _Meta.decode(raw, self.prefix, table)
            try:
                count = self._write_generation(meta, rows)
                old = self._redis.set(self._meta_key(table), raw, get=True)
            except BaseException:
                self._delete_generation(table, gen)
                raise
            self._metas[table] = meta
            if old is not None:
                self._delete_generation(table, orjson.loads(old)["gen"])
        return count

    def _write_generation(self, meta: _Meta, rows: Iterable[Sequence[Any]]) -> int:
        """Write rows into ``meta``'s generation; returns the number of distinct keys.

        Chunks go out as pre-packed commands on one connection, the next chunk packed while
        Redis stores the previous one (redis-py's per-argument encoding would cost more than
        Redis itself). Each chunk is ``EXISTS keys`` (keys an earlier chunk wrote count once)
        then ``MSET``, or one ``SET .. PXAT`` per row when the table has a ttl (a time in the
        past makes Redis drop the key at once)."""
        width = len(meta.keys)
        ttl = bool(meta.ttl) and EVENT_TIMESTAMP in meta.index
        pool = self._redis.connection_pool
        conn = pool.get_connection()
        pending: deque[tuple[int, int]] = deque()  # per chunk sent: (replies, keys) unread
        count = 0
        try:
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
                    count += self._send_chunk(conn, chunk, expiry if ttl else None, pending)
                    chunk, expiry = {}, {}
            if chunk:
                count += self._send_chunk(conn, chunk, expiry if ttl else None, pending)
            while pending:
                count += self._read_chunk(conn, pending)
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            pool.release(conn)
        return count

    def _send_chunk(self, conn, chunk, expiry, pending: deque[tuple[int, int]]) -> int:
        """Send one chunk, then read the replies of the chunk before it (one stays in flight);
        returns the new keys of the chunks whose replies were read."""
        keys = list(chunk)
        parts = [_resp_head(1 + len(keys)), b"$6\r\nEXISTS\r\n", *map(_resp_bulk, keys)]
        if expiry is None:
            parts += [_resp_head(1 + 2 * len(chunk)), b"$4\r\nMSET\r\n"]
            parts += [_resp_bulk(k) + _resp_bulk(v) for k, v in chunk.items()]
            replies = 2
        else:
            for k, v in chunk.items():
                ms = expiry.get(k)
                if ms is None:
                    parts.append(b"*3\r\n$3\r\nSET\r\n" + _resp_bulk(k) + _resp_bulk(v))
                else:
                    parts.append(
                        b"*5\r\n$3\r\nSET\r\n" + _resp_bulk(k) + _resp_bulk(v)
                        + b"$4\r\nPXAT\r\n" + _resp_bulk(b"%d" % ms)
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

    def _delete_generation(self, table: str, gen: int) -> None:
        self._unlink_matching(self._pattern(table, gen))

    def _unlink_matching(self, pattern: str) -> None:
        """UNLINK (freed in the background) every key matching ``pattern``, SCAN by SCAN."""
        pool = self._redis.connection_pool
        conn = pool.get_connection()
        try:
            cursor = b"0"
            while True:
                scan = [b"SCAN", cursor, b"MATCH", pattern.encode(), b"COUNT", b"20000"]
                conn.send_packed_command([_resp_command(scan)], check_health=False)
                cursor, keys = conn.read_response()
                if keys:
                    conn.send_packed_command(
                        [_resp_command([b"UNLINK", *keys])], check_health=False
                    )
                    conn.read_response()
                if cursor in (b"0", 0):
                    return
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def drop_table(self, table: str) -> None:
        with self._translated(f"dropping online table {table!r}"):
            self._redis.delete(self._meta_key(table))
            self._metas.pop(table, None)
            self._unlink_matching(self._pattern(table))

    @contextmanager
    def transaction(self) -> Iterator[RedisOnlineWriter]:
        writer = RedisOnlineWriter(self)
        try:
            yield writer
        except BaseException:
            writer._rollback()
            raise
        with self._translated("committing an online write"):
            writer._commit()

    def close(self) -> None:
        self._redis.close()


def _log_columns(meta: _Meta) -> list[str]:
    """A log row's fields, as stored: seq, ingest_id, ingested_at, then the columns."""
    return ["seq", "ingest_id", "ingested_at", *(name for name, _ in meta.columns)]


class RedisOnlineWriter(OnlineWriter):
    """Writes inside one :meth:`RedisOnlineStore.transaction`: reads WATCH their keys, writes
    are queued and sent in one MULTI/EXEC at the end."""

    def __init__(self, store: RedisOnlineStore) -> None:
        self._store = store
        self._redis = store._redis
        self._pipe = store._redis.pipeline(transaction=True)
        self._metas: dict[str, _Meta] = {}
        self._new: dict[str, bytes] = {}  # metas to create at commit
        self._queued: list[tuple] = []
        self._overlay: dict[str, dict[tuple, list]] = {}  # rows upserted here, by table and key
        self._locks: dict[str, str] = {}  # lock key -> token

    def _translated(self, action: str):
        return self._store._translated(action)

    # -- metas and locks --------------------------------------------------------------------------

    def _meta(self, table: str) -> _Meta | None:
        meta = self._metas.get(table)
        if meta is None:
            key = self._store._meta_key(table)
            self._pipe.watch(key)
            raw = self._redis.get(key)
            if raw is None:
                return None
            meta = self._metas[table] = _Meta.decode(raw, self._store.prefix, table)
        if meta.layout == _LOG:
            self._lock(table)
        return meta

    def _lock(self, table: str) -> None:
        key = f"{self._store.prefix}:l:{table}"
        if key in self._locks:
            return
        token = uuid.uuid4().hex
        ttl_ms = int(self._store._lock_timeout * 3000)
        deadline = time.monotonic() + self._store._lock_timeout
        pause = 0.001
        while not self._redis.set(key, token, nx=True, px=ttl_ms):
            if time.monotonic() > deadline:
                raise WriteConflict(
                    f"ingest log {table!r} stayed locked by another writer for "
                    f"{self._store._lock_timeout:.0f} s",
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
            gen = int(self._redis.incr(f"{self._store.prefix}:g:{table}"))
            layout = _LOG if log else _PART if len(keys) >= 2 else _FLAT
            raw = _Meta.encode(gen, layout, keys, columns, ttl_seconds or None)
            self._new[table] = raw
            self._metas[table] = _Meta.decode(raw, self._store.prefix, table)
            if log:
                self._lock(table)

    def _require(self, table: str) -> _Meta:
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
            if meta.layout == _LOG and column == "ingest_id":
                # Under the log's lock: no other writer adds ids until we commit.
                found = self._redis.mget([f"{meta.aux}id:{v}" for v in values])
                return {v for v, seq in zip(values, found, strict=True) if seq is not None}
            wanted = set(values)
            return {
                v for _, row in self._store._scan_rows(table) if (v := row.get(column)) in wanted
            }

    def get(
        self, table: str, keys: Sequence[str], key_rows: Sequence[tuple], columns: Sequence[str]
    ) -> dict[tuple, tuple]:
        with self._translated(f"reading online table {table!r}"):
            meta = self._meta(table)
            if meta is None or not key_rows:
                return {}
            if meta.layout == _LOG:
                raise StoreFailure(f"online table {table!r} is a log: it has no keyed rows")
            norm = [meta.norm_key(k) for k in key_rows]
            if meta.layout == _FLAT:
                names = [meta.data + meta.key_suffix(k) for k in norm]
                self._pipe.watch(*names)
                found = self._redis.mget(names)
            else:
                parts = sorted({meta.data + meta.key_suffix(k[:-1]) for k in norm})
                self._pipe.watch(*parts)
                reads = self._redis.pipeline(transaction=False)
                for k in norm:
                    reads.hget(meta.data + meta.key_suffix(k[:-1]), _key_part(k[-1]))
                found = reads.execute()
        now = _now_us()
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
            _check_layout(meta, table, _LOG, "append_log")
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
        if meta.layout == _LOG:
            raise StoreFailure(f"online table {table!r} is a log: use append_log")
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
            if meta.layout == _FLAT:
                name = meta.data + meta.key_suffix(key)
                if ms is not None and ms <= now_ms:
                    self._queued.append(("DEL", name))
                elif ms is not None:
                    self._queued.append(("SET", name, value, "PXAT", ms))
                else:
                    self._queued.append(("SET", name, value))
                continue
            name, f = meta.data + meta.key_suffix(key[:-1]), _key_part(key[-1])
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
            if meta.layout != _PART or meta.keys[-1][0] != column:
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
        pipe = self._pipe
        try:
            if self._queued or self._new or self._locks:
                pipe.multi()
                for table, raw in self._new.items():
                    pipe.set(self._store._meta_key(table), raw)
                for command in self._queued:
                    pipe.execute_command(*command)
                for key in self._locks:
                    pipe.delete(key)
                pipe.execute()
                self._locks.clear()
        finally:
            self._release()

    def _rollback(self) -> None:
        """Best effort: nothing was sent but WATCHes and locks, which also expire by themselves."""
        import redis

        with suppress(redis.RedisError):
            self._release()

    def _release(self) -> None:
        try:
            self._pipe.reset()  # UNWATCH, connection back to the pool
        finally:
            for key, token in self._locks.items():
                self._redis.eval(_RELEASE, 1, key, token)
            self._locks.clear()
