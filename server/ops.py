"""The operations surface: the metrics endpoint, access logs, request ids, body limits, rate
limits, OpenAPI.

* ``GET /metrics`` renders :class:`~contextkit.server.metrics.Metrics`;
  :func:`registry_collectors` adds the gauges read from the registry at scrape time.
* :class:`OpsMiddleware` (one pure-ASGI layer, cheap on the hot path) gives every request an id
  (``X-Request-ID`` in and out), refuses bodies over the size limit with 413, authenticates the
  API key (401; everything but :data:`OPEN_PATHS`), applies the rate limit (429), answers an
  unexpected error with a 500 on a connection that stays open, times the request into the
  metrics, and writes one JSON access-log line.
* :class:`RateLimiter`: a token bucket per API key (per client address without auth); 429 with
  ``Retry-After``. Off unless configured.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from contextkit.errors import (
    BadRequestError,
    ContextKitError,
    InternalError,
    PayloadTooLargeError,
    RateLimitedError,
)
from contextkit.server.metrics import PROMETHEUS_CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from contextkit.server.common import ServerState

access_log = logging.getLogger("contextkit.access")
server_log = logging.getLogger("contextkit.server")


@dataclass(frozen=True)
class OpsConfig:
    """Server limits and logging. Defaults: 1 MiB bodies, no rate limit, JSON access log on."""

    max_body_bytes: int = 1024 * 1024
    rate_limit: float = 0.0  # requests per second per key; 0 turns rate limiting off
    rate_burst: int | None = None  # bucket size; default: one second's worth (at least 1)
    access_log: bool = True


def registry_collectors(metrics: Metrics, state: ServerState) -> None:
    """Gauges read from the registry at scrape time: job outcomes and freshness per view."""
    registry = state.ctx.registry

    def job_counts():
        for workspace, view, status, count in registry.job_summary():
            yield (workspace, view, status), count

    def last_success():
        for job in registry.last_succeeded_jobs():
            yield (job.workspace, job.view), job.finished_at or job.started_at

    def freshness():
        now = time.time()
        for job in registry.last_succeeded_jobs():
            if job.range_end:
                end = datetime.fromisoformat(job.range_end.replace("Z", "+00:00"))
                end = end if end.tzinfo else end.replace(tzinfo=UTC)
                yield (job.workspace, job.view), max(0.0, now - end.timestamp())

    def last_duration():
        for job in registry.last_succeeded_jobs():
            if job.duration_s is not None:
                yield (job.workspace, job.view), job.duration_s

    metrics.collector(
        "contextkit_materialization_jobs",
        "Materialization jobs recorded in the registry, by outcome (running, succeeded, failed).",
        "gauge",
        ("workspace", "view", "status"),
        job_counts,
    )
    metrics.collector(
        "contextkit_materialization_last_success_timestamp_seconds",
        "When the view's newest successful materialization job finished (Unix time).",
        "gauge",
        ("workspace", "view"),
        last_success,
    )
    metrics.collector(
        "contextkit_materialization_last_duration_seconds",
        "How long the view's newest successful materialization job took.",
        "gauge",
        ("workspace", "view"),
        last_duration,
    )
    metrics.collector(
        "contextkit_feature_freshness_seconds",
        "Age of the newest materialized data per view: now minus the end of the range its "
        "newest successful job computed.",
        "gauge",
        ("workspace", "view"),
        freshness,
    )


# -- rate limiting ---------------------------------------------------------------------------------
class RateLimiter:
    """A token bucket per identity: ``rate`` requests/s on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, math.ceil(rate)))
        self._buckets: dict[str, tuple[float, float]] = {}  # identity -> (tokens, updated at)
        self._lock = threading.Lock()

    def check(self, identity: str) -> None:
        """Take a token for ``identity`` or raise :class:`RateLimitedError` (429)."""
        now = time.monotonic()
        with self._lock:
            tokens, updated = self._buckets.get(identity, (self.burst, now))
            tokens = min(self.burst, tokens + (now - updated) * self.rate)
            if tokens >= 1.0:
                if len(self._buckets) > 100_000:  # forget idle identities (all are full by now)
                    self._buckets.clear()
                self._buckets[identity] = (tokens - 1.0, now)
                return
            self._buckets[identity] = (tokens, now)
        retry_after = max(1, math.ceil((1.0 - tokens) / self.rate))
        raise RateLimitedError(
            f"rate limit exceeded: at most {self.rate:g} requests per second per key",
            retry_after=retry_after,
            hint=f"retry after {retry_after} s, or spread requests out",
        )


# -- middleware ------------------------------------------------------------------------------------
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


OPEN_PATHS = frozenset({"/health", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"})
# The web UI's shell and assets (everything under /ui but its page content, /ui/partial/...) hold
# no data: a browser loads them before it has a key to send.
OPEN_PREFIX, UI_CONTENT_PREFIX = "/ui", "/ui/partial/"


class OpsMiddleware:
    """Request ids, the body size limit, authentication, the rate limit, per-endpoint metrics
    and the JSON access log.

    ``authenticate(scope)`` (the :class:`~contextkit.server.auth.KeyAuthorizer`'s, or None when
    auth is off) raises a 401 error or leaves the verified key in the scope.
    """

    def __init__(
        self,
        app,
        *,
        state: ServerState,
        config: OpsConfig,
        authenticate: Callable[[Any], Any] | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.metrics = state.metrics
        self.max_body = config.max_body_bytes
        self.log = config.access_log
        self.authenticate = authenticate
        self.limiter = (
            RateLimiter(config.rate_limit, config.rate_burst) if config.rate_limit else None
        )
        self._known_paths: frozenset[str] | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                request_id = value
        if request_id is None:
            request_id = os.urandom(8).hex().encode()
        scope["contextkit.request_id"] = request_id.decode()
        status = 500
        too_large = False
        replaced = False
        started_response = False
        id_header = (b"x-request-id", request_id)

        async def send_with_id(message) -> None:
            nonlocal status, replaced, started_response
            if replaced:
                return
            if message["type"] == "http.response.start":
                started_response = True
                if too_large and message["status"] != 413:
                    # The app turned the body error into something else: answer 413 anyway.
                    replaced = True
                    status = await self._refuse(
                        scope, send, _too_large(self.max_body), id_header, close=True
                    )
                    return
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                refusal: ContextKitError = (
                    _too_large(self.max_body)
                    if length.isdigit()
                    else BadRequestError("Content-Length is not a number")
                )
                status = await self._refuse(scope, send, refusal, id_header, close=True)
                return
            if scope["path"] not in OPEN_PATHS and not _is_ui(scope["path"]):
                gate_refusal = self._gate(scope)
                if gate_refusal is not None:
                    status = await self._refuse(scope, send, gate_refusal, id_header, close=False)
                    return
            app_receive = receive
            if length is None:  # chunked: count the bytes as they arrive
                seen = 0

                async def app_receive():
                    nonlocal seen, too_large
                    message = await receive()
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        too_large = True
                        raise _too_large(self.max_body)
                    return message

            await self.app(scope, app_receive, send_with_id)
        except Exception:
            # Answered here, not by an app-level handler for Exception: Starlette's outermost
            # middleware answers those and then re-raises, and uvicorn closes the connection of
            # any request whose app raised, so the client's next request on that keep-alive
            # connection failed with a reset.
            if started_response:
                raise  # the body is cut short: only closing the connection can tell the client
            server_log.exception(
                "unhandled error", extra={"fields": {"request_id": scope["contextkit.request_id"]}}
            )
            internal = InternalError("internal server error; see the server log")
            status = await self._refuse(scope, send, internal, id_header, close=False)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    async def _refuse(self, scope, send, exc: ContextKitError, id_header, *, close: bool) -> int:
        """Answer ``exc`` without running the app (in the path's error shape); its status."""
        status, body = exc.http_status, exc.to_dict()
        for prefix, shape in self.state.error_shapes.items():
            if scope["path"].startswith(prefix):
                status, body = shape(exc)
                break
        payload = orjson.dumps(body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            id_header,
        ]
        if close:  # an unread body must not be parsed as the next request
            headers.append((b"connection", b"close"))
        for name, value in (getattr(exc, "headers", None) or {}).items():
            headers.append((name.lower().encode(), value.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return status

    def _gate(self, scope) -> ContextKitError | None:
        """The error refusing this request before routing (401, 429), or None."""
        try:
            if self.authenticate is not None:
                self.authenticate(scope)
            if self.limiter is not None:
                key = scope.get("contextkit.principal")
                if key is not None:
                    identity = f"key:{key.id}"
                else:
                    client = scope.get("client")
                    identity = f"ip:{client[0] if client else ''}"
                try:
                    self.limiter.check(identity)
                except RateLimitedError:
                    self.metrics.rate_limited.inc()
                    raise
        except ContextKitError as exc:
            return exc
        return None

    def _endpoint(self, scope) -> str:
        """The route template, for labels; a request refused before routing gets its path only
        when that is a route's path (a client must not mint label values)."""
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path", "unmatched")
        if self._known_paths is None:
            app = scope["app"]  # the FastAPI app; its schema lists the paths of included routers
            self._known_paths = frozenset(app.openapi().get("paths", {})) | frozenset(
                getattr(r, "path", "") for r in app.routes
            )
        return scope["path"] if scope["path"] in self._known_paths else "unmatched"

    def _record(self, scope, status: int, elapsed: float) -> None:
        endpoint = self._endpoint(scope)
        workspace = scope.get("contextkit.workspace", "")
        service = scope.get("contextkit.service", "")
        method = scope["method"]
        self.metrics.requests.inc(method, endpoint, str(status), workspace, service)
        self.metrics.latency.observe(elapsed, method, endpoint, workspace, service)
        if self.log and access_log.isEnabledFor(logging.INFO):
            key = scope.get("contextkit.principal")
            client = scope.get("client")
            access_log.info(
                "%s %s %s",
                method,
                scope["path"],
                status,
                extra={
                    "fields": {
                        "event": "request",
                        "request_id": scope["contextkit.request_id"],
                        "method": method,
                        "path": scope["path"],
                        "endpoint": endpoint,
                        "status": status,
                        "duration_ms": round(elapsed * 1e3, 3),
                        "workspace": workspace or None,
                        "service": service or None,
                        "key_id": key.id if key is not None else None,
                        "principal": key.principal if key is not None else None,
                        "client": client[0] if client else None,
                    }
                },
            )


def _is_ui(path: str) -> bool:
    """The web UI's shell or an asset (open); not its content (which needs a key)."""
    if path.startswith(UI_CONTENT_PREFIX):
        return False
    return path == OPEN_PREFIX or path.startswith(OPEN_PREFIX + "/")


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body over the limit of {limit} bytes",
        hint="send smaller batches",
        details={"max_body_bytes": limit},
    )


# -- logging ---------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: int = logging.INFO) -> None:
    """Send contextkit's loggers (access log, auth failures, server errors) to stderr as JSON."""
    logger = logging.getLogger("contextkit")
    if any(getattr(h, "_contextkit_json", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler._contextkit_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


# -- routes and OpenAPI ----------------------------------------------------------------------------
METRICS_EXAMPLE = """\
# HELP contextkit_http_requests_total HTTP requests answered, by endpoint (route template), ...
# TYPE contextkit_http_requests_total counter
contextkit_http_requests_total{method="POST",endpoint="/v1/features",status="200",\
workspace="prod",service="support_assistant"} 1042
"""


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text format 0.0.4.",
                "content": {PROMETHEUS_CONTENT_TYPE: {"example": METRICS_EXAMPLE}},
            }
        },
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics. With auth on, it needs a key for all workspaces (``"*"``)."""
        state.check_access(request, "*", "reader")
        return Response(state.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    return router


ERROR_EXAMPLES: dict[int, tuple[str, str, str]] = {
    400: ("Bad request", "bad_request", "join key 'user_id' must be int64, got 'abc'"),
    401: ("No API key, or one that is invalid, revoked or expired", "unauthenticated",
          "the API key is not valid"),
    403: ("The key's workspace or role does not allow this", "permission_denied",
          "this API key may not read workspace 'staging'"),
    404: ("Unknown service, workspace or path", "not_found",
          "unknown service 'nope' in workspace 'prod'"),
    405: ("Wrong HTTP method", "method_not_allowed", "Method Not Allowed"),
    409: ("Not possible in this workspace", "workspace_error",
          "workspace 'dev' is a dev workspace and does not serve features"),
    413: ("Request body over the size limit", "payload_too_large",
          "request body over the limit of 1048576 bytes"),
    422: ("Malformed body or parameters", "invalid_request", "the request body is not valid"),
    429: ("Rate limit exceeded; see Retry-After", "rate_limited",
          "rate limit exceeded: at most 50 requests per second per key"),
    500: ("Unexpected server or store error", "internal_error",
          "internal server error; see the server log"),
}  # fmt: skip
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


def install_openapi(app: FastAPI, *, auth: bool) -> None:
    """Document what every route shares: the key schemes and the error responses."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
        components.get("schemas", {}).pop("HTTPValidationError", None)
        components.get("schemas", {}).pop("ValidationError", None)
        if auth:
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "`Bearer <key>`"},
                "tectonKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Tecton's scheme: `Tecton-key <key>`",
                },
            }
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                statuses = [405, 500] if path in OPEN_PATHS else list(ERROR_EXAMPLES)
                if path not in OPEN_PATHS and auth:
                    operation["security"] = [{"bearer": []}, {"tectonKey": []}]
                else:
                    operation["security"] = []
                    statuses = [s for s in statuses if s not in (401, 403)]
                for status in statuses:
                    description, code, message = ERROR_EXAMPLES[status]
                    example = {"error": {"code": code, "message": message, "details": {}}}
                    # A route's own documentation of a status (another error shape) wins.
                    responses.setdefault(
                        str(status),
                        {
                            "description": description,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Error"},
                                    "example": example,
                                }
                            },
                        },
                    )
                    if status == 429:
                        responses["429"].setdefault("headers", {})["Retry-After"] = {
                            "schema": {"type": "integer"}
                        }
                for response in responses.values():
                    response.setdefault("headers", {})["X-Request-ID"] = {
                        "description": "The request's id (yours, or a new one).",
                        "schema": {"type": "string"},
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
