"""Tecton-compatible routes: ``POST /api/v1/feature-service/{get-features, get-features-batch,
metadata}``, so Tecton's HTTP clients work unchanged against contextkit.

The translation lives in :mod:`contextkit.retrieval.tecton`; this module reads the body, resolves
the workspace through ``state.context`` (where access control hooks in: Tecton clients send
``Authorization: Tecton-key <key>``), and answers every error in Tecton's shape
``{"error", "message", "code"}`` with the matching HTTP status. See docs/tecton-compat.md.
"""

from __future__ import annotations

import logging
import re
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

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
    NullIsAbsent,
    ServerState,
    json_response,
    ok_example,
    parse_body,
    waits_on_transform_workers,
)
from contextkit.server.features import body_schema
from contextkit.stores.errors import StoreFailure

log = logging.getLogger("contextkit.server")

PREFIX = "/api/v1/feature-service"


# -- the bodies: parsed by these models, documented by them ----------------------------------------
def _either(camel: str, default: Any = None, **kwargs: Any) -> Any:
    """A field Tecton's clients send in camelCase or in snake_case (proto-JSON accepts both);
    the schema shows the camelCase name."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()
    return Field(default, validation_alias=AliasChoices(camel, snake), **kwargs)


class TectonBody(NullIsAbsent):
    """A Tecton request body (or a part of one): a null field is an absent one."""

    @classmethod
    def error_path(cls, loc: list[str | int]) -> str:
        """How a bad field is named in the 400: camelCase, list items in brackets
        (``params.requestData[1]``), whichever case the client sent."""
        out = ""
        for part in loc:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                head, *rest = part.split("_")
                out += ("." if out else "") + head + "".join(w.title() for w in rest)
        return out


class MetadataOptions(TectonBody):
    include_names: bool = _either("includeNames", False)
    include_data_types: bool = _either("includeDataTypes", False)
    include_effective_times: bool = _either("includeEffectiveTimes", False)
    include_slo_info: bool = _either("includeSloInfo", False)
    include_serving_status: bool = _either("includeServingStatus", False)
    include_feature_descriptions: bool = _either("includeFeatureDescriptions", False)
    include_feature_tags: bool = _either("includeFeatureTags", False)

    def options(self) -> tecton_compat.MetadataOptions:
        return tecton_compat.MetadataOptions(
            names=self.include_names,
            data_types=self.include_data_types,
            effective_times=self.include_effective_times,
            slo_info=self.include_slo_info,
            serving_status=self.include_serving_status,
            descriptions=self.include_feature_descriptions,
            tags=self.include_feature_tags,
        )


class RequestOptions(TectonBody):
    read_from_cache: bool = _either(
        "readFromCache", True, description="false: read the online store, not the serving cache."
    )
    write_to_cache: bool = _either(
        "writeToCache", True, description="false: leave the serving cache as it was."
    )


class ServiceParams(TectonBody):
    """Fields are also accepted in snake_case (``feature_service_name``, ``join_key_map``, ...)."""

    feature_service_name: str | None = _either(
        "featureServiceName", description="Name of a ContextService."
    )
    feature_service_id: str | None = _either(
        "featureServiceId", description="Same as the name in contextkit."
    )
    workspace_name: str | None = _either(
        "workspaceName", description="Workspace; default: the server's."
    )

    def service(self) -> str:
        return tecton_compat.service_name(self.feature_service_name, self.feature_service_id)


class _Rows(ServiceParams):
    metadata_options: MetadataOptions | None = _either("metadataOptions")
    request_options: RequestOptions | None = _either("requestOptions")

    def request(self, maps: list[dict[str, Any]], contexts: list[dict[str, Any]], *, batch: bool):
        """The :class:`~contextkit.retrieval.tecton.TectonRequest` these params ask for."""
        cache = self.request_options or RequestOptions()
        return tecton_compat.tecton_request(
            self.service(),
            self.workspace_name,
            maps,
            contexts,
            (self.metadata_options or MetadataOptions()).options(),
            batch=batch,
            read_cache=cache.read_from_cache,
            write_cache=cache.write_to_cache,
        )


class GetFeaturesParams(_Rows):
    join_key_map: dict[str, Any] = _either(
        "joinKeyMap", {}, description="Join key -> value; int64 keys as decimal strings."
    )
    request_context_map: dict[str, Any] = _either(
        "requestContextMap", {}, description="Values the service's realtime views read."
    )
    allow_partial_results: bool = _either("allowPartialResults", False, description="Unused.")


class GetFeaturesRequest(TectonBody):
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

    def parsed(self) -> tecton_compat.TectonRequest:
        p = self.params
        return p.request([p.join_key_map], [p.request_context_map], batch=False)


class RequestDataItem(TectonBody):
    join_key_map: dict[str, Any] = _either("joinKeyMap", {})
    request_context_map: dict[str, Any] = _either("requestContextMap", {})


class GetFeaturesBatchParams(_Rows):
    request_data: list[RequestDataItem] = _either(
        "requestData", ..., description="One item per entity.", json_schema_extra={"minItems": 1}
    )


class GetFeaturesBatchRequest(TectonBody):
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

    def parsed(self) -> tecton_compat.TectonRequest:
        rows = self.params.request_data
        return self.params.request(
            [r.join_key_map for r in rows], [r.request_context_map for r in rows], batch=True
        )


class ServiceMetadataRequest(TectonBody):
    params: ServiceParams

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"params": {"featureServiceName": "product_lookup", "workspaceName": "prod"}}
            ]
        }
    }


# -- the answers --------------------------------------------------------------------------------
class DataType(BaseModel):
    model_config = ConfigDict(extra="allow")  # elementType of arrays

    type: str = Field(description="boolean, int64, float64, string, array, ...")


class FeatureMetadata(BaseModel):
    """Only what ``metadataOptions`` asked for is present."""

    name: str | None = None
    dataType: DataType | None = None
    effectiveTime: str | None = None
    status: str | list[str] | None = Field(None, description="A list per row in a batch.")
    description: str | None = None
    tags: dict[str, str] | None = None


class ResponseMetadata(BaseModel):
    features: list[FeatureMetadata] | None = None
    sloInfo: dict[str, Any] | list[dict[str, Any]] | None = None
    batchSloInfo: dict[str, Any] | None = None


class FeatureVector(BaseModel):
    features: list[Any] = Field(description="Positional, aligned with metadata.features.")


class GetFeaturesResponse(BaseModel):
    """Answer of get-features; ``metadata`` only when ``metadataOptions`` asks for some."""

    result: FeatureVector
    metadata: ResponseMetadata | None = None


class GetFeaturesBatchResponse(BaseModel):
    result: list[FeatureVector]
    metadata: ResponseMetadata | None = None


class TypedName(BaseModel):
    name: str
    dataType: DataType
    type: str


class ServiceMetadataResponse(BaseModel):
    featureServiceType: str
    inputJoinKeys: list[TypedName]
    inputRequestContextKeys: list[TypedName]
    featureValues: list[TypedName]


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
        **body_schema(model),
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
        response_model=GetFeaturesResponse,
        responses=ok_example(GET_FEATURES_EXAMPLE),
    )
    async def get_features(request: Request) -> Response:
        """Tecton's get-features: one feature vector of a service."""
        return await _serve(state, request, GetFeaturesRequest)

    @router.post(
        f"{PREFIX}/get-features-batch",
        openapi_extra=_openapi(GetFeaturesBatchRequest),
        response_model=GetFeaturesBatchResponse,
        responses=ok_example(BATCH_EXAMPLE),
    )
    async def get_features_batch(request: Request) -> Response:
        """Tecton's get-features-batch: several feature vectors in one request."""
        return await _serve(state, request, GetFeaturesBatchRequest)

    @router.post(
        f"{PREFIX}/metadata",
        openapi_extra=_openapi(ServiceMetadataRequest),
        response_model=ServiceMetadataResponse,
        responses=ok_example(METADATA_EXAMPLE),
    )
    async def metadata(request: Request) -> Response | ServiceMetadataResponse:
        """Tecton's feature-service metadata: the service's join keys and typed features."""
        try:
            params = (await _body(request, ServiceMetadataRequest)).params
            service = params.service()
            ctx = state.context(request, params.workspace_name, READER, service=service)
            answer = tecton_compat.service_metadata(ctx.runtime, service)
        except Exception as exc:  # every error in Tecton's shape
            return _error(exc)
        return ServiceMetadataResponse.model_validate(answer)

    return router


async def _serve(
    state: ServerState,
    request: Request,
    model: type[GetFeaturesRequest] | type[GetFeaturesBatchRequest],
) -> Response:
    started = time.perf_counter()
    try:
        parsed = (await _body(request, model)).parsed()
        ctx = state.context(request, parsed.workspace, READER, service=parsed.service)
        lookup = partial(tecton_compat.get_features, ctx.runtime, parsed, started=started)
        if waits_on_transform_workers(ctx, parsed.service):  # other processes: off the loop
            answer = await run_in_threadpool(lookup)
        else:
            answer = lookup()
    except Exception as exc:  # every error in Tecton's shape
        return _error(exc)
    # Serialized by hand (orjson), not through the response model (the documented shape): the
    # feature-serving path, where bench/body_parsing.py times the model's path at 1.06x, and
    # Tecton's clients get exactly the bytes they always did.
    return json_response(answer)


async def _body(request: Request, model: type[TectonBody]) -> Any:
    try:
        return await parse_body(request, model)
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
