"""The serving cache: a bounded in-memory LRU of feature values per entity row, in the data plane.

A service declares ``ContextService(..., cache=timedelta(minutes=5))`` (at most 24 h, checked at
``plan``); then each process that serves it (``contextkit serve``, or a ``Context`` in an app)
keeps the feature values it read for one entity row for up to that long, and answers the next
lookup of the same keys from memory instead of the online store.

An entry is keyed by (workspace, service, *generation*, join key values), where the generation is
the workspace's applied version and the id of the last completed materialization job of each of
the service's batch views. Both live in the registry, so an apply or a materialization from any
process invalidates every entry of the services it touches: the generation is read again only
when the registry changed (``RegistryStore.change_token()``, one cheap call per request), and
entries of an older generation are never read again (they age out of the LRU). Values written
without a job (stream views' ingest) are served from the cache until the entry expires.

Bounds: at most ``max_entries`` entity rows in all (default :data:`DEFAULT_MAX_ENTRIES`, or
``CONTEXTKIT_SERVING_CACHE_ENTRIES``), least recently used evicted first, and each entry expires
after its service's ``cache`` duration. Rows are cached only when every join key value is a
plain ``int`` or ``str`` (so ``1``, ``1.0`` and ``True`` never share an entry); a feature
lookup (``/v1/features``) of a service that reads request context is never cached (a context
request's features are, keyed by that context: see below).

A request may bypass it: ``read=False`` reads the online store (``cache: false`` in
``/v1/features``; ``requestOptions.readFromCache: false`` in the Tecton API), ``write=False``
keeps what was read out of the cache (``writeToCache: false``). Hits, misses and bypassed rows
are counted per service (``/metrics``: ``contextkit_serving_cache_*``).

Search results. A cached service's searches (``ctx.get_context``, ``/v1/context``) are kept too,
one entry per identical search: the same search of the service, query text, ``top_k`` and filter
(:meth:`ServingCache.search`). Their generation is the workspace's version and the last completed
job of each embedding view searched, so an apply or a materialization of the view invalidates
them; documents pushed to a view without a job are seen once the entry expires. They share the
LRU's bound with the entity rows (one entry per search) and are counted apart
(``contextkit_serving_cache_search_{hits,misses,bypassed}_total``).

Context features. The features of a context request of a cached service have entries of their
own (:meth:`ServingCache.context_features`): its plan reads the service's features and its
prompt's, and may read request context for realtime views, so the entry is keyed by the feature
columns read and those request-context values (each with its type) besides the join keys. Their
generation is the workspace's version and the last completed job of each batch view read, as for
``/v1/features``; they count as entity rows in the same counters (``hits``, ``misses``,
``bypassed``) and share the LRU's bound. ``cache: false`` in ``/v1/context`` bypasses them and
leaves them as they were.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.streaming import catch_up, needs_catch_up
from contextkit.errors import ConfigError
from contextkit.retrieval.online import OnlineFeatures, ServiceReader

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime

DEFAULT_MAX_ENTRIES = 100_000
MAX_ENTRIES_ENV = "CONTEXTKIT_SERVING_CACHE_ENTRIES"

# (expires_at (monotonic seconds), join key values as the reader coerced them, feature values,
# statuses, event timestamps): the last three one item per feature column of the service.
_Entry = tuple[float, tuple[Any, ...], tuple[Any, ...], tuple[str, ...], tuple[Any, ...]]
_CACHEABLE_KEY_TYPES = (int, str)


class ServingCache:
    """One process's serving cache (shared by every workspace's ``Runtime``: see
    :func:`serving_cache`)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        # (workspace, service) -> (registry change token, generation, ttl seconds or None)
        self._generations: dict[tuple[str, str], tuple[Any, Hashable, float | None]] = {}
        self._lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self.bypassed: dict[str, int] = {}
        self.search_hits: dict[str, int] = {}
        self.search_misses: dict[str, int] = {}
        self.search_bypassed: dict[str, int] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._generations.clear()

    # -- the read path ----------------------------------------------------------------------
    def read(
        self,
        runtime: Runtime,
        reader: ServiceReader,
        entities: Mapping[str, Sequence[Any] | Any],
        request_context: Mapping[str, Any] | None = None,
        *,
        read: bool = True,
        write: bool = True,
    ) -> OnlineFeatures:
        """The service's features for ``entities``, from the cache where it may answer."""
        if reader.cache_seconds is None:  # the reader is rebuilt when the setting changes
            return reader.read(runtime.online, entities, request_context)
        generation, ttl = self._generation(runtime, reader)
        rows = None
        if ttl is not None and not reader.request_fields:
            rows = _row_keys(reader, entities)
        if rows is None:  # not a cached service, or keys that are never cached: as uncached
            return reader.read(runtime.online, entities, request_context)
        prefix = (reader.workspace, reader.service, generation)
        return self._rows(
            runtime, reader, prefix, ttl, rows, entities, request_context, read=read, write=write
        )

    def context_features(
        self,
        runtime: Runtime,
        reader: ServiceReader,
        ttl: float | None,
        entities: Mapping[str, Sequence[Any] | Any],
        request_context: Mapping[str, Any] | None = None,
        *,
        read: bool = True,
        write: bool = True,
    ) -> OnlineFeatures:
        """The features of a context request (``ctx.get_context``, ``/v1/context``) of a service
        cached for ``ttl`` seconds (None: not cached). ``reader`` is the request's plan's: the
        service's features and its prompt's, so its entries are its own, keyed by its feature
        columns and the request-context values its realtime views read, besides the keys."""
        catch_up_streams(runtime, reader)
        rows = _row_keys(reader, entities) if ttl is not None else None
        context = _context_key(reader, request_context) if rows is not None else None
        if rows is None or context is None:
            return reader.read(runtime.online, entities, request_context)
        batch_views = [r.view for r in reader.reads if r.kind == "batch"]
        generation = self._views_generation(runtime, reader.workspace, batch_views)
        prefix = ("context", reader.workspace, reader.service, generation, reader.feature_names)
        prefix = (*prefix, context)
        return self._rows(
            runtime, reader, prefix, ttl, rows, entities, request_context, read=read, write=write
        )

    def _rows(
        self,
        runtime: Runtime,
        reader: ServiceReader,
        prefix: tuple[Any, ...],
        ttl: float,
        rows: list[tuple[Any, ...]],
        entities: Mapping[str, Sequence[Any] | Any],
        request_context: Mapping[str, Any] | None,
        *,
        read: bool,
        write: bool,
    ) -> OnlineFeatures:
        """``rows`` (join key values) under ``prefix``: hits from memory, misses read together."""
        service = reader.service
        if not read:
            _count(self.bypassed, service, len(rows), self._lock)
            result = reader.read(runtime.online, entities, request_context)
            if write:
                fresh = _entries_of(result, ttl + time.monotonic())
                self._put(prefix, zip(rows, fresh, strict=True))
            return result
        now = time.monotonic()
        found: dict[tuple[Any, ...], _Entry] = {}
        missing: list[tuple[Any, ...]] = []
        with self._lock:
            entries = self._entries
            for row in rows:
                if row in found:
                    continue
                key = (*prefix, row)
                entry = entries.get(key)
                if entry is not None and entry[0] > now:
                    entries.move_to_end(key)
                    found[row] = entry
                else:
                    if entry is not None:
                        del entries[key]
                    if row not in missing:
                        missing.append(row)
        _count(self.misses, service, sum(1 for r in rows if r not in found), self._lock)
        _count(self.hits, service, sum(1 for r in rows if r in found), self._lock)
        if missing:
            names = [k for k, _ in reader.join_keys]
            sub = {name: [row[i] for row in missing] for i, name in enumerate(names)}
            result = reader.read(runtime.online, sub, request_context)
            fresh = _entries_of(result, ttl + now)
            found.update(zip(missing, fresh, strict=True))
            if write:
                self._put(prefix, zip(missing, fresh, strict=True))
        return _assemble(reader, [found[row] for row in rows])

    def search(
        self,
        runtime: Runtime,
        workspace: str,
        service: str,
        ttl: float | None,
        views: Sequence[str],
        key: Hashable,
        compute: Callable[[], Any],
        *,
        read: bool = True,
        write: bool = True,
    ) -> Any:
        """The result of one search of a cached service (``ttl`` seconds; None: not cached):
        from the cache when an identical search (``key``) of the same generation of ``views``
        is there, else ``compute()``, kept for the next one. The caller gets its own copy."""
        if ttl is None:
            return compute()
        prefix = ("search", workspace, service, self._views_generation(runtime, workspace, views))
        full = (*prefix, key)
        if not read:
            _count(self.search_bypassed, service, 1, self._lock)
        else:
            now = time.monotonic()
            with self._lock:
                entry = self._entries.get(full)
                if entry is not None and entry[0] > now:
                    self._entries.move_to_end(full)
                    self.search_hits[service] = self.search_hits.get(service, 0) + 1
                    return copy.deepcopy(entry[1])
                if entry is not None:
                    del self._entries[full]
                self.search_misses[service] = self.search_misses.get(service, 0) + 1
        value = compute()
        if write:
            stored = (time.monotonic() + ttl, copy.deepcopy(value))
            self._put(prefix, [(key, stored)])
        return value

    # -- internals --------------------------------------------------------------------------
    def _views_generation(self, runtime: Runtime, workspace: str, views: Sequence[str]) -> Any:
        """The workspace's version and the last completed job of each of ``views``."""
        token = runtime.registry.change_token()
        key = (workspace, "views", *sorted(views))
        known = self._generations.get(key)  # type: ignore[call-overload]
        if known is not None and known[0] == token:
            return known[1]
        wanted = set(views)
        jobs = tuple(
            sorted(
                (job.view, job.id)
                for job in runtime.registry.last_succeeded_jobs()
                if job.workspace == workspace and job.view in wanted
            )
        )
        generation = (runtime.specs(workspace).workspace.version, jobs)
        self._generations[key] = (token, generation, None)  # type: ignore[index]
        return generation

    def _generation(self, runtime: Runtime, reader: ServiceReader) -> tuple[Hashable, float | None]:
        token = runtime.registry.change_token()
        key = (reader.workspace, reader.service)
        known = self._generations.get(key)
        if known is not None and known[0] == token:
            return known[1], known[2]
        specs = runtime.specs(reader.workspace)
        spec = specs.services.get(reader.service)
        ttl = spec.cache_seconds if spec is not None else None
        batch_views = {r.view for r in reader.reads if r.kind == "batch"}
        jobs = tuple(
            sorted(
                (job.view, job.id)
                for job in runtime.registry.last_succeeded_jobs()
                if job.workspace == reader.workspace and job.view in batch_views
            )
        )
        generation = (specs.workspace.version, jobs)
        self._generations[key] = (token, generation, ttl)
        return generation, ttl

    def _put(self, prefix: tuple[Any, ...], items: Any) -> None:
        with self._lock:
            entries = self._entries
            for row, entry in items:
                key = (*prefix, row)
                entries[key] = entry
                entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
                self.evictions += 1


def serving_cache(runtime: Runtime) -> ServingCache:
    """The process's serving cache (one per opened registry, shared by its workspaces)."""

    def create() -> ServingCache:
        raw = os.environ.get(MAX_ENTRIES_ENV)
        if not raw:
            return ServingCache()
        if not raw.strip().isdigit() or int(raw) < 1:
            raise ConfigError(
                f"{MAX_ENTRIES_ENV} must be a positive integer, got {raw!r}",
                hint=f"unset it for the default ({DEFAULT_MAX_ENTRIES} entity rows per process)",
            )
        return ServingCache(int(raw))

    return runtime.shared("serving_cache", create)


def read_features(
    runtime: Runtime,
    reader: ServiceReader,
    entities: Mapping[str, Sequence[Any] | Any],
    request_context: Mapping[str, Any] | None = None,
    *,
    read: bool = True,
    write: bool = True,
) -> OnlineFeatures:
    """Feature values of ``reader``'s service through the process's serving cache (a service
    without ``cache=`` reads the online store, as :meth:`ServiceReader.read` does). A node
    keeping stream views in its own SQLite file beside a shared log applies what other nodes
    logged first (:func:`catch_up_streams`)."""
    catch_up_streams(runtime, reader)
    return serving_cache(runtime).read(
        runtime, reader, entities, request_context, read=read, write=write
    )


def catch_up_streams(runtime: Runtime, reader: ServiceReader) -> None:
    """Before a read: a node keeping stream views in its own SQLite file beside a shared
    (PostgreSQL) ingest log applies what other nodes logged since
    (:func:`~contextkit.compute.streaming.catch_up`); nothing in other configurations."""
    if needs_catch_up(runtime):
        streams = {r.spec.source for r in reader.reads if r.kind.startswith("stream")}
        if streams:
            catch_up(runtime, reader.workspace, streams)


def _count(counter: dict[str, int], service: str, n: int, lock: threading.Lock) -> None:
    if n:
        with lock:
            counter[service] = counter.get(service, 0) + n


def _row_keys(
    reader: ServiceReader, entities: Mapping[str, Sequence[Any] | Any]
) -> list[tuple[Any, ...]] | None:
    """One tuple of join key values per entity row, or None when the request is not one the
    cache answers (anything odd is left to the reader, which names the mistake)."""
    if not isinstance(entities, Mapping) or len(entities) != len(reader.join_keys):
        return None
    columns = []
    for name, _ in reader.join_keys:
        column = entities.get(name)
        if column is None:
            return None
        if isinstance(column, list | tuple):
            pass
        elif type(column) in _CACHEABLE_KEY_TYPES:
            column = [column]
        else:
            return None
        if not column or any(type(v) not in _CACHEABLE_KEY_TYPES for v in column):
            return None
        columns.append(column)
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        return None
    return list(zip(*columns, strict=True))


def _context_key(
    reader: ServiceReader, request_context: Mapping[str, Any] | None
) -> tuple[Any, ...] | None:
    """The request-context values ``reader``'s realtime views read, as part of a cache key
    (each with its type, so ``1``, ``1.0`` and ``True`` differ), or None when one of them is not
    a plain value (the request is then answered as uncached)."""
    given = request_context or {}
    out = []
    for name, _ in reader.request_fields:
        value = _plain(given.get(name))
        if value is _UNCACHEABLE:
            return None
        out.append((name, value))
    return tuple(out)


_UNCACHEABLE = object()
_PLAIN_TYPES = (type(None), bool, int, float, str, datetime)


def _plain(value: Any) -> Any:
    if type(value) in _PLAIN_TYPES:
        return (type(value).__name__, value)
    if isinstance(value, list | tuple):
        items = tuple(_plain(v) for v in value)
        return _UNCACHEABLE if _UNCACHEABLE in items else ("list", items)
    return _UNCACHEABLE


def _entries_of(result: OnlineFeatures, expires: float) -> list[_Entry]:
    keys = list(zip(*result.join_keys.values(), strict=True))
    values = list(zip(*result.values, strict=True)) if result.values else [()] * len(keys)
    statuses = list(zip(*result.statuses, strict=True)) if result.statuses else [()] * len(keys)
    stamps = (
        list(zip(*result.event_timestamps, strict=True))
        if result.event_timestamps
        else [()] * len(keys)
    )
    return [
        (expires, key, v, s, t) for key, v, s, t in zip(keys, values, statuses, stamps, strict=True)
    ]


def _assemble(reader: ServiceReader, entries: list[_Entry]) -> OnlineFeatures:
    names = [k for k, _ in reader.join_keys]
    columns = len(reader.feature_names)
    return OnlineFeatures(
        workspace=reader.workspace,
        service=reader.service,
        join_keys={name: [e[1][i] for e in entries] for i, name in enumerate(names)},
        join_key_types=dict(reader.join_keys),
        names=list(reader.feature_names),
        types=list(reader.feature_types),
        values=[[e[2][c] for e in entries] for c in range(columns)],
        statuses=[[e[3][c] for e in entries] for c in range(columns)],
        event_timestamps=[[e[4][c] for e in entries] for c in range(columns)],
    )
