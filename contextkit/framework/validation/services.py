"""Checks of context services: the views, features, searches and prompts they bundle."""

from __future__ import annotations

from contextkit.framework.specs import (
    ContextServiceSpec,
    EmbeddingViewSpec,
    FeatureViewSpec,
)


class ServiceChecks:
    """The services checks of :class:`~contextkit.framework.validation.checker.Checker`."""

    # -- services --------------------------------------------------------------------------
    def check_service(
        self,
        service: ContextServiceSpec,
        views: dict[str, FeatureViewSpec],
        embedding_views: dict[str, EmbeddingViewSpec],
    ) -> None:
        self.check_feature_refs(service, service.features, views)
        fields: set[str] = set()
        for name in service.prompts:
            prompt = self.prompts.get(name)
            if prompt is None:
                self.error(
                    service,
                    f"unknown prompt view {name!r}",
                    hint="prompts: " + (", ".join(sorted(self.prompts)) or "none defined"),
                )
                continue
            fields |= {f.name for f in prompt.request_context}
            self.check_feature_refs(service, [*service.features, *prompt.features], views)
        for search in service.searches:
            self.check_search(service, search, embedding_views, fields)
        names = [s.name for s in service.searches]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            self.error(service, f"two searches are named {dup!r}", hint="pass Search(..., name=)")
