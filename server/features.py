"""Feature routes: ``GET /health``, ``GET /v1/services``, ``POST /v1/features``."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from contextkit.retrieval.cache import read_features
from contextkit.server.common import (
    READER,
    InvalidBody,
    ServerState,
    json_response,
    ok_example,
    parse_body,
)

SERVICES_EXAMPLE = {
    "workspace": "prod",
    "services": [
        {
            "name": "product_lookup",
            "description": "Catalog facts about a product.",
            "views": ["product_attributes"],
            "join_keys": {"product_id": "int64"},
            "features": [
                {"name": "product_attributes.name", "type": "string"},
                {"name": "product_attributes.price", "type": "float64"},
            ],
        }
    ],
}
FEATURES_EXAMPLE = {
    "metadata": {
        "workspace": "prod",
        "service": "support_assistant",
        "feature_names": ["user_id", "user_order_stats.amount_sum_7d", "user_profile.tier"],
        "types": ["int64", "float64", "string"],
    },
    "results": [
        {"values": [1, 2], "statuses": ["PRESENT", "PRESENT"], "event_timestamps": [None, None]},
        {
            "values": [None, 229.98],
            "statuses": ["PRESENT", "PRESENT"],
            "event_timestamps": ["2026-11-18T02:59:09.762330Z", "2026-11-23T00:57:21.919081Z"],
        },
        {
            "values": ["gold", None],
            "statuses": ["PRESENT", "MISSING"],
            "event_timestamps": ["2026-08-15T04:46:31.916279Z", None],
        },
    ],
}


class FeaturesRequest(BaseModel):
    """Body of ``POST /v1/features``."""

    workspace: str | None = Field(None, description="Workspace; default: the server's.")
    service: str = Field(..., description="Name of a ContextService.")
    entities: dict[str, Any] = Field(
        ...,
        description="Join key -> list of values, one per entity row (column-major); a single "
        "value stands for a one-row list.",
    )
    request_context: dict[str, Any] | None = Field(
        None,
        description="Values the service's realtime feature views read: one value for every "
        "entity row, or a list with one per row.",
    )
    cache: bool = Field(
        True,
        description="Whether a service declared with `cache=` may answer from the serving "
        "cache; false reads the online store and leaves the cache as it was.",
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


class FeatureColumn(BaseModel):
    """One column of ``results``: a join key or a feature, one entry per entity row."""

    values: list[Any]
    statuses: list[str] = Field(description="PRESENT or MISSING, per row.")
    event_timestamps: list[str | None] = Field(description="ISO 8601 (UTC), per row.")


class FeaturesMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")  # what the read adds (cache, timings) travels on

    workspace: str
    service: str
    feature_names: list[str] = Field(description="Join keys, then `<view>.<feature>` names.")
    types: list[str]


class FeaturesResponse(BaseModel):
    """Answer of ``POST /v1/features``: column-major, aligned with ``metadata.feature_names``."""

    metadata: FeaturesMetadata
    results: list[FeatureColumn]


class ServiceFeature(BaseModel):
    name: str
    type: str


class ServiceInfo(BaseModel):
    name: str
    description: str | None
    views: list[str]
    join_keys: dict[str, str] | None = Field(description="null in a dev workspace.")
    features: list[ServiceFeature] | None = Field(description="null in a dev workspace.")


class ServicesResponse(BaseModel):
    """Answer of ``GET /v1/services``."""

    workspace: str
    services: list[ServiceInfo]


class WarmingView(BaseModel):
    """An embedding view whose first materialization has not landed (searches answer 503)."""

    workspace: str
    view: str
    job: str | None = Field(description="The job building it; null when none is queued or running.")
    status: str = Field(description="The job's status, or `not materialized`.")
    progress: str | None = Field(description="Its encode progress, e.g. `3/8 chunks encoded`.")
    retry_after_s: int | None = None


class Health(BaseModel):
    """Answer of ``GET /health``: ``ok``, or (503) ``starting``/``failed`` with the step."""

    status: str
    step: str | None = None
    elapsed_s: float | None = None
    error: str | None = None
    warming: list[WarmingView] | None = Field(
        default=None,
        description="Once ready: the embedding views still warming (absent when none is). They "
        "do not make the node unready: features and prompts are served meanwhile.",
    )


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of a route that validates its body with the same ``model``
    (:func:`~contextkit.server.common.parse_body`)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(model)}},
        }
    }


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models written in place: a ``#/$defs/..``
    reference inside a route's OpenAPI would point at the document's root, where there are none.
    (The models of bodies hold no recursive types.)"""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


HEALTH_STARTING = {
    "description": "Not ready: warming up (``starting``) or the warm-up failed (``failed``).",
    "content": {
        "application/json": {
            "example": {"status": "starting", "step": "opening vector table 'x'", "elapsed_s": 3.2}
        }
    },
}


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/health",
        response_model=Health,
        responses={**ok_example({"status": "ok"}), 503: HEALTH_STARTING},
    )
    async def health(request: Request) -> Response:
        """200 once the server is ready; 503 ``starting`` while it warms up (``failed`` if the
        warm-up failed): a load balancer's readiness check. Once ready, ``warming`` lists the
        embedding views whose first materialization has not landed (still 200)."""
        readiness = getattr(request.app.state, "readiness", None)
        status, body = readiness.health() if readiness is not None else (200, {"status": "ok"})
        if status == 200 and readiness is not None:  # ready: say which views are still warming
            warming = await run_in_threadpool(readiness.warming, state.ctx)
            if warming:
                body = {**body, "warming": warming}
        return json_response(body, status)

    @router.get("/v1/services", responses=ok_example(SERVICES_EXAMPLE))
    async def services(request: Request, workspace: str | None = None) -> ServicesResponse:
        c = state.context(request, workspace, READER)
        specs = c.specs()
        out = []
        for service in specs.services.values():
            if not state.serves(c, service.name):  # another server group's
                continue
            reader = c.service_reader(service.name) if specs.workspace.live else None
            out.append(
                ServiceInfo(
                    name=service.name,
                    description=service.description,
                    views=[ref.view for ref in service.features],
                    join_keys=dict(reader.join_keys) if reader else None,
                    features=(
                        [
                            ServiceFeature(name=n, type=t)
                            for n, t in zip(reader.feature_names, reader.feature_types, strict=True)
                        ]
                        if reader
                        else None
                    ),
                )
            )
        return ServicesResponse(workspace=specs.workspace.name, services=out)

    @router.post(
        "/v1/features",
        openapi_extra=body_schema(FeaturesRequest),
        response_model=FeaturesResponse,
        responses=ok_example(FEATURES_EXAMPLE),
    )
    async def features(request: Request) -> Response:
        """Latest feature values of a service for a batch of entities (column-major)."""
        try:
            body = await parse_body(request, FeaturesRequest)
        except InvalidBody as exc:
            return exc.response()
        c = state.context(request, body.workspace, READER, service=body.service)
        # c.get_features, with the service's reader looked up once (each lookup checks the
        # registry's version): it also says whether the read waits on other processes.
        reader = c.service_reader(body.service)
        lookup = partial(
            read_features,
            c.runtime,
            reader,
            body.entities,
            body.request_context,
            read=body.cache,
            write=body.cache,
        )
        if reader.uses_transform_groups:  # other processes: off the event loop
            result = await run_in_threadpool(lookup)
        else:  # a store read: bounded by the store's timeouts (Redis: socket_timeout)
            result = lookup()
        # Serialized by hand (orjson), not through FeaturesResponse (the documented shape):
        # bench/body_parsing.py times the declared model's path at 1.06x this one at p50 on
        # this answer (about 30 us of a sub-millisecond budget).
        return json_response(result.to_response())

    return router
