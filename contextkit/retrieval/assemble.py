"""Context assembly: one request -> features + documents + a rendered prompt (+ a completion).

This is what ``POST /v1/context`` and ``Context.get_context`` run::

    result = ctx.get_context("support_assistant", entities={"user_id": 42},
                             query="Are my running shoes still returnable?")
    result.prompt["messages"]      # the rendered chat turns, within the prompt's token budget
    result.documents["products"]   # the hits of each search, best first

Steps, per request:
1. validate the request against the service's plan (join keys, query, request-context types);
2. read the online features and run every search **concurrently** (threads: SQLite, the encoder
   and LanceDB all release the GIL for their heavy parts);
3. render the prompt view within its ``max_tokens`` budget: when over, the worst-ranked documents
   are dropped first, then the text is truncated (``prompts.fit_to_budget``); what was dropped is
   reported;
4. optionally call the LLM through litellm (``prompts.complete`` / ``stream_complete``).

A :class:`ContextPlan` (everything that depends only on the registry) is built once per service,
prompt and registry version, so a request does no spec work.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contextkit.errors import (
    BadRequestError,
    NotFoundError,
    ViewWarmingError,
    leaf_error,
    translating,
)
from contextkit.framework.specs import (
    ContextServiceSpec,
    EmbeddingViewSpec,
    FeatureRefSpec,
    PromptViewSpec,
    RequestFieldSpec,
    SearchSpec,
)
from contextkit.retrieval.cache import serving_cache
from contextkit.retrieval.online import ServiceReader
from contextkit.types import Timestamp, parse_value

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime
    from contextkit.retrieval.online import OnlineFeatures

MAX_TOP_K = 100
_pool: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="contextkit-context")
    return _pool


def run_coroutine(coroutine) -> Any:
    """Run a coroutine to completion from sync code, also inside a running loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    return executor().submit(asyncio.run, coroutine).result()


# -- the plan: what a service + prompt needs, computed once per registry version ----------------


@dataclass(frozen=True)
class ContextPlan:
    """Everything a context request of one service (and prompt) needs from the registry."""

    workspace: str
    workspace_version: int
    service: str
    prompt: PromptViewSpec | None
    reader: ServiceReader | None
    searches: tuple[SearchSpec, ...]
    embedding_views: Mapping[str, EmbeddingViewSpec]
    template: Any  # PromptTemplate | ChatTemplate | None
    request_fields: tuple[RequestFieldSpec, ...]
    needs_query: bool
    render_limits: Any = None  # prompts.RenderLimits from contextkit.yaml's prompts: section
    # The service's serving cache (seconds; None: no cache): its searches' results are kept.
    cache_seconds: float | None = None

    @property
    def join_keys(self) -> tuple[tuple[str, str], ...]:
        return self.reader.join_keys if self.reader is not None else ()


def context_plan(ctx: Runtime, service: str, prompt: str | None = None) -> ContextPlan:
    """The plan of a context request, built once per registry version (see :func:`build_plan`)."""

    def build() -> ContextPlan:
        with translating:
            return build_plan(ctx, service, prompt)

    return ctx.cached(("context_plan", ctx.workspace, service, prompt), build)


def build_plan(ctx: Runtime, service_name: str, prompt_name: str | None) -> ContextPlan:
    """The plan of ``service_name`` rendering ``prompt_name`` (default: the service's first)."""
    from contextkit.framework.validation import load_template

    specs = ctx.specs()
    service = ctx.specs().service(service_name)
    prompt = None
    name = prompt_name or (service.prompts[0] if service.prompts else None)
    if name is not None:
        prompt = specs.prompts.get(name)
        if prompt is None:
            raise NotFoundError(
                f"unknown prompt view {name!r} in workspace {specs.workspace.name!r}",
                hint="prompt views: " + (", ".join(sorted(specs.prompts)) or "none applied"),
            )
    refs = merge_refs([*service.features, *(prompt.features if prompt else [])])
    reader = None
    if refs:
        merged = ContextServiceSpec(name=service.name, features=refs)
        reader = ServiceReader.build(
            specs.workspace.name, merged, specs.feature_views, specs.transform_server_groups
        )
    searches: dict[str, SearchSpec] = {s.name: s for s in service.searches}
    for search in prompt.searches if prompt else []:
        searches.setdefault(search.name, search)
    template = load_template(prompt, ctx.config.root.resolve()) if prompt else None
    uses_query = prompt is not None and "query" in template.names()
    needs_query = uses_query or any(s.query_from == "query" for s in searches.values())
    return ContextPlan(
        workspace=specs.workspace.name,
        workspace_version=specs.workspace.version,
        service=service.name,
        prompt=prompt,
        reader=reader,
        searches=tuple(searches.values()),
        embedding_views={s.view: specs.embedding_views[s.view] for s in searches.values()},
        template=template,
        request_fields=request_fields(prompt, reader),
        needs_query=needs_query,
        render_limits=ctx.config.prompts.render_limits(),
        cache_seconds=service.cache_seconds,
    )


def request_fields(
    prompt: PromptViewSpec | None, reader: ServiceReader | None
) -> tuple[RequestFieldSpec, ...]:
    """The prompt's request fields, plus those the service's realtime views read (required)."""
    fields = {f.name: f for f in (prompt.request_context if prompt else [])}
    for name, dtype in reader.request_fields if reader else ():
        fields.setdefault(name, RequestFieldSpec(name=name, dtype=dtype))
    return tuple(fields.values())


def merge_refs(refs: Sequence[FeatureRefSpec]) -> list[FeatureRefSpec]:
    """One ref per view: all features if any ref takes all, else the union of the selections."""
    merged: dict[str, list[str] | None] = {}
    for ref in refs:
        if ref.view in merged and merged[ref.view] is None:
            continue
        if ref.features is None:
            merged[ref.view] = None
        else:
            have = merged.setdefault(ref.view, [])
            have.extend(f for f in ref.features if f not in have)  # type: ignore[union-attr]
    return [FeatureRefSpec(view=v, features=f) for v, f in merged.items()]


# -- the request --------------------------------------------------------------------------------


@dataclass
class ContextRequest:
    """A validated context request (see :meth:`contextkit.client.Context.get_context`)."""

    entities: dict[str, list[Any]]
    query: str | None
    request: dict[str, Any]
    search_options: dict[str, tuple[int, dict[str, Any] | None]]
    render: bool
    complete: bool
    model: str | None
    params: dict[str, Any]
    cache: bool = True  # False: read features and search without the serving cache (as it was)


def parse_request(
    plan: ContextPlan,
    *,
    entities: Mapping[str, Any] | None = None,
    query: str | None = None,
    request_context: Mapping[str, Any] | None = None,
    top_k: int | None = None,
    filter: Mapping[str, Any] | None = None,
    searches: Mapping[str, Mapping[str, Any]] | None = None,
    render: bool = True,
    complete: bool = False,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
    cache: bool | None = True,
) -> ContextRequest:
    """Check a request against the plan; every error names the field and says what to send.
    A keyword left out means what leaving it out of ``POST /v1/context``'s body means (and
    :meth:`~contextkit.client.Context.get_context`'s defaults): callers pass what they have."""
    keys: dict[str, list[Any]] = {}
    if plan.join_keys:
        if not isinstance(entities, Mapping) or not entities:
            names = ", ".join(k for k, _ in plan.join_keys)
            raise BadRequestError(
                f"service {plan.service!r} needs entities ({names})",
                hint='send "entities": {'
                + ", ".join(f'"{k}": ...' for k, _ in plan.join_keys)
                + "}",
                details={"field": "entities"},
            )
        columns = {k: (v if _is_list(v) else [v]) for k, v in entities.items()}
        if any(len(v) != 1 for v in columns.values()):
            raise BadRequestError(
                "a context request is for one entity: give one value per join key",
                hint='e.g. "entities": {"user_id": 42}; for many entities use /v1/features',
                details={"field": "entities"},
            )
        keys = columns
    elif entities:
        raise BadRequestError(
            f"service {plan.service!r} has no feature views, so it takes no entities",
            hint="leave out entities",
            details={"field": "entities"},
        )
    if query is not None and not isinstance(query, str):
        raise BadRequestError("query must be a string", details={"field": "query"})
    if plan.needs_query and (query is None or not query.strip()) and (render or plan.searches):
        raise BadRequestError(
            f"service {plan.service!r} needs a query (its searches or prompt use it)",
            hint='send "query": "the user\'s question"',
            details={"field": "query"},
        )
    request = _request_values(plan, request_context or {})
    options: dict[str, tuple[int, dict[str, Any] | None]] = {}
    overrides = dict(searches or {})
    unknown = sorted(set(overrides) - {s.name for s in plan.searches})
    if unknown:
        raise BadRequestError(
            f"unknown search(es) {', '.join(map(repr, unknown))} in searches",
            hint="the service's searches: " + (", ".join(s.name for s in plan.searches) or "none"),
            details={"field": "searches"},
        )
    for search in plan.searches:
        override = overrides.get(search.name) or {}
        if not isinstance(override, Mapping) or set(override) - {"top_k", "filter"}:
            raise BadRequestError(
                f"searches.{search.name} takes top_k and filter",
                details={"field": f"searches.{search.name}"},
            )
        k = override.get("top_k", top_k if top_k is not None else search.top_k)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_TOP_K:
            raise BadRequestError(
                f"top_k must be an integer from 1 to {MAX_TOP_K}, got {k!r}",
                details={"field": "top_k"},
            )
        merged = dict(search.filter or {})
        for extra in (filter, override.get("filter")):
            if extra is not None and not isinstance(extra, Mapping):
                raise BadRequestError("filter must be an object", details={"field": "filter"})
            merged.update(extra or {})
        options[search.name] = (k, merged or None)
    if model is not None and not isinstance(model, str):
        raise BadRequestError("model must be a string", details={"field": "model"})
    params = _generation_params(params)
    return ContextRequest(
        entities=keys,
        query=query,
        request=request,
        search_options=options,
        render=bool(render),
        complete=bool(complete),
        model=model,
        params=params,
        cache=cache is not False,
    )


def _generation_params(params: Any) -> dict[str, Any]:
    """The request's ``params``, checked against the one allow list of generation parameters
    (``prompts.GENERATION_PARAMS``): anything else is a 400 before any retrieval or call."""
    from contextkit.prompts import check_generation_params

    with translating:
        return check_generation_params(params)


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple) or (
        hasattr(value, "tolist") and not isinstance(value, str | bytes)
    )


def _request_values(plan: ContextPlan, given: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(given, Mapping):
        raise BadRequestError(
            "request_context must be an object", details={"field": "request_context"}
        )
    declared = {f.name: f for f in plan.request_fields}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise BadRequestError(
            f"unknown request_context field(s): {', '.join(unknown)}",
            hint="the prompt declares: " + (", ".join(declared) or "none"),
            details={"field": f"request_context.{unknown[0]}"},
        )
    out: dict[str, Any] = {}
    for name, spec in declared.items():
        if name not in given or given[name] is None:
            if spec.required:
                raise BadRequestError(
                    f"missing request_context field {name!r} ({spec.dtype})",
                    hint=f'send "request_context": {{"{name}": ...}}',
                    details={"field": f"request_context.{name}"},
                )
            out[name] = spec.default
            continue
        out[name] = _coerce(name, spec.dtype, given[name])
    return out


def _coerce(name: str, dtype: str, value: Any) -> Any:
    try:
        return parse_value(dtype, value)
    except ValueError as exc:
        raise BadRequestError(
            f"request_context field {name!r} must be {dtype} ({exc}), got {value!r}",
            hint="timestamps are ISO 8601 strings" if dtype == Timestamp else None,
            details={"field": f"request_context.{name}", "expected": dtype},
        ) from None


# -- the result ---------------------------------------------------------------------------------


@dataclass
class ContextResult:
    """Everything one context request returned. ``to_response()`` is the HTTP body."""

    workspace: str
    service: str
    entities: dict[str, Any]
    features: dict[str, dict[str, Any]]
    documents: dict[str, list[dict[str, Any]]]
    prompt: dict[str, Any] | None
    completion: dict[str, Any] | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def template_features(self) -> dict[str, dict[str, Any]]:
        return {view: dict(block["values"]) for view, block in self.features.items()}

    def to_response(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "service": self.service,
            "entities": self.entities,
            "features": self.features,
            "documents": self.documents,
            "prompt": self.prompt,
            "completion": self.completion,
            "metadata": self.metadata,
        }


def _features_by_view(online: OnlineFeatures | None, now: datetime) -> dict[str, dict[str, Any]]:
    """One entity's features grouped by view: values, types, status, event time, freshness."""
    out: dict[str, dict[str, Any]] = {}
    if online is None:
        return out
    for name, dtype, values, statuses, stamps in zip(
        online.names,
        online.types,
        online.values,
        online.statuses,
        online.event_timestamps,
        strict=True,
    ):
        view, feature = name.split(".", 1)
        block = out.get(view)
        if block is None:
            stamp = stamps[0]
            age = None
            if stamp is not None:
                age = (now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
            block = out[view] = {
                "values": {},
                "types": {},
                "status": statuses[0],
                "event_timestamp": stamp,
                "freshness_s": round(age, 3) if age is not None else None,
            }
        block["values"][feature] = values[0]
        block["types"][feature] = dtype
    return out


# -- running a request --------------------------------------------------------------------------


def retrieve_stage(ctx: Runtime, plan: ContextPlan, request: ContextRequest):
    """The callables of the retrieval stage, to run concurrently: the feature read, and one per
    group of searches sharing a model and a query text (the query is encoded once for all of
    them). Each returns a list of ``(name, value, milliseconds)``."""
    from contextkit.compute.embedding import encoder_for, search_view
    from contextkit.embeddings import encode_query

    def features():
        began = time.perf_counter()
        value = None
        if plan.reader is not None:
            wanted = {name for name, _ in plan.reader.request_fields}
            context = {k: v for k, v in request.request.items() if k in wanted}
            # A service declared with cache= keeps them (keyed by keys and request context).
            value = serving_cache(ctx).context_features(
                ctx, plan.reader, plan.cache_seconds, request.entities, context,
                read=request.cache, write=request.cache,
            )  # fmt: skip
        return [("features", value, (time.perf_counter() - began) * 1000)]

    def query_text(spec: SearchSpec) -> str:
        text = request.query if spec.query_from == "query" else request.request.get(spec.query_from)
        if not isinstance(text, str) or not text.strip():
            raise BadRequestError(
                f"search {spec.name!r} takes its query from {spec.query_from!r}, which is empty",
                details={"field": spec.query_from},
            )
        return text

    # Only a service declared with cache= keeps its search results.
    cache = serving_cache(ctx) if plan.cache_seconds is not None else None

    def group_step(group: list[SearchSpec]):
        def run():
            out = []
            began = time.perf_counter()
            text = query_text(group[0])
            encoded: list[Any] = []  # the query's vector, encoded once, when a search needs it

            def vector() -> Any:
                if not encoded:
                    view = plan.embedding_views[group[0].view]
                    encoder = encoder_for(view, ctx.config.models, ctx.config.root.resolve())
                    encoded.append(encode_query(encoder, text))
                return encoded[0]

            with translating:
                for spec in group:
                    top_k, filter_ = request.search_options[spec.name]

                    def search(spec=spec, top_k=top_k, filter_=filter_):
                        return search_view(
                            ctx.vectors,
                            None,
                            plan.workspace,
                            plan.embedding_views[spec.view],
                            query=text,
                            vector=vector() if spec.mode != "text" else None,
                            top_k=top_k,
                            filter=filter_,
                            **spec.ranking(),
                            root=ctx.config.root.resolve(),
                            registry=ctx.registry,
                        )

                    try:
                        if cache is None:
                            value = search()
                        else:  # an identical search of a cached service is answered from memory
                            filter_key = json.dumps(filter_, sort_keys=True, default=str)
                            value = cache.search(
                                ctx, plan.workspace, plan.service, plan.cache_seconds,
                                [spec.view], (spec.name, text, top_k, filter_key), search,
                                read=request.cache, write=request.cache,
                            )  # fmt: skip
                    except ViewWarmingError as warming:  # answered without these documents
                        value = warming
                    out.append((spec.name, value, (time.perf_counter() - began) * 1000))
            return out

        return run

    groups: dict[tuple[str, str], list[SearchSpec]] = {}
    for spec in plan.searches:
        model = plan.embedding_views[spec.view].model
        groups.setdefault((model, spec.query_from), []).append(spec)
    return [features, *(group_step(g) for g in groups.values())]


def finish_retrieval(
    plan: ContextPlan,
    request: ContextRequest,
    results: list[list[tuple[str, Any, float]]],
    began: float,
) -> ContextResult:
    now = datetime.now(UTC)
    flat = [item for step in results for item in step]
    online = flat[0][1]
    found = {name: (docs, ms) for name, docs, ms in flat[1:]}
    documents: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, Any] = {"features": round(flat[0][2], 3), "search": {}}
    warming: dict[str, Any] = {}
    for spec in plan.searches:  # in the service's order, whatever order the threads finished
        docs, ms = found[spec.name]
        if isinstance(docs, ViewWarmingError):  # no table yet: an empty list, said so
            documents[spec.name] = []
            warming[spec.name] = {"status": "warming", **docs.to_dict()["error"]["details"]}
            warming[spec.name]["message"] = docs.message
        else:
            documents[spec.name] = list(docs.hits)
        timings["search"][spec.name] = round(ms, 3)
    timings["retrieve"] = round((time.perf_counter() - began) * 1000, 3)
    return ContextResult(
        workspace=plan.workspace,
        service=plan.service,
        entities={k: v[0] for k, v in request.entities.items()},
        features=_features_by_view(online, now),
        documents=documents,
        prompt=None,
        completion=None,
        metadata={
            "workspace_version": plan.workspace_version,
            "timings_ms": timings,
            # searches of views whose first materialization has not landed (see docs/http-api.md)
            **({"warming": warming} if warming else {}),
        },
    )


def render_prompt(plan: ContextPlan, request: ContextRequest, result: ContextResult) -> None:
    """Render the plan's prompt into ``result.prompt`` within its token budget and the render
    limits (each render attempt of the budget fit within the time limit). Blocking: async
    callers run it in a worker thread."""
    from contextkit.prompts import PromptLimitError, RenderLimits, fit_to_budget, get_token_counter

    prompt = plan.prompt
    if prompt is None or plan.template is None:
        return
    began = time.perf_counter()
    model = request.model or prompt.model
    get_token_counter(model).count("warm")  # a first load takes seconds: not the template's time
    limits = plan.render_limits or RenderLimits()
    base = {
        "features": result.template_features(),
        "request": request.request,
        "query": request.query,
        "entities": result.entities,
    }
    # Budget order: rank within its search (0 = best); the worst-ranked go first.
    flat = [
        {"id": hit["id"], "search": name, "rank_score": 1.0 / (1 + rank), "hit": hit}
        for name, hits in result.documents.items()
        for rank, hit in enumerate(hits)
    ]

    def render(kept: Sequence[Mapping[str, Any]]):
        grouped: dict[str, list[dict[str, Any]]] = {name: [] for name in result.documents}
        for item in kept:
            grouped[item["search"]].append(item["hit"])
        context = {**base, "documents": grouped}
        if prompt.format == "messages":
            return plan.template.render_messages(context, model=model, limits=limits)
        return plan.template.render(context, model=model, limits=limits)

    try:
        if prompt.max_tokens:
            fit = fit_to_budget(render, flat, prompt.max_tokens, model, score_key="rank_score")
            rendered, tokens, tokenizer = fit.rendered, fit.tokens, fit.tokenizer
            dropped, truncated = fit.dropped, fit.truncated
        else:
            rendered = render(flat)
            counter = get_token_counter(model)
            tokens, tokenizer = counter.count(rendered), counter.method
            dropped, truncated = [], False
    except Exception as exc:
        translated = leaf_error(exc)
        if translated is None:
            raise
        translated.details = {**(translated.details or {}), "prompt": prompt.name}
        if isinstance(exc, PromptLimitError):
            translated.message = f"prompt view {prompt.name!r}: {exc.message}"
            translated.hint = _LIMIT_HINTS[exc.limit]
            translated.details["setting"] = _LIMIT_SETTINGS[exc.limit]
        raise translated from exc
    if dropped:
        kept_ids = {item["id"] for item in flat if item["id"] not in dropped}
        result.documents = {
            name: [h for h in hits if h["id"] in kept_ids]
            for name, hits in result.documents.items()
        }
    is_chat = prompt.format == "messages"
    result.prompt = {
        "name": prompt.name,
        "format": prompt.format,
        "text": None if is_chat else rendered,
        "messages": rendered if is_chat else None,
        "tokens": tokens,
        "max_tokens": prompt.max_tokens,
        "tokenizer": tokenizer,
        "dropped": dropped,
        "truncated": truncated,
        "model": model,
    }
    result.metadata["timings_ms"]["render"] = round((time.perf_counter() - began) * 1000, 3)


_LIMIT_SETTINGS = {
    "timeout_s": "prompts.render_timeout_s",
    "max_output_chars": "prompts.max_output_chars",
}
_LIMIT_HINTS = {
    limit: f"make the template loop over fewer items and build less text, or raise {setting} "
    "in contextkit.yaml"
    for limit, setting in _LIMIT_SETTINGS.items()
}


def completion_messages(result: ContextResult) -> list[dict[str, Any]]:
    if result.prompt is None:
        raise BadRequestError(
            f"service {result.service!r} has no prompt view to complete",
            hint="add prompts=[...] to the ContextService, or pass complete=false",
            details={"field": "complete"},
        )
    if result.prompt["messages"] is not None:
        return result.prompt["messages"]
    return [{"role": "user", "content": result.prompt["text"]}]


def completion_call(ctx: Runtime, plan: ContextPlan, request: ContextRequest) -> dict[str, Any]:
    """Arguments for ``prompts.complete``: model, params, timeout, retries, api_base, api_key."""
    import os

    model = request.model or (plan.prompt.model if plan.prompt else None)
    if not model:
        raise BadRequestError(
            "no model to complete with",
            hint='set model=... on the prompt view, or send "model" in the request',
            details={"field": "model"},
        )
    llm = ctx.config.llm
    if request.model is not None:  # the request chose it: an unknown name is the request's fault
        _check_request_model(request.model, llm)
    api_key = None
    from contextkit.prompts.llm import ECHO_MODEL

    if llm.api_key_env and model != ECHO_MODEL:  # the built-in echo model needs no key
        api_key = os.environ.get(llm.api_key_env)
        if not api_key:
            from contextkit.prompts import LLMAuthError

            missing = LLMAuthError(
                f"no API key for {model!r}: the variable {llm.api_key_env} named by "
                "llm.api_key_env in contextkit.yaml is not set in the server's environment",
                setting=llm.api_key_env,
                model=model,
                hint=f"set {llm.api_key_env} where the server runs",
                attempts=0,
            )
            raise leaf_error(missing) from None
    return {
        "model": model,
        "params": {**(plan.prompt.params if plan.prompt else {}), **request.params},
        "timeout": llm.timeout_s,
        "retries": llm.retries,
        "api_base": llm.api_base,
        "api_key": api_key,
    }


def _check_request_model(model: str, llm: Any) -> None:
    from contextkit.prompts import LLMNotConfiguredError, check_model

    try:
        check_model(model, declared=llm.models, api_base=llm.api_base)
    except LLMNotConfiguredError as exc:
        raise BadRequestError(exc.message, hint=exc.hint, details={"field": "model"}) from None


async def complete_async(
    ctx: Runtime,
    plan: ContextPlan,
    request: ContextRequest,
    result: ContextResult,
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Complete the rendered prompt, or ``messages`` when given (the chat endpoint sends the
    prompt merged with the conversation), into ``result.completion``."""
    from contextkit.prompts import complete

    messages = completion_messages(result) if messages is None else messages
    call = completion_call(ctx, plan, request)
    with translating:
        answer = await complete(messages, **call)
    result.completion = {
        "model": answer.model,
        "text": answer.text,
        "finish_reason": answer.finish_reason,
        "usage": answer.usage,
        "latency_ms": round(answer.latency_ms, 3),
        "attempts": answer.attempts,
    }
    result.metadata["timings_ms"]["completion"] = round(answer.latency_ms, 3)


async def stream_async(
    ctx: Runtime,
    plan: ContextPlan,
    request: ContextRequest,
    result: ContextResult,
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
) -> AsyncIterator[str]:
    """The completion's text deltas (raises ContextKitError on provider failures); ``messages``
    as for :func:`complete_async`."""
    from contextkit.prompts import stream_complete

    messages = completion_messages(result) if messages is None else messages
    call = completion_call(ctx, plan, request)
    with translating:
        async for delta in stream_complete(messages, **call):
            yield delta


async def assemble_async(ctx: Runtime, plan: ContextPlan, request: ContextRequest) -> ContextResult:
    """Retrieve (concurrently, in threads), render and, when asked, complete."""
    began = time.perf_counter()
    loop = asyncio.get_running_loop()
    steps = retrieve_stage(ctx, plan, request)
    pool = executor()
    results = await asyncio.gather(*(loop.run_in_executor(pool, step) for step in steps))
    result = finish_retrieval(plan, request, list(results), began)
    if request.render or request.complete:
        # Off the event loop: a slow template must not stall the server's other requests.
        await loop.run_in_executor(pool, render_prompt, plan, request, result)
    if request.complete:
        await complete_async(ctx, plan, request, result)
    result.metadata["timings_ms"]["total"] = round((time.perf_counter() - began) * 1000, 3)
    return result


def assemble(ctx: Runtime, plan: ContextPlan, request: ContextRequest) -> ContextResult:
    """The synchronous path (the SDK): the same stages, the retrieval fanned out to threads."""
    began = time.perf_counter()
    steps = retrieve_stage(ctx, plan, request)
    if len(steps) == 1:
        results = [steps[0]()]
    else:
        futures = [executor().submit(step) for step in steps]
        results = [f.result() for f in futures]
    result = finish_retrieval(plan, request, results, began)
    if request.render or request.complete:
        render_prompt(plan, request, result)
    if request.complete:
        run_coroutine(complete_async(ctx, plan, request, result))
    result.metadata["timings_ms"]["total"] = round((time.perf_counter() - began) * 1000, 3)
    return result
