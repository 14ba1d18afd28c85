"""The Python SDK facade: ``contextkit.connect(...)`` returns a :class:`Context`.

A ``Context`` composes the registry, the stores and the core modules (plan, materialize, retrieve)
for one repo config and one workspace. The CLI and the server are thin shells over it::

    import contextkit
    ctx = contextkit.connect("examples/quickstart", workspace="prod")
    ctx.get_features("support_assistant", entities={"user_id": [1, 2, 3]}).to_pandas()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.config import RepoConfig, load_config
from contextkit.errors import (
    BadRequestError,
    ContextKitError,
    NotFoundError,
    RegistryError,
    WorkspaceError,
)
from contextkit.materialize import JobResult, drop_view_data, materialize_view
from contextkit.plan import Plan, apply_plan, compute_plan
from contextkit.retrieve import OnlineFeatures, ServiceReader
from contextkit.specs import ContextServiceSpec, EntitySpec, FeatureViewSpec, FileSourceSpec
from contextkit.stores.errors import (
    ApplyConflictError,
    MissingError,
    RegistryVersionError,
    StoreFailure,
)
from contextkit.stores.offline import ParquetOfflineStore
from contextkit.stores.online import SQLiteOnlineStore
from contextkit.stores.registry import JobRecord, SQLiteRegistry, WorkspaceRecord

if TYPE_CHECKING:
    from contextkit.access import Access
    from contextkit.offline_retrieval import OfflineFeatures

_SPEC_TYPES = {
    "entity": EntitySpec,
    "file_source": FileSourceSpec,
    "batch_feature_view": FeatureViewSpec,
    "context_service": ContextServiceSpec,
}
SELECTED_WORKSPACE = "selected_workspace"


def translate_store_errors(exc: StoreFailure) -> ContextKitError:
    """A store's failure as the user-facing error of the matching kind."""
    if isinstance(exc, RegistryVersionError):
        return RegistryError(exc.message, hint=exc.hint)
    if isinstance(exc, MissingError):
        return NotFoundError(exc.message, hint=exc.hint)
    if isinstance(exc, ApplyConflictError):
        return WorkspaceError(exc.message, hint=exc.hint)
    from contextkit.errors import StoreError

    return StoreError(exc.message, hint=exc.hint)


class _Translating:
    """Context manager turning store failures into contextkit errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and isinstance(exc, StoreFailure):
            raise translate_store_errors(exc) from exc


_translating = _Translating()


class WorkspaceSpecs:
    """The applied specs of one workspace version, by kind and name."""

    def __init__(self, workspace: WorkspaceRecord, records) -> None:
        self.workspace = workspace
        self.entities: dict[str, EntitySpec] = {}
        self.sources: dict[str, FileSourceSpec] = {}
        self.views: dict[str, FeatureViewSpec] = {}
        self.services: dict[str, ContextServiceSpec] = {}
        target = {
            "entity": self.entities,
            "file_source": self.sources,
            "batch_feature_view": self.views,
            "context_service": self.services,
        }
        for record in records:
            spec_type = _SPEC_TYPES.get(record.kind)
            if spec_type is None:
                raise RegistryError(
                    f"the registry holds an object of unknown kind {record.kind!r}",
                    hint="upgrade contextkit: this registry was written by a newer version",
                )
            target[record.kind][record.name] = spec_type.model_validate_json(record.spec)

    def view_order(self) -> list[str]:
        """View names, upstream views first."""
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


class Context:
    """One repo's registry and stores, bound to a workspace. Create it with :func:`connect`."""

    def __init__(self, config: RepoConfig, workspace: str | None = None) -> None:
        self.config = config
        with _translating:
            self.registry = SQLiteRegistry(config.registry_path)
        self.online = SQLiteOnlineStore(config.online_path)
        self.offline = ParquetOfflineStore(config.offline_path)
        self._workspace = workspace
        self._writes = 0
        self._specs_cache: dict[str, tuple[tuple[int, int], WorkspaceSpecs]] = {}
        self._readers: dict[tuple[str, str], tuple[tuple[int, int], ServiceReader]] = {}

    # -- workspaces ---------------------------------------------------------------------------
    @property
    def workspace(self) -> str:
        """The workspace this context reads and writes: explicit, else the selected one."""
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

    def use(self, workspace: str) -> Context:
        """This context bound to another workspace (shares the stores)."""
        other = Context.__new__(Context)
        other.__dict__.update(self.__dict__)
        other._workspace = workspace
        return other

    def list_workspaces(self) -> list[WorkspaceRecord]:
        return self.registry.list_workspaces()

    def create_workspace(self, name: str, live: bool = False) -> WorkspaceRecord:
        if not name.replace("-", "_").isidentifier():
            raise BadRequestError(
                f"workspace name {name!r} is not valid",
                hint="use letters, digits, '_' and '-', starting with a letter",
            )
        with _translating:
            record = self.registry.create_workspace(name, live)
        self._writes += 1
        return record

    def select_workspace(self, name: str) -> None:
        with _translating:
            self.registry.get_workspace(name)
        self.registry.set_setting(SELECTED_WORKSPACE, name)

    def delete_workspace(self, name: str) -> None:
        """Delete a workspace, its applied objects, its jobs and its materialized data."""
        specs = self.specs(name)
        with _translating:
            self.registry.delete_workspace(name)
        self._writes += 1
        for view in specs.views:
            drop_view_data(self.online, self.offline, name, view)
        if self.registry.get_setting(SELECTED_WORKSPACE) == name:
            self.registry.set_setting(SELECTED_WORKSPACE, "")

    def _workspace_record(self, name: str | None = None) -> WorkspaceRecord:
        with _translating:
            return self.registry.get_workspace(name or self.workspace)

    # -- applied specs ------------------------------------------------------------------------
    def _state(self) -> tuple[int, int]:
        return (self.registry.data_version(), self._writes)

    def specs(self, workspace: str | None = None) -> WorkspaceSpecs:
        """The applied specs of a workspace (cached until the registry changes)."""
        name = workspace or self.workspace
        state = self._state()
        cached = self._specs_cache.get(name)
        if cached is not None and cached[0] == state:
            return cached[1]
        record = self._workspace_record(name)
        specs = WorkspaceSpecs(record, self.registry.list_objects(name))
        self._specs_cache[name] = (state, specs)
        return specs

    def list_services(self) -> list[ContextServiceSpec]:
        return list(self.specs().services.values())

    # -- plan / apply -------------------------------------------------------------------------
    def plan(self, repo_path: str | Path | None = None) -> Plan:
        """Load and validate the repo, then diff it against the workspace."""
        from contextkit.repo import load_repo
        from contextkit.validate import build_specs, validate

        repo = load_repo(repo_path or self.config.root)
        specs = validate(build_specs(repo), repo.config.root.resolve())
        with _translating:
            return compute_plan(self.registry, self.workspace, specs)

    def apply(self, plan: Plan) -> int:
        """Apply a plan atomically; returns the new workspace version."""
        with _translating:
            version = apply_plan(self.registry, plan)
        self._writes += 1
        if plan.live:
            for change in plan.changes:
                if change.action == "delete" and change.kind == "batch_feature_view":
                    drop_view_data(self.online, self.offline, plan.workspace, change.name)
        return version

    # -- materialization ----------------------------------------------------------------------
    def materialize(
        self,
        views: Sequence[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        full: bool = False,
        on_stage: Callable[[str, str], None] | None = None,
    ) -> list[JobResult]:
        """Materialize views (default: all) of the live workspace; one job per view."""
        specs = self.specs()
        if not specs.workspace.live:
            raise WorkspaceError(
                f"workspace {specs.workspace.name!r} is a dev workspace: it validates and plans "
                "but does not materialize",
                hint="apply to a live workspace (`contextkit workspace create prod --live`)",
            )
        names = list(views) if views else specs.view_order()
        unknown = [n for n in names if n not in specs.views]
        if unknown:
            raise NotFoundError(
                f"unknown feature view(s): {', '.join(unknown)}",
                hint="applied views: " + ", ".join(sorted(specs.views))
                if specs.views
                else "apply the repo first with `contextkit apply`",
            )
        results = []
        for name in names:
            results.append(
                materialize_view(
                    registry=self.registry,
                    online=self.online,
                    offline=self.offline,
                    root=self.config.root.resolve(),
                    workspace=specs.workspace.name,
                    view=specs.views[name],
                    sources=specs.sources,
                    views=specs.views,
                    start=start,
                    end=end,
                    full=full,
                    on_stage=(lambda stage, n=name: on_stage(n, stage)) if on_stage else None,
                )
            )
        return results

    def jobs(self, view: str | None = None, limit: int = 50) -> list[JobRecord]:
        return self.registry.list_jobs(self.workspace, view, limit)

    # -- online retrieval ---------------------------------------------------------------------
    def service_reader(self, service: str) -> ServiceReader:
        """The precomputed reader of a service (cached until the registry changes)."""
        workspace = self.workspace
        state = self._state()
        cached = self._readers.get((workspace, service))
        if cached is not None and cached[0] == state:
            return cached[1]
        specs = self.specs(workspace)
        if not specs.workspace.live:
            raise WorkspaceError(
                f"workspace {workspace!r} is a dev workspace and does not serve features",
                hint="read from a live workspace",
            )
        if service not in specs.services:
            raise NotFoundError(
                f"unknown service {service!r} in workspace {workspace!r}",
                hint=("services: " + ", ".join(sorted(specs.services)))
                if specs.services
                else "apply a repo that defines a ContextService",
            )
        reader = ServiceReader.build(workspace, specs.services[service], specs.views)
        self._readers[(workspace, service)] = (state, reader)
        return reader

    def get_features(
        self, service: str, entities: Mapping[str, Sequence[Any] | Any]
    ) -> OnlineFeatures:
        """Latest feature values of ``service`` for a batch of entities.

        ``entities`` maps each join key to a list of values (one per entity row)::

            ctx.get_features("support_assistant", entities={"user_id": [1, 2, 3]})

        A key with no stored value gives nulls (status ``MISSING``), not an error.
        """
        return self.service_reader(service).read(self.online, entities)

    # -- offline retrieval ------------------------------------------------------------------------
    def get_features_for_events(
        self,
        events: Any,
        service_or_views: str | Sequence[str],
        timestamp_key: str = "ts",
        from_source: bool | None = None,
    ) -> OfflineFeatures:
        """Point-in-time-correct features for each event row (lazy; see ``OfflineFeatures``).

        ``events``: a pandas DataFrame, pyarrow Table, Parquet path or DuckDB relation with the
        join keys and ``timestamp_key``. ``from_source``: None picks the offline store when it
        covers the events (else the sources); True/False forces one. Dev workspaces always read
        the sources::

            ctx.get_features_for_events(events, "support_assistant").to_pandas()
        """
        from contextkit.offline_retrieval import OfflineFeatures, resolve_refs

        if not self.specs().workspace.live:
            from_source = True
        refs = resolve_refs(self, service_or_views)
        return OfflineFeatures(self, events, refs, timestamp_key, from_source)

    # -- access control ---------------------------------------------------------------------
    @property
    def access(self) -> Access:
        """API keys and roles of this registry: ``ctx.access.create_key("app", ...)``."""
        found = self.__dict__.get("_access")
        if found is None:
            from contextkit.access import Access

            found = self.__dict__["_access"] = Access(self.registry)
        return found

    def close(self) -> None:
        self.registry.close()
        self.online.close()


def connect(path: str | Path = ".", workspace: str | None = None) -> Context:
    """Open the repo at ``path`` (a folder with ``contextkit.yaml``, or that file) for SDK use."""
    config = load_config(path)
    return Context(config, workspace)
