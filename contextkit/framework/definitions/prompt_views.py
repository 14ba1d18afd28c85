"""Prompt views: a template plus the features and searches it reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contextkit.framework.definitions._base import Definition, caller_location, checked_arguments
from contextkit.framework.definitions.embedding_views import EmbeddingView
from contextkit.framework.definitions.feature_views import (
    FEATURE_VIEW_TYPES,
    BatchFeatureView,
    FeatureSelection,
)
from contextkit.framework.specs import (
    SEARCH_MODES,
    FeatureRefSpec,
    PromptViewSpec,
    RequestFieldSpec,
    SearchSpec,
)
from contextkit.types import DTYPES, Field


class Search:
    """A similarity search over an embedding view, run for each context request.

    ``Search(product_docs, top_k=5, mode="hybrid", filter={"category": "shoes"})``. The query
    text is the request's ``query``, or the request-context field named by ``query_from``.
    ``name`` (default: the view's) is how templates and responses refer to its documents.
    ``group_by="document"`` returns the ``top_k`` best documents rather than chunks (a long
    text's chunks cannot flood the top k): each scored by its best chunk, shown as
    ``highlight``. Hybrid searches take ``fusion`` (``"rrf"``: reciprocal rank fusion, the
    default; ``"blend"``: min-max normalised scores summed), ``depth`` (candidates per list,
    default ``max(2 x top_k, 20)``) and ``weights`` (vector, text; default ``(1, 1)``).
    ``rerank`` adds a reranker stage over the first ``depth`` (50) candidates:
    ``"local:<cross-encoder folder>"`` or a litellm rerank model, e.g.
    ``{"model": "cohere/rerank-english-v3.0", "depth": 50, "api_key_env": "COHERE_API_KEY"}``.
    """

    @checked_arguments
    def __init__(
        self,
        view: EmbeddingView | str,
        *,
        top_k: int = 5,
        mode: str = "vector",
        filter: Mapping[str, Any] | None = None,
        query_from: str = "query",
        name: str | None = None,
        group_by: str | None = None,
        fusion: str | None = None,
        depth: int | None = None,
        weights: Sequence[float] | None = None,
        rerank: str | Mapping[str, Any] | None = None,
    ) -> None:
        self.view = view
        view_name = view if isinstance(view, str) else view.name
        self.name = name or view_name
        if mode not in SEARCH_MODES:
            raise ValueError(f"Search over {view_name!r}: mode must be one of {SEARCH_MODES}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 1000:
            raise ValueError(f"Search over {view_name!r}: top_k must be an integer in 1..1000")
        self.top_k = top_k
        self.mode = mode
        self.filter = dict(filter) if filter is not None else None
        self.query_from = query_from
        if group_by not in (None, "document"):
            raise ValueError(
                f"Search over {view_name!r}: group_by must be 'document' (one hit per "
                "document, its best chunk as the highlight) or None (chunks)"
            )
        self.group_by = group_by
        if fusion not in (None, "rrf", "blend"):
            raise ValueError(f"Search over {view_name!r}: fusion must be 'rrf' or 'blend'")
        if depth is not None and (
            not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 1000
        ):
            raise ValueError(f"Search over {view_name!r}: depth must be an integer in 1..1000")
        if weights is not None:
            weights = tuple(weights)
            if len(weights) != 2 or any(
                isinstance(w, bool) or not isinstance(w, int | float) or w < 0 for w in weights
            ):
                raise ValueError(
                    f"Search over {view_name!r}: weights must be two non-negative numbers "
                    "(vector, text)"
                )
        self.fusion, self.depth, self.weights = fusion, depth, weights
        if isinstance(rerank, str):
            rerank = {"model": rerank}
        if rerank is not None and (
            not isinstance(rerank, Mapping) or not isinstance(rerank.get("model"), str)
        ):
            raise ValueError(
                f"Search over {view_name!r}: rerank must be a model name or "
                '{"model": ..., "depth": 50}'
            )
        self.rerank = dict(rerank) if rerank is not None else None

    def to_spec(self) -> SearchSpec:
        return SearchSpec(
            name=self.name,
            view=self.view if isinstance(self.view, str) else self.view.name,
            top_k=self.top_k,
            mode=self.mode,  # type: ignore[arg-type]
            filter=self.filter,
            query_from=self.query_from,
            group_by=self.group_by,  # type: ignore[arg-type]
            fusion=self.fusion,  # type: ignore[arg-type]
            depth=self.depth,
            weights=self.weights,  # type: ignore[arg-type]
            rerank=self.rerank,
        )


def search_specs(obj: Definition, items: Sequence[Search | EmbeddingView | str]) -> list:
    out = []
    for item in items:
        if isinstance(item, Search):
            out.append(item.to_spec())
        elif isinstance(item, EmbeddingView | str):
            out.append(Search(item).to_spec())
        else:
            raise obj._error(
                f"{obj.kind} {obj.name!r}: cannot search {item!r}",
                hint="pass embedding views or Search(view, ...) objects in searches=[...]",
            )
    return out


def feature_refs(obj: Definition, items: Sequence[Any]) -> list[FeatureRefSpec]:
    refs = []
    for item in items:
        if isinstance(item, FeatureSelection):
            refs.append(FeatureRefSpec(view=item.view.name, features=item.features))
        elif isinstance(item, FEATURE_VIEW_TYPES):
            refs.append(FeatureRefSpec(view=item.name))
        elif isinstance(item, str):
            refs.append(FeatureRefSpec(view=item))
        else:
            raise obj._error(f"{obj.kind} {obj.name!r}: cannot use {item!r} as features")
    return refs


class RequestField:
    """A value the caller sends with each request (``request_context``), typed.

    ``RequestField("question", String)``; with ``default=...`` the field is optional.
    """

    _REQUIRED = object()

    @checked_arguments
    def __init__(
        self, name: str, dtype: str = "string", *, default: Any = _REQUIRED, description: str = ""
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"RequestField {name!r}: unknown dtype {dtype!r}; use one of {DTYPES}")
        self.name = name
        self.dtype = dtype
        self.required = default is RequestField._REQUIRED
        self.default = None if self.required else default
        self.description = description

    def to_spec(self) -> RequestFieldSpec:
        return RequestFieldSpec(
            name=self.name,
            dtype=self.dtype,
            required=self.required,
            default=self.default,
            description=self.description,
        )


class TemplateFile:
    """A Jinja template kept in a file of the repo (path relative to the repo root).

    Use it for ``PromptView(template=...)`` or in ``messages=[("system", TemplateFile(...))]``.
    Its text is read when the repo is planned, so ``contextkit plan`` shows an edit to the file
    and the server never reads repo files.
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def read(self, owner: Definition, root: str | None) -> str:
        base = Path(root) if root is not None else Path(owner._file).parent
        file = (base / self.path).resolve()
        if not file.is_relative_to(base.resolve()) or not file.is_file():
            raise owner._error(
                f"prompt {owner.name!r}: template file not found: {self.path}",
                hint="give a path relative to the repo root, inside the repo",
            )
        return file.read_text()

    def __repr__(self) -> str:
        return f"TemplateFile({self.path!r})"


class PromptView(Definition):
    """A Jinja template plus what it reads: features, searches and request-context fields.

    ::

        support_prompt = PromptView(
            name="support_prompt",
            format="messages",
            messages=[("system", "You help {{ request.user_name }}..."), ("user", "{{ query }}")],
            features=[user_order_stats],
            searches=[Search(product_docs, top_k=5)],
            request_context=[RequestField("user_name", String, default="there")],
            max_tokens=1500,
            model="openai/gpt-4o-mini",
        )

    Templates see ``features.<view>.<feature>``, ``documents.<search name>`` (a list of
    ``{id, text, score, metadata, key}``, best first), ``request.<field>``, ``query`` and
    ``entities.<join key>``. ``template`` is an inline string or a :class:`TemplateFile`
    (``template_file="prompts/x.jinja"`` is short for it); ``format="messages"`` takes
    ``messages`` as ``(role, template)`` pairs, each template a string or a ``TemplateFile``.
    ``max_tokens`` is the prompt's token budget; ``model`` the default LLM (a litellm model
    name) and ``params`` its completion parameters.
    """

    kind = "prompt_view"

    @checked_arguments
    def __init__(
        self,
        name: str,
        template: str | TemplateFile | None = None,
        *,
        template_file: str | None = None,
        format: str = "text",
        messages: Sequence[tuple[str, str | TemplateFile]] | None = None,
        features: Sequence[BatchFeatureView | FeatureSelection | str] = (),
        searches: Sequence[Search | EmbeddingView | str] = (),
        request_context: Sequence[RequestField | Field] = (),
        max_tokens: int | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        if format not in ("text", "messages"):
            raise self._error(
                f"prompt {name!r}: unknown format {format!r}", hint='use "text" or "messages"'
            )
        given = [x for x in (template, template_file, messages) if x]
        if len(given) != 1:
            raise self._error(
                f"prompt {name!r}: give exactly one of template=, template_file= or messages=",
                hint='inline: template="...", a file: template_file="prompts/support.jinja", '
                'chat turns: format="messages", messages=[("system", "..."), ("user", "...")]',
            )
        if messages and format != "messages":
            raise self._error(
                f'prompt {name!r}: messages= needs format="messages"',
                hint='pass format="messages"',
            )
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise self._error(f"prompt {name!r}: max_tokens must be a positive integer")
        if template_file is not None:
            template = TemplateFile(template_file)
        self.template = template
        self.format = format
        self.messages = [tuple(m) for m in messages or []]
        self.features = list(features)
        self.searches = list(searches)
        self.request_context = [
            f if isinstance(f, RequestField) else RequestField(f.name, f.dtype)
            for f in request_context
        ]
        self.max_tokens = max_tokens
        self.model = model
        self.params = dict(params or {})

    def views(self) -> list[BatchFeatureView]:
        return views_of(self.features)

    def embedding_views(self) -> list[EmbeddingView]:
        return embedding_views_of(self.searches)

    def to_spec(self, root: str | None = None) -> PromptViewSpec:
        messages, files = [], []
        for turn in self.messages:
            if len(turn) != 2 or not isinstance(turn[0], str):
                raise self._error(
                    f"prompt {self.name!r}: each message must be a (role, template) pair",
                    hint='e.g. ("system", "You are a helpful assistant.")',
                )
            role, source = turn
            messages.append((role, self._source(source, root)))
            files.append(source.path if isinstance(source, TemplateFile) else None)
        template = self._source(self.template, root) if self.template is not None else None
        return PromptViewSpec(
            format=self.format,  # type: ignore[arg-type]
            template=template,
            messages=messages,
            template_file=self.template.path if isinstance(self.template, TemplateFile) else None,
            message_files=files if any(files) else [],
            features=feature_refs(self, self.features),
            searches=search_specs(self, self.searches),
            request_context=[f.to_spec() for f in self.request_context],
            max_tokens=self.max_tokens,
            model=self.model,
            params=self.params,
            **self._common(root),
        )

    def _source(self, source: str | TemplateFile, root: str | None) -> str:
        if isinstance(source, TemplateFile):
            return source.read(self, root)
        if not isinstance(source, str):
            raise self._error(
                f"prompt {self.name!r}: a template is a string or a TemplateFile, got {source!r}"
            )
        return source


def views_of(items: Sequence[Any]) -> list[Any]:
    """The feature views (batch, stream or realtime) among a service's or prompt's items."""
    return [
        item.view if isinstance(item, FeatureSelection) else item
        for item in items
        if isinstance(item, (*FEATURE_VIEW_TYPES, FeatureSelection))
    ]


def embedding_views_of(items: Sequence[Any]) -> list[EmbeddingView]:
    out = []
    for item in items:
        view = item.view if isinstance(item, Search) else item
        if isinstance(view, EmbeddingView):
            out.append(view)
    return out
