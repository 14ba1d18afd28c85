"""``POST /v1/search``: similarity search over an embedding view (vector, text or hybrid)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from contextkit.server.common import (
    READER,
    NullIsAbsent,
    ServerState,
    json_response,
    ok_example,
    parse_body,
)
from contextkit.server.features import body_schema


def _one_of(*values: str) -> dict[str, Any]:
    """The allowed values, for the schema only: the search itself checks them, so an unknown
    value is its 400 ``invalid_search`` naming the choices, not a 422 of the body's types."""
    return {"enum": list(values)}


class SearchRequest(NullIsAbsent):
    """Body of ``POST /v1/search``. Types are checked here (a wrong one is a 422); values
    (``top_k`` range, ``mode``, ``fusion``, ``group_by``, filters) by the search, as 400s."""

    workspace: str | None = Field(None, description="Workspace; default: the server's.")
    view: str = Field(..., description="Name of an embedding view.")
    query: str | None = Field(None, description="Query text (needed for text and hybrid).")
    vector: list[float] | None = Field(
        None, description="A ready query vector (same model and dimension as the view)."
    )
    top_k: int = Field(
        10,
        description="How many chunks to return.",
        json_schema_extra={"minimum": 1, "maximum": 1000},
    )
    filter: dict[str, Any] | None = Field(
        None,
        description='Structured filter on key and metadata columns, e.g. {"category": "shoes", '
        '"price": {"lt": 50}}; operators eq ne lt lte gt gte in not_in contains.',
    )
    mode: str = Field(
        "vector",
        description="How to search.",
        json_schema_extra=_one_of("vector", "text", "hybrid"),
    )
    group_by: str | None = Field(
        None,
        description='"document": the top_k best documents instead of chunks, each scored by its '
        "best chunk, returned as its highlight.",
        json_schema_extra=_one_of("document"),
    )
    fusion: str | None = Field(
        None,
        description='Hybrid: "blend" (scores, the default) or "rrf" (reciprocal rank fusion).',
        json_schema_extra=_one_of("rrf", "blend"),
    )
    depth: int | None = Field(
        None,
        description="Hybrid: candidates per list.",
        json_schema_extra={"minimum": 1, "maximum": 1000},
    )
    weights: list[float] | None = Field(
        None, description="Hybrid: weights of the vector and text lists, e.g. [1, 0.5]."
    )
    rerank: str | dict[str, Any] | None = Field(
        None,
        description='A reranker stage: "local:<cross-encoder folder>" or {"model": <litellm '
        'rerank model>, "depth": 50}.',
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "workspace": "prod",
                    "view": "product_docs",
                    "query": "waterproof hiking boots",
                    "top_k": 5,
                    "mode": "hybrid",
                    "filter": {"price": {"lt": 200}},
                }
            ]
        }
    }


class SearchHit(BaseModel):
    """One chunk (or, with ``group_by``, one document) found, best first."""

    # What a stage adds travels on: "highlight" and "matched_chunks" (group_by), the reranker's
    # score in "scores".
    model_config = ConfigDict(extra="allow")

    id: str
    text: str
    score: float
    key: dict[str, Any] = Field(description="The entity's join key values.")
    metadata: dict[str, Any] = Field(description="The view's metadata columns.")
    chunk_index: int | None = Field(None, description="Absent on documents (group_by).")
    char_offset: int | None = Field(None, description="Absent on documents (group_by).")
    scores: dict[str, float] | None = Field(
        None, description="Hybrid and reranked hits: the score of each list and stage."
    )


class Timings(BaseModel):
    model_config = ConfigDict(extra="allow")  # more keys (counts of candidates) may come along

    timings_ms: dict[str, float] = Field(description="Where the time went, per stage.")


class SearchResponse(BaseModel):
    """Answer of ``POST /v1/search``."""

    view: str
    mode: str
    results: list[SearchHit]
    metadata: Timings


SEARCH_EXAMPLE = {
    "view": "product_docs",
    "mode": "hybrid",
    "results": [
        {
            "id": "1274#0",
            "text": "The Basecamp Co Zen 3 Waterproof Hiking Boots is a weatherproof ...",
            "score": 1.62,
            "scores": {"vector": 0.71, "text": 6.2},
            "key": {"product_id": 1274},
            "metadata": {"name": "Basecamp Co Zen 3 Waterproof Hiking Boots", "price": 129.0},
            "chunk_index": 0,
            "char_offset": 0,
        }
    ],
    "metadata": {"timings_ms": {"encode": 6.1, "search": 9.4}},
}


def _http_rerank(value: Any) -> Any:
    """A request's ``rerank``: a model name, or ``{"model", "depth"}``. Where to call and with
    which key (``api_base``, ``api_key_env``) and ``local:`` folders outside the repo are the
    repo's to say (a ``Search`` in a service), never a request's."""
    from contextkit.errors import BadRequestError

    if value is None:
        return None
    options = {"model": value} if isinstance(value, str) else value
    if not isinstance(options, dict):
        raise BadRequestError("rerank must be a model name or an object")
    refused = sorted(set(options) & {"api_base", "api_key_env"})
    model = options.get("model")
    if refused or (
        isinstance(model, str)
        and model.startswith("local:")
        and (Path(model[6:]).is_absolute() or ".." in Path(model[6:]).parts)
    ):
        raise BadRequestError(
            "a search request cannot name "
            + (", ".join(refused) if refused else "a cross-encoder folder outside the repo"),
            hint="declare the reranker on a Search of a service, or use a folder inside the repo",
        )
    return options


# A view applied but not built yet (docs/http-api.md#post-v1search); a store's unreadable data
# is a 503 store_error in the same shape.
WARMING_RESPONSE = {
    "description": "The embedding view is warming (its first materialization has not landed), "
    "or a store is unavailable; see Retry-After",
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/Error"},
            "example": {
                "error": {
                    "code": "view_warming",
                    "message": "embedding view 'product_docs' of workspace 'prod' is warming: "
                    "its first materialization (job 1995f10dce3a) is running, 800/2000 chunks "
                    "encoded, about 130 s left",
                    "details": {"workspace": "prod", "view": "product_docs", "retry_after_s": 60},
                }
            },
        }
    },
}


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/search",
        openapi_extra=body_schema(SearchRequest),
        response_model=SearchResponse,
        responses={**ok_example(SEARCH_EXAMPLE), 503: WARMING_RESPONSE},
    )
    async def search(request: Request) -> Response:
        """The chunks of an embedding view closest to a query, best first."""
        body = await parse_body(request, SearchRequest)
        options = body.model_dump(
            include={"group_by", "fusion", "depth", "weights"}, exclude_none=True
        )
        rerank = _http_rerank(body.rerank)
        if rerank is not None:
            options["rerank"] = rerank
        ctx = state.context(request, body.workspace, READER)
        result = await run_in_threadpool(
            ctx.search,
            body.view,
            body.query,
            vector=body.vector,
            top_k=body.top_k,
            filter=body.filter,
            mode=body.mode,
            **options,
        )
        # Serialized by hand (orjson), not through SearchResponse: hits carry the view's metadata
        # values as stored, and pydantic would write their datetimes as "...Z" where orjson (and
        # every answer so far) writes "+00:00". The model is the documented shape.
        return json_response(result.to_response())

    return router
