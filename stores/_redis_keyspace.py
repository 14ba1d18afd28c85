"""The Redis online store's keyspace: key names, table metas, stored values, RESP packing.

Shared by ``redis_online`` (the store) and ``_redis_writer`` (its transactions); see the
``redis_online`` module docstring for the key layout (a single Redis and a Redis Cluster) and
why it is so.
"""

from __future__ import annotations

import operator
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson

from contextkit.stores.errors import StoreFailure, StoreServerUnavailable, WriteConflict

EVENT_TIMESTAMP = "event_timestamp"  # the column that carries a row's event time (microseconds)
US = 1_000_000
FLAT, PART, LOG = "flat", "part", "log"

# -- values: normalized as SQLite's column affinity stores them --------------------------------


def as_int(v: Any) -> Any:
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
                return as_int(float(v))
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
    "int64": as_int,
    "bool": as_int,
    "timestamp": as_int,
    "float64": _as_float,
}


def normalizer(dtype: str) -> Callable[[Any], Any]:
    return _NORMALIZE.get(dtype, _as_text)


def key_part(value: Any) -> str:
    return value if type(value) is str else orjson.dumps(value).decode()


@dataclass
class TableMeta:
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
    # row type signature -> (position, normalizer) of the values not already in stored form
    fixes: dict[tuple, tuple] = field(default_factory=dict)
    pickers: dict[tuple, Callable[[list], tuple] | None] = field(default_factory=dict)

    spread: bool = False  # rows spread over a cluster's slots by key (see ``Keyspace``)
    # A replaced table's number of keys, as written (None: not recorded, or a transaction
    # wrote to it since): lets the next replace tell that it unlinked the whole generation.
    rows: int | None = None

    @classmethod
    def decode(cls, raw: bytes, prefix: str, table: str) -> TableMeta:
        d = orjson.loads(raw)
        # Where the generation's rows live: named in the meta by a cluster store; a meta without
        # it (every single-node one, written before or since) has them under the prefix.
        data = d.get("data") or f"{prefix}:d:{table}:{d['gen']}"
        meta = cls(
            raw,
            d["gen"],
            d["layout"],
            [tuple(k) for k in d["keys"]],
            [tuple(c) for c in d["columns"]],
            d.get("ttl"),
            data + ":",
            data + ";",
        )
        meta.spread = bool(d.get("spread"))
        meta.rows = d.get("rows")
        meta.index = {name: i for i, (name, _) in enumerate(meta.columns)}
        meta.key_norms = [normalizer(t) for _, t in meta.keys]
        meta.col_norms = [normalizer(t) for _, t in meta.columns]
        if len(meta.keys) == 1:
            meta.single = _KEY_TYPES.get(meta.keys[0][1], str)
        return meta

    @staticmethod
    def encode(
        gen: int,
        layout: str,
        keys,
        columns,
        ttl: int | None,
        data: str | None = None,
        spread: bool = False,
        rows: int | None = None,
    ) -> bytes:
        """The stored meta; ``data`` names where the rows live when it is not the single-node
        place (a cluster store), ``spread`` says they are spread over slots by key, ``rows``
        how many keys a replaced table's generation was written with."""
        meta: dict[str, Any] = {
            "gen": gen,
            "layout": layout,
            "keys": [list(k) for k in keys],
            "columns": [list(c) for c in columns],
            "ttl": ttl,
        }
        if data is not None:
            meta["data"] = data
        if spread:
            meta["spread"] = True
        if rows is not None:
            meta["rows"] = rows
        return orjson.dumps(meta)

    def without_rows(self) -> bytes:
        """This meta as stored, less its key count (see :attr:`rows`)."""
        d = orjson.loads(self.raw)
        d.pop("rows", None)
        return orjson.dumps(d)

    def pattern(self) -> str:
        """SCAN pattern of every key of this generation (rows, index, log)."""
        return glob_escape(self.data[:-1]) + "[:;]*"

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
        """The stored form of a row's values, as :meth:`row_value`; only the values not already
        in stored form go through their normalizer (one of their type is returned unchanged)."""
        signature = tuple(map(type, values))
        fix = self.fixes.get(signature)
        if fix is None:
            fix = self.fixes[signature] = tuple(
                (i, self.col_norms[i])
                for i, (t, (_, dtype)) in enumerate(zip(signature, self.columns, strict=True))
                if t is not type(None) and t is not _STORED_TYPES.get(dtype, str)
            )
        if not fix:
            return orjson.dumps(values)  # a tuple or a list: a JSON array either way
        values = list(values)
        for i, norm in fix:
            values[i] = norm(values[i])
        return orjson.dumps(values)

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
            return key_part(key[0])
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


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def slot_of(key: str | bytes) -> int:
    """The Redis Cluster hash slot of ``key`` (its hash tag's, when it has one)."""
    from redis.crc import key_slot

    return key_slot(key.encode() if isinstance(key, str) else key)


def resp_head(n: int) -> bytes:
    return b"*%d\r\n" % n


def resp_bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def resp_command(args: Sequence[bytes]) -> bytes:
    return resp_head(len(args)) + b"".join(map(resp_bulk, args))


def now_us() -> int:
    return time.time_ns() // 1000


def check_layout(meta: TableMeta, table: str, layout: str, what: str) -> None:
    if meta.layout != layout:
        raise StoreFailure(f"online table {table!r} ({meta.layout} layout) does not support {what}")


def log_columns(meta: TableMeta) -> list[str]:
    """A log row's fields, as stored: seq, ingest_id, ingested_at, then the columns."""
    return ["seq", "ingest_id", "ingested_at", *(name for name, _ in meta.columns)]


def full_row(meta: TableMeta, key: tuple, row: list) -> dict[str, Any]:
    """A row as {column: value}, its key columns included."""
    return {
        **dict(zip([k for k, _ in meta.keys], key, strict=True)),
        **dict(zip(meta.index, row, strict=True)),
    }


class Keyspace:
    """What a store and its writers share on one Redis or one Redis Cluster: the client, the
    key names below the prefix, and the translation of Redis errors into store errors naming
    the masked URL.

    Key names (``T`` is the table's *tag*)::

        T:m:TABLE  T:g:TABLE  T:l:TABLE     meta, generation counter, log lock
        T:d:TABLE:GEN...        rows of tables written in transactions (stream state, logs)
        P:d:TABLE:GEN:KEY       rows of replaced (materialized) tables

    On a single Redis ``T`` is the prefix ``P`` (the layout every earlier version wrote). On a
    cluster ``T`` is ``{P:WORKSPACE}``, a hash tag: every meta, counter, lock and transactional
    row of a workspace sits in one slot, so a transaction over them (an ingest: log marker,
    latest values, tiles) is one MULTI/EXEC on one master. Snapshot rows carry no tag: each
    key hashes on its whole name, so a materialized view spreads over every master."""

    def __init__(
        self,
        connect: Callable[[], Any],
        prefix: str,
        masked_url: str,
        *,
        cluster: bool = False,
        password: str | None = None,
    ) -> None:
        self._connect = connect
        self._client: Any = None if cluster else connect()
        self.prefix = prefix
        self.masked_url = masked_url
        self.cluster = cluster
        self.password = password
        self._guard = threading.Lock()

    @property
    def client(self) -> Any:
        """The client. A cluster client connects on first use (it learns the slots then), so a
        store opens while the cluster is down and works once it answers."""
        client = self._client
        if client is None:
            with self._guard:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
        return client

    def connected(self) -> Any | None:
        """The client if it exists (a cluster one may not have connected yet)."""
        return self._client

    @staticmethod
    def workspace(table: str) -> str:
        """What a table's name starts with up to its first ``__``: the workspace (every table of
        a workspace is ``<workspace>__...``, so they all give the same answer)."""
        return table.split("__", 1)[0]

    def tag(self, table: str) -> str:
        if not self.cluster:
            return self.prefix
        return "{" + f"{self.prefix}:{self.workspace(table)}" + "}"

    def meta_key(self, table: str) -> str:
        return f"{self.tag(table)}:m:{table}"

    def gen_key(self, table: str) -> str:
        return f"{self.tag(table)}:g:{table}"

    def lock_key(self, table: str) -> str:
        return f"{self.tag(table)}:l:{table}"

    def stream_data(self, table: str, gen: int) -> str:
        """Where a table created in a transaction keeps its rows (with its meta's tag)."""
        return f"{self.tag(table)}:d:{table}:{gen}"

    def snapshot_data(self, table: str, gen: int) -> str:
        """Where a replaced table keeps its rows on a cluster: untagged, so spread over the
        slots, and unique (``GEN.TOKEN``): a master that restarts empty takes the table's meta
        and counter with it while other masters keep rows of the lost generation, and a
        counter starting over must not name those rows again."""
        return f"{self.prefix}:d:{table}:{gen}.{uuid.uuid4().hex[:10]}"

    def patterns(self, table: str) -> list[str]:
        """SCAN patterns of every data key a table may have, whatever its generation."""
        found = dict.fromkeys(
            glob_escape(f"{base}:d:{table}:") + "*" for base in (self.prefix, self.tag(table))
        )
        return list(found)

    def slot(self, key: str) -> int:
        return slot_of(key)

    @contextmanager
    def translated(self, action: str, transaction: bool = False) -> Iterator[None]:
        """Redis errors as store errors naming the (masked) URL, with a hint. On a cluster a
        MOVED reply (a resharding gave the slot to another master) patches the slot map; in a
        ``transaction`` (one workspace's slot, on the master it was bound to) it is a
        :class:`WriteConflict`: nothing was written, and the next try binds to the new owner."""
        import redis
        from redis.exceptions import MovedError, RedisClusterException

        try:
            yield
        except StoreFailure:
            raise
        except RedisClusterException as exc:  # not a RedisError: the cluster client's own
            raise self.failure(action, exc) from None
        except redis.WatchError as exc:
            if "occurred while watching" in str(exc):  # redis-py's word for a lost connection
                raise self.failure(action, redis.ConnectionError(str(exc))) from None
            raise WriteConflict(
                f"{action}: a concurrent write to online store {self.masked_url} changed the same "
                "keys; nothing was written",
                hint="run the request again",
            ) from None
        except MovedError as exc:
            if not self.cluster:
                raise self.failure(action, exc) from None
            self._moved(exc)
            if not transaction:
                raise self.failure(action, exc) from None
            raise WriteConflict(
                f"{action}: a resharding moved the workspace's slot to another master of Redis "
                f"Cluster online store {self.masked_url}; nothing was written",
                hint="run the request again",
            ) from None
        except redis.RedisError as exc:
            raise self.failure(action, exc) from None

    def _moved(self, exc: Any) -> None:
        """Patch the cluster client's slot map after a MOVED reply (best effort)."""
        import redis
        from redis.exceptions import RedisClusterException

        nodes = self.client.nodes_manager
        with suppress(redis.RedisError, RedisClusterException):
            if exc.host:
                nodes.move_slot(exc)
            else:  # a node without a known endpoint redirects with only a port
                nodes.initialize()

    def failure(self, action: str, exc: Exception) -> StoreFailure:
        import redis
        from redis.exceptions import RedisClusterException

        text = str(exc)
        if self.password:
            text = text.replace(self.password, "***")
        where = f"{'Redis Cluster ' if self.cluster else ''}online store {self.masked_url}"
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
        if isinstance(exc, redis.ConnectionError) and ("SSL" in upper or "TLS" in upper):
            return StoreServerUnavailable(
                f"{action}: the TLS handshake with {where} failed ({text})",
                hint="for a certificate from a private CA add ?ssl_ca_certs=/path/to/ca.pem to "
                "the rediss:// URL; a server without TLS takes redis://, not rediss://",
            )
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError) and self.cluster:
            return StoreServerUnavailable(
                f"{action}: a master of {where} is unreachable ({text})",
                hint="check that every master of the cluster runs (a master down without a "
                "replica to take over leaves its slots unserved) and that the URL names one of "
                "them; reads and writes resume by themselves once it answers",
            )
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            return StoreServerUnavailable(
                f"{action}: {where} is unreachable ({text})",
                hint="check that Redis runs and the URL's host and port; reads and writes "
                "resume by themselves once it answers",
            )
        cluster_errors = (
            redis.exceptions.AskError,  # MovedError is one
            redis.exceptions.ClusterDownError,
            redis.exceptions.ClusterCrossSlotError,
            RedisClusterException,
        )
        moved = upper.startswith(("MOVED ", "ASK ", "CROSSSLOT"))
        if not self.cluster and (isinstance(exc, cluster_errors) or moved):
            scheme = self.masked_url.split("://", 1)[0]
            return StoreServerUnavailable(
                f"{action}: {where} is a Redis Cluster node ({text})",
                hint=f"name a cluster with the {scheme}+cluster:// scheme "
                f"(CONTEXTKIT_ONLINE_STORE={scheme}+cluster://host:port/0): see "
                "docs/deployment.md",
            )
        if isinstance(exc, redis.exceptions.ClusterDownError) or "CLUSTERDOWN" in upper:
            return StoreServerUnavailable(
                f"{action}: {where} is down ({text})",
                hint="a master without a working replica is down, so the cluster refuses every "
                "slot; reads and writes resume by themselves once it serves all slots again",
            )
        if isinstance(exc, cluster_errors) or moved:
            return StoreServerUnavailable(
                f"{action}: {where} is moving slots or cannot be reached ({text})",
                hint="check that the cluster's masters run and that the URL names one of them; "
                "a resharding or failover in progress passes: retry",
            )
        if isinstance(exc, redis.exceptions.NoPermissionError) or "NOPERM" in upper:
            return StoreServerUnavailable(
                f"{action}: {where} denied a command ({text})",
                hint="the Redis user needs read and write access to the store's key prefix",
            )
        return StoreFailure(f"{action}: {where} failed: {text}")

    def scan_rows(self, table: str) -> Iterator[tuple[TableMeta, dict[str, Any]]]:
        """Every row of a table as {column: value}, keys included. Cost grows with the table:
        only for calls the core makes on logs (whose durable copy belongs elsewhere)."""
        with self.translated("scanning an online table"):
            raw = self.client.get(self.meta_key(table))
            if raw is None:
                return
            meta = TableMeta.decode(raw, self.prefix, table)
            names = [k for k, _ in meta.keys]
            if meta.layout == LOG:
                fields = log_columns(meta)
                start = "-inf"
                while True:
                    members = self.client.zrangebyscore(
                        meta.aux + "log", start, "+inf", start=0, num=5000
                    )
                    for m in members:
                        yield meta, dict(zip(fields, orjson.loads(m), strict=True))
                    if len(members) < 5000:
                        return
                    start = f"({orjson.loads(members[-1])[0]}"
            for name in self.client.scan_iter(match=meta.pattern(), count=5000):
                suffix = name.decode()[len(meta.data) :]
                if not name.decode().startswith(meta.data):
                    continue  # the index
                if meta.layout == FLAT:
                    value = self.client.get(name)
                    if value is not None:
                        key = meta.norm_key(orjson.loads(suffix) if len(names) > 1 else [suffix])
                        yield meta, full_row(meta, key, orjson.loads(value))
                    continue
                part = orjson.loads(suffix) if len(names) > 2 else [suffix]
                for f, value in self.client.hgetall(name).items():
                    key = meta.norm_key([*part, f.decode()])
                    yield meta, full_row(meta, key, orjson.loads(value))
