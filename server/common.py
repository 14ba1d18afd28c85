"""What every route module of the server shares: JSON responses, body parsing, and the state.

``ServerState`` is the one place a route gets a :class:`~contextkit.client.Context` from. Every
route calls ``state.context(request, workspace, role)``: it resolves the workspace (the server's
default when the request names none), checks that the caller may act in it with that role (see
``authorize``: API keys, :mod:`contextkit.server.auth`), and returns a cached context bound to
it. Pass ``service=`` too and the request's metrics carry the service::

    c = state.context(request, workspace, READER, service=service)

A route that needs no workspace context but must be protected calls
``state.check_access(request, workspace, role)`` (``"*"``: every workspace).

A server started with ``--server-group NAME`` (``server_group=``) serves only the services of
that group: ``context(..., service=)`` answers any other service with 404, naming the group that
serves it. ``/metrics`` then carries the constant ``contextkit_server_group_info{server_group}``
(a join target for every other series of the process).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, RootModel, ValidationError, model_validator

from contextkit.client import Context
from contextkit.errors import ContextKitError, NotFoundError
from contextkit.server.metrics import Metrics

# How `contextkit serve --server-group NAME` tells the app (and each of its workers) its group.
SERVER_GROUP_ENV = "CONTEXTKIT_SERVER_GROUP"

# Roles a route may require, weakest first (see the access-control docs).
READER, INGESTER, ADMIN = "reader", "ingester", "admin"

Authorizer = Callable[[Request, str, str], None]
"""Raises a ContextKitError (401/403) unless the request may act in ``workspace`` as ``role``."""


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(status: int, code: str, message: str, details: Any = None) -> Response:
    return json_response(
        {"error": {"code": code, "message": message, "details": details or {}}}, status
    )


def ok_example(example: Any, description: str = "Successful Response") -> dict[int, Any]:
    """``responses=`` for a route decorator: the 200 response with an example for ``/docs``."""
    return {
        200: {"description": description, "content": {"application/json": {"example": example}}}
    }


class InvalidBody(Exception):
    """A request body that is not the JSON object a route expects (answered with 422)."""

    def __init__(self, message: str, path: str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = [{"path": path, "message": problem or message}] if path else []

    def response(self) -> Response:
        details = {"errors": self.errors} if self.errors else {}
        return error_response(422, "invalid_request", self.message, details)


async def read_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, for a route whose body a translator reads field by
    field (``/v1/chat/completions``: OpenAI's errors name each parameter); the others parse
    theirs with their model (:func:`parse_body`)."""
    body = await request.body()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidBody(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidBody("body must be a JSON object")
    return data


class NullIsAbsent(BaseModel):
    """A request body where a JSON ``null`` means "not given": the field takes its default (or
    is reported missing), as clients of the routes have always been answered."""

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {name: value for name, value in data.items() if value is not None}
        return data


Body = TypeVar("Body", bound=BaseModel)

# What a JSON value of the type a pydantic error expected is called in our messages.
_EXPECTED = {
    "string_type": "a string",
    "dict_type": "an object",
    "list_type": "a list",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_type": "a boolean",
    "float_type": "a number",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


async def parse_body(request: Request, model: type[Body]) -> Body:
    """The request body validated against ``model``, the same model the route's OpenAPI schema
    is built from (one source for both). Parsed by pydantic-core from the raw bytes, not through
    FastAPI's declared body parameter: bench/body_parsing.py measured this path at 0.80x of the
    declared one at p50 (about 0.09 ms less per request), which matters on ``/v1/features``,
    whose whole budget is a fraction of a millisecond. Bad bodies raise
    :class:`InvalidBody` (422 ``invalid_request``, each error with its ``body.<path>``).

    A ``RootModel`` body is a tagged union of shapes (``/v1/ingest``: contextkit's or Tecton's):
    its errors' paths start with the shape's tag, which the message leaves out. A model with an
    ``error_path(loc)`` classmethod names the fields in its messages itself (Tecton's bodies
    name them in camelCase, whichever case the client sent)."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        path = getattr(model, "error_path", None) or _dotted
        raise _invalid(exc, path, tagged=issubclass(model, RootModel)) from None


def _dotted(loc: list[str | int]) -> str:
    return ".".join(str(part) for part in loc)


def _invalid(
    exc: ValidationError, path: Callable[[list[str | int]], str], *, tagged: bool
) -> InvalidBody:
    error = exc.errors(include_url=False)[0]
    kind, loc = error["type"], list(error["loc"])[1 if tagged else 0 :]
    if kind == "json_invalid":
        return InvalidBody(f"body is not valid JSON: {error['ctx'].get('error', error['msg'])}")
    if not loc:
        return InvalidBody("body must be a JSON object")
    name = path(loc)
    if kind == "missing":
        return InvalidBody(f"`{name}` is required", f"body.{name}", "field required")
    expected = _EXPECTED.get(kind)
    if expected is None:
        return InvalidBody(f"`{name}`: {error['msg']}", f"body.{name}")
    return InvalidBody(f"`{name}` must be {expected}", f"body.{name}")


class ServerState:
    """The server's default context, the per-workspace contexts, the access check and metrics."""

    def __init__(
        self,
        ctx: Context,
        authorize: Authorizer | None = None,
        *,
        metrics: Metrics | None = None,
        server_group: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.authorize = authorize
        self.metrics = metrics if metrics is not None else Metrics()
        # The feature server group this process serves (None: every service).
        self.server_group = server_group or os.environ.get(SERVER_GROUP_ENV) or None
        _serving_metrics(self)
        # Path prefix -> how to shape the errors the ops middleware answers itself, before any
        # route runs (401 no/bad key, 413, 429), for clients that expect another error format:
        # ``state.error_shapes["/api/v1/"] = lambda exc: (exc.http_status, {...})``.
        self.error_shapes: dict[str, Callable[[ContextKitError], tuple[int, Any]]] = {}
        self._contexts: dict[str, Context] = {}

    @property
    def default_workspace(self) -> str:
        return self.ctx.workspace

    def check_access(self, request: Request, workspace: str, role: str = READER) -> None:
        """Raise 401/403 unless the caller may act in ``workspace`` as ``role``."""
        if self.authorize is not None:
            self.authorize(request, workspace, role)

    def context(
        self,
        request: Request,
        workspace: str | None,
        role: str = READER,
        *,
        service: str | None = None,
    ) -> Context:
        """The context for ``workspace`` (default: the server's), once the caller may use it."""
        name = workspace or self.ctx.workspace
        if workspace is None:  # a refusal must not name the server's default to a stranger
            request.scope["contextkit.default_workspace"] = True
        self.check_access(request, name, role)
        found = self._contexts.get(name)
        if found is None:
            found = self.ctx.use(name)
            found.specs()  # raises NotFoundError for an unknown workspace: cache only real ones
            self._contexts[name] = found
        # Metric labels: only names that exist, so a client cannot mint label values.
        request.scope["contextkit.workspace"] = name
        if service is not None and service in found.specs().services:
            request.scope["contextkit.service"] = service
            if self.server_group is not None:
                self.check_server_group(found, service)
        return found

    def check_server_group(self, ctx: Context, service: str) -> None:
        """404 unless this process's server group serves ``service`` (the hint names the group
        that does)."""
        specs = ctx.specs()
        group = self.server_group
        if group not in specs.server_groups:
            raise NotFoundError(
                f"this server serves server group {group!r}, which workspace "
                f"{specs.workspace.name!r} does not define",
                hint="server groups: " + (", ".join(sorted(specs.server_groups)) or "none"),
            )
        if service in specs.server_groups[group].services:
            return
        other = specs.server_group_of(service)
        raise NotFoundError(
            f"service {service!r} is not served by server group {group!r}",
            hint=(
                f"it is served by server group {other!r}: send the request to a server started "
                f"with --server-group {other}"
                if other is not None
                else "it is in no server group: send the request to a server started without "
                "--server-group"
            ),
            details={"server_group": group, "served_by": other},
        )

    def serves(self, ctx: Context, service: str) -> bool:
        """Whether this process serves ``service`` (its group's services, else all)."""
        if self.server_group is None:
            return True
        group = ctx.specs().server_groups.get(self.server_group)
        return group is not None and service in group.services


def waits_on_transform_workers(ctx: Context, service: str) -> bool:
    """Whether a feature lookup of ``service`` waits on transform server group workers (other
    processes): the route then runs it in a thread, so the event loop keeps serving the other
    services meanwhile. False for anything odd (the lookup itself names the mistake)."""
    try:
        return ctx.service_reader(service).uses_transform_groups
    except ContextKitError:
        return False


def _serving_metrics(state: ServerState) -> None:
    """The server group label, the serving cache's counters (read at scrape time from the
    process-wide cache, see :mod:`contextkit.retrieval.cache`) and the transform server groups
    on ``/metrics``."""
    from contextkit.retrieval.cache import serving_cache

    if state.server_group is not None:
        state.metrics.collector(
            "contextkit_server_group_info",
            "The feature server group this process serves (constant 1).",
            "gauge",
            ("server_group",),
            lambda: [((state.server_group,), 1)],
        )
    cache = serving_cache(state.ctx.runtime)
    for name, help_text, read in (
        ("hits", "Entity rows answered from the serving cache.", lambda c: c.hits),
        (
            "misses",
            "Entity rows of cached services read from the online store.",
            lambda c: c.misses,
        ),
        (
            "bypassed",
            "Entity rows of cached services read with the cache bypassed.",
            lambda c: c.bypassed,
        ),
        ("search_hits", "Searches answered from the serving cache.", lambda c: c.search_hits),
        (
            "search_misses",
            "Searches of cached services run against the vector store.",
            lambda c: c.search_misses,
        ),
        (
            "search_bypassed",
            "Searches of cached services run with the cache bypassed.",
            lambda c: c.search_bypassed,
        ),
    ):
        state.metrics.collector(
            f"contextkit_serving_cache_{name}_total",
            help_text,
            "counter",
            ("service",),
            lambda read=read: [((s,), v) for s, v in read(cache).items()],
        )
    state.metrics.collector(
        "contextkit_serving_cache_entries",
        "Entity rows held in the serving cache.",
        "gauge",
        (),
        lambda: [((), len(cache))],
    )
    _transform_metrics(state)


def _transform_metrics(state: ServerState) -> None:
    """The transform server groups on ``/metrics``: those the default workspace declares, and
    the calls and running workers of those this process has started (at their first call)."""
    from contextkit.framework.transform_workers import pools

    def declared() -> list[tuple[tuple[str, ...], float]]:
        try:
            groups = state.ctx.specs().transform_server_groups.values()
        except ContextKitError:  # no workspace applied yet
            return []
        return [((g.name, ",".join(g.views)), g.workers) for g in groups]

    state.metrics.collector(
        "contextkit_transform_server_group_workers",
        "Worker processes each transform server group may run in this process (declared).",
        "gauge",
        ("transform_server_group", "views"),
        declared,
    )
    state.metrics.collector(
        "contextkit_transform_workers_running",
        "Worker processes of each transform server group running in this process now.",
        "gauge",
        ("workspace", "transform_server_group"),
        lambda: [((p.workspace, p.name), p.running) for p in pools()],
    )
    state.metrics.collector(
        "contextkit_transform_calls_total",
        "Realtime view calls sent to transform server group workers, by outcome (ok, error: "
        "the function raised, timeout, worker_failed: the worker died).",
        "counter",
        ("workspace", "transform_server_group", "outcome"),
        lambda: [((p.workspace, p.name, o), n) for p in pools() for o, n in p.calls.items()],
    )
