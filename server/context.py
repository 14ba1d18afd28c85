"""``POST /v1/context``: features + documents + the rendered prompt (+ the LLM's answer).

With ``"complete": true, "stream": true`` the answer streams as server-sent events:
``event: context`` (the whole context, as the JSON body would have it, without the completion),
then ``event: delta`` per text chunk (``{"text": "..."}``), then ``event: done`` (``{"text":
the full answer, "timings_ms": ...}``), or ``event: error`` (the error JSON) if the provider
fails mid-way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from contextkit.errors import ContextKitError
from contextkit.prompts.llm import GENERATION_PARAMS
from contextkit.server.common import (
    READER,
    ServerState,
    json_response,
    ok_example,
    parse_body,
)
from contextkit.server.features import body_schema
from contextkit.server.search import SearchHit


class ContextRequestBody(BaseModel):
    """Body of ``POST /v1/context``."""

    workspace: str | None = Field(None, description="Workspace; default: the server's.")
    service: str = Field(..., description="Name of a ContextService.")
    entities: dict[str, Any] | None = Field(
        None, description="One value per join key of the service's feature views."
    )
    query: str | None = Field(None, description="The question: what the searches look for.")
    request_context: dict[str, Any] | None = Field(
        None, description="Values of the prompt's declared request fields."
    )
    prompt: str | None = Field(None, description="Prompt view; default: the service's first.")
    top_k: int | None = Field(None, description="Override every search's top_k.")
    filter: dict[str, Any] | None = Field(None, description="Extra filter for every search.")
    searches: dict[str, dict[str, Any]] | None = Field(
        None, description='Per-search overrides: {"products": {"top_k": 3, "filter": {...}}}.'
    )
    render: bool = Field(True, description="Render the prompt.")
    cache: bool = Field(
        True,
        description="False: read features and search without the service's serving cache, "
        "leaving it as it was (a service declared with cache= answers the features of the same "
        "entity and request context, and identical searches, from memory).",
    )
    complete: bool = Field(False, description="Also call the LLM (through litellm).")
    stream: bool = Field(False, description="With complete: stream the answer as SSE.")
    model: str | None = Field(None, description="Override the prompt view's LLM.")
    params: dict[str, Any] | None = Field(
        None,
        description="Generation parameters for the LLM, over the prompt view's params; only "
        + ", ".join(sorted(GENERATION_PARAMS))
        + " (anything else is a 400: the endpoint, key and headers are the server's).",
    )

    @field_validator("render", "cache", "complete", "stream", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "workspace": "prod",
                    "service": "support_assistant",
                    "entities": {"user_id": 7},
                    "query": "My hiking boots leak, can I return them?",
                }
            ]
        }
    }


class ViewFeatures(BaseModel):
    """One feature view's values for the entity."""

    values: dict[str, Any]
    types: dict[str, str]
    status: str = Field(description="PRESENT or MISSING.")
    event_timestamp: str | None
    freshness_s: float | None = Field(description="Seconds since the values' event time.")


class RenderedPrompt(BaseModel):
    name: str
    format: str = Field(description='"text" or "messages".')
    text: str | None
    messages: list[dict[str, Any]] | None
    tokens: int | None
    max_tokens: int | None
    tokenizer: str | None
    dropped: list[str] = Field(description="Ids of the documents dropped to fit max_tokens.")
    truncated: bool
    model: str | None


class Completion(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None
    text: str
    finish_reason: str | None
    usage: dict[str, Any] | None
    latency_ms: float
    attempts: int


class ContextResponse(BaseModel):
    """Answer of ``POST /v1/context`` (also the ``context`` event of a streamed one)."""

    workspace: str
    service: str
    entities: dict[str, Any]
    features: dict[str, ViewFeatures] = Field(description="Per feature view.")
    documents: dict[str, list[SearchHit]] = Field(description="Per search, best first.")
    prompt: RenderedPrompt | None = Field(description="null with render: false.")
    completion: Completion | None = Field(description="null unless complete: true.")
    metadata: dict[str, Any] = Field(description="workspace_version, timings_ms per stage.")


CONTEXT_EXAMPLE = {
    "workspace": "prod",
    "service": "support_assistant",
    "entities": {"user_id": 7},
    "features": {
        "user_order_stats": {
            "values": {"order_count_30d": 7, "amount_sum_30d": 1120.31},
            "types": {"order_count_30d": "int64", "amount_sum_30d": "float64"},
            "status": "PRESENT",
            "event_timestamp": "2026-11-30T21:04:11.120000Z",
            "freshness_s": 33120.5,
        }
    },
    "documents": {
        "products": [
            {
                "id": "1274#0",
                "text": "The Northpeak Summit 1 Hiking Boots is a waterproof ...",
                "score": 0.0325,
                "key": {"product_id": 1274},
                "metadata": {"sku": "SKU-GZG-3638", "price": 128.99},
                "chunk_index": 0,
                "char_offset": 0,
            }
        ]
    },
    "prompt": {
        "name": "support_prompt",
        "format": "messages",
        "text": None,
        "messages": [
            {"role": "system", "content": "You are the support assistant of an online shop..."},
            {"role": "user", "content": "My hiking boots leak, can I return them?"},
        ],
        "tokens": 887,
        "max_tokens": 1200,
        "tokenizer": "tiktoken:o200k_base",
        "dropped": [],
        "truncated": False,
        "model": "openai/gpt-4o-mini",
    },
    "completion": None,
    "metadata": {
        "workspace_version": 2,
        "timings_ms": {
            "features": 0.2,
            "search": {"products": 9.1, "articles": 9.4},
            "retrieve": 9.8,
            "render": 1.1,
            "total": 11.2,
        },
    },
}


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/context",
        openapi_extra=body_schema(ContextRequestBody),
        response_model=ContextResponse,
        responses=ok_example(CONTEXT_EXAMPLE),
    )
    async def context(request: Request) -> Response:
        """Everything one LLM call needs: features, documents, the rendered prompt."""
        from contextkit.retrieval.assemble import assemble_async, stream_async

        body = await parse_body(request, ContextRequestBody)
        service, prompt, stream = body.service, body.prompt, body.stream
        options = body.model_dump(exclude={"workspace", "service", "prompt", "stream"})
        ctx = state.context(request, body.workspace, READER, service=service)
        plan, parsed = ctx.context_request(service, prompt, options)
        if not (stream and parsed.complete):
            result = await assemble_async(ctx.runtime, plan, parsed)
            # Serialized by hand (orjson), not through ContextResponse: bench/body_parsing.py
            # times the model's path at 1.06x the hand path on a /v1/features answer, and
            # documents carry metadata values whose datetimes orjson writes as "+00:00".
            return json_response(result.to_response())

        # Retrieve and render now; the answer streams below. The first chunk is awaited before
        # the response starts, so a provider that fails or times out still gets a 502/504 JSON.
        parsed.complete, parsed.render = False, True
        began = time.perf_counter()
        result = await assemble_async(ctx.runtime, plan, parsed)
        deltas = aiter(stream_async(ctx.runtime, plan, parsed, result))
        first = await anext(deltas, None)

        async def events() -> AsyncIterator[bytes]:
            yield _sse("context", result.to_response())
            parts: list[str] = []
            try:
                delta = first
                while delta is not None:
                    parts.append(delta)
                    yield _sse("delta", {"text": delta})
                    delta = await anext(deltas, None)
            except ContextKitError as exc:
                yield _sse("error", exc.to_dict())
                return
            elapsed = round((time.perf_counter() - began) * 1000, 3)
            yield _sse("done", {"text": "".join(parts), "timings_ms": {"total": elapsed}})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router
