"""The FastAPI app: one :class:`ServerState` and the route modules of each API area.

The server is a thin shell over :class:`contextkit.client.Context`; it holds no business logic.
Errors are JSON ``{"error": {"code", "message", "details"}}`` with a 4xx/5xx status and never a
stack trace. Route modules (``features``, ...) each expose ``routes(state) -> APIRouter``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from contextkit.client import Context, translate_store_errors
from contextkit.errors import ContextKitError
from contextkit.server import features
from contextkit.server.common import Authorizer, InvalidBody, ServerState, error_response
from contextkit.server.common import json_response as _json
from contextkit.stores.errors import StoreFailure

log = logging.getLogger("contextkit.server")


def create_app(ctx: Context, *, authorize: Authorizer | None = None) -> FastAPI:
    """The contextkit HTTP app serving ``ctx``'s registry and stores."""
    app = FastAPI(
        title="contextkit",
        version="0.1.0",
        description="Features, documents and prompts for LLM applications.",
    )
    state = ServerState(ctx, authorize)
    app.state.contextkit = state
    install_error_handlers(app)
    app.include_router(features.routes(state))
    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ContextKitError)
    async def _contextkit_error(_request: Request, exc: ContextKitError) -> Response:
        return _json(exc.to_dict(), exc.http_status)

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
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error; see the server log")
