"""Checks of context services (the views, features, searches and prompts they bundle, their
serving cache) and of the server groups that serve them."""

from __future__ import annotations

from contextkit.framework.specs import (
    ContextServiceSpec,
    EmbeddingViewSpec,
    FeatureViewSpec,
)

# The longest a service may let the data plane answer from its serving cache.
MAX_CACHE_SECONDS = 24 * 3600


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
        self.check_cache(service)
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

    def check_cache(self, service: ContextServiceSpec) -> None:
        seconds = service.cache_seconds
        if seconds is None:
            return
        if seconds <= 0 or seconds > MAX_CACHE_SECONDS:
            self.error(
                service,
                f"cache={seconds:g}s is out of range: it must be more than 0 and at most 24 h",
                hint="pass cache=timedelta(minutes=5) (at most timedelta(hours=24)), or leave "
                "cache out to read the online store on every request",
            )
        elif not service.features and not service.searches:
            self.error(
                service,
                "cache is set but the service has no features or searches to cache",
                hint="the serving cache holds feature values and search results: remove cache=",
            )

    # -- server groups ---------------------------------------------------------------------
    def check_server_groups(self) -> None:
        """Every service a group names exists, and no service is in two groups."""
        owner: dict[str, str] = {}
        for group in self.server_groups.values():
            seen: set[str] = set()
            for name in group.services:
                if name not in self.services:
                    self.error(
                        group,
                        f"unknown service {name!r}",
                        hint="services: " + (", ".join(sorted(self.services)) or "none defined"),
                    )
                    continue
                if name in seen:
                    self.error(group, f"service {name!r} is listed twice", hint="list it once")
                    continue
                seen.add(name)
                if name in owner:
                    other = self.server_groups[owner[name]]
                    where = f" (at {other.location})" if other.location else ""
                    self.error(
                        group,
                        f"service {name!r} is already in server group {other.name!r}{where}",
                        hint="a service belongs to at most one server group: remove it from one",
                    )
                    continue
                owner[name] = group.name
