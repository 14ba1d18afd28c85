"""Server groups: which ``contextkit serve`` processes serve which context services."""

from __future__ import annotations

from collections.abc import Sequence

from contextkit.framework.definitions._base import Definition, caller_location, checked_arguments
from contextkit.framework.definitions.services import ContextService
from contextkit.framework.specs import ServerGroupSpec


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
