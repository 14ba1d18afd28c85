"""The FastAPI app: one :class:`ServerState` and the route modules of each API area.

The server is a thin shell over :class:`contextkit.client.Context`; it holds no business logic.
Errors are JSON ``{"error": {"code", "message", "details"}}`` with a 4xx/5xx status and never a
stack trace. Route modules (``features``, ...) each expose ``routes(state) -> APIRouter``.

Access control is chosen explicitly: ``create_app(ctx, auth=True)`` checks API keys from the
registry on every route that asks ``state.context(...)`` (see :mod:`contextkit.server.auth`),
``auth=False`` serves without keys (local development), or pass your own ``Authorizer``.
``app_from_env`` is the factory ``contextkit serve --workers N`` hands to uvicorn.

``create_app(..., warm=True)`` (what ``contextkit serve`` builds) warms up in the background
once the server listens; ``/health`` answers 503 ``starting`` until then (see
:mod:`contextkit.server.readiness`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from contextkit.client import Context
from contextkit.errors import ContextKitError, translate_store_errors
from contextkit.governance.jobs import JobService
from contextkit.server import (
    admin,
    chat,
    context,
    features,
    ingest,
    monitoring,
    openai_embeddings,
    ops,
    search,
    tecton,
    ui,
)
from contextkit.server import jobs as jobs_api
from contextkit.server.auth import KeyAuthorizer
from contextkit.server.common import Authorizer, InvalidBody, ServerState, error_response
from contextkit.server.common import json_response as _json
from contextkit.server.mcp.settings import McpSettings
from contextkit.server.readiness import Readiness
from contextkit.stores.errors import StoreFailure

log = logging.getLogger("contextkit.server")


def create_app(
    ctx: Context,
    *,
    auth: bool | Authorizer,
    config: ops.OpsConfig | None = None,
    warm: bool = False,
    mcp: McpSettings | None = None,
    jobs: JobService | None = None,
) -> FastAPI:
    """The contextkit HTTP app serving ``ctx``'s registry and stores.

    ``auth``: True checks API keys (:class:`~contextkit.server.auth.KeyAuthorizer`), False
    serves everyone, a callable is used as the ``Authorizer``. ``config``: body and rate limits,
    access log (:class:`~contextkit.server.ops.OpsConfig`). ``warm``: when the server starts,
    load models, tables and plans in a background thread; ``/health`` is 503 until done.
    ``jobs``: serve the jobs API with this service (the control plane; see server/jobs.py).
    ``mcp``: how ``/mcp`` is served (:mod:`contextkit.server.mcp`; default: loopback hosts).
    """
    config = config or ops.OpsConfig()
    metrics = ops.Metrics()
    if isinstance(auth, bool):
        authorize = KeyAuthorizer(ctx.access, metrics) if auth else None
    else:
        authorize = auth
    readiness = Readiness(ready=not warm)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if warm:  # the server listens already: /health answers "starting" meanwhile
            readiness.warm_in_background(ctx)
        # /mcp's session manager must run while the app does, or its requests hang.
        async with mcp_endpoint.running() if mcp_endpoint is not None else nullcontext():
            yield

    app = FastAPI(
        title="contextkit",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.readiness = readiness
    state = ServerState(ctx, authorize, metrics=metrics)
    app.state.contextkit = state
    install_error_handlers(app)
    ops.registry_collectors(metrics, state)
    monitoring.quality_collectors(metrics, state)
    ops.install_openapi(app, auth=authorize is not None)
    app.add_middleware(
        ops.OpsMiddleware,
        state=state,
        config=config,
        authenticate=authorize.authenticate if isinstance(authorize, KeyAuthorizer) else None,
    )
    app.include_router(features.routes(state))
    app.include_router(tecton.routes(state))
    app.include_router(search.routes(state))
    app.include_router(context.routes(state))
    app.include_router(ingest.routes(state))
    app.include_router(chat.routes(state))
    app.include_router(monitoring.routes(state))
    app.include_router(openai_embeddings.routes(state))
    app.include_router(ui.routes(state, jobs=jobs))
    if jobs is not None:  # the control plane only: data plane nodes never run jobs
        app.include_router(jobs_api.routes(state, jobs))
        app.include_router(admin.routes(state))  # API keys and the audit log
    mcp_endpoint = _mount_mcp(app, state, mcp or McpSettings())
    app.include_router(ops.routes(state))  # /metrics last: routes are matched in this order
    return app


def _mount_mcp(app: FastAPI, state: ServerState, settings: McpSettings):
    """``/mcp`` (the ``mcp`` extra); without the ``mcp`` package the rest of the API serves."""
    try:
        from contextkit.server.mcp.endpoint import mount
    except ModuleNotFoundError as exc:
        if exc.name not in ("mcp", "mcp_types"):
            raise
        log.info("MCP is off: install contextkit[mcp] to serve /mcp")
        return None
    return mount(app, state, settings)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ContextKitError)
    async def _contextkit_error(_request: Request, exc: ContextKitError) -> Response:
        response = _json(exc.to_dict(), exc.http_status)
        response.headers.update(getattr(exc, "headers", None) or {})
        return response

    @app.exception_handler(StoreFailure)
    async def _store_error(_request: Request, exc: StoreFailure) -> Response:
        err = translate_store_errors(exc)
        return _json(err.to_dict(), err.http_status)

    @app.exception_handler(InvalidBody)
    async def _invalid_body(_request: Request, exc: InvalidBody) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        problems: list[dict[str, Any]] = [
            {"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        return error_response(
            422, "invalid_request", "the request body is not valid", {"errors": problems}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)
        )

    # The ops middleware answers the unexpected errors of routes itself, on a connection that
    # stays open; this handler is Starlette's last resort, for an error in a middleware. (It
    # re-raises after answering, so uvicorn then closes the connection.)
    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        request_id = request.scope.get("contextkit.request_id")
        log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
        response = error_response(
            500, "internal_error", "internal server error; see the server log"
        )
        # The middleware stamps responses that pass through it; this one is made outside it.
        if request_id:
            response.headers["x-request-id"] = request_id
        return response


API_DESCRIPTION = """\
Features, documents and prompts for LLM applications.

**Authentication.** Every endpoint except `/health`, `/docs` and `/openapi.json` needs an API key,
sent as `Authorization: Bearer <key>` (or Tecton's `Authorization: Tecton-key <key>`). Keys grant
one role (`reader`, `ingester`, `admin`) in one workspace; create them with
`contextkit access create-key`. A server started with `--no-auth` needs none.

**Readiness.** `GET /health` answers 503 `{"status": "starting"}` while the server warms up
(models, vector tables, plans) and 200 `{"status": "ok"}` once it is ready.

**Errors** are `{"error": {"code", "message", "details"}}`. Every response carries `X-Request-ID`
(the one you sent, or a new one); it is in the server's access log too.
"""


# -- the `contextkit serve --workers N` factory --------------------------------------------------
ENV_PREFIX = "CONTEXTKIT_SERVE_"


@dataclass(frozen=True)
class ServeSettings:
    """What `contextkit serve` passes to each worker process, through environment variables."""

    repo: str
    workspace: str
    auth: bool = True
    max_body_bytes: int = ops.OpsConfig.max_body_bytes
    rate_limit: float = 0.0
    rate_burst: int | None = None
    access_log: bool = True

    def to_env(self) -> dict[str, str]:
        return {
            f"{ENV_PREFIX}REPO": self.repo,
            f"{ENV_PREFIX}WORKSPACE": self.workspace,
            f"{ENV_PREFIX}AUTH": "1" if self.auth else "0",
            f"{ENV_PREFIX}MAX_BODY_BYTES": str(self.max_body_bytes),
            f"{ENV_PREFIX}RATE_LIMIT": str(self.rate_limit),
            f"{ENV_PREFIX}RATE_BURST": "" if self.rate_burst is None else str(self.rate_burst),
            f"{ENV_PREFIX}ACCESS_LOG": "1" if self.access_log else "0",
        }

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServeSettings:
        env = dict(os.environ if env is None else env)
        p = ENV_PREFIX
        if f"{p}REPO" not in env or f"{p}WORKSPACE" not in env:
            raise RuntimeError(f"{p}REPO and {p}WORKSPACE must be set (contextkit serve sets them)")
        burst = env.get(f"{p}RATE_BURST", "")
        return cls(
            repo=env[f"{p}REPO"],
            workspace=env[f"{p}WORKSPACE"],
            auth=env.get(f"{p}AUTH", "1") != "0",  # anything but an explicit 0 keeps auth on
            max_body_bytes=int(env.get(f"{p}MAX_BODY_BYTES") or cls.max_body_bytes),
            rate_limit=float(env.get(f"{p}RATE_LIMIT") or 0.0),
            rate_burst=int(burst) if burst else None,
            access_log=env.get(f"{p}ACCESS_LOG", "1") != "0",
        )

    def ops_config(self) -> ops.OpsConfig:
        return ops.OpsConfig(
            max_body_bytes=self.max_body_bytes,
            rate_limit=self.rate_limit,
            rate_burst=self.rate_burst,
            access_log=self.access_log,
        )


def app_from_settings(settings: ServeSettings) -> FastAPI:
    from contextkit.client import connect

    ops.configure_logging()
    ctx = connect(settings.repo, settings.workspace)
    # Models, vector tables and plans load once the server listens, not in the first request.
    return create_app(
        ctx,
        auth=settings.auth,
        config=settings.ops_config(),
        warm=True,
        mcp=McpSettings.from_env(),  # `contextkit serve` sets them from its flags
    )


def app_from_env() -> FastAPI:
    """uvicorn factory (``contextkit.server.app:app_from_env``): the app ``ServeSettings`` in the
    environment describe. ``contextkit serve`` sets them; each worker process calls this."""
    return app_from_settings(ServeSettings.from_env())
