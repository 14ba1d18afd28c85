"""The runtime of one workspace: resolved config, registry, stores and the applied specs.

Every part below the ``Context`` facade receives a :class:`Runtime` (never the facade): it is the
small object they actually use. ``Context`` composes one, and the server and the CLI reach it
through ``Context``::

    runtime = Runtime.open(load_config("examples/quickstart"), workspace="prod")
    runtime.specs().services["support_assistant"]   # the applied spec, cached per version
    runtime.online, runtime.offline, runtime.vectors  # the stores (vectors opened on first use)

What is derived from the registry (specs, service readers, context plans) is cached in one
version-stamped cache (:meth:`Runtime.cached`): an entry is rebuilt when the registry's data
version or this process's own writes change it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import TypeAdapter

from contextkit.config import RepoConfig
from contextkit.errors import NotFoundError, RegistryError, WorkspaceError, translating
from contextkit.framework.specs import (
    ContextServiceSpec,
    EmbeddingViewSpec,
    EntitySpec,
    FeatureViewSpec,
    FileSourceSpec,
    ObjectSpec,
    PromptViewSpec,
    PushSourceSpec,
    RealtimeFeatureViewSpec,
    ServerGroupSpec,
    StreamFeatureViewSpec,
    TransformServerGroupSpec,
)
from contextkit.stores.offline import OfflineStore, ParquetOfflineStore
from contextkit.stores.online import OnlineStore, SQLiteOnlineStore
from contextkit.stores.registry import ObjectRecord, RegistryStore, SQLiteRegistry, WorkspaceRecord

if TYPE_CHECKING:
    from contextkit.stores.vector import LanceVectorStore

SELECTED_WORKSPACE = "selected_workspace"
T = TypeVar("T")

_OBJECT_SPEC: TypeAdapter[Any] = TypeAdapter(ObjectSpec)


class WorkspaceSpecs:
    """The applied specs of one workspace version, by kind and name."""

    def __init__(self, workspace: WorkspaceRecord, records: Iterable[ObjectRecord]) -> None:
        self.workspace = workspace
        self.entities: dict[str, EntitySpec] = {}
        self.sources: dict[str, FileSourceSpec] = {}
        self.views: dict[str, FeatureViewSpec] = {}
        self.embedding_views: dict[str, EmbeddingViewSpec] = {}
        self.prompts: dict[str, PromptViewSpec] = {}
        self.services: dict[str, ContextServiceSpec] = {}
        self.push_sources: dict[str, PushSourceSpec] = {}
        self.stream_views: dict[str, StreamFeatureViewSpec] = {}
        self.realtime_views: dict[str, RealtimeFeatureViewSpec] = {}
        self.server_groups: dict[str, ServerGroupSpec] = {}
        self.transform_server_groups: dict[str, TransformServerGroupSpec] = {}
        by_kind: dict[str, dict[str, Any]] = {
            "entity": self.entities,
            "file_source": self.sources,
            "database_source": self.sources,  # a table in the views' SQL, like a file
            "batch_feature_view": self.views,
            "embedding_view": self.embedding_views,
            "prompt_view": self.prompts,
            "context_service": self.services,
            "push_source": self.push_sources,
            "stream_feature_view": self.stream_views,
            "realtime_feature_view": self.realtime_views,
            "server_group": self.server_groups,
            "transform_server_group": self.transform_server_groups,
        }
        for record in records:
            target = by_kind.get(record.kind)
            if target is None:
                raise RegistryError(
                    f"the registry holds an object of unknown kind {record.kind!r}",
                    hint="upgrade contextkit: this registry was written by a newer version",
                )
            target[record.name] = _OBJECT_SPEC.validate_json(record.spec)

    def view_order(self) -> list[str]:
        """Batch feature view names, upstream views first."""
        ordered: list[str] = []

        def visit(name: str) -> None:
            if name in ordered:
                return
            for upstream in self.views[name].sources:
                if upstream in self.views:
                    visit(upstream)
            ordered.append(name)

        for name in sorted(self.views):
            visit(name)
        return ordered

    @property
    def feature_views(self) -> dict[str, Any]:
        """Every view that serves features: batch, stream and realtime."""
        return {**self.views, **self.stream_views, **self.realtime_views}

    def materialized_order(self) -> list[str]:
        """Every view `materialize` computes: feature views (upstream first), then embedding
        views (which may read feature views)."""
        return [*self.view_order(), *sorted(self.embedding_views)]

    def service(self, name: str) -> ContextServiceSpec:
        """The spec of a service of this (live) workspace; the error lists what exists."""
        if not self.workspace.live:
            raise WorkspaceError(
                f"workspace {self.workspace.name!r} is a dev workspace and does not serve",
                hint="read from a live workspace",
            )
        if name not in self.services:
            raise NotFoundError(
                f"unknown service {name!r} in workspace {self.workspace.name!r}",
                hint=("services: " + ", ".join(sorted(self.services)))
                if self.services
                else "apply a repo that defines a ContextService",
            )
        return self.services[name]

    def server_group_of(self, service: str) -> str | None:
        """The server group that serves ``service`` (None: in no group)."""
        for group in self.server_groups.values():
            if service in group.services:
                return group.name
        return None


class Runtime:
    """One repo's registry and stores, bound to a workspace: what the parts below the facade use.

    Stores are shared by every runtime :meth:`use` derives from this one.
    """

    def __init__(
        self,
        config: RepoConfig,
        registry: RegistryStore,
        online: OnlineStore,
        offline: OfflineStore,
        workspace: str | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.online = online
        self.offline = offline
        self._workspace = workspace
        # Shared by every runtime `use()` derives from this one.
        self._shared: dict[str, Any] = {"writes": 0, "cache": {}}

    @classmethod
    def open(cls, config: RepoConfig, workspace: str | None = None) -> Runtime:
        """Open the stores the config names (the one place that builds them): a SQLite or
        PostgreSQL registry, a SQLite or Redis online store, offline Parquet in a folder or on
        S3 (the vector store opens on first use, :attr:`vectors`). A store that cannot be
        reached is a ``store_error`` naming it (password masked) within its connect timeout;
        nothing is left open then."""
        opened: list[Any] = []
        try:
            with translating:
                registry = _open_registry(config)
                opened.append(registry)
                online = _open_online(config)
                opened.append(online)
                offline = ParquetOfflineStore(config.offline_location)
        except BaseException:
            for store in reversed(opened):
                with contextlib.suppress(Exception):  # best effort
                    store.close()
            raise
        return cls(config, registry, online, offline, workspace)

    def use(self, workspace: str) -> Runtime:
        """This runtime bound to another workspace (the stores and caches are shared)."""
        other = Runtime.__new__(Runtime)
        other.__dict__.update(self.__dict__)
        other._workspace = workspace
        return other

    def shared(self, name: str, create: Callable[[], T]) -> T:
        """One object per name, created on first use and shared by every derived runtime."""
        found = self._shared.get(name)
        if found is None:
            found = self._shared[name] = create()
        return found

    @property
    def vectors(self) -> LanceVectorStore:
        """The vector store (LanceDB), opened on first use: it imports lancedb."""

        def open_vectors() -> LanceVectorStore:
            from contextkit.stores.vector import LanceVectorStore

            settings = self.config.vector_store
            with translating:
                return LanceVectorStore(
                    self.config.vector_location,
                    exact_cache_max_bytes=settings.exact_cache_max_bytes,
                    exact_cache_total_bytes=settings.exact_cache_total_bytes,
                )

        return self.shared("vectors", open_vectors)

    @property
    def has_vectors(self) -> bool:
        """Whether a vector store may hold tables (without creating one locally): always for
        one on object storage, whose tables are listed through the store."""
        location = self.config.vector_location
        if "vectors" in self._shared or location.startswith("s3://"):
            return True
        return self.config.vector_path.exists()

    # -- workspaces -------------------------------------------------------------------------
    @property
    def workspace(self) -> str:
        """The workspace this runtime reads and writes: explicit, else the selected one."""
        if self._workspace:
            return self._workspace
        selected = self.registry.get_setting(SELECTED_WORKSPACE)
        if selected:
            return selected
        names = [w.name for w in self.registry.list_workspaces()]
        if len(names) == 1:
            return names[0]
        raise WorkspaceError(
            "no workspace selected",
            hint="pass --workspace NAME, or run `contextkit workspace select NAME` "
            "(create one with `contextkit workspace create NAME --live`)",
        )

    def workspace_record(self, name: str | None = None) -> WorkspaceRecord:
        """The registry's record of a workspace (``WorkspaceError`` naming it when unknown)."""
        with translating:
            return self.registry.get_workspace(name or self.workspace)

    # -- what is derived from the registry ------------------------------------------------------
    def wrote(self) -> None:
        """Note a registry write by this process, so every cached entry is rebuilt."""
        self._shared["writes"] += 1

    def _version(self) -> tuple[int, int]:
        return (self.registry.data_version(), self._shared["writes"])

    def cached(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()``, cached under ``key`` until the registry changes."""
        version = self._version()
        found = self._shared["cache"].get(key)
        if found is not None and found[0] == version:
            return found[1]
        value = build()
        self._shared["cache"][key] = (version, value)
        return value

    def specs(self, workspace: str | None = None) -> WorkspaceSpecs:
        """The applied specs of a workspace (cached until the registry changes)."""
        name = workspace or self.workspace
        return self.cached(
            ("specs", name),
            lambda: WorkspaceSpecs(self.workspace_record(name), self.registry.list_objects(name)),
        )

    def close(self) -> None:
        self.registry.close()
        self.online.close()


def _open_registry(config: RepoConfig) -> RegistryStore:
    if config.registry_is_postgres:
        from contextkit.stores.postgres_registry import PostgresRegistry

        return PostgresRegistry(config.registry)
    return SQLiteRegistry(config.registry_path)


def _open_online(config: RepoConfig) -> OnlineStore:
    settings = config.online_store
    if settings.type == "redis":
        from contextkit.stores.redis_online import RedisOnlineStore

        assert settings.url is not None  # checked by the config
        return RedisOnlineStore(settings.url, prefix=config.redis_prefix)
    return SQLiteOnlineStore(config.online_path)
