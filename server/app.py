"""The FastAPI app: ``GET /health``, ``GET /v1/services``, ``POST /v1/features``.

The server is a thin shell over :class:`contextkit.client.Context`; it holds no business logic.
Errors are JSON ``{"error": {"code", "message", "details"}}`` with a 4xx/5xx status and never a
stack trace. The feature endpoint parses and answers with orjson: it is the hot path.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from contextkit.stores.errors import StoreFailure
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from contextkit.client import Context, translate_store_errors
from contextkit.errors import ContextKitError

log = logging.getLogger("contextkit.server")


class FeaturesRequest(BaseModel):
    """Body of ``POST /v1/features``."""

    workspace: str | None = Field(None, description="Workspace; default: the server's.")
    service: str = Field(..., description="Name of a ContextService.")
    entities: dict[str, list[Any]] = Field(
        ..., description="Join key -> list of values, one per entity row (column-major)."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "workspace": "prod",
                    "service": "support_assistant",
                    "entities": {"user_id": [1, 2]},
                }
            ]
        }
    }


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(status: int, code: str, message: str, details: Any = None) -> Response:
    return _json({"error": {"code": code, "message": message, "details": details or {}}}, status)


def create_app(ctx: Context) -> FastAPI:
    """The contextkit HTTP app serving ``ctx``'s registry and stores."""
    app = FastAPI(
        title="contextkit",
        version="0.1.0",
        description="Features, documents and prompts for LLM applications.",
    )
    contexts: dict[str, Context] = {}

    def context_for(workspace: str | None) -> Context:
        name = workspace or ctx.workspace
        found = contexts.get(name)
        if found is None:
            found = ctx.use(name)
            found.specs()  # raises NotFoundError for an unknown workspace: cache only real ones
            contexts[name] = found
        return found

    @app.exception_handler(ContextKitError)
    async def _contextkit_error(_request: Request, exc: ContextKitError) -> Response:
        return _json(exc.to_dict(), exc.http_status)

    @app.exception_handler(StoreFailure)
    async def _store_error(_request: Request, exc: StoreFailure) -> Response:
        err = translate_store_errors(exc)
        return _json(err.to_dict(), err.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        problems = [
            {"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        return _error(422, "invalid_request", "the request body is not valid", {"errors": problems})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return _error(500, "internal_error", "internal server error; see the server log")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/services")
    async def services(workspace: str | None = None) -> Response:
        c = context_for(workspace)
        specs = c.specs()
        out = []
        for service in specs.services.values():
            reader = c.service_reader(service.name) if specs.workspace.live else None
            out.append(
                {
                    "name": service.name,
                    "description": service.description,
                    "views": [ref.view for ref in service.features],
                    "join_keys": dict(reader.join_keys) if reader else None,
                    "features": (
                        [
                            {"name": n, "type": t}
                            for n, t in zip(reader.feature_names, reader.feature_types, strict=True)
                        ]
                        if reader
                        else None
                    ),
                }
            )
        return _json({"workspace": specs.workspace.name, "services": out})

    @app.post(
        "/v1/features",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": FeaturesRequest.model_json_schema()}},
            }
        },
    )
    async def features(request: Request) -> Response:
        """Latest feature values of a service for a batch of entities (column-major)."""
        body = await request.body()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(422, "invalid_request", f"body is not valid JSON: {exc}")
        if not isinstance(data, dict):
            return _error(422, "invalid_request", "body must be a JSON object")
        service = data.get("service")
        entities = data.get("entities")
        workspace = data.get("workspace")
        if not isinstance(service, str):
            return _error(
                422,
                "invalid_request",
                "`service` must be a string",
                {"errors": [{"path": "body.service", "message": "required string"}]},
            )
        if not isinstance(entities, dict):
            return _error(
                422,
                "invalid_request",
                "`entities` must be an object of lists",
                {"errors": [{"path": "body.entities", "message": "required object"}]},
            )
        if workspace is not None and not isinstance(workspace, str):
            return _error(
                422,
                "invalid_request",
                "`workspace` must be a string",
                {"errors": [{"path": "body.workspace", "message": "string"}]},
            )
        result = context_for(workspace).get_features(service, entities)
        return _json(result.to_response())

    return app
