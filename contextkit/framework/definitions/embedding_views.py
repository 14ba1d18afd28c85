"""Embedding views: a text column, optionally chunked, encoded by a named model into a vector
table."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from contextkit.framework.definitions._base import Definition, caller_location, checked_arguments
from contextkit.framework.definitions.entities import Entity
from contextkit.framework.definitions.feature_views import BatchFeatureView, render_sql
from contextkit.framework.definitions.sources import FileSource
from contextkit.framework.expectations import expectations_spec
from contextkit.framework.specs import (
    ChunkingSpec,
    EmbeddingViewSpec,
)


class EmbeddingView(Definition):
    """Text of a source, one document per entity key, chunked and encoded into a vector table.

    ::

        product_docs = EmbeddingView(
            name="product_docs", source=products, entities=[product], text="description",
            model="minilm", chunking={"by": "tokens", "size": 128, "overlap": 16},
            metadata=["name", "category", "price"],
        )

    ``model`` is a key of the repo config's ``models:`` (``minilm``, the packaged
    all-MiniLM-L6-v2, is always there). ``chunking`` is None (one chunk per document) or
    ``{"by": "chars" | "tokens", "size": n, "overlap": m}``, or ``"auto"`` (``{"by": "auto",
    "overlap": m}``): chunks that fill the model's input window in its own tokens, an eighth of
    it shared by consecutive chunks unless ``overlap`` says (so no text is truncated by the
    model). ``metadata`` columns are stored next
    to each vector, for filters and display. When the source holds several rows per key, the
    latest by ``timestamp_field`` (default: the source's) is the document. To build the text
    with a transformation, use the :func:`embedding_view` decorator.

    Expectations (checked on the documents before anything is encoded; see docs/monitoring.md):
    ``expect_not_null`` and ``expect_between`` over the text and metadata columns (a range over
    numeric ones), ``max_staleness`` (the time since the last successful job), and
    ``on_expectation_failure`` (``"warn"`` or ``"fail"``), as for feature views.
    """

    kind = "embedding_view"

    @checked_arguments
    def __init__(
        self,
        name: str,
        source: FileSource | BatchFeatureView | str,
        entities: Sequence[Entity | str],
        text: str,
        *,
        model: str = "minilm",
        chunking: Mapping[str, Any] | str | None = None,
        metadata: Sequence[str] = (),
        timestamp_field: str | None = None,
        online: bool = True,
        expect_not_null: Sequence[str] | Mapping[str, float] | None = None,
        expect_between: Mapping[str, tuple[float | None, float | None]] | None = None,
        max_staleness: timedelta | str | None = None,
        on_expectation_failure: str = "warn",
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
        _function: Callable[..., Any] | None = None,
        _mode: str = "column",
        _sources: Sequence[FileSource | BatchFeatureView | str] | None = None,
        _location: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, _location or caller_location())
        self.sources = list(_sources) if _sources is not None else [source]
        if not self.sources or any(s is None for s in self.sources):
            raise self._error(f"embedding view {name!r} has no source", hint="pass source=...")
        if not entities or isinstance(entities, str | Entity):
            raise self._error(
                f"embedding view {name!r}: entities must be a non-empty list",
                hint="pass entities=[document_entity]: its join keys identify each document",
            )
        if not isinstance(text, str) or not text:
            raise self._error(
                f"embedding view {name!r}: text must name the column holding the text",
                hint='e.g. text="description"',
            )
        if isinstance(metadata, str):
            raise self._error(
                f"embedding view {name!r}: metadata must be a list of column names",
                hint=f'write metadata=["{metadata}"]',
            )
        if _mode not in ("column", "sql", "pandas", "arrow"):
            raise self._error(
                f"embedding view {name!r}: unknown mode {_mode!r}",
                hint='use "sql", "pandas" or "arrow"',
            )
        self.entities = list(entities)
        self.text = text
        self.model = model
        if isinstance(chunking, str):  # chunking="auto" (or "none")
            chunking = {"by": chunking}
        self.chunking = dict(chunking) if chunking is not None else None
        self.metadata = list(metadata)
        self.timestamp_field = timestamp_field
        self.online = online
        self.function = _function
        self.mode = _mode
        try:
            self.expectations = expectations_spec(
                not_null=expect_not_null,
                between=expect_between,
                max_staleness=max_staleness,
                on_failure=on_expectation_failure,
            )
        except ValueError as exc:
            raise self._error(f"embedding view {name!r}: {exc}") from None

    def source_names(self) -> list[str]:
        return [s if isinstance(s, str) else s.name for s in self.sources]

    def to_spec(self, root: str | None = None) -> EmbeddingViewSpec:
        sql = python_source = function_name = None
        if self.mode == "sql":
            sql = render_sql(self, self.function, self.source_names())
        elif self.mode != "column":
            python_source = python_source(self, self.function)
            function_name = self.function.__name__
        chunking = None
        if self.chunking is not None:
            options = dict(self.chunking)
            by = options.pop("by", options.pop("unit", "chars"))
            if by == "auto":
                overlap = options.pop("overlap", 0)
                if options or not isinstance(overlap, int) or overlap < 0:
                    raise self._error(
                        f"embedding view {self.name!r}: chunking {self.chunking!r} is not valid",
                        hint='auto chunking takes only an overlap: {"by": "auto", "overlap": 32}',
                    )
                chunking = ChunkingSpec(by="auto", size=0, overlap=overlap)
            elif by != "none":
                unknown = sorted(set(options) - {"size", "overlap"})
                if unknown or by not in ("chars", "tokens"):
                    raise self._error(
                        f"embedding view {self.name!r}: chunking {self.chunking!r} is not valid",
                        hint='use {"by": "chars" | "tokens" | "none", "size": n, "overlap": m}',
                    )
                size = options.get("size", 1000 if by == "chars" else 200)
                overlap = options.get("overlap", 0)
                if not (isinstance(size, int) and isinstance(overlap, int) and 0 <= overlap < size):
                    raise self._error(
                        f"embedding view {self.name!r}: chunking needs integers "
                        f"0 <= overlap < size, got size={size!r}, overlap={overlap!r}",
                        hint="overlap is how many units consecutive chunks share",
                    )
                chunking = ChunkingSpec(by=by, size=size, overlap=overlap)
        return EmbeddingViewSpec(
            sources=self.source_names(),
            entities=[e if isinstance(e, str) else e.name for e in self.entities],
            mode=self.mode,  # type: ignore[arg-type]
            sql=sql,
            python_source=python_source,
            function_name=function_name,
            text_column=self.text,
            model=self.model,
            chunking=chunking,
            metadata=self.metadata,
            timestamp_field=self.timestamp_field,
            online=self.online,
            expectations=self.expectations,
            **self._common(root),
        )


@checked_arguments
def embedding_view(
    *,
    sources: Sequence[FileSource | BatchFeatureView | str],
    entities: Sequence[Entity | str],
    text: str = "text",
    mode: str = "sql",
    model: str = "minilm",
    chunking: Mapping[str, Any] | None = None,
    metadata: Sequence[str] = (),
    timestamp_field: str | None = None,
    online: bool = True,
    expect_not_null: Sequence[str] | Mapping[str, float] | None = None,
    expect_between: Mapping[str, tuple[float | None, float | None]] | None = None,
    max_staleness: timedelta | str | None = None,
    on_expectation_failure: str = "warn",
    name: str | None = None,
    description: str | None = None,
    owner: str | None = None,
    tags: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], EmbeddingView]:
    """An embedding view over a transformation that produces the text (and metadata) columns.

    Same modes as :func:`batch_feature_view`::

        @embedding_view(sources=[articles], entities=[article], text="doc", metadata=["category"])
        def help_docs(articles):
            return f"SELECT article_id, title || '. ' || body AS doc, category FROM {articles}"
    """

    def wrap(function: Callable[..., Any]) -> EmbeddingView:
        code = function.__code__
        return EmbeddingView(
            name or function.__name__,
            None,  # type: ignore[arg-type]
            entities,
            text,
            model=model,
            chunking=chunking,
            metadata=metadata,
            timestamp_field=timestamp_field,
            online=online,
            expect_not_null=expect_not_null,
            expect_between=expect_between,
            max_staleness=max_staleness,
            on_expectation_failure=on_expectation_failure,
            description=description or inspect.getdoc(function),
            owner=owner,
            tags=tags,
            _function=function,
            _mode=mode,
            _sources=sources,
            _location=(code.co_filename, code.co_firstlineno),
        )

    return wrap
