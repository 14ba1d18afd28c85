"""``POST /v1/search``: similarity search over an embedding view (vector, text or hybrid)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from contextkit.server.common import (
    READER,
    ServerState,
    field,
    json_response,
    ok_example,
    read_object,
)
from contextkit.server.features import body_schema


class SearchRequest(BaseModel):
    """Body of ``POST /v1/search``."""

    workspace: str | None = Field(None, description="Workspace; default: the server's.")
    view: str = Field(..., description="Name of an embedding view.")
    query: str | None = Field(None, description="Query text (needed for text and hybrid).")
    vector: list[float] | None = Field(
        None, description="A ready query vector (same model and dimension as the view)."
    )
    top_k: int = Field(10, ge=1, le=1000, description="How many chunks to return.")
    filter: dict[str, Any] | None = Field(
        None,
        description='Structured filter on key and metadata columns, e.g. {"category": "shoes", '
        '"price": {"lt": 50}}; operators eq ne lt lte gt gte in not_in contains.',
    )
    mode: Literal["vector", "text", "hybrid"] = Field("vector", description="How to search.")
    group_by: Literal["document"] | None = Field(
        None,
        description='"document": the top_k best documents instead of chunks, each scored by its '
        "best chunk, returned as its highlight.",
    )
    fusion: Literal["rrf", "blend"] | None = Field(
        None, description='Hybrid: "rrf" (reciprocal rank fusion, default) or "blend" (scores).'
    )
    depth: int | None = Field(None, ge=1, le=1000, description="Hybrid: candidates per list.")
    weights: list[float] | None = Field(
        None, description="Hybrid: weights of the vector and text lists, e.g. [1, 0.5]."
    )
    rerank: str | dict[str, Any] | None = Field(
        None,
        description='A reranker stage: "local:<cross-encoder folder>" or {"model": <litellm '
        'rerank model>, "depth": 50, "api_base": ..., "api_key_env": ...}.',
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


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/search",
        openapi_extra=body_schema(SearchRequest),
        responses=ok_example(SEARCH_EXAMPLE),
    )
    async def search(request: Request) -> Response:
        """The chunks of an embedding view closest to a query, best first."""
        data = await read_object(request)
        view = field(data, "view", str, required=True)
        workspace = field(data, "workspace", str, required=False)
        query = field(data, "query", str, required=False)
        vector = field(data, "vector", list, required=False)
        top_k = field(data, "top_k", int, required=False)
        filter_ = field(data, "filter", dict, required=False)
        mode = field(data, "mode", str, required=False) or "vector"
        rerank = _http_rerank(data.get("rerank"))
        options = {
            name: value
            for name, kind in (
                ("group_by", str),
                ("fusion", str),
                ("depth", int),
                ("weights", list),
            )
            if (value := field(data, name, kind, required=False)) is not None
        }
        ctx = state.context(request, workspace, READER)
        result = await run_in_threadpool(
            ctx.search,
            view,
            query,
            vector=vector,
            top_k=10 if top_k is None else top_k,
            filter=filter_,
            mode=mode,
            **options,
            **({"rerank": rerank} if rerank is not None else {}),
        )
        return json_response(result.to_response())

    return router
