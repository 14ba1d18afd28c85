"""OpenAI-compatible embeddings and vector-store search, so apps written against the OpenAI SDK's
``embeddings.create`` and ``vector_stores.search`` work unchanged against contextkit::

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)   # a contextkit key
    client.embeddings.create(model="contextkit/minilm", input=["waterproof boots"])
    client.vector_stores.search("product_docs", query="waterproof boots", max_num_results=5)

- ``POST /v1/embeddings``: the repo's embedding models (its ``models:`` section plus the built-in
  ``minilm``), as ``model: "contextkit/<model>"``; the vectors are exactly what the model gives
  the embedding views. ``encoding_format`` ``float`` or ``base64`` (little-endian float32, what
  the OpenAI SDK asks for by default). Text only: token arrays are refused.
- ``POST /v1/vector_stores/{view}/search``: an embedding view as a vector store, answered in
  OpenAI's search-results page. ``filters`` (comparison and ``and`` filters; an ``or`` of
  equalities on one attribute) become contextkit's filter; ``max_num_results`` is 1 to 50;
  ``ranking_options.score_threshold`` drops weaker hits. Each hit's ``file_id`` is its document's
  entity key, ``attributes`` are its key and metadata columns (plus ``chunk_id`` and
  ``chunk_index``). There is no query rewriting: ``search_query`` is the query as sent.

The workspace is the server's default, or ``X-Contextkit-Workspace``, or ``contextkit.workspace``
in the body (``extra_body={"contextkit": {...}}`` in the OpenAI SDK), which also takes the search
``mode`` (``vector`` by default, ``text``, ``hybrid``). A reader key is needed. Errors are
contextkit's ``{"error": {"code", "message", "details"}}`` plus OpenAI's ``type`` and ``param``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from contextkit.client import Context
from contextkit.errors import BadRequestError, ContextKitError, NotFoundError, translating
from contextkit.server.common import (
    READER,
    InvalidBody,
    NullIsAbsent,
    ServerState,
    json_response,
    ok_example,
    parse_body,
)
from contextkit.server.features import body_schema
from contextkit.server.search import WARMING_RESPONSE

MODEL_PREFIX = "contextkit/"
WORKSPACE_HEADER = "x-contextkit-workspace"
OWNER = "contextkit"  # the body object of contextkit's own options
MAX_INPUTS = 2048  # texts per embeddings request (OpenAI's limit)
MAX_RESULTS = 50  # hits per vector-store search (OpenAI's limit)
# OpenAI comparison types -> contextkit filter operators.
COMPARISONS = {
    "eq": "eq",
    "ne": "ne",
    "gt": "gt",
    "gte": "gte",
    "lt": "lt",
    "lte": "lte",
    "in": "in",
    "nin": "not_in",
}
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class ContextkitOptions(NullIsAbsent):
    """The ``contextkit`` object (``extra_body={"contextkit": {...}}`` in the OpenAI SDK)."""

    # Other keys are kept so the route can refuse them by name (a 400 with OpenAI's param).
    model_config = ConfigDict(extra="allow")

    workspace: str | None = Field(None, description="Workspace; default: the server's.")
    mode: str | None = Field(
        None,
        description="vector_stores search only: how to search (default vector).",
        json_schema_extra={"enum": ["vector", "text", "hybrid"]},
    )


_TEXTS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


class EmbeddingsBody(NullIsAbsent):
    """Body of ``POST /v1/embeddings`` (OpenAI's). Types are checked here (a wrong one is a
    422); values (empty or too many texts, token arrays, formats) by the route, as OpenAI's 400s
    naming the parameter."""

    input: Any = Field(None, description="A text, or up to 2048 texts.", json_schema_extra=_TEXTS)
    model: str = Field(..., description="contextkit/<model>: a model of the repo's config.")
    encoding_format: str = Field(
        "float",
        description="base64: little-endian float32 bytes.",
        json_schema_extra={"enum": ["float", "base64"]},
    )
    dimensions: int | None = Field(None, description="Must be the model's dimension.")
    user: str | None = Field(None, description="Ignored.")
    contextkit: ContextkitOptions | None = None

    model_config = {
        "json_schema_extra": {"examples": [{"model": "contextkit/minilm", "input": ["boots"]}]}
    }


class RankingOptions(NullIsAbsent):
    ranker: str | None = Field(None, description="Accepted; contextkit ranks by its mode.")
    score_threshold: float | None = Field(None, description="Drop hits scoring less.")


class VectorStoreSearchBody(NullIsAbsent):
    """Body of ``POST /v1/vector_stores/{view}/search`` (OpenAI's)."""

    query: Any = Field(
        None, description="The query (a list is searched as one).", json_schema_extra=_TEXTS
    )
    filters: dict[str, Any] | None = Field(
        None,
        description='A comparison {"key", "type": eq|ne|gt|gte|lt|lte|in|nin, "value"} or '
        '{"type": "and"|"or", "filters": [...]}; an "or" only of eq comparisons of one key.',
    )
    max_num_results: int = Field(
        10, description=f"1 to {MAX_RESULTS}.", json_schema_extra={"minimum": 1, "maximum": 50}
    )
    ranking_options: RankingOptions | None = None
    rewrite_query: bool | None = Field(None, description="Accepted; no rewriting is done.")
    contextkit: ContextkitOptions | None = None

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "query": "waterproof hiking boots",
                    "max_num_results": 5,
                    "filters": {"key": "price", "type": "lt", "value": 200},
                }
            ]
        }
    }


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of float32 bytes.")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    """Answer of ``POST /v1/embeddings``."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


class TextContent(BaseModel):
    type: Literal["text"]
    text: str


class SearchResult(BaseModel):
    file_id: str = Field(description="The document's entity key.")
    filename: str
    score: float
    attributes: dict[str, str | int | float | bool] = Field(
        description="Key and metadata columns, chunk_id and chunk_index."
    )
    content: list[TextContent]


class SearchResultsPage(BaseModel):
    """Answer of ``POST /v1/vector_stores/{view}/search``."""

    object: Literal["vector_store.search_results.page"]
    search_query: list[str]
    data: list[SearchResult]
    has_more: bool
    next_page: str | None


EMBEDDINGS_EXAMPLE = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0123, -0.0456, 0.0789]}],
    "model": "contextkit/minilm",
    "usage": {"prompt_tokens": 3, "total_tokens": 3},
}
SEARCH_EXAMPLE = {
    "object": "vector_store.search_results.page",
    "search_query": ["waterproof hiking boots"],
    "data": [
        {
            "file_id": "product_id=1274",
            "filename": "product_docs/product_id=1274",
            "score": 0.71,
            "attributes": {"product_id": 1274, "price": 129.0, "chunk_id": "1274#0"},
            "content": [{"type": "text", "text": "The Basecamp Co Zen 3 Waterproof ..."}],
        }
    ],
    "has_more": False,
    "next_page": None,
}


# The embedding view is warming (docs/http-api.md#post-v1search): /v1/search's 503, in OpenAI's
# error shape (``type``, ``param``) as every error of this route.
_WARMING = WARMING_RESPONSE["content"]["application/json"]
VECTOR_STORE_WARMING = {
    **WARMING_RESPONSE,
    "content": {
        "application/json": {
            **_WARMING,
            "example": {
                "error": {**_WARMING["example"]["error"], "type": "server_error", "param": None}
            },
        }
    },
}


def openai_error(exc: ContextKitError) -> tuple[int, dict[str, Any]]:
    """``(status, body)``: contextkit's error plus OpenAI's ``type`` and ``param`` (the OpenAI
    SDKs read them into ``APIStatusError.type`` / ``.param``)."""
    body = exc.to_dict()
    status = exc.http_status
    details = exc.details if isinstance(exc.details, Mapping) else {}
    body["error"]["type"] = _ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    body["error"]["param"] = details.get("field")
    return status, body


def _error(exc: ContextKitError) -> Response:
    status, body = openai_error(exc)
    response = json_response(body, status)
    response.headers.update(getattr(exc, "headers", None) or {})
    return response


def _invalid(param: str, message: str) -> BadRequestError:
    return BadRequestError(message, details={"field": param})


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()
    # 401/413/429 answered by the middleware before routing carry `type` and `param` too.
    state.error_shapes["/v1/embeddings"] = openai_error
    state.error_shapes["/v1/vector_stores/"] = openai_error

    @router.post(
        "/v1/embeddings",
        openapi_extra=body_schema(EmbeddingsBody),
        response_model=EmbeddingsResponse,
        responses=ok_example(EMBEDDINGS_EXAMPLE),
    )
    async def embeddings(request: Request) -> Response:
        """OpenAI's embeddings, by the repo's embedding models (``contextkit/<model>``)."""
        try:
            body = await parse_body(request, EmbeddingsBody)
            ctx = state.context(request, _workspace(body.contextkit, request), READER)
            texts = _texts(body.input)
            if body.encoding_format not in ("float", "base64"):
                raise _invalid("encoding_format", "`encoding_format` must be float or base64")
            answer = await run_in_threadpool(
                _embed, ctx, body.model, texts, body.encoding_format, body.dimensions
            )
        except InvalidBody as exc:
            return _error(_as_error(exc))
        except ContextKitError as exc:
            return _error(exc)
        # Serialized by hand (orjson), not through EmbeddingsResponse (the documented shape):
        # 2,048 vectors of 384 floats took 0.12-0.15 s with orjson and 0.66-0.68 s validated and
        # written by the model, on this 2-core machine (same bytes).
        return json_response(answer)

    @router.post(
        "/v1/vector_stores/{vector_store_id}/search",
        openapi_extra=body_schema(VectorStoreSearchBody),
        response_model=SearchResultsPage,
        responses={**ok_example(SEARCH_EXAMPLE), 503: VECTOR_STORE_WARMING},
    )
    async def vector_store_search(
        request: Request, vector_store_id: str
    ) -> Response | SearchResultsPage:
        """OpenAI's vector-store search over an embedding view (the vector store id)."""
        try:
            body = await parse_body(request, VectorStoreSearchBody)
            ctx = state.context(request, _workspace(body.contextkit, request), READER)
            query = _query(body.query)
            if not 1 <= body.max_num_results <= MAX_RESULTS:
                raise _invalid("max_num_results", f"`max_num_results` must be 1 to {MAX_RESULTS}")
            condition = _filter(body.filters, "filters") if body.filters is not None else None
            threshold = body.ranking_options.score_threshold if body.ranking_options else None
            mode = _options(body.contextkit).mode or "vector"
            documents = await run_in_threadpool(
                ctx.search,
                vector_store_id,
                query,
                top_k=body.max_num_results,
                filter=condition,
                mode=mode,
            )
        except InvalidBody as exc:
            return _error(_as_error(exc))
        except ContextKitError as exc:
            return _error(exc)
        return SearchResultsPage.model_validate(
            _page(vector_store_id, query, documents.hits, threshold)
        )

    return router


# -- embeddings ----------------------------------------------------------------------------------


def _texts(value: Any) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise _invalid("input", "`input` must be a text or a non-empty list of texts")
    if len(texts) > MAX_INPUTS:
        raise _invalid("input", f"`input` has {len(texts)} texts; the limit is {MAX_INPUTS}")
    for i, text in enumerate(texts):
        if isinstance(text, int | list) and not isinstance(text, bool):
            raise BadRequestError(
                "token arrays are not supported: send the texts",
                hint="contextkit's models tokenize the text themselves",
                details={"field": "input"},
            )
        if not isinstance(text, str) or not text.strip():
            raise _invalid("input", f"`input[{i}]` must be a non-empty string")
    return texts


def _embed(
    ctx: Context, model: str, texts: list[str], fmt: str, dimensions: int | None
) -> dict[str, Any]:
    import numpy as np

    from contextkit.embeddings import get_encoder, model_configs

    key = model.removeprefix(MODEL_PREFIX)
    with translating:
        configs = model_configs(ctx.config.models)
        if key not in configs:
            raise NotFoundError(
                f"unknown embedding model {model!r}",
                hint="models: " + ", ".join(MODEL_PREFIX + k for k in sorted(configs)),
                details={"field": "model"},
            )
        encoder = get_encoder(key, ctx.config.models, base_dir=ctx.config.root.resolve())
        vectors = np.asarray(encoder.encode(texts), dtype="<f4")
        if dimensions is not None and dimensions != vectors.shape[1]:
            raise _invalid(
                "dimensions",
                f"model {model!r} has {vectors.shape[1]} dimensions, not {dimensions}",
            )
        spans = getattr(encoder, "token_spans", None)
        tokens = sum(len(spans(t)) if spans else len(t.split()) for t in texts)
    if fmt == "base64":
        encoded: list[Any] = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    else:
        encoded = vectors.tolist()
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)
        ],
        "model": MODEL_PREFIX + key,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# -- vector-store search ------------------------------------------------------------------------


def _options(options: ContextkitOptions | None) -> ContextkitOptions:
    options = options or ContextkitOptions()
    unknown = sorted(options.model_extra or {})
    if unknown:
        raise _invalid(OWNER, f"unknown `{OWNER}` option(s): {', '.join(unknown)}")
    if options.mode not in (None, "vector", "text", "hybrid"):
        raise _invalid(f"{OWNER}.mode", f"`{OWNER}.mode` must be vector, text or hybrid")
    return options


def _workspace(options: ContextkitOptions | None, request: Request) -> str | None:
    return _options(options).workspace or request.headers.get(WORKSPACE_HEADER)


def _query(value: Any) -> str:
    parts = [value] if isinstance(value, str) else value
    if (
        not isinstance(parts, list)
        or not parts
        or not all(isinstance(p, str) for p in parts)
        or not " ".join(parts).strip()
    ):
        raise _invalid("query", "`query` must be a non-empty string or list of strings")
    return " ".join(parts)


def _filter(spec: Any, param: str) -> dict[str, Any]:
    """An OpenAI filter as contextkit's: comparisons, ANDed (an ``and`` of them, nested or not);
    an ``or`` only of equalities on one attribute (it becomes ``in``)."""
    if not isinstance(spec, Mapping):
        raise _invalid(param, f"`{param}` must be a filter object")
    kind = spec.get("type")
    if kind in ("and", "or"):
        parts = spec.get("filters")
        if not isinstance(parts, list) or not parts:
            raise _invalid(param, f"`{param}.filters` must be a non-empty list")
        if kind == "or":
            return _any_of(parts, param)
        merged: dict[str, dict[str, Any]] = {}
        for i, part in enumerate(parts):
            for key, ops in _filter(part, f"{param}.filters[{i}]").items():
                have = merged.setdefault(key, {})
                clash = set(have) & set(ops)
                if clash:
                    raise _invalid(
                        param, f"`{param}` compares {key!r} with {sorted(clash)[0]!r} twice"
                    )
                have.update(ops)
        return merged
    if kind not in COMPARISONS:
        raise _invalid(
            f"{param}.type",
            f"`{param}.type` must be one of {', '.join([*COMPARISONS, 'and', 'or'])}",
        )
    key = spec.get("key")
    if not isinstance(key, str) or "value" not in spec:
        raise _invalid(param, f"`{param}` needs a `key` (string) and a `value`")
    return {key: {COMPARISONS[kind]: spec["value"]}}


def _any_of(parts: list[Any], param: str) -> dict[str, Any]:
    keys, values = set(), []
    for part in parts:
        if not isinstance(part, Mapping) or part.get("type") != "eq":
            break
        keys.add(part.get("key"))
        values.append(part.get("value"))
    else:
        if len(keys) == 1 and isinstance(next(iter(keys)), str):
            return {next(iter(keys)): {"in": values}}
    raise BadRequestError(
        f"`{param}`: an `or` filter is supported only over `eq` comparisons of one attribute",
        hint="contextkit's filters are conjunctive; use `in` for one of several values",
        details={"field": param},
    )


def _attribute(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) else str(value)


def _page(
    view: str, query: str, hits: list[dict[str, Any]], threshold: float | None
) -> dict[str, Any]:
    data = []
    for hit in hits:
        if threshold is not None and hit["score"] < threshold:
            continue
        document = ",".join(f"{k}={v}" for k, v in hit["key"].items())
        attributes = {
            k: _attribute(v) for k, v in {**hit["key"], **hit["metadata"]}.items() if v is not None
        }
        attributes["chunk_id"] = hit["id"]
        attributes["chunk_index"] = hit["chunk_index"]
        data.append(
            {
                "file_id": document,
                "filename": f"{view}/{document}",
                "score": hit["score"],
                "attributes": attributes,
                "content": [{"type": "text", "text": hit["text"]}],
            }
        )
    return {
        "object": "vector_store.search_results.page",
        "search_query": [query],
        "data": data,
        "has_more": False,
        "next_page": None,
    }


def _as_error(exc: InvalidBody) -> ContextKitError:
    """A body that is not a JSON object, as the 422 error the other routes answer."""
    error = ContextKitError(exc.message, details={"errors": exc.errors} if exc.errors else None)
    error.code, error.http_status = "invalid_request", 422
    return error
