"""Context services: the unit of retrieval, a named bundle of features, searches and prompts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from contextkit.framework.definitions._base import Definition, caller_location, checked_arguments
from contextkit.framework.definitions.embedding_views import EmbeddingView
from contextkit.framework.definitions.feature_views import BatchFeatureView, FeatureSelection
from contextkit.framework.definitions.prompt_views import (
    PromptView,
    Search,
    embedding_views_of,
    feature_refs,
    search_specs,
    views_of,
)
from contextkit.framework.specs import (
    ContextServiceSpec,
)


class ContextService(Definition):
    """The unit of retrieval: a named bundle of feature views, searches and prompts.

    ``ContextService(name="support", features=[user_spend, products[["name", "price"]]],
    searches=[Search(product_docs, top_k=5)], prompts=[support_prompt])``. One request to it
    returns all of its features, the documents of its searches and, rendered, one of its
    prompts (the first by default). A prompt's own features and searches join the service's.

    ``cache=timedelta(minutes=5)`` lets the data plane answer feature lookups from an
    in-memory LRU for up to that long (at most 24 h); an apply or a materialization of one of
    its views invalidates it sooner (see docs/concepts.md, "Serving cache").
    """

    kind = "context_service"

    @checked_arguments
    def __init__(
        self,
        name: str,
        features: Sequence[BatchFeatureView | FeatureSelection | str] = (),
        *,
        searches: Sequence[Search | EmbeddingView | str] = (),
        prompts: Sequence[PromptView | str] = (),
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
        cache: timedelta | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        if cache is not None and not isinstance(cache, timedelta):
            raise self._error(
                f"service {name!r}: cache must be a timedelta, got {cache!r}",
                hint="pass cache=timedelta(minutes=5)",
            )
        self.cache = cache
        if not features and not searches and not prompts:
            raise self._error(
                f"service {name!r} has nothing to serve",
                hint="pass features=[view], searches=[embedding_view] or prompts=[prompt_view]",
            )
        self.features = list(features)
        self.searches = list(searches)
        self.prompts = list(prompts)

    def views(self) -> list[BatchFeatureView]:
        return views_of(self.features)

    def embedding_views(self) -> list[EmbeddingView]:
        return embedding_views_of(self.searches)

    def prompt_views(self) -> list[PromptView]:
        return [p for p in self.prompts if isinstance(p, PromptView)]

    def to_spec(self, root: str | None = None) -> ContextServiceSpec:
        prompts = []
        for item in self.prompts:
            if not isinstance(item, PromptView | str):
                raise self._error(f"service {self.name!r}: {item!r} is not a prompt view")
            prompts.append(item if isinstance(item, str) else item.name)
        return ContextServiceSpec(
            features=feature_refs(self, self.features),
            searches=search_specs(self, self.searches),
            prompts=prompts,
            cache_seconds=self.cache.total_seconds() if self.cache is not None else None,
            **self._common(root),
        )
