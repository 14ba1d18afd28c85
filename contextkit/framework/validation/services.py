"""Checks of context services (the views, features, searches and prompts they bundle, their
serving cache), of the server groups that serve them and of the transform server groups that run
realtime views."""

from __future__ import annotations

from collections.abc import Mapping

from contextkit.framework.specs import (
    ContextServiceSpec,
    EmbeddingViewSpec,
    FeatureViewSpec,
    ServerGroupSpec,
    TransformServerGroupSpec,
)

# The longest a service may let the data plane answer from its serving cache.
MAX_CACHE_SECONDS = 24 * 3600
# Bounds of a transform server group: worker processes per serving process, seconds per call.
MAX_TRANSFORM_WORKERS = 32
MAX_TRANSFORM_TIMEOUT_SECONDS = 300


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
                self._claim(group, name, "service", seen, owner, self.server_groups)

    def _claim(
        self,
        group: ServerGroupSpec | TransformServerGroupSpec,
        name: str,
        member: str,
        seen: set[str],
        owner: dict[str, str],
        groups: Mapping[str, ServerGroupSpec | TransformServerGroupSpec],
    ) -> None:
        """``group`` lists ``name`` (a ``member``): an error when it lists it twice or another
        group of its kind (``owner``: member -> group) lists it too."""
        if name in seen:
            self.error(group, f"{member} {name!r} is listed twice", hint="list it once")
            return
        seen.add(name)
        if name in owner:
            other = groups[owner[name]]
            kind = "server group" if other.kind == "server_group" else "transform server group"
            where = f" (at {other.location})" if other.location else ""
            self.error(
                group,
                f"{member} {name!r} is already in {kind} {other.name!r}{where}",
                hint=f"a {member} belongs to at most one {kind}: remove it from one",
            )
            return
        owner[name] = group.name

    # -- transform server groups -----------------------------------------------------------
    def check_transform_server_groups(self) -> None:
        """Every view a group names is a realtime view, no view is in two groups, and the pool's
        size and timeout are in bounds."""
        owner: dict[str, str] = {}
        for group in self.transform_server_groups.values():
            if not 1 <= group.workers <= MAX_TRANSFORM_WORKERS:
                self.error(
                    group,
                    f"workers={group.workers} is out of range: 1 to {MAX_TRANSFORM_WORKERS}",
                    hint="each serving process starts this many worker processes for the group",
                )
            if not 0 < group.timeout_seconds <= MAX_TRANSFORM_TIMEOUT_SECONDS:
                self.error(
                    group,
                    f"timeout={group.timeout_seconds:g}s is out of range: more than 0 and at "
                    f"most {MAX_TRANSFORM_TIMEOUT_SECONDS} s",
                    hint="pass timeout=timedelta(seconds=2): a call that takes longer answers 504",
                )
            seen: set[str] = set()
            for name in group.views:
                if name not in self.realtime_views:
                    other = (
                        "it is not a realtime feature view (only realtime views are computed at "
                        "request time)"
                        if name in self.views or name in self.stream_views
                        else "realtime views: " + (", ".join(sorted(self.realtime_views)) or "none")
                    )
                    self.error(group, f"unknown realtime feature view {name!r}", hint=other)
                    continue
                groups = self.transform_server_groups
                self._claim(group, name, "realtime view", seen, owner, groups)
        for view in self.realtime_views.values():
            named = view.transform_server_group
            if named is None:
                continue
            if named not in self.transform_server_groups:
                self.error(
                    view,
                    f"unknown transform server group {named!r}",
                    hint="transform server groups: "
                    + (", ".join(sorted(self.transform_server_groups)) or "none defined"),
                )
            elif owner.setdefault(view.name, named) != named:
                other = self.transform_server_groups[owner[view.name]]
                where = f" (at {other.location})" if other.location else ""
                self.error(
                    view,
                    f"realtime view {view.name!r} names transform server group {named!r} but "
                    f"is already in transform server group {other.name!r}{where}",
                    hint="a realtime view belongs to at most one transform server group: remove "
                    "it from one",
                )

    def transform_groups_with_views(self) -> dict[str, TransformServerGroupSpec]:
        """The transform server groups, each listing also the realtime views that name it
        (``transform_server_group=``): what the serving processes read."""
        out = {}
        for name, group in self.transform_server_groups.items():
            named = [
                v.name
                for v in self.realtime_views.values()
                if v.transform_server_group == name and v.name not in group.views
            ]
            out[name] = group.model_copy(update={"views": [*group.views, *named]})
        return out
