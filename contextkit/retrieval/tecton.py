"""Tecton's HTTP feature-serving wire format, mapped onto contextkit's online retrieval.

A Tecton *feature service* is a contextkit :class:`~contextkit.framework.specs.ContextServiceSpec`;
its features keep their ``<view>.<feature>`` names. This module only translates: a parsed
``get-features`` / ``get-features-batch`` body (the server's models read the JSON) becomes a
:class:`TectonRequest`, whose values it reads with the service's reader, as ``ctx.get_features``
does (so they equal what the SDK returns), and shapes them the way Tecton's clients parse them.
The server route (``contextkit.server.tecton``) is a thin shell over it::

    request = tecton_request("svc", None, [{"user_id": "1"}], [{}], MetadataOptions(), batch=False)
    body = get_features(runtime, request, started=time.perf_counter())
    body["result"]["features"]       # e.g. ["18", 2]: int64 values are JSON strings, as in Tecton

What was checked against Tecton's docs and clients, and the differences, is in
``docs/tecton-compat.md``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.materialize import last_watermark
from contextkit.errors import BadRequestError, ContextKitError, NotFoundError
from contextkit.retrieval.cache import read_features
from contextkit.retrieval.online import MISSING, PRESENT, service_reader
from contextkit.types import Bool, Float64, Int64, String, Timestamp, list_item_dtype

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime

# contextkit dtype -> Tecton's `dataType.type`. Tecton's published clients know boolean, int64,
# float32, float64, string, array (and map/struct), but no timestamp type: a timestamp feature is
# sent as its ISO 8601 string and typed "string", so every client can parse the response.
TECTON_TYPES = {
    String: "string",
    Int64: "int64",
    Float64: "float64",
    Bool: "boolean",
    Timestamp: "string",
}
# contextkit status -> Tecton's FeatureStatus.
TECTON_STATUSES = {PRESENT: "PRESENT", MISSING: "MISSING_DATA"}
# HTTP status -> the gRPC status code Tecton puts in an error body's `code`.
GRPC_CODES = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    409: 9,  # FAILED_PRECONDITION
    413: 8,  # RESOURCE_EXHAUSTED
    422: 3,  # INVALID_ARGUMENT
    429: 8,  # RESOURCE_EXHAUSTED
    500: 13,  # INTERNAL
    503: 14,  # UNAVAILABLE
    504: 4,  # DEADLINE_EXCEEDED
}

BATCH_PATH = "/api/v1/feature-service/get-features-batch"


@dataclass(frozen=True)
class MetadataOptions:
    """What metadata a response carries. Every option is off unless the request turns it on
    (Tecton's clients turn on names and data types by default)."""

    names: bool = False
    data_types: bool = False
    effective_times: bool = False
    slo_info: bool = False
    serving_status: bool = False
    descriptions: bool = False
    tags: bool = False

    @property
    def per_feature(self) -> bool:
        return (
            self.names
            or self.data_types
            or self.effective_times
            or self.serving_status
            or self.descriptions
            or self.tags
        )

    @property
    def any(self) -> bool:
        return self.per_feature or self.slo_info


@dataclass(frozen=True)
class TectonRequest:
    """A parsed ``get-features`` (one row) or ``get-features-batch`` (several rows) request."""

    service: str
    workspace: str | None
    rows: list[dict[str, Any]]  # one join key map per requested feature vector
    options: MetadataOptions
    batch: bool
    contexts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per row
    # requestOptions.readFromCache / writeToCache: the serving cache (retrieval/cache.py).
    read_cache: bool = True
    write_cache: bool = True


def tecton_request(
    service: str,
    workspace: str | None,
    join_key_maps: list[dict[str, Any]],
    contexts: list[dict[str, Any]],
    options: MetadataOptions,
    *,
    batch: bool,
    read_cache: bool = True,
    write_cache: bool = True,
) -> TectonRequest:
    """A ``get-features`` (``batch=False``, one join key map) or ``get-features-batch`` request
    from its parts, once the body is parsed (the server's models parse it: they read each field
    in camelCase or snake_case). Raises :class:`BadRequestError` for a batch without rows and a
    join key given several values (one map is one entity)."""
    if batch and not join_key_maps:
        raise BadRequestError(
            "`params.requestData` must be a non-empty list",
            hint='send "requestData": [{"joinKeyMap": {...}}, ...]',
        )
    for i, keys in enumerate(join_key_maps):
        _one_entity(keys, f"params.requestData[{i}]" if batch else "params", batch=batch)
    return TectonRequest(
        service, workspace, join_key_maps, options, batch, contexts, read_cache, write_cache
    )


def service_name(name: str | None, service_id: str | None) -> str:
    """The service a request names: exactly one of ``featureServiceName`` and
    ``featureServiceId`` (contextkit services have no separate ids: an id is the name)."""
    if (name is None) == (service_id is None):
        raise BadRequestError(
            "exactly one of `params.featureServiceName` and `params.featureServiceId` must be set",
            hint="send featureServiceName: the name of a context service",
        )
    value = name if name is not None else service_id
    if not value:
        raise BadRequestError("`params.featureServiceName` must be a non-empty string")
    return value


_ABSENT = object()


def get_features(runtime: Runtime, request: TectonRequest, *, started: float) -> dict[str, Any]:
    """The Tecton response body for ``request``, read through the service's reader (as
    ``ctx.get_features`` reads). ``runtime`` is bound to the request's workspace; ``started``
    is ``time.perf_counter()`` when the server began handling the request (for ``sloInfo``).
    """
    specs = runtime.specs()
    if not specs.workspace.live:
        # Tecton answers a workspace that does not serve with 404 ("ensure that the workspace
        # is a live workspace"); contextkit's own API says 409.
        raise NotFoundError(
            f"workspace {specs.workspace.name!r} is a dev workspace and does not serve features",
            hint="query a live workspace",
        )
    reader = service_reader(runtime, request.service)
    entities = _entities(request.rows, [k for k, _ in reader.join_keys])
    store_started = time.perf_counter()
    # The fields the service's realtime views read, one value per row (others are ignored, as
    # Tecton clients send whatever the caller put in the map).
    request_context = {
        name: [row.get(name) if name in row else _ABSENT for row in request.contexts]
        for name, _ in reader.request_fields
    }
    for name, values in request_context.items():
        if any(v is _ABSENT for v in values):
            raise BadRequestError(
                f"missing requestContextMap field {name!r}",
                hint=f"service {request.service!r} computes realtime features from it",
            )
    features = read_features(
        runtime,
        reader,
        entities,
        request_context or None,
        read=request.read_cache,
        write=request.write_cache,
    )
    store_seconds = time.perf_counter() - store_started

    n = len(request.rows)
    columns = [
        _encoder(dtype)(values)
        for dtype, values in zip(features.types, features.values, strict=True)
    ]
    if request.batch:
        body: dict[str, Any] = {"result": [{"features": [c[r] for c in columns]} for r in range(n)]}
    else:
        body = {"result": {"features": [c[0] for c in columns]}}
    options = request.options
    if not options.any:
        return body

    metadata: dict[str, Any] = {}
    if options.per_feature:
        metadata["features"] = _feature_metadata(runtime, specs, features, options, request.batch)
    if options.slo_info:
        server_seconds = time.perf_counter() - started
        slo = {
            "sloEligible": True,
            "sloServerTimeSeconds": server_seconds,
            "serverTimeSeconds": server_seconds,
            "storeMaxLatency": store_seconds,
        }
        if request.batch:
            # One batched read serves every row, so each row reports the batch's timings.
            metadata["sloInfo"] = [slo] * n
            metadata["batchSloInfo"] = slo
        else:
            metadata["sloInfo"] = slo
    body["metadata"] = metadata
    return body


def service_metadata(runtime: Runtime, service: str) -> dict[str, Any]:
    """The ``feature-service/metadata`` body: the service's join keys and features, typed."""
    if not runtime.specs().workspace.live:
        raise NotFoundError(
            f"workspace {runtime.workspace!r} is a dev workspace and does not serve features",
            hint="query a live workspace",
        )
    reader = service_reader(runtime, service)

    def typed(name: str, dtype: str) -> dict[str, Any]:
        tecton_type = TECTON_TYPES[dtype]
        return {"name": name, "dataType": {"type": tecton_type}, "type": tecton_type}

    return {
        "featureServiceType": "DEFAULT",
        "inputJoinKeys": [typed(k, t) for k, t in reader.join_keys],
        "inputRequestContextKeys": [],
        "featureValues": [
            typed(n, t) for n, t in zip(reader.feature_names, reader.feature_types, strict=True)
        ],
    }


def error_body(exc: ContextKitError) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` of an error in Tecton's shape: ``{"error", "message", "code"}``.

    ``code`` is the gRPC status code Tecton uses; contextkit's own error code and hint travel in
    ``details`` (Tecton's clients ignore keys they do not know).
    """
    status = exc.http_status
    details: dict[str, Any] = {"code": exc.code}
    if isinstance(exc.details, Mapping):
        details.update(exc.details)
    if exc.hint:
        details["hint"] = exc.hint
    return status, {
        "error": exc.message,
        "message": exc.message,
        "code": GRPC_CODES.get(status, 2),  # 2: UNKNOWN
        "details": details,
    }


# -- helpers ------------------------------------------------------------------------------------
def _one_entity(keys: Mapping[str, Any], path: str, *, batch: bool) -> None:
    for name, value in keys.items():
        if isinstance(value, list | Mapping):
            # Tecton's clients show the message only, so it says where batches go.
            kind = "a list" if isinstance(value, list) else "an object"
            where = (
                "one requestData item is one entity"
                if batch
                else f"get-features reads one entity; send several to {BATCH_PATH}"
            )
            raise BadRequestError(
                f"join key {name!r} in `{path}.joinKeyMap` must be one value, got {kind} ({where})",
                hint='send "requestData": [{"joinKeyMap": {...}}, ...], one item per entity',
                details={"join_key": name},
            )


def _entities(rows: list[dict[str, Any]], join_keys: list[str]) -> dict[str, list[Any]]:
    """Row-major join key maps -> the core's column-major entities (types are checked there)."""
    for i, row in enumerate(rows):
        missing = [k for k in join_keys if k not in row]
        if missing:
            where = f"requestData[{i}].joinKeyMap" if len(rows) > 1 else "joinKeyMap"
            raise BadRequestError(
                f"missing required join key(s) in {where}: " + ", ".join(f"`{k}`" for k in missing),
                hint="the service needs: " + ", ".join(join_keys),
                details={"join_keys": join_keys},
            )
    # Keys the service does not have are passed on, so the core rejects them by name.
    names = list(dict.fromkeys(k for row in rows for k in row))
    for i, row in enumerate(rows):
        extra = [k for k in names if k not in row]
        if extra:
            raise BadRequestError(
                f"requestData[{i}].joinKeyMap lacks {', '.join(map(repr, extra))}, "
                "which other rows send",
                hint="send the same join keys in every row",
            )
    return {k: [row[k] for row in rows] for k in names}


def _int64_strings(values: list[Any]) -> list[Any]:
    return [None if v is None else str(v) for v in values]


def _unchanged(values: list[Any]) -> list[Any]:
    return values


def _encoder(dtype: str):
    # Tecton sends int64 values as decimal strings: JSON parsers read numbers as doubles.
    return _int64_strings if dtype == Int64 else _unchanged


def _feature_metadata(
    runtime: Runtime, specs: Any, features: Any, options: MetadataOptions, batch: bool
) -> list[dict[str, Any]]:
    watermarks: dict[str, str | None] = {}
    out = []
    for i, (name, dtype) in enumerate(zip(features.names, features.types, strict=True)):
        view_name, feature_name = name.split(".", 1)
        view = specs.feature_views[view_name]
        entry: dict[str, Any] = {}
        if options.names:
            entry["name"] = name
        if options.effective_times:
            if view_name not in watermarks:
                watermarks[view_name] = _effective_time(runtime, view)
            if watermarks[view_name] is not None:
                entry["effectiveTime"] = watermarks[view_name]
        if options.data_types:
            entry["dataType"] = _data_type(dtype)
        if options.serving_status:
            statuses = [TECTON_STATUSES[s] for s in features.statuses[i]]
            entry["status"] = statuses if batch else statuses[0]
        if options.descriptions:
            spec = view.feature(feature_name)
            if spec is not None and spec.description:
                entry["description"] = spec.description
        if options.tags and view.tags:
            entry["tags"] = dict(view.tags)
        out.append(entry)
    return out


def _data_type(dtype: str) -> dict[str, Any]:
    """Tecton's ``dataType``: ``{"type": "array", "elementType": {...}}`` for a list."""
    item = list_item_dtype(dtype)
    if item is not None:
        return {"type": "array", "elementType": _data_type(item)}
    return {"type": TECTON_TYPES[dtype]}


def _effective_time(runtime: Runtime, view: Any) -> str | None:
    """The time the view's online values are computed as of: the end of its latest successful
    materialization (for stream and realtime views, the read itself: they are always current).
    Whole seconds, ``Z``: Tecton's Java client parses no fractions."""
    if view.kind != "batch_feature_view":
        return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    watermark = last_watermark(runtime.registry, runtime.workspace, view)
    if watermark is None:
        return None
    return watermark.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = [
    "GRPC_CODES",
    "TECTON_STATUSES",
    "TECTON_TYPES",
    "MetadataOptions",
    "TectonRequest",
    "error_body",
    "get_features",
    "service_metadata",
    "service_name",
    "tecton_request",
]
