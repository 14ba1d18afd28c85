"""Ingest routes: ``POST /v1/ingest`` (contextkit's shape, or Tecton's) and ``POST /ingest``
(Tecton's Stream Ingest API path, answered in Tecton's shapes).

A 200 means the records are durably written (see :mod:`contextkit.compute.streaming`) and the next
read sees them. One bad record rejects the whole batch with a 400 listing every error by index,
unless ``partial`` is true; ``rejected`` counts records, not errors (a record may have several).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Discriminator, Field, RootModel, Tag
from starlette.concurrency import run_in_threadpool

from contextkit.errors import ContextKitError
from contextkit.server.common import (
    INGESTER,
    InvalidBody,
    NullIsAbsent,
    ServerState,
    json_response,
    ok_example,
    parse_body,
)
from contextkit.server.features import body_schema


class IngestRequest(NullIsAbsent):
    """contextkit's ingest body (``POST /v1/ingest``)."""

    workspace: str | None = Field(None, description="Workspace; default: the server's.")
    source: str = Field(..., description="Name of a PushSource.")
    # Each record is checked against the source's schema by the ingest itself, which answers
    # a 400 listing every bad record by index.
    records: list[Any] = Field(
        ...,
        description="Objects with every field of the source's schema, or "
        '{"record": {...}, "idempotency_key": "..."} envelopes.',
        json_schema_extra={"items": {"type": "object"}},
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

    def target(self) -> tuple[str, list[Any], str | None]:
        """``(source, records, workspace)``."""
        return self.source, self.records, self.workspace


class TectonIngestRequest(NullIsAbsent):
    """Tecton's Stream Ingest API body: the records keyed by their push source."""

    workspace_name: str | None = Field(None, description="Workspace; default: the server's.")
    workspace: str | None = Field(None, description="Same as workspace_name.")
    records: dict[str, list[Any]] = Field(
        ...,
        description='Exactly one push source: {"<source>": [{"record": {...}}, ...]}.',
        json_schema_extra={"minProperties": 1, "maxProperties": 1},
    )
    dry_run: bool = Field(False, description="Only validate, writing nothing.")
    partial: bool = Field(
        False, description="``/v1/ingest`` only: write the valid records even if some are not."
    )

    def target(self) -> tuple[str, list[Any], str | None]:
        """``(source, records, workspace)``."""
        if len(self.records) != 1:
            raise InvalidBody(
                "records must hold exactly one push source", "body.records", "one source"
            )
        ((source, rows),) = self.records.items()
        return source, rows, self.workspace_name or self.workspace


def _shape(data: Any) -> str | None:
    """Tecton's shape keys its records by source; anything else is contextkit's."""
    if not isinstance(data, dict):
        return None
    return "tecton" if isinstance(data.get("records"), dict) else "contextkit"


class IngestBody(
    RootModel[
        Annotated[
            Annotated[IngestRequest, Tag("contextkit")]
            | Annotated[TectonIngestRequest, Tag("tecton")],
            Discriminator(_shape),
        ]
    ]
):
    """Body of ``POST /v1/ingest`` and ``POST /ingest``: contextkit's shape or Tecton's."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                *IngestRequest.model_config["json_schema_extra"]["examples"],
                {
                    "workspace_name": "prod",
                    "dry_run": False,
                    "records": {
                        "page_views": [
                            {
                                "record": {
                                    "user_id": 7,
                                    "product_id": 12,
                                    "ts": "2026-12-01T09:30:00Z",
                                }
                            }
                        ]
                    },
                },
            ]
        }
    }


class IngestResponse(BaseModel):
    """Answer of ``POST /v1/ingest``."""

    workspace: str
    source: str
    dry_run: bool
    accepted: int = Field(description="Records written (or, dry run, that would be).")
    duplicates: list[int] = Field(description="Indexes of records whose idempotency key is known.")
    rejected: int = Field(description="Records refused (one with several errors counts once).")
    errors: list[dict[str, Any]] = Field(description='{"index", "field", "message"} per problem.')
    views_updated: list[str]
    ingested_at: str | None
    metadata: dict[str, Any] = Field(description="timings_ms per stage.")


class _ViewCount(BaseModel):
    featureViewName: str
    onlineRecordIngestCount: str
    offlineRecordIngestCount: str


class _SourceCount(BaseModel):
    dataSourceName: str
    offlineRecordIngestCount: str


class _IngestMetrics(BaseModel):
    featureViewIngestMetrics: list[_ViewCount]
    dataSourceIngestMetrics: list[_SourceCount]


class TectonIngestResponse(BaseModel):
    """Answer of ``POST /ingest`` (Tecton's shape; counts are strings, as Tecton sends them)."""

    workspaceName: str
    ingestMetrics: _IngestMetrics


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
        **body_schema(IngestBody),
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
        },
    }


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/ingest",
        openapi_extra=body_schema(IngestBody),
        response_model=IngestResponse,
        responses=ok_example(INGEST_EXAMPLE),
    )
    async def ingest(request: Request) -> IngestResponse:
        """Push records to a push source; the next read sees them."""
        body = (await parse_body(request, IngestBody)).root
        source, records, workspace = body.target()
        ctx = state.context(request, workspace, INGESTER)
        result = await run_in_threadpool(
            ctx.ingest, source, records, dry_run=body.dry_run, partial=body.partial
        )
        return IngestResponse.model_validate(result.to_response())

    # Refusals the ops middleware makes before the route runs (401, 413, 429), in Tecton's shape.
    state.error_shapes["/ingest"] = lambda exc: (
        exc.http_status,
        _tecton_error(None, _tecton_type(exc), exc.message),
    )

    @router.post(
        "/ingest",
        response_model=TectonIngestResponse,
        responses=ok_example(TECTON_EXAMPLE),
        openapi_extra=_tecton_openapi(),
    )
    async def tecton_ingest(request: Request) -> Response | TectonIngestResponse:
        """Tecton's Stream Ingest API: ``{"workspace_name", "dry_run", "records": {...}}``."""
        workspace = source = None
        try:
            body = (await parse_body(request, IngestBody)).root
            source, records, workspace = body.target()
            ctx = state.context(request, workspace, INGESTER)
            result = await run_in_threadpool(ctx.ingest, source, records, dry_run=body.dry_run)
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
        return _tecton_ok(result.workspace, source, result.accepted, result.views_updated)

    return router


def _tecton_ok(workspace: str, source: str, count: int, views: list[str]) -> TectonIngestResponse:
    return TectonIngestResponse(
        workspaceName=workspace,
        ingestMetrics=_IngestMetrics(
            featureViewIngestMetrics=[
                _ViewCount(
                    featureViewName=view,
                    onlineRecordIngestCount=str(count),
                    offlineRecordIngestCount=str(count),
                )
                for view in views
            ],
            dataSourceIngestMetrics=[
                _SourceCount(dataSourceName=source, offlineRecordIngestCount=str(count))
            ],
        ),
    )


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
