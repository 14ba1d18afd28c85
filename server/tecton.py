"""Tecton-compatible routes: ``POST /api/v1/feature-service/{get-features, get-features-batch,
metadata}``, so Tecton's HTTP clients work unchanged against contextkit.

The translation lives in :mod:`contextkit.retrieval.tecton`; this module reads the body, resolves
the workspace through ``state.context`` (where access control hooks in: Tecton clients send
``Authorization: Tecton-key <key>``), and answers every error in Tecton's shape
``{"error", "message", "code"}`` with the matching HTTP status. See docs/tecton-compat.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from contextkit.errors import (
    BadRequestError,
    ContextKitError,
    InternalError,
    translate_store_errors,
)
from contextkit.retrieval import tecton as tecton_compat
from contextkit.server.common import (
    READER,
    InvalidBody,
    ServerState,
    json_response,
    ok_example,
    read_object,
)
from contextkit.stores.errors import StoreFailure

log = logging.getLogger("contextkit.server")

PREFIX = "/api/v1/feature-service"


# -- OpenAPI documentation of the bodies (the routes parse them with orjson) -------------------
class MetadataOptions(BaseModel):
    includeNames: bool = False
    includeDataTypes: bool = False
    includeEffectiveTimes: bool = False
    includeSloInfo: bool = False
    includeServingStatus: bool = False
    includeFeatureDescriptions: bool = False
    includeFeatureTags: bool = False


class GetFeaturesParams(BaseModel):
    """Fields are also accepted in snake_case (``feature_service_name``, ``join_key_map``, ...)."""

    featureServiceName: str | None = Field(None, description="Name of a ContextService.")
    featureServiceId: str | None = Field(None, description="Same as the name in contextkit.")
    workspaceName: str | None = Field(None, description="Workspace; default: the server's.")
    joinKeyMap: dict[str, Any] = Field(
        default_factory=dict, description="Join key -> value; int64 keys as decimal strings."
    )
    requestContextMap: dict[str, Any] = Field(default_factory=dict, description="Accepted, unused.")
    metadataOptions: MetadataOptions | None = None
    requestOptions: dict[str, Any] | None = Field(None, description="Accepted, unused.")
    allowPartialResults: bool = Field(False, description="Accepted, unused.")


class GetFeaturesRequest(BaseModel):
    params: GetFeaturesParams

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "params": {
                        "featureServiceName": "support_assistant",
                        "workspaceName": "prod",
                        "joinKeyMap": {"user_id": "42"},
                        "metadataOptions": {"includeNames": True, "includeDataTypes": True},
                    }
                }
            ]
        }
    }


class RequestDataItem(BaseModel):
    joinKeyMap: dict[str, Any] = Field(default_factory=dict)
    requestContextMap: dict[str, Any] = Field(default_factory=dict)


class GetFeaturesBatchParams(BaseModel):
    featureServiceName: str | None = None
    featureServiceId: str | None = None
    workspaceName: str | None = None
    requestData: list[RequestDataItem]
    metadataOptions: MetadataOptions | None = None


class GetFeaturesBatchRequest(BaseModel):
    params: GetFeaturesBatchParams

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "params": {
                        "featureServiceName": "product_lookup",
                        "workspaceName": "prod",
                        "requestData": [
                            {"joinKeyMap": {"product_id": "7"}},
                            {"joinKeyMap": {"product_id": "999999"}},
                        ],
                        "metadataOptions": {"includeNames": True, "includeServingStatus": True},
                    }
                }
            ]
        }
    }


class ServiceMetadataParams(BaseModel):
    featureServiceName: str | None = None
    featureServiceId: str | None = None
    workspaceName: str | None = None


class ServiceMetadataRequest(BaseModel):
    params: ServiceMetadataParams

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"params": {"featureServiceName": "product_lookup", "workspaceName": "prod"}}
            ]
        }
    }


class TectonError(BaseModel):
    error: str
    message: str
    code: int = Field(..., description="gRPC status code, as Tecton sends it.")
    details: dict[str, Any] = Field(default_factory=dict)


GET_FEATURES_EXAMPLE = {
    "result": {"features": ["Summit Forge Atlas 2 Headlamp", "outdoor", 179.99, "SKU-FLM-0777"]},
    "metadata": {
        "features": [
            {"name": f"product_attributes.{name}", "dataType": {"type": kind}, "status": "PRESENT"}
            for name, kind in (
                ("name", "string"),
                ("category", "string"),
                ("price", "float64"),
                ("sku", "string"),
            )
        ]
    },
}
BATCH_EXAMPLE = {
    "result": [
        {"features": ["Dewdrop Cascade 7 Night Cream", "beauty", 58.99, "SKU-XKB-6043"]},
        {"features": [None, None, None, None]},
    ],
    "metadata": {
        "features": [
            {"name": f"product_attributes.{name}", "status": ["PRESENT", "MISSING_DATA"]}
            for name in ("name", "category", "price", "sku")
        ]
    },
}
METADATA_EXAMPLE = {
    "featureServiceType": "DEFAULT",
    "inputJoinKeys": [{"name": "product_id", "dataType": {"type": "int64"}, "type": "int64"}],
    "inputRequestContextKeys": [],
    "featureValues": [
        {"name": "product_attributes.price", "dataType": {"type": "float64"}, "type": "float64"}
    ],
}
_ERRORS = (
    # (status, when, example message)
    (400, "Bad request", "join key 'product_id' must be int64, got 'abc'"),
    (401, "No API key, or one that is invalid, revoked or expired", "the API key is not valid"),
    (403, "The key may not read this workspace", "this key may not read workspace 'staging'"),
    (
        404,
        "Unknown or dev workspace, or unknown service",
        "unknown service 'nope' in workspace 'prod'",
    ),
    (
        409,
        "The server has no default workspace and the request names none",
        "no workspace selected",
    ),
    (413, "Body over the size limit", "request body over the limit"),
    (429, "Rate limited", "too many requests"),
    (500, "Internal error", "internal server error; see the server log"),
)


def _openapi(model: type[BaseModel]) -> dict[str, Any]:
    """The request body and the error responses, all in Tecton's error shape."""
    codes = tecton_compat.GRPC_CODES
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
        "responses": {
            str(status): {
                "description": f"{when} (Tecton code {codes[status]})",
                "content": {
                    "application/json": {
                        "schema": TectonError.model_json_schema(),
                        "example": {
                            "error": message,
                            "message": message,
                            "code": codes[status],
                            "details": {},
                        },
                    }
                },
            }
            for status, when, message in _ERRORS
        },
    }


# -- routes --------------------------------------------------------------------------------------
def routes(state: ServerState) -> APIRouter:
    router = APIRouter(tags=["tecton"])
    # Refusals the ops middleware makes before these routes run (401, 413, 429) in Tecton's shape.
    state.error_shapes[f"{PREFIX}/"] = tecton_compat.error_body

    @router.post(
        f"{PREFIX}/get-features",
        openapi_extra=_openapi(GetFeaturesRequest),
        responses=ok_example(GET_FEATURES_EXAMPLE),
    )
    async def get_features(request: Request) -> Response:
        """Tecton's get-features: one feature vector of a service."""
        return await _serve(state, request, batch=False)

    @router.post(
        f"{PREFIX}/get-features-batch",
        openapi_extra=_openapi(GetFeaturesBatchRequest),
        responses=ok_example(BATCH_EXAMPLE),
    )
    async def get_features_batch(request: Request) -> Response:
        """Tecton's get-features-batch: several feature vectors in one request."""
        return await _serve(state, request, batch=True)

    @router.post(
        f"{PREFIX}/metadata",
        openapi_extra=_openapi(ServiceMetadataRequest),
        responses=ok_example(METADATA_EXAMPLE),
    )
    async def metadata(request: Request) -> Response:
        """Tecton's feature-service metadata: the service's join keys and typed features."""
        try:
            service, workspace = tecton_compat.parse_service_metadata(await _body(request))
            ctx = state.context(request, workspace, READER, service=service)
            return json_response(tecton_compat.service_metadata(ctx.runtime, service))
        except Exception as exc:  # every error in Tecton's shape
            return _error(exc)

    return router


async def _serve(state: ServerState, request: Request, *, batch: bool) -> Response:
    started = time.perf_counter()
    try:
        parsed = tecton_compat.parse_get_features(await _body(request), batch=batch)
        ctx = state.context(request, parsed.workspace, READER, service=parsed.service)
        return json_response(tecton_compat.get_features(ctx.runtime, parsed, started=started))
    except Exception as exc:  # every error in Tecton's shape
        return _error(exc)


async def _body(request: Request) -> dict[str, Any]:
    try:
        return await read_object(request)
    except InvalidBody as exc:
        # Tecton answers a body it cannot parse with 400; its clients know no 422.
        raise BadRequestError(exc.message) from None


def _error(exc: Exception) -> Response:
    if isinstance(exc, StoreFailure):
        exc = translate_store_errors(exc)
    if not isinstance(exc, ContextKitError):
        log.exception("unhandled error")
        exc = InternalError("internal server error; see the server log")
    status, body = tecton_compat.error_body(exc)
    response = json_response(body, status)
    headers = getattr(exc, "headers", None)
    if headers:
        response.headers.update(headers)
    return response
