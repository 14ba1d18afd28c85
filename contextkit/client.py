"""The Python SDK facade: ``contextkit.connect(...)`` returns a :class:`Context`.

A ``Context`` composes the registry, the stores and the core modules (plan, materialize, retrieve)
for one repo config and one workspace. The CLI and the server are thin shells over it::

    import contextkit
    ctx = contextkit.connect("examples/quickstart", workspace="prod")
    ctx.get_features("support_assistant", entities={"user_id": [1, 2, 3]}).to_pandas()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.compute.materialize import JobResult, drop_view_data, materialize_view
from contextkit.config import RepoConfig, load_config
from contextkit.errors import BadRequestError, NotFoundError, WorkspaceError
from contextkit.errors import translating as _translating
from contextkit.framework.plan import Plan, apply_plan, compute_plan
from contextkit.framework.specs import ContextServiceSpec, EmbeddingViewSpec
from contextkit.framework.workspace import SELECTED_WORKSPACE, Runtime, WorkspaceSpecs
from contextkit.retrieval.cache import read_features
from contextkit.retrieval.online import OnlineFeatures, ServiceReader, service_reader
from contextkit.stores.registry import JobRecord, WorkspaceRecord

if TYPE_CHECKING:
    import numpy as np

    from contextkit.compute.embedding import Documents
    from contextkit.compute.offline import OfflineFeatures
    from contextkit.compute.streaming import IngestResult
    from contextkit.governance.access import Access
    from contextkit.governance.jobs import JobService
    from contextkit.governance.monitoring import Monitoring
    from contextkit.retrieval.assemble import ContextPlan, ContextRequest, ContextResult
    from contextkit.retrieval.chat import ChatReply
    from contextkit.retrieval.datasets import RenderedDataset
    from contextkit.stores.vector import LanceVectorStore


class Context:
    """One repo's registry and stores, bound to a workspace. Create it with :func:`connect`.

    A thin facade: each method checks its input and delegates to a part (``framework``,
    ``compute``, ``retrieval``, ``governance``), handing it the :class:`Runtime` it composes.
    """

    def __init__(self, config: RepoConfig, workspace: str | None = None) -> None:
        self.runtime = Runtime.open(config, workspace)

    @classmethod
    def _of(cls, runtime: Runtime) -> Context:
        ctx = cls.__new__(cls)
        ctx.runtime = runtime
        return ctx

    @property
    def config(self) -> RepoConfig:
        return self.runtime.config

    @property
    def registry(self):
        return self.runtime.registry

    @property
    def online(self):
        return self.runtime.online

    @property
    def offline(self):
        return self.runtime.offline

    @property
    def vectors(self) -> LanceVectorStore:
        """The vector store (LanceDB), opened on first use: it imports lancedb."""
        return self.runtime.vectors

    # -- workspaces ---------------------------------------------------------------------------
    @property
    def workspace(self) -> str:
        """The workspace this context reads and writes: explicit, else the selected one."""
        return self.runtime.workspace

    def use(self, workspace: str) -> Context:
        """This context bound to another workspace (shares the stores)."""
        return Context._of(self.runtime.use(workspace))

    def workspace_record(self, name: str | None = None) -> WorkspaceRecord:
        """The registry's record of a workspace (this one by default)."""
        return self.runtime.workspace_record(name)

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
        self.runtime.wrote()
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
        self.runtime.wrote()
        for view in specs.views:
            drop_view_data(self.online, self.offline, name, view)
        for view in specs.embedding_views:
            self._drop_vectors(name, view)
        if self.registry.get_setting(SELECTED_WORKSPACE) == name:
            self.registry.set_setting(SELECTED_WORKSPACE, "")

    def _drop_vectors(self, workspace: str, view: str) -> None:
        from contextkit.compute.layout import vector_table

        if self.runtime.has_vectors:
            self.vectors.drop_table(vector_table(workspace, view))

    # -- applied specs ------------------------------------------------------------------------
    def specs(self, workspace: str | None = None) -> WorkspaceSpecs:
        """The applied specs of a workspace (cached until the registry changes)."""
        return self.runtime.specs(workspace)

    def list_services(self) -> list[ContextServiceSpec]:
        return list(self.specs().services.values())

    # -- plan / apply -------------------------------------------------------------------------
    def plan(self, repo_path: str | Path | None = None) -> Plan:
        """Load and validate the repo, then diff it against the workspace."""
        from contextkit.framework.repo import load_repo
        from contextkit.framework.validation import build_specs, validate

        repo = load_repo(repo_path or self.config.root)
        with _translating:
            specs = validate(
                build_specs(repo),
                repo.config.root.resolve(),
                repo.config.models,
                repo.config.llm,
                render_limits=repo.config.prompts.render_limits(),
            )
        by_name = {s.name: s for s in specs if s.kind == "file_source"}
        root = repo.config.root.resolve()

        def estimate_rows(spec: Any) -> int | None:
            from contextkit.stores.source_files import source_dataset

            sources = [by_name[n] for n in getattr(spec, "sources", []) if n in by_name]
            if not sources:
                return None
            return sum(source_dataset(s.path, s.format, root=root).count_rows() for s in sources)

        with _translating:
            return compute_plan(self.registry, self.workspace, specs, estimate_rows=estimate_rows)

    def apply(self, plan: Plan) -> int:
        """Run the plan's ``apply`` steps in order (the registry write, then the data drops of
        deleted views); returns the new workspace version. Its ``materialize`` steps are left to
        :meth:`materialize`."""
        version = plan.base_version
        for step in plan.steps:
            if step.run_by != "apply":
                continue
            if step.action == "write_registry":
                with _translating:
                    version = apply_plan(self.registry, plan)
                self.runtime.wrote()
            elif step.action == "drop_data" and step.kind == "embedding_view":
                self._drop_vectors(plan.workspace, step.name)
            elif step.action == "drop_data":
                drop_view_data(self.online, self.offline, plan.workspace, step.name)
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
        on_progress: Callable[[str, Any], None] | None = None,
    ) -> list[JobResult]:
        """Materialize views (default: all, embedding views too) of the live workspace.

        One job per view. ``start``/``end`` apply to feature views; an embedding view always
        encodes its source's current documents (incrementally: only new or changed chunks).
        ``on_progress(view, EncodeProgress)`` reports encoding progress (docs/s).
        """
        specs = self.specs()
        if not specs.workspace.live:
            raise WorkspaceError(
                f"workspace {specs.workspace.name!r} is a dev workspace: it validates and plans "
                "but does not materialize",
                hint="apply to a live workspace (`contextkit workspace create prod --live`)",
            )
        self.flush_ingest_logs()  # pushed records join the offline store before any job reads
        from contextkit.compute.streaming import load_histories

        with _translating:  # stream views count their push sources' batch_source history
            load_histories(self.runtime)
        names = list(views) if views else specs.materialized_order()
        unknown = [n for n in names if n not in specs.views and n not in specs.embedding_views]
        if unknown:
            known = sorted([*specs.views, *specs.embedding_views])
            raise NotFoundError(
                f"unknown view(s): {', '.join(unknown)}",
                hint="applied views: " + ", ".join(known)
                if known
                else "apply the repo first with `contextkit apply`",
            )
        results = []
        for name in names:
            stage_cb = (lambda stage, n=name: on_stage(n, stage)) if on_stage else None
            if name in specs.embedding_views:
                from contextkit.compute.embedding import materialize_embedding_view

                progress_cb = (lambda p, n=name: on_progress(n, p)) if on_progress else None
                with _translating:
                    result = materialize_embedding_view(
                        registry=self.registry,
                        # opened only when something needs encoding (a no-op never imports it)
                        vectors=lambda: self.vectors,
                        vector_location=self.config.vector_location,
                        root=self.config.root.resolve(),
                        workspace=specs.workspace.name,
                        view=specs.embedding_views[name],
                        sources=specs.sources,
                        views=specs.views,
                        models=self.config.models,
                        full=full,
                        on_progress=progress_cb,
                        on_stage=stage_cb,
                        pushed=self._pushed_events(specs, specs.embedding_views[name]),
                        monitoring=self.config.monitoring.enabled,
                        compute=self.config.compute,  # compute: ray encodes on Ray Data
                    )
                results.append(result)
                continue
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
                    on_stage=stage_cb,
                    monitoring=self.config.monitoring.enabled,
                    max_online_shrink=self.config.monitoring.max_online_shrink,
                    compute=self.config.compute,  # compute: ray computes partitions on Ray
                )
            )
        return results

    def flush_ingest_logs(self) -> dict[str, int]:
        """Append what was pushed since the last flush to each push source's offline log
        (Parquet); returns the rows flushed per source. ``materialize`` calls it."""
        from contextkit.compute.streaming import flush_log

        specs = self.specs()
        if not specs.workspace.live:
            return {}
        with _translating:
            return {
                name: flush_log(self.runtime, specs.workspace.name, source)
                for name, source in specs.push_sources.items()
            }

    def _pushed_events(self, specs: WorkspaceSpecs, view: EmbeddingViewSpec) -> dict[str, Any]:
        """The events of the push sources a view reads (its documents come from the log)."""
        from contextkit.compute.streaming import log_arrow

        return {
            name: log_arrow(self.runtime, specs.workspace.name, specs.push_sources[name])
            for name in view.sources
            if name in specs.push_sources
        }

    def jobs(self, view: str | None = None, limit: int = 50) -> list[JobRecord]:
        return self.registry.list_jobs(self.workspace, view, limit)

    @property
    def job_service(self) -> JobService:
        """Trigger, follow, cancel and retry jobs run by worker threads of this process
        (``ctx.job_service.trigger("prod", ["view"])``; see docs/control-plane.md)."""
        from contextkit.governance.jobs import JobService

        return self.runtime.shared("job_service", lambda: JobService(self.runtime))

    # -- online retrieval ---------------------------------------------------------------------
    def service_reader(self, service: str) -> ServiceReader:
        """The precomputed reader of a service (cached until the registry changes)."""
        return service_reader(self.runtime, service)

    def get_features(
        self,
        service: str,
        entities: Mapping[str, Sequence[Any] | Any],
        request_context: Mapping[str, Any] | None = None,
        *,
        cache: bool = True,
    ) -> OnlineFeatures:
        """Latest feature values of ``service`` for a batch of entities.

        ``entities`` maps each join key to a list of values (one per entity row)::

            ctx.get_features("support_assistant", entities={"user_id": [1, 2, 3]})

        A key with no stored value gives nulls (status ``MISSING``), not an error.
        ``request_context`` gives the values realtime feature views read (a value applies to
        every entity row; a list gives one per row). A service declared with ``cache=`` is
        answered from this process's serving cache where it may; ``cache=False`` reads the
        online store (and leaves the cache as it was).
        """
        reader = self.service_reader(service)
        return read_features(
            self.runtime, reader, entities, request_context, read=cache, write=cache
        )

    # -- ingest -----------------------------------------------------------------------------------
    def ingest(
        self,
        source: str,
        records: Sequence[Any],
        *,
        dry_run: bool = False,
        partial: bool = False,
    ) -> IngestResult:
        """Push records to a push source: validated, then written durably to its ingest log and
        to the online state of its stream feature views, in one transaction.

        Each record is an object with every field of the source's schema, or
        ``{"record": {...}, "idempotency_key": "..."}`` (a key seen before is skipped). One bad
        record rejects the batch (``IngestError`` lists every error by index) unless
        ``partial=True``; ``dry_run=True`` only validates::

            ctx.ingest("page_views", [{"user_id": 7, "product_id": 12, "ts": "2024-06-01T12:00Z"}])
        """
        from contextkit.compute.streaming import ingest_records

        with _translating:
            return ingest_records(self.runtime, source, records, dry_run=dry_run, partial=partial)

    def wait_for_embeddings(self, timeout: float = 30.0) -> bool:
        """Block until every pushed record is encoded into its embedding views (push-based
        updates run in a background thread); False if ``timeout`` seconds passed first.

        Raises ``PushEmbeddingError`` (``contextkit.errors``) when records pushed
        to this repo since the previous call could not be encoded; ``details["failures"]`` lists
        them. They stay in the ingest log: ``materialize`` of the view encodes them."""
        from contextkit.compute.push_embeddings import push_encoder

        return push_encoder().wait(timeout, registry=self.config.registry_key)

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
        the sources. With ``compute: ray`` (contextkit.yaml or ``CONTEXTKIT_COMPUTE``) the join
        runs on Ray, partitioned by entity hash, in the same order and dtypes (docs/compute.md)::

            ctx.get_features_for_events(events, "support_assistant").to_pandas()
        """
        from contextkit.compute.offline import OfflineFeatures, resolve_refs

        if not self.specs().workspace.live:
            from_source = True
        refs = resolve_refs(self.runtime, service_or_views)
        compute = self.runtime.config.compute  # compute: ray runs the join on Ray
        return OfflineFeatures(self.runtime, events, refs, timestamp_key, from_source, compute)

    def generate_dataset(
        self,
        events: Any,
        service_or_prompt: str,
        *,
        prompt: str | None = None,
        timestamp_key: str = "ts",
        documents: bool | Sequence[str] = False,
        label_column: str | None = None,
        from_source: bool | None = None,
        top_k: int | None = None,
        filter: Mapping[str, Any] | None = None,
        searches: Mapping[str, Mapping[str, Any]] | None = None,
        on_progress: Callable[[int, int | None], None] | None = None,
    ) -> RenderedDataset:
        """A prompt view rendered for each event with that time's features (and, with
        ``documents=True`` or a list of search names, the documents its searches returned
        then). Lazy; see :mod:`contextkit.retrieval.datasets`. The events carry the join keys, the
        time, ``query`` and request-context columns::

            ds = ctx.generate_dataset(events, "support_assistant", label_column="answer")
            ds.to_jsonl("train.jsonl")   # {"messages": [...]} per event; or to_pandas()
        """
        from contextkit.retrieval.datasets import generate_dataset

        with _translating:
            return generate_dataset(
                self.runtime,
                events,
                service_or_prompt,
                prompt=prompt,
                timestamp_key=timestamp_key,
                documents=documents,
                label_column=label_column,
                from_source=from_source,
                top_k=top_k,
                filter=filter,
                searches=searches,
                on_progress=on_progress,
                compute=self.runtime.config.compute,
            )

    # -- access control ---------------------------------------------------------------------
    @property
    def access(self) -> Access:
        """API keys and roles of this registry: ``ctx.access.create_key("app", ...)``."""
        from contextkit.governance.access import Access

        return self.runtime.shared("access", lambda: Access(self.registry))

    @property
    def monitoring(self) -> Monitoring:
        """Data quality, drift, freshness and alerts of the views: ``ctx.monitoring.status()``,
        ``ctx.monitoring.quality("user_profile")``, ``ctx.monitoring.alerts()``."""
        from contextkit.governance.monitoring import Monitoring

        return Monitoring(self.runtime)

    # -- context assembly ------------------------------------------------------------------------
    def context_plan(self, service: str, prompt: str | None = None) -> ContextPlan:
        """The precomputed plan of a context request (cached until the registry changes)."""
        from contextkit.retrieval.assemble import context_plan

        return context_plan(self.runtime, service, prompt)

    def context_request(
        self, service: str, prompt: str | None, options: Mapping[str, Any]
    ) -> tuple[ContextPlan, ContextRequest]:
        """The plan of a context request and the request parsed against it (``BadRequestError``
        naming the field); ``options`` are :meth:`get_context`'s keyword arguments."""
        from contextkit.retrieval.assemble import parse_request

        plan = self.context_plan(service, prompt)
        return plan, parse_request(plan, **options)

    def get_context(
        self,
        service: str,
        entities: Mapping[str, Any] | None = None,
        *,
        query: str | None = None,
        request_context: Mapping[str, Any] | None = None,
        prompt: str | None = None,
        top_k: int | None = None,
        filter: Mapping[str, Any] | None = None,
        searches: Mapping[str, Mapping[str, Any]] | None = None,
        render: bool = True,
        complete: bool = False,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        cache: bool = True,
    ) -> ContextResult:
        """Everything an LLM call needs, for one entity: features, documents and the prompt.

        The service's feature lookups and searches run concurrently; the prompt view (``prompt``,
        default: the service's first) is rendered within its token budget, dropping the
        worst-ranked documents first. ``complete=True`` also calls the LLM (``model`` overrides
        the prompt's) through litellm::

            result = ctx.get_context("support_assistant", {"user_id": 42},
                                     query="Can I still return my running shoes?")
            result.prompt["messages"], result.documents["products"], result.features

        ``top_k``/``filter`` override every search's; ``searches={"products": {"top_k": 3}}``
        one search's. A service declared with ``cache=`` answers the features of the same
        entity and request context, and identical searches, from this process's serving cache;
        ``cache=False`` reads the stores (and leaves the cache as it was). Bad input raises
        :class:`BadRequestError` naming the field.
        """
        from contextkit.retrieval.assemble import assemble

        plan, request = self.context_request(
            service,
            prompt,
            dict(
                entities=entities,
                query=query,
                request_context=request_context,
                top_k=top_k,
                filter=filter,
                searches=searches,
                render=render,
                complete=complete,
                model=model,
                params=params,
                cache=cache,
            ),
        )
        return assemble(self.runtime, plan, request)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        service: str,
        entities: Mapping[str, Any] | None = None,
        prompt: str | None = None,
        request_context: Mapping[str, Any] | None = None,
        llm_model: str | None = None,
        top_k: int | None = None,
        filter: Mapping[str, Any] | None = None,
        searches: Mapping[str, Mapping[str, Any]] | None = None,
        **params: Any,
    ) -> ChatReply:
        """What ``POST /v1/chat/completions`` does: answer the conversation with the service's
        context. ``params`` are OpenAI sampling parameters (``temperature=0``)::

            reply = ctx.chat([{"role": "user", "content": "Where is my parcel?"}],
                             service="support_assistant", entities={"user_id": 7})
            reply.text, reply.context.documents["products"]
        """
        from contextkit.retrieval.chat import chat

        return chat(
            self.runtime,
            messages,
            service=service,
            entities=entities,
            prompt=prompt,
            request_context=request_context,
            llm_model=llm_model,
            top_k=top_k,
            filter=filter,
            searches=searches,
            **params,
        )

    # -- similarity search ------------------------------------------------------------------------
    def embedding_view(self, name: str) -> EmbeddingViewSpec:
        """The applied spec of an embedding view of a live workspace (NotFoundError otherwise)."""
        specs = self.specs()
        if not specs.workspace.live:
            raise WorkspaceError(
                f"workspace {specs.workspace.name!r} is a dev workspace and serves no documents",
                hint="search a live workspace",
            )
        view = specs.embedding_views.get(name)
        if view is None:
            known = ", ".join(sorted(specs.embedding_views)) or "none applied"
            hint = f"embedding views: {known}"
            if name in specs.views:
                hint = f"{name!r} is a feature view; search an embedding view ({known})"
            raise NotFoundError(
                f"unknown embedding view {name!r} in workspace {specs.workspace.name!r}", hint=hint
            )
        return view

    def search(
        self,
        view: str,
        query: str | None = None,
        *,
        vector: Sequence[float] | np.ndarray | None = None,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        mode: str = "vector",
        group_by: str | None = None,
        fusion: str | None = None,
        depth: int | None = None,
        weights: Sequence[float] | None = None,
        rerank: str | Mapping[str, Any] | None = None,
    ) -> Documents:
        """The ``top_k`` chunks of an embedding view most similar to ``query`` (or ``vector``);
        with ``group_by="document"`` the ``top_k`` best documents, each scored by its best
        chunk, which it carries as ``highlight``. Hybrid: ``fusion`` (``"blend"``, default, or
        ``"rrf"``), ``depth`` (candidates per list, 50) and ``weights`` (vector, text).
        ``rerank``: a reranker stage (``"local:<cross-encoder folder>"`` or a litellm rerank
        model, see :mod:`contextkit.compute.rerank`).

        ``mode``: ``"vector"`` (cosine similarity of the query encoded with the view's model),
        ``"text"`` (BM25 full-text) or ``"hybrid"`` (both, fused by reciprocal rank).
        ``filter`` is structured, over key and metadata columns:
        ``{"category": "shoes", "price": {"lt": 50}}`` (operators eq ne lt lte gt gte in not_in
        contains)::

            ctx.search("product_docs", "waterproof hiking boots", top_k=5, mode="hybrid")
        """
        from contextkit.compute.embedding import encoder_for, search_view

        spec = self.embedding_view(view)
        with _translating:
            encoder = None
            if vector is None and mode in ("vector", "hybrid"):
                encoder = encoder_for(spec, self.config.models, self.config.root.resolve())
            return search_view(
                self.vectors,
                encoder,
                self.workspace,
                spec,
                query=query,
                vector=vector,
                top_k=top_k,
                filter=filter,
                mode=mode,
                group_by=group_by,
                fusion=fusion,
                depth=depth,
                weights=weights,
                rerank=rerank,
                root=self.config.root.resolve(),
                registry=self.registry,  # names the job of a view still warming (503)
            )

    def warm(self) -> None:
        """Load what the first requests would (embedding models, vector tables) now, e.g. at
        server start, so that no request pays for it. Views never materialized are skipped."""
        for _, step in self.warm_steps():
            step()

    def _rebuild_online_if_empty(self) -> None:
        """Serving start-up: rebuild the online values an emptied (non-durable) online store
        lost, from the durable log and the sources; a store that is down now is left to the
        requests (503) and the next ingest (see contextkit.compute.online_rebuild)."""
        from contextkit.compute.online_rebuild import rebuild_if_empty
        from contextkit.stores.errors import StoreServerUnavailable

        with _translating:
            try:
                rebuild_if_empty(self.runtime)
            except StoreServerUnavailable:
                return  # requests answer 503 meanwhile; the store reconnects by itself

    def warm_steps(self) -> Iterator[tuple[str, Callable[[], object]]]:
        """The steps of :meth:`warm` as ``(description, run)`` pairs, in order (the server logs
        each with its time). Lazy: run each step before asking for the next, which may depend
        on it (the registry's specs are read by the first)."""
        from contextkit.compute.embedding import encoder_for
        from contextkit.compute.layout import vector_table

        yield "loading the registry", self.specs
        specs = self.specs()
        if not specs.workspace.live:
            return
        from contextkit.compute.online_rebuild import rebuilds_on_start

        if rebuilds_on_start(self.runtime):
            yield "restoring online values the online store lost", self._rebuild_online_if_empty
        root = self.config.root.resolve()
        if specs.embedding_views and self.runtime.has_vectors:
            # LanceDB's import (seconds): a step of its own, not hidden in the next one's check
            yield "opening the vector store", lambda: self.vectors
        for name, view in specs.embedding_views.items():
            table = vector_table(specs.workspace.name, name)
            with _translating:
                if not self.vectors.has_table(table):
                    continue

            def encode(view=view) -> None:
                from contextkit.embeddings import encode_query

                with _translating:  # the path searches take: loads (or exports) the model
                    encode_query(encoder_for(view, self.config.models, root), "warm")

            def open_table(table=table) -> None:
                with _translating:
                    self.vectors.warm(table)

            yield f"warming model {view.model!r} (embedding view {name!r})", encode
            yield f"opening vector table {table!r}", open_table
        if specs.prompts:
            from contextkit.prompts import get_token_counter

            for model in dict.fromkeys(p.model for p in specs.prompts.values()):
                # litellm's import and the tokenizer: seconds
                yield (
                    f"loading the tokenizer of {model!r}",
                    lambda m=model: get_token_counter(m).count("warm"),
                )
            for service in specs.services.values():
                for prompt_name in service.prompts or [None]:
                    what = f"planning service {service.name!r}" + (
                        f" with prompt view {prompt_name!r}" if prompt_name else ""
                    )
                    yield what, lambda s=service.name, p=prompt_name: self.context_plan(s, p)

    def close(self) -> None:
        self.registry.close()
        self.online.close()


def connect(path: str | Path = ".", workspace: str | None = None) -> Context:
    """Open the repo at ``path`` (a folder with ``contextkit.yaml``, or that file) for SDK use."""
    config = load_config(path)
    return Context(config, workspace)
