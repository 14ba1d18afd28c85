"""Online retrieval: batched feature lookups for a service, column-major results.

A request names a service and gives entity keys column-major (``{"user_id": [1, 2, 3]}``); the
keyed views of the service (batch views and the latest values of stream views) are read together
with one ``OnlineStore.read_many`` (one round trip on Redis, whatever the number of views and
keys), aggregate stream views from their tiles, and the result keeps request order. A key with no
stored value gives nulls with status ``MISSING``, never an error; a store that cannot answer (a
Redis server down, a damaged file) is a 503 ``store_error``, never values reported missing.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from contextkit.compute.layout import online_table
from contextkit.errors import BadRequestError, StoreUnavailableError
from contextkit.framework.specs import ContextServiceSpec
from contextkit.stores.errors import StoreFailure, StoreServerUnavailable, StoreUnavailable
from contextkit.stores.online import OnlineStore, TableRead
from contextkit.types import (
    Bool,
    Int64,
    String,
    Timestamp,
    arrow_type,
    epoch_micros,
    parse_value,
)

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime

PRESENT = "PRESENT"
MISSING = "MISSING"


@dataclass(frozen=True)
class _ViewRead:
    view: str
    table: str
    keys: tuple[str, ...]
    columns: tuple[str, ...]  # event_timestamp first, then the features read
    dtypes: tuple[str, ...]  # of the features read
    # "batch": the view's online table; "stream_latest": the same layout, with a read-time ttl;
    # "stream_tiles": an aggregate stream view's tiles; "realtime": computed from other reads.
    kind: str = "batch"
    spec: Any = None
    selected: tuple[str, ...] = ()  # the features returned (a realtime input may read more)
    group: Any = None  # a realtime view's TransformServerGroupSpec: run in its worker processes


@dataclass(frozen=True)
class ServiceReader:
    """Everything needed to serve a service, precomputed once per registry version."""

    workspace: str
    service: str
    join_keys: tuple[tuple[str, str], ...]
    reads: tuple[_ViewRead, ...]  # in evaluation order: realtime views last
    feature_names: tuple[str, ...]
    feature_types: tuple[str, ...]
    request_fields: tuple[tuple[str, str], ...] = ()
    output: tuple[str, ...] = ()  # the views returned, in the service's order
    cache_seconds: float | None = None  # the service's serving cache (None: not cached)

    @property
    def uses_transform_groups(self) -> bool:
        """Whether a read waits on transform server group workers (other processes)."""
        return any(r.group is not None for r in self.reads)

    @cached_property
    def _plan(self) -> _ReadPlan:
        """What :meth:`read` would otherwise work out again on every request (computed at the
        first read, kept as long as this reader: until the registry changes)."""
        by_view = {read.view: read for read in self.reads}
        outputs = []
        for view in self.output:
            read = by_view[view]
            picks = []
            for name in read.selected:
                i = read.columns.index(name)
                picks.append((i, _CONVERTERS.get(read.dtypes[i - 1])))
            outputs.append((view, (None,) * len(read.columns), tuple(picks)))
        return _ReadPlan(
            keyed=tuple(r for r in self.reads if r.kind in ("batch", "stream_latest")),
            key_sets=tuple(dict.fromkeys(r.keys for r in self.reads)),
            outputs=tuple(outputs),
            key_types=dict(self.join_keys),
        )

    @classmethod
    def build(
        cls,
        workspace: str,
        service: ContextServiceSpec,
        views: Mapping[str, Any],
        transform_groups: Mapping[str, Any] | None = None,
    ) -> ServiceReader:
        """``views``: every applied feature view (batch, stream and realtime) by name;
        ``transform_groups``: the transform server groups (TransformServerGroupSpec) by name."""
        group_of = {v: g for g in (transform_groups or {}).values() for v in g.views}
        refs = {ref.view: ref for ref in service.features}
        realtime = [views[v] for v in refs if views[v].kind == "realtime_feature_view"]
        inputs = {name for view in realtime for name in view.inputs}
        join_keys: dict[str, str] = {}
        request: dict[str, str] = {}
        reads: list[_ViewRead] = []
        for name in [*(n for n in inputs if n not in refs), *refs]:
            view = views[name]
            every = [f.name for f in view.features]
            ref = refs.get(name)
            selected = (ref.features or every) if ref is not None else []
            read = selected if name not in inputs else every
            kind = "batch"
            if view.kind == "stream_feature_view":
                kind = "stream_tiles" if view.is_aggregate else "stream_latest"
            elif view.kind == "realtime_feature_view":
                kind = "realtime"
                for field in view.request_schema:
                    request.setdefault(field.name, field.dtype or String)
            if ref is not None:
                for key in view.join_keys:
                    join_keys.setdefault(key.name, key.dtype or String)
            reads.append(
                _ViewRead(
                    view=name,
                    table=online_table(workspace, name),
                    keys=tuple(view.join_key_names),
                    columns=("event_timestamp", *read),
                    dtypes=tuple(view.feature(n).dtype or String for n in read),
                    kind=kind,
                    spec=view,
                    selected=tuple(selected),
                    group=group_of.get(name) if kind == "realtime" else None,
                )
            )
        reads.sort(key=lambda r: r.kind == "realtime")  # stable: inputs before realtime views
        names, types = [], []
        for ref in service.features:
            view = views[ref.view]
            selected = ref.features or [f.name for f in view.features]
            names += [f"{view.name}.{n}" for n in selected]
            types += [view.feature(n).dtype or String for n in selected]
        return cls(
            workspace,
            service.name,
            tuple(join_keys.items()),
            tuple(reads),
            tuple(names),
            tuple(types),
            tuple(request.items()),
            tuple(refs),
            service.cache_seconds,
        )

    def read(
        self,
        store: OnlineStore,
        entities: Mapping[str, Sequence[Any]],
        request_context: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> OnlineFeatures:
        """Look up every feature of the service for the given entity keys."""
        keys = self._check_entities(entities)
        request = self._check_request(request_context, len(next(iter(keys.values()))))
        now = now or datetime.now(UTC)
        plan = self._plan
        raw: dict[str, list[tuple | None]] = {}
        by_keys: dict[tuple[str, ...], list[tuple]] = {}  # views keyed alike share their rows
        for names in plan.key_sets:
            by_keys[names] = list(zip(*(keys[k] for k in names), strict=True))
        key_rows = {read.view: by_keys[read.keys] for read in self.reads}
        if plan.keyed:
            raw.update(_read_keyed(store, plan.keyed, key_rows, now))
        for read in self.reads:
            if read.view not in raw:
                rows = key_rows[read.view]
                raw[read.view] = _read_rows(self, read, store, rows, raw, request, now)
        values: list[list[Any]] = []
        statuses: list[list[str]] = []
        timestamps: list[list[str | None]] = []
        for view, nones, picks in plan.outputs:
            rows = raw[view]
            # The view's columns in one transposition (a missing row: nulls), not one pass
            # over the rows per feature.
            columns = list(zip(*(nones if r is None else r for r in rows), strict=True))
            values += [
                list(columns[i])
                if convert is None
                else [None if v is None else convert(v) for v in columns[i]]
                for i, convert in picks
            ]
            statuses += [[MISSING if r is None else PRESENT for r in rows]] * len(picks)
            timestamps += [[_iso_from_micros(t) for t in columns[0]]] * len(picks)
        return OnlineFeatures(
            workspace=self.workspace,
            service=self.service,
            join_keys=keys,
            join_key_types=dict(plan.key_types),
            names=list(self.feature_names),
            types=list(self.feature_types),
            values=values,
            statuses=statuses,
            event_timestamps=timestamps,
        )

    def _check_entities(self, entities: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        if (type(entities) is not dict and not isinstance(entities, Mapping)) or not entities:
            raise BadRequestError(
                "entities must map each join key to a list of values",
                hint=f'send {{"{self.join_keys[0][0]}": [...]}}' if self.join_keys else None,
            )
        out: dict[str, list[Any]] = {}
        length = None
        for name, dtype in self.join_keys:
            if name not in entities:
                raise BadRequestError(
                    f"missing join key {name!r} for service {self.service!r}",
                    hint=f"service {self.service!r} needs: "
                    + ", ".join(k for k, _ in self.join_keys),
                    details={"join_key": name},
                )
            column = entities[name]
            if type(column) is not list:  # a JSON body's lists skip these checks
                if hasattr(column, "tolist") and not isinstance(column, str | bytes):
                    column = column.tolist()  # numpy arrays, pandas Series
                if isinstance(column, str | bytes) or not isinstance(column, Sequence):
                    column = [column]
            if len(column) == 0:
                raise BadRequestError(
                    f"join key {name!r} has an empty list of values",
                    hint="send at least one value per join key",
                )
            if length is not None and len(column) != length:
                raise BadRequestError(
                    "join key lists have different lengths",
                    hint="send one value per entity row for every join key (column-major)",
                )
            length = len(column)
            if dtype == Int64:  # the common keys checked inline; anything else by _coerce_key
                out[name] = [
                    v
                    if type(v) is int and _INT64_MIN <= v <= _INT64_MAX
                    else _coerce_key(name, dtype, v)
                    for v in column
                ]
            elif dtype == String:
                out[name] = [v if type(v) is str else _coerce_key(name, dtype, v) for v in column]
            else:
                out[name] = [_coerce_key(name, dtype, v) for v in column]
        unknown = [k for k in entities if k not in out]
        if unknown:
            raise BadRequestError(
                f"unknown join key(s) {', '.join(map(repr, unknown))} for service {self.service!r}",
                hint="it needs: " + ", ".join(k for k, _ in self.join_keys),
            )
        return out

    def _check_request(self, given: Mapping[str, Any] | None, n: int) -> list[dict[str, Any]]:
        """One dict of request-context values per entity row (a scalar applies to every row)."""
        if not self.request_fields:
            return [{} for _ in range(n)]
        given = dict(given or {})
        if not isinstance(given, dict):
            raise BadRequestError("request_context must be an object")
        unknown = sorted(set(given) - {name for name, _ in self.request_fields})
        if unknown:
            raise BadRequestError(
                f"unknown request_context field(s): {', '.join(unknown)}",
                hint="the service's realtime views read: "
                + ", ".join(name for name, _ in self.request_fields),
                details={"field": f"request_context.{unknown[0]}"},
            )
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        for name, dtype in self.request_fields:
            if name not in given:
                raise BadRequestError(
                    f"missing request_context field {name!r} ({dtype})",
                    hint=f"service {self.service!r} computes realtime features from it",
                    details={"field": f"request_context.{name}"},
                )
            value = given[name]
            column = value if isinstance(value, list) else [value] * n
            if len(column) != n:
                raise BadRequestError(
                    f"request_context.{name} has {len(column)} values for {n} entities",
                    hint="send one value for all entities, or a list with one per entity",
                    details={"field": f"request_context.{name}"},
                )
            for row, item in zip(rows, column, strict=True):
                try:
                    row[name] = parse_value(dtype, item)
                except ValueError as exc:
                    raise BadRequestError(
                        f"request_context field {name!r} must be {dtype} ({exc}), got {item!r}",
                        details={"field": f"request_context.{name}", "expected": dtype},
                    ) from None
        return rows


def service_reader(runtime: Runtime, service: str) -> ServiceReader:
    """The precomputed reader of a service (cached until the registry changes)."""

    def build() -> ServiceReader:
        spec = runtime.specs(workspace).service(service)
        if not spec.features:
            raise BadRequestError(
                f"service {service!r} has no feature views",
                hint="ask /v1/context (or ctx.get_context) for its documents and prompt",
            )
        specs = runtime.specs(workspace)
        return ServiceReader.build(
            workspace, spec, specs.feature_views, specs.transform_server_groups
        )

    workspace = runtime.workspace
    return runtime.cached(("reader", workspace, service), build)


@dataclass(frozen=True)
class _ReadPlan:
    """A :class:`ServiceReader`'s read, worked out once: the keyed reads (one ``read_many``),
    the views' distinct join keys and, per view returned, its row of nulls and its features'
    (column, converter) pairs."""

    keyed: tuple[_ViewRead, ...]
    key_sets: tuple[tuple[str, ...], ...]  # the distinct join keys of the views read
    outputs: tuple[tuple[str, tuple[None, ...], tuple[tuple[int, Any], ...]], ...]
    key_types: dict[str, str]


def _read_keyed(
    store: OnlineStore,
    reads: Sequence[_ViewRead],
    key_rows: Mapping[str, list[tuple]],
    now: datetime,
) -> dict[str, list[tuple | None]]:
    """The rows of every keyed view (batch, stream latest values) in one ``read_many``: one
    round trip on a networked store. A view not materialized (or with nothing ingested) yet
    gives None per key; a store that cannot answer raises."""
    try:
        with _store_errors():
            found = store.read_many(
                [TableRead(r.table, r.keys, r.columns, key_rows[r.view]) for r in reads]
            )
    except StoreFailure as exc:  # a table the store refuses to read as rows (not an outage)
        raise StoreUnavailableError(exc.message, hint=exc.hint) from None
    out: dict[str, list[tuple | None]] = {}
    for read, rows in zip(reads, found, strict=True):
        n = len(key_rows[read.view])
        if rows is None:
            out[read.view] = [None] * n
            continue
        ttl = getattr(read.spec, "ttl_seconds", None)
        if read.kind == "stream_latest" and ttl:
            oldest = epoch_micros(now) - ttl * 1_000_000
            rows = [r if r is not None and r[0] > oldest else None for r in rows]
        out[read.view] = rows
    return out


class _StoreErrors:
    """``with _store_errors():`` turns a store that cannot answer now (a server down, full or
    refusing the credentials; data damaged) into a 503 ``store_error`` naming it."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, StoreServerUnavailable | StoreUnavailable):
            raise StoreUnavailableError(
                exc.message,
                hint=exc.hint or "the online store is back when its server is: retry",
            ) from None


def _store_errors() -> _StoreErrors:
    return _StoreErrors()


def _read_rows(
    reader: ServiceReader,
    read: _ViewRead,
    store: OnlineStore,
    key_rows: list[tuple],
    raw: Mapping[str, list[tuple | None]],
    request: list[dict[str, Any]],
    now: datetime,
) -> list[tuple | None]:
    """``(event_timestamp_micros, *features)`` per key row of a tiled or realtime view, None
    where nothing is served."""
    if read.kind == "stream_tiles":
        from contextkit.compute.streaming import read_stream_aggregates

        with _store_errors():
            return read_stream_aggregates(
                store, reader.workspace, read.spec, read.columns[1:], key_rows, now
            )
    if read.kind == "realtime":
        return _compute_realtime(reader, read, raw, request, now)
    return list(_read_keyed(store, [read], {read.view: key_rows}, now)[read.view])


def _compute_realtime(reader, read, raw, request, now) -> list[tuple | None]:
    from contextkit.framework.realtime import run_realtime

    by_view = {r.view: r for r in reader.reads}
    now_us = epoch_micros(now)
    rows_inputs: list[list[dict[str, Any]]] = []
    for i in range(len(request)):
        inputs = []
        for name in read.spec.inputs:
            upstream = by_view[name]
            row = raw[name][i]
            inputs.append(
                {
                    feature: (None if row is None else _typed(dtype, row[j]))
                    for j, (feature, dtype) in enumerate(
                        zip(upstream.columns[1:], upstream.dtypes, strict=True), start=1
                    )
                }
            )
        rows_inputs.append(inputs)
    if read.group is not None:  # in the worker processes of its transform server group
        from contextkit.framework.transform_workers import transform_pool

        pool = transform_pool(reader.workspace, read.group)
        computed_rows = pool.run(read.spec, request, rows_inputs)
    else:
        computed_rows = [
            run_realtime(read.spec, row_request, inputs)
            for row_request, inputs in zip(request, rows_inputs, strict=True)
        ]
    return [
        (
            now_us,
            *(_stored(computed[n], d) for n, d in zip(read.columns[1:], read.dtypes, strict=True)),
        )
        for computed in computed_rows
    ]


def _typed(dtype: str, value: Any) -> Any:
    """A value as stored online, as the Python value a realtime function gets."""
    if value is None:
        return None
    if dtype == Bool:
        return bool(value)
    if dtype == Timestamp:
        return _parse_iso(_iso_from_micros(value))
    return value


def _stored(value: Any, dtype: str) -> Any:
    """A realtime function's value in the stored form the response converters expect."""
    if value is None:
        return None
    if dtype == Timestamp:
        return epoch_micros(value)
    return value


_INT_PATTERN = re.compile(r"-?0*([0-9]+)")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT64_DIGITS = len(str(_INT64_MAX))  # 19


def _coerce_key(name: str, dtype: str, value: Any) -> Any:
    if dtype == Int64:
        number = None
        too_long = False
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            number = int(value)  # also numpy integers
        elif isinstance(value, str) and (match := _INT_PATTERN.fullmatch(value)):
            # Tecton's wire format sends int64 keys as strings. Python refuses to convert more
            # than 4,300 digits (leading zeros count), and no more than 19 digits fit anyway.
            digits = match.group(1)
            too_long = len(digits) > _INT64_DIGITS
            if not too_long:
                number = -int(digits) if value.startswith("-") else int(digits)
        if number is not None and _INT64_MIN <= number <= _INT64_MAX:
            return number
        if number is not None or too_long:
            raise BadRequestError(
                f"join key {name!r} is out of the int64 range, got {_shown(value)}",
                hint=f"int64 keys lie between {_INT64_MIN} and {_INT64_MAX}",
                details={"join_key": name, "expected": dtype},
            )
    elif dtype == String:
        if isinstance(value, str):
            return value
    elif value is not None:
        return value
    raise BadRequestError(
        f"join key {name!r} must be {dtype}, got {_shown(value)}",
        hint=f"send {name} values of type {dtype}",
        details={"join_key": name, "expected": dtype},
    )


def _shown(value: Any, limit: int = 40) -> str:
    """A value as an error message quotes it: the start of a long one, with its length."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


_EPOCH = datetime(1970, 1, 1)  # naive: its isoformat() has no offset, so "Z" is appended


def _iso_from_micros(micros: int | None) -> str | None:
    """``2026-11-20T20:51:22.205611Z`` (no fraction when it is 0); half the cost of
    ``datetime.fromtimestamp(..., UTC).isoformat()`` and its offset replaced."""
    if micros is None:
        return None
    return (_EPOCH + timedelta(microseconds=micros)).isoformat() + "Z"


def _parse_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


_CONVERTERS = {Bool: bool, Timestamp: _iso_from_micros}


@dataclass
class OnlineFeatures:
    """Feature values for a batch of entities, column-major, in request order.

    ``names[i]`` (``view.feature``) has type ``types[i]``, values ``values[i]``, statuses
    ``statuses[i]`` (``PRESENT``/``MISSING``) and its view's event times ``event_timestamps[i]``.
    """

    workspace: str
    service: str
    join_keys: dict[str, list[Any]]
    join_key_types: dict[str, str]
    names: list[str]
    types: list[str]
    values: list[list[Any]]
    statuses: list[list[str]]
    event_timestamps: list[list[str | None]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, list[Any]]:
        """``{column: values}`` with join keys first, then ``view.feature`` columns."""
        out: dict[str, list[Any]] = {k: list(v) for k, v in self.join_keys.items()}
        out.update(zip(self.names, self.values, strict=True))
        return out

    def to_arrow(self):
        """A ``pyarrow.Table`` typed by the features' dtypes: join keys, features, and one
        ``<view>.event_timestamp`` column per view."""
        import pyarrow as pa

        columns: dict[str, Any] = {}
        for key, values in self.join_keys.items():
            columns[key] = pa.array(values, arrow_type(self.join_key_types[key]))
        for name, dtype, values in zip(self.names, self.types, self.values, strict=True):
            if dtype == Timestamp:
                values = [_parse_iso(v) for v in values]
            columns[name] = pa.array(values, arrow_type(dtype))
        for name, stamps in zip(self.names, self.event_timestamps, strict=True):
            col = name.split(".", 1)[0] + ".event_timestamp"
            if col not in columns:
                columns[col] = pa.array([_parse_iso(t) for t in stamps], arrow_type(Timestamp))
        return pa.table(columns)

    def to_pandas(self):
        """A pandas DataFrame of :meth:`to_arrow`, with nullable dtypes (``Int64``, ``Float64``,
        ``boolean``, ``string``) so a column of nulls keeps its type."""
        import pandas as pd
        import pyarrow as pa

        nullable = {
            pa.int64(): pd.Int64Dtype(),
            pa.float64(): pd.Float64Dtype(),
            pa.bool_(): pd.BooleanDtype(),
            pa.string(): pd.StringDtype(),
        }
        return self.to_arrow().to_pandas(types_mapper=nullable.get)

    def to_response(self) -> dict[str, Any]:
        """The ``POST /v1/features`` body (Feast-style column-major results)."""
        results = [
            {"values": v, "statuses": [PRESENT] * len(v), "event_timestamps": [None] * len(v)}
            for v in self.join_keys.values()
        ]
        results += [
            {"values": v, "statuses": s, "event_timestamps": t}
            for v, s, t in zip(self.values, self.statuses, self.event_timestamps, strict=True)
        ]
        return {
            "metadata": {
                "workspace": self.workspace,
                "service": self.service,
                "feature_names": [*self.join_keys, *self.names],
                "types": [*(self.join_key_types[k] for k in self.join_keys), *self.types],
                **self.metadata,
            },
            "results": results,
        }
