"""Server groups: which ``contextkit serve`` processes serve which context services, and which
realtime views run in worker processes of their own (transform server groups)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from contextkit.framework.definitions._base import Definition, caller_location, checked_arguments
from contextkit.framework.definitions.feature_views import RealtimeFeatureView
from contextkit.framework.definitions.services import ContextService
from contextkit.framework.specs import ServerGroupSpec, TransformServerGroupSpec


class ServerGroup(Definition):
    """A feature server group: the services one fleet of ``contextkit serve`` processes serves.

    ``ServerGroup(name="checkout", services=[fraud_signals, user_spend])``; then
    ``contextkit serve --server-group checkout`` answers only for those services (any other
    service answers 404 naming the group that serves it). A service belongs to at most one
    group; services in no group are served only by processes started without a group.
    """

    kind = "server_group"

    @checked_arguments
    def __init__(
        self,
        name: str,
        services: Sequence[ContextService | str] = (),
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        if isinstance(services, str | ContextService) or not services:
            raise self._error(
                f"server group {name!r} needs a list of services",
                hint="pass services=[service, ...] (ContextService objects or their names)",
            )
        self.services = list(services)

    def service_objects(self) -> list[ContextService]:
        return [s for s in self.services if isinstance(s, ContextService)]

    def to_spec(self, root: str | None = None) -> ServerGroupSpec:
        names = []
        for item in self.services:
            if not isinstance(item, ContextService | str):
                raise self._error(
                    f"server group {self.name!r}: {item!r} is not a context service",
                    hint="pass ContextService objects or service names",
                )
            names.append(item if isinstance(item, str) else item.name)
        return ServerGroupSpec(services=names, **self._common(root))


class TransformServerGroup(Definition):
    """A transform server group: realtime feature views whose Python functions run in a small
    pool of worker processes, apart from the process that serves feature lookups.

    ``TransformServerGroup(name="scoring", views=[fraud_score], workers=2,
    timeout=timedelta(seconds=2))`` (or ``transform_server_group="scoring"`` on the realtime
    view, with ``views`` left out); then every serving process (``contextkit serve``, or a
    ``Context`` in an app) runs ``fraud_score`` in its own ``workers`` processes for that group
    (started at the group's first call), so a slow function delays only the requests that need
    it, never the feature lookups of other services. A call that takes longer than ``timeout``
    answers ``504 transform_timeout`` (its worker is replaced); a worker that dies answers
    ``503 transform_worker_failed`` and the next call starts a new one. A realtime view belongs
    to at most one transform server group; views in no group run in the serving process.
    """

    kind = "transform_server_group"

    @checked_arguments
    def __init__(
        self,
        name: str,
        views: Sequence[RealtimeFeatureView | str] = (),
        *,
        workers: int = 2,
        timeout: timedelta | float = timedelta(seconds=5),
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        if isinstance(views, str | RealtimeFeatureView):
            raise self._error(
                f"transform server group {name!r} needs a list of realtime feature views",
                hint="pass views=[view, ...] (realtime feature views or their names), or name "
                "the group in the views' transform_server_group=",
            )
        self.views = list(views)
        self.workers = workers
        self.timeout = timeout

    def view_objects(self) -> list[RealtimeFeatureView]:
        return [v for v in self.views if isinstance(v, RealtimeFeatureView)]

    def to_spec(self, root: str | None = None) -> TransformServerGroupSpec:
        names = []
        for item in self.views:
            if not isinstance(item, RealtimeFeatureView | str):
                raise self._error(
                    f"transform server group {self.name!r}: {item!r} is not a realtime feature "
                    "view",
                    hint="pass realtime feature views (or their names): other views are read "
                    "from the online store, not computed",
                )
            names.append(item if isinstance(item, str) else item.name)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int):
            raise self._error(
                f"transform server group {self.name!r}: workers must be an integer, got "
                f"{self.workers!r}",
                hint="e.g. workers=2",
            )
        timeout = self.timeout
        if isinstance(timeout, timedelta):
            seconds = timeout.total_seconds()
        elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
            seconds = float(timeout)
        else:
            raise self._error(
                f"transform server group {self.name!r}: timeout must be a timedelta, got "
                f"{timeout!r}",
                hint="e.g. timeout=timedelta(seconds=2)",
            )
        return TransformServerGroupSpec(
            views=names, workers=self.workers, timeout_seconds=seconds, **self._common(root)
        )
