"""OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Point any OpenAI SDK at the server (``base_url="http://127.0.0.1:8000/v1"``) and chat with
``model="contextkit/<service>"``: the server retrieves the service's context for the last user
message, renders its prompt view around the conversation and calls the LLM
(:mod:`contextkit.retrieval.chat`). With ``"stream": true`` the answer comes as server-sent
``chat.completion.chunk`` objects ending with ``data: [DONE]``; the LLM's first chunk is awaited
before the response starts, so a provider failure is still a clean 502/504 JSON error.

Errors are contextkit's ``{"error": {"code", "message", "details"}}`` plus OpenAI's ``type`` and
``param`` (also for the 401/413/429 answered before routing); a failure in mid-stream is one
``data: {"error": ...}`` event, which the OpenAI SDKs raise as ``APIError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from contextkit.errors import ContextKitError, translate_store_errors
from contextkit.retrieval.chat import (
    HEADERS,
    chat_models,
    complete_chat,
    completion_object,
    openai_error,
    parse_chat_request,
    start_chat_stream,
)
from contextkit.server.common import (
    READER,
    InvalidBody,
    ServerState,
    json_response,
    ok_example,
    read_object,
)
from contextkit.server.features import body_schema
from contextkit.stores.errors import StoreFailure


class ChatMessage(BaseModel):
    """One turn of the conversation (fields a client echoes from a response are ignored)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] = Field(
        ..., description='Text, or content parts ([{"type": "text", "text": "..."}]).'
    )
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = Field(
        None, description="End the stream with a usage chunk (counted by contextkit)."
    )

    model_config = {"extra": "forbid"}


class ContextkitOptions(BaseModel):
    """The ``contextkit`` object (``extra_body={"contextkit": {...}}`` in the OpenAI SDK)."""

    service: str | None = Field(None, description="Context service (or model contextkit/<svc>).")
    prompt: str | None = Field(None, description="Prompt view; default: the service's first.")
    workspace: str | None = Field(None, description="Workspace; default: the server's.")
    entities: dict[str, Any] | None = Field(None, description="One value per join key.")
    request_context: dict[str, Any] | None = Field(None, description="The prompt's request fields.")
    top_k: int | None = Field(None, description="Override every search's top_k.")
    filter: dict[str, Any] | None = Field(None, description="Extra filter for every search.")
    searches: dict[str, dict[str, Any]] | None = Field(None, description="Per-search overrides.")
    llm_model: str | None = Field(None, description="The LLM (litellm name); default: prompt's.")

    model_config = {"extra": "forbid"}


class ChatCompletionBody(BaseModel):
    """Body of ``POST /v1/chat/completions``: OpenAI's chat request, plus ``contextkit``."""

    model: str = Field(..., description="contextkit/<service>[/<prompt>], or an LLM name.")
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1, description="Only 1.")
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = Field(None, description="Ignored.")
    store: bool | None = Field(None, description="Ignored.")
    service_tier: str | None = Field(None, description="Ignored.")
    contextkit: ContextkitOptions | None = None

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [
                {
                    "model": "contextkit/support_assistant",
                    "messages": [
                        {"role": "user", "content": "I bought hiking boots last week."},
                        {"role": "assistant", "content": "How can I help with them?"},
                        {"role": "user", "content": "They leak. Can I return them?"},
                    ],
                    "temperature": 0.2,
                    "contextkit": {"entities": {"user_id": 7}},
                }
            ]
        },
    }


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatContext(BaseModel):
    """The answer's ``contextkit`` object: what was retrieved and rendered for the chat."""

    workspace: str
    service: str
    prompt: str | None
    llm_model: str | None
    entities: dict[str, Any]
    documents: dict[str, list[str]] = Field(description="Ids of the hits, per search.")
    dropped: list[str]
    truncated: bool
    prompt_tokens: int | None
    timings_ms: dict[str, Any]


class ChatCompletion(BaseModel):
    """Answer of ``POST /v1/chat/completions`` (OpenAI's ``chat.completion``, plus
    ``contextkit``); streamed, ``chat.completion.chunk`` events instead."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: None
    contextkit: ChatContext


class ChatModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    """Answer of ``GET /v1/models``."""

    object: Literal["list"]
    data: list[ChatModel]


COMPLETION_EXAMPLE = {
    "id": "chatcmpl-6f1c0a9d2b7e4c1f8a3d5e90",
    "object": "chat.completion",
    "created": 1764566400,
    "model": "contextkit/support_assistant",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Yes: the Northpeak Summit 1 boots can be returned within 30 days...",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 912, "completion_tokens": 48, "total_tokens": 960},
    "system_fingerprint": None,
    "contextkit": {
        "workspace": "prod",
        "service": "support_assistant",
        "prompt": "support_prompt",
        "llm_model": "openai/gpt-4o-mini",
        "entities": {"user_id": 7},
        "documents": {"products": ["1274#0", "311#0"], "articles": ["12#0"]},
        "dropped": [],
        "truncated": False,
        "prompt_tokens": 887,
        "timings_ms": {"features": 0.2, "retrieve": 9.8, "render": 1.1, "completion": 640.2},
    },
}
CHUNK_EXAMPLE = (
    'data: {"id":"chatcmpl-6f1c...","object":"chat.completion.chunk","created":1764566400,'
    '"model":"contextkit/support_assistant","choices":[{"index":0,"delta":{"content":"Yes"},'
    '"logprobs":null,"finish_reason":null}]}\n\n'
    "data: [DONE]\n\n"
)
MODELS_EXAMPLE = {
    "object": "list",
    "data": [
        {
            "id": "contextkit/support_assistant",
            "object": "model",
            "created": 1764566400,
            "owned_by": "contextkit",
        }
    ],
}


def _chat_openapi() -> dict[str, Any]:
    extra = body_schema(ChatCompletionBody)
    extra["parameters"] = [
        {
            "name": header,
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": f"Instead of contextkit.{name}"
            + (" (a JSON object)" if name in ("entities", "request_context") else ""),
        }
        for name, header in HEADERS.items()
    ]
    return extra


def _chat_responses() -> dict[int | str, Any]:
    responses: dict[int | str, Any] = ok_example(COMPLETION_EXAMPLE)
    responses[200]["content"]["text/event-stream"] = {
        "schema": {"type": "string"},
        "example": CHUNK_EXAMPLE,
    }
    upstream = {
        502: ("The LLM provider failed or refused the call", "llm_provider_error"),
        503: (
            "The LLM provider kept rate-limiting, or the server's LLM is not configured "
            "(llm_not_configured: no or a rejected API key, an unknown model)",
            "llm_rate_limited",
        ),
        504: ("The LLM provider timed out", "llm_timeout"),
    }
    for status, (description, code) in upstream.items():
        responses[status] = {
            "description": description,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"},
                    "example": {"error": {"code": code, "message": description, "details": {}}},
                }
            },
        }
    return responses


def _error(exc: ContextKitError) -> Response:
    status, body = openai_error(exc)
    response = json_response(body, status)
    response.headers.update(getattr(exc, "headers", None) or {})
    return response


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()
    # 401/413/429 answered by the middleware before routing carry `type` and `param` too.
    state.error_shapes["/v1/chat/"] = openai_error
    state.error_shapes["/v1/models"] = openai_error

    @router.post(
        "/v1/chat/completions",
        openapi_extra=_chat_openapi(),
        response_model=ChatCompletion,
        responses=_chat_responses(),
    )
    async def chat_completions(request: Request) -> Response | ChatCompletion:
        """OpenAI's chat completion, answered with a context service's features and documents."""
        try:
            data = await read_object(request)
            chat = parse_chat_request(data, request.headers)
            ctx = state.context(request, chat.workspace, READER, service=chat.service)
            if not chat.stream:
                answer = completion_object(await complete_chat(ctx.runtime, chat))
                return ChatCompletion.model_validate(answer)
            stream = await start_chat_stream(ctx.runtime, chat)
        except InvalidBody as exc:
            return _error(_as_error(exc))
        except StoreFailure as exc:
            return _error(translate_store_errors(exc))
        except ContextKitError as exc:
            return _error(exc)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream.chunks():
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            except ContextKitError as exc:
                yield b"data: " + orjson.dumps(openai_error(exc)[1]) + b"\n\n"
                return
            yield b"data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/v1/models", response_model=ModelList, responses=ok_example(MODELS_EXAMPLE))
    async def models(
        request: Request,
        workspace: str | None = None,
        header_workspace: str | None = Header(None, alias=HEADERS["workspace"]),
    ) -> Response | ModelList:
        """The chat models: ``contextkit/<service>`` for every service with a prompt view."""
        try:
            name = workspace or header_workspace or None
            ctx = state.context(request, name, READER)
            return ModelList.model_validate(chat_models(ctx.runtime))
        except StoreFailure as exc:
            return _error(translate_store_errors(exc))
        except ContextKitError as exc:
            return _error(exc)

    return router


def _as_error(exc: InvalidBody) -> ContextKitError:
    """A body that is not a JSON object, as the 422 error the other routes answer."""
    error = ContextKitError(exc.message, details={"errors": exc.errors} if exc.errors else None)
    error.code, error.http_status = "invalid_request", 422
    return error
