"""Ingest routes: ``POST /v1/ingest`` (contextkit's shape, or Tecton's) and ``POST /ingest``
(Tecton's Stream Ingest API path, answered in Tecton's shapes).

A 200 means the records are durably written (see :mod:`contextkit.compute.streaming`) and the next
read sees them. One bad record rejects the whole batch with a 400 listing every error by index,
unless ``partial`` is true; ``rejected`` counts records, not errors (a record may have several).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from contextkit.errors import ContextKitError
from contextkit.server.common import (
    INGESTER,
    InvalidBody,
    ServerState,
    field,
    json_response,
    ok_example,
    read_object,
)
from contextkit.server.features import body_schema


class IngestRequest(BaseModel):
    """Body of ``POST /v1/ingest``."""

    workspace: str | None = Field(None, description="Workspace; default: the server's.")
    source: str = Field(..., description="Name of a PushSource.")
    records: list[dict[str, Any]] = Field(
        ...,
        description="Objects with every field of the source's schema, or "
        '{"record": {...}, "idempotency_key": "..."} envelopes.',
    )
    dry_run: bool = Field(
        False,
        description="Only validate, writing nothing: the answer counts what a real request would "
        "(records whose idempotency key is already logged are duplicates, not accepted).",
    )
    partial: bool = Field(False, description="Write the valid records even if some are not.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "workspace": "prod",
                    "source": "page_views",
                    "records": [
                        {"user_id": 7, "product_id": 12, "ts": "2026-12-01T09:30:00Z"},
                        {
                            "record": {
                                "user_id": 7,
                                "product_id": 40,
                                "ts": "2026-12-01T09:31:00Z",
                            },
                            "idempotency_key": "view-7-40-0931",
                        },
                    ],
                }
            ]
        }
    }


INGEST_EXAMPLE = {
    "workspace": "prod",
    "source": "page_views",
    "dry_run": False,
    "accepted": 2,
    "duplicates": [],
    "rejected": 0,
    "errors": [],
    "views_updated": ["recent_views"],
    "ingested_at": "2026-12-01T09:31:02.118000Z",
    "metadata": {"timings_ms": {"validate": 0.1, "write": 1.9, "total": 2.1}},
}


TECTON_EXAMPLE = {
    "workspaceName": "prod",
    "ingestMetrics": {
        "featureViewIngestMetrics": [
            {
                "featureViewName": "recent_views",
                "onlineRecordIngestCount": "2",
                "offlineRecordIngestCount": "2",
            }
        ],
        "dataSourceIngestMetrics": [
            {"dataSourceName": "page_views", "offlineRecordIngestCount": "2"}
        ],
    },
}


class _RequestError(BaseModel):
    errorMessage: str
    errorType: str


class _RecordError(BaseModel):
    pushSourceName: str | None = None
    errorType: str
    errorMessage: str


class TectonIngestError(BaseModel):
    """The error body of ``POST /ingest`` (Tecton's Ingest API shape)."""

    requestError: _RequestError
    workspaceName: str | None = None
    recordErrors: list[_RecordError] | None = None


_TECTON_ERRORS = {
    400: ("records that do not fit the push source, or a malformed body", "InvalidArgument"),
    401: ("no API key, or an invalid one", "Unauthenticated"),
    403: ("the key may not ingest into this workspace", "PermissionDenied"),
    404: ("unknown workspace or push source", "NotFound"),
    409: ("a dev workspace takes no records", "FailedPrecondition"),
    413: ("too many records, or too large a body", "InvalidArgument"),
    429: ("too many requests for this key", "ResourceExhausted"),
    500: ("internal error", "Internal"),
}


def _tecton_openapi() -> dict[str, Any]:
    return {
        "responses": {
            str(status): {
                "description": when,
                "content": {
                    "application/json": {
                        "schema": TectonIngestError.model_json_schema(),
                        "example": _tecton_error("prod", kind, when),
                    }
                },
            }
            for status, (when, kind) in _TECTON_ERRORS.items()
        }
    }


def _records(data: dict[str, Any]) -> tuple[str, list[Any], str | None]:
    """(source, records, workspace) from either body shape."""
    records = data.get("records")
    if isinstance(records, dict):  # Tecton: {"records": {"<source>": [{"record": {...}}]}}
        if len(records) != 1:
            raise InvalidBody(
                "records must hold exactly one push source", "body.records", "one source"
            )
        ((source, rows),) = records.items()
        if not isinstance(rows, list):
            raise InvalidBody(f"records.{source} must be a list", f"body.records.{source}")
        workspace = data.get("workspace_name", data.get("workspace"))
        if workspace is not None and not isinstance(workspace, str):
            raise InvalidBody("`workspace_name` must be a string", "body.workspace_name")
        return source, rows, workspace
    source = field(data, "source", str, required=True)
    rows = field(data, "records", list, required=True)
    return source, rows, field(data, "workspace", str, required=False)


def _flags(data: dict[str, Any]) -> tuple[bool, bool]:
    return (
        bool(field(data, "dry_run", bool, required=False)),
        bool(field(data, "partial", bool, required=False)),
    )


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/ingest", openapi_extra=body_schema(IngestRequest), responses=ok_example(INGEST_EXAMPLE)
    )
    async def ingest(request: Request) -> Response:
        """Push records to a push source; the next read sees them."""
        data = await read_object(request)
        source, records, workspace = _records(data)
        dry_run, partial = _flags(data)
        ctx = state.context(request, workspace, INGESTER)
        result = await run_in_threadpool(
            ctx.ingest, source, records, dry_run=dry_run, partial=partial
        )
        return json_response(result.to_response())

    # Refusals the ops middleware makes before the route runs (401, 413, 429), in Tecton's shape.
    state.error_shapes["/ingest"] = lambda exc: (
        exc.http_status,
        _tecton_error(None, _tecton_type(exc), exc.message),
    )

    @router.post("/ingest", responses=ok_example(TECTON_EXAMPLE), openapi_extra=_tecton_openapi())
    async def tecton_ingest(request: Request) -> Response:
        """Tecton's Stream Ingest API: ``{"workspace_name", "dry_run", "records": {...}}``."""
        workspace = None
        try:
            data = await read_object(request)
            source, records, workspace = _records(data)
            dry_run = bool(field(data, "dry_run", bool, required=False))
            ctx = state.context(request, workspace, INGESTER)
            result = await run_in_threadpool(ctx.ingest, source, records, dry_run=dry_run)
        except InvalidBody as exc:
            return json_response(_tecton_error(workspace, "InvalidArgument", exc.message), 400)
        except ContextKitError as exc:
            errors = (exc.details or {}).get("errors") if isinstance(exc.details, dict) else None
            body = _tecton_error(workspace, _tecton_type(exc), exc.message)
            if errors:
                body["recordErrors"] = [
                    {
                        "pushSourceName": source,
                        "errorType": "InvalidArgument",
                        "errorMessage": f"record {e['index']}: {e['field'] or 'record'}: "
                        f"{e['message']}",
                    }
                    for e in errors
                ]
            return json_response(body, exc.http_status)
        return json_response(
            _tecton_ok(result.workspace, source, result.accepted, result.views_updated)
        )

    return router


def _tecton_ok(workspace: str, source: str, count: int, views: list[str]) -> dict[str, Any]:
    return {
        "workspaceName": workspace,
        "ingestMetrics": {
            "featureViewIngestMetrics": [
                {
                    "featureViewName": view,
                    "onlineRecordIngestCount": str(count),
                    "offlineRecordIngestCount": str(count),
                }
                for view in views
            ],
            "dataSourceIngestMetrics": [
                {"dataSourceName": source, "offlineRecordIngestCount": str(count)}
            ],
        },
    }


def _tecton_error(workspace: str | None, kind: str, message: str) -> dict[str, Any]:
    return {
        "requestError": {"errorMessage": message, "errorType": kind},
        "workspaceName": workspace,
    }


def _tecton_type(exc: ContextKitError) -> str:
    return {
        400: "InvalidArgument",
        401: "Unauthenticated",
        403: "PermissionDenied",
        404: "NotFound",
        409: "FailedPrecondition",
        413: "InvalidArgument",
        429: "ResourceExhausted",
    }.get(exc.http_status, "Internal")
