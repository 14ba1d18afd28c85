"""Validation: turn a loaded repo into checked, enriched specs, or say exactly what is wrong.

Checks (each error names the file and line of the object and gives a hint): references to unknown
entities, sources and views; dependency cycles; missing or unreadable source files; timestamp
columns of the wrong type; SQL that does not bind (run with LIMIT 0 in DuckDB against the sources'
real schemas); join keys and timestamps missing from a view's output; features over missing or
non-numeric columns; services over unknown views or features; prompt views whose model litellm
does not know (offline) or whose params are not generation parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from contextkit import compute
from contextkit.compute import EVENT_TIMESTAMP, Workspace
from contextkit.config import LLMConfig
from contextkit.definitions import _Definition
from contextkit.errors import ContextKitError, DefinitionError, ValidationErrors
from contextkit.expectations import expectation_problems
from contextkit.repo import Repo
from contextkit.specs import (
    NUMERIC_AGGREGATES,
    AnySpec,
    AttributeSpec,
    ContextServiceSpec,
    EmbeddingViewSpec,
    EntitySpec,
    FeatureRefSpec,
    FeatureViewSpec,
    FieldSpec,
    FileSourceSpec,
    PromptViewSpec,
    PushSourceSpec,
    RealtimeFeatureViewSpec,
    SearchSpec,
    StreamFeatureViewSpec,
)
from contextkit.types import NUMERIC_DTYPES, Bool, Float64, Int64, String, Timestamp

if TYPE_CHECKING:
    from contextkit.prompts import RenderLimits

# What a prompt template can read at the top level (see PromptView).
TEMPLATE_NAMES = ("features", "documents", "request", "query", "entities")


def build_specs(repo: Repo) -> list[AnySpec]:
    """Specs of every object in the repo (not yet validated)."""
    root = str(repo.config.root.resolve())
    specs, errors = [], []
    for obj in repo.objects:
        try:
            specs.append(obj.to_spec(root))
        except DefinitionError as exc:
            errors.append(exc)
        except Exception as exc:  # a user function that raised while rendering its SQL
            errors.append(_object_error(obj, f"{type(exc).__name__}: {exc}", root))
    if errors:
        raise ValidationErrors(errors)
    return specs


def _object_error(obj: _Definition, message: str, root: str) -> DefinitionError:
    return DefinitionError(f"{obj.kind} {obj.name!r}: {message}", location=str(obj.location(root)))


class _Checker:
    def __init__(self, specs: list[AnySpec], root: Path, render_limits=None) -> None:
        self.root = root
        self.render_limits = render_limits  # prompts.RenderLimits of the sample renders
        self.errors: list[DefinitionError] = []
        self.entities = {s.name: s for s in specs if isinstance(s, EntitySpec)}
        self.sources = {s.name: s for s in specs if isinstance(s, FileSourceSpec)}
        self.views = {s.name: s for s in specs if isinstance(s, FeatureViewSpec)}
        self.services = {s.name: s for s in specs if isinstance(s, ContextServiceSpec)}
        self.embedding_views = {s.name: s for s in specs if isinstance(s, EmbeddingViewSpec)}
        self.prompts = {s.name: s for s in specs if isinstance(s, PromptViewSpec)}
        self.push_sources = {s.name: s for s in specs if isinstance(s, PushSourceSpec)}
        self.stream_views = {s.name: s for s in specs if isinstance(s, StreamFeatureViewSpec)}
        self.realtime_views = {s.name: s for s in specs if isinstance(s, RealtimeFeatureViewSpec)}
        self.order = [s.name for s in specs]

    def error(self, spec: AnySpec, message: str, hint: str | None = None) -> None:
        where = str(spec.location) if spec.location else None
        self.errors.append(
            DefinitionError(f"{spec.kind} {spec.name!r}: {message}", location=where, hint=hint)
        )

    # -- sources ---------------------------------------------------------------------------
    def check_sources(self, con) -> dict[str, FileSourceSpec]:
        good = {}
        for name, source in self.sources.items():
            if not compute.source_file_exists(source, self.root):
                self.error(
                    source,
                    f"file not found: {source.path}",
                    hint="paths are relative to the repo root; generate or copy the data first",
                )
                continue
            raw = source.model_copy(update={"timestamp_field": None})
            try:
                columns = compute.describe(con, compute.source_scan_sql(raw, self.root))
            except Exception as exc:
                self.error(
                    source,
                    f"cannot read {source.path} as {source.format}: {_first_line(exc)}",
                    hint="check that the file is a valid, complete "
                    f"{source.format} file (re-generate it if it was cut short)",
                )
                continue
            types = {c.name: c.dtype for c in columns}
            ts = source.timestamp_field
            if ts is not None:
                if ts not in types:
                    self.error(
                        source,
                        f"timestamp_field {ts!r} is not a column of {source.path}",
                        hint=f"columns are: {', '.join(types)}",
                    )
                    continue
                if types[ts] != Timestamp:
                    self.error(
                        source,
                        f"timestamp_field {ts!r} has type {types[ts]}, not a timestamp",
                        hint="store it as a timestamp/date column, or cast it in a view's SQL",
                    )
                    continue
            good[name] = source.model_copy(update={"columns": columns})
        self.sources.update(good)
        return good

    # -- views -----------------------------------------------------------------------------
    def view_order(self) -> list[str]:
        """Views in dependency order; reports unknown references and cycles."""
        ordered: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, path: list[str]) -> bool:
            if state.get(name) == "done":
                return True
            if state.get(name) == "visiting":
                cycle = " -> ".join([*path[path.index(name) :], name])
                self.error(
                    self.views[name],
                    f"dependency cycle: {cycle}",
                    hint="a view cannot use itself as a source, directly or through other views",
                )
                return False
            state[name] = "visiting"
            ok = True
            for upstream in self.views[name].sources:
                if upstream in self.views:
                    ok = visit(upstream, [*path, name]) and ok
            state[name] = "done"
            if ok:
                ordered.append(name)
            return ok

        for view in self.views.values():
            missing = [s for s in view.sources if s not in self.sources and s not in self.views]
            for s in missing:
                self.error(
                    view,
                    f"unknown source {s!r}",
                    hint="define it in the repo (a FileSource or a feature view) or fix the name",
                )
            for e in view.entities:
                if e not in self.entities:
                    self.error(view, f"unknown entity {e!r}", hint="define it with Entity(...)")
        for name in self.views:
            visit(name, [])
        return ordered

    def check_view(
        self, ws: Workspace, view: FeatureViewSpec, good: set[str]
    ) -> FeatureViewSpec | None:
        if any(s not in good for s in view.sources) or any(
            e not in self.entities for e in view.entities
        ):
            return None  # an upstream problem was already reported
        ts = view.timestamp_field or self._default_timestamp(view)
        if not ts:
            self.error(
                view,
                "cannot tell which column is the event time",
                hint="pass timestamp_field=... to the decorator",
            )
            return None
        join_keys = []
        for e in view.entities:
            for k in self.entities[e].join_keys:
                if k.name not in [j.name for j in join_keys]:
                    join_keys.append(k)
        probe = view.model_copy(update={"timestamp_field": ts, "join_keys": join_keys})
        schema = self._output_schema(ws, view, probe)
        if schema is None:
            return None
        types = {c.name: c.dtype for c in schema}
        ok = True
        for key in join_keys:
            if key.name not in types:
                self.error(
                    view,
                    f"join key {key.name!r} is missing from the view's output",
                    hint=f"select {key.name} in the transformation (output: {', '.join(types)})",
                )
                ok = False
            elif key.dtype and key.dtype != types[key.name]:
                self.error(
                    view,
                    f"join key {key.name!r} is {types[key.name]} but the entity declares "
                    f"{key.dtype}",
                    hint="cast the column in the transformation or fix the entity's Field",
                )
                ok = False
        if ts not in types:
            self.error(
                view,
                f"timestamp_field {ts!r} is missing from the view's output",
                hint=f"select it in the transformation (output: {', '.join(types)})",
            )
            return None
        if types[ts] != Timestamp:
            self.error(
                view,
                f"timestamp_field {ts!r} has type {types[ts]}, not a timestamp",
                hint=f"cast it: CAST({ts} AS TIMESTAMP)",
            )
            return None
        features = self._check_features(view, types, {k.name for k in join_keys} | {ts})
        if features is None or not ok:
            return None
        checked = {f.name: f.dtype for f in features}
        for message, hint in expectation_problems(view.expectations, checked):
            self.error(view, message, hint)
        return view.model_copy(
            update={
                "timestamp_field": ts,
                "join_keys": [FieldSpec(name=k.name, dtype=types[k.name]) for k in join_keys],
                "output_schema": schema,
                "features": features,
            }
        )

    def _output_schema(
        self, ws: Workspace, view: AnySpec, transformation: FeatureViewSpec
    ) -> list[FieldSpec] | None:
        """The columns a view's transformation outputs (SQL bound with LIMIT 0, a python-mode
        function run on 100 rows per source); None after reporting why it does not run."""
        try:
            body = compute.output_sql(ws, transformation, sample_rows=100)
            return compute.describe(ws.con, f"SELECT * FROM ({body}) LIMIT 0")
        except ContextKitError as exc:
            self.errors.append(
                exc if isinstance(exc, DefinitionError) else DefinitionError(str(exc))
            )
        except Exception as exc:
            self.error(
                view,
                f"the transformation does not run: {_first_line(exc)}",
                hint="fix the query; source tables are named after the sources, with their "
                "columns: " + self._columns_hint(view),
            )
        return None

    def _default_timestamp(self, view: FeatureViewSpec) -> str | None:
        if len(view.sources) != 1:
            return None
        name = view.sources[0]
        if name in self.views:
            return EVENT_TIMESTAMP
        return self.sources[name].timestamp_field

    def _columns_hint(self, view: FeatureViewSpec) -> str:
        parts = []
        for name in view.sources:
            if name in self.sources:
                cols = ", ".join(c.name for c in self.sources[name].columns)
                parts.append(f"{name}({cols})")
        return "; ".join(parts)

    def _check_features(self, view, types, reserved):
        declared = view.features or [
            AttributeSpec(name=c, dtype=t) for c, t in types.items() if c not in reserved
        ]
        out, ok, names = [], True, set()
        for f in declared:
            if f.name in names or f.name == EVENT_TIMESTAMP:
                self.error(
                    view,
                    f"feature name {f.name!r} is used twice or reserved",
                    hint="give the feature another name (Aggregate(..., name=...))",
                )
                ok = False
            names.add(f.name)
            column = f.name if isinstance(f, AttributeSpec) else f.column
            if column is not None and column not in types:
                self.error(
                    view,
                    f"feature {f.name!r} reads column {column!r}, which the transformation does "
                    "not output",
                    hint=f"output columns: {', '.join(types)}",
                )
                ok = False
                continue
            if isinstance(f, AttributeSpec):
                if f.dtype and f.dtype != types[column]:
                    self.error(
                        view,
                        f"feature {f.name!r} is declared {f.dtype} but the column is "
                        f"{types[column]}",
                        hint="cast the column in the transformation or fix the dtype",
                    )
                    ok = False
                    continue
                out.append(f.model_copy(update={"dtype": types[column]}))
            else:
                col_type = types.get(column) if column else None
                if f.function in NUMERIC_AGGREGATES and col_type not in NUMERIC_DTYPES:
                    self.error(
                        view,
                        f"Aggregate {f.function!r} over column {column!r} of type {col_type}: "
                        "needs a numeric column",
                        hint="aggregate a numeric column, or use count/count_distinct/last",
                    )
                    ok = False
                    continue
                out.append(f.model_copy(update={"dtype": compute.aggregate_dtype(f, col_type)}))
        return out if ok else None

    # -- push sources, stream and realtime views ----------------------------------------------
    def check_push_source(self, source: PushSourceSpec) -> None:
        if source.batch_source is None:
            return
        batch = self.sources.get(source.batch_source)
        if batch is None:
            self.error(
                source,
                f"batch_source {source.batch_source!r} is not a FileSource",
                hint="define it with FileSource(...) or leave batch_source out",
            )
            return
        if not batch.columns:
            return  # its own problem (a missing file) was reported
        types = {c.name: c.dtype for c in batch.columns}
        for field in source.columns:
            if field.name not in types:
                self.error(
                    source,
                    f"batch_source {batch.name!r} has no column {field.name!r}",
                    hint="the batch source must hold every field of the push schema",
                )
            elif types[field.name] != field.dtype:
                self.error(
                    source,
                    f"column {field.name!r} is {types[field.name]} in batch_source "
                    f"{batch.name!r} but {field.dtype} in the schema",
                    hint="cast it in the file or fix the schema",
                )

    def _keys_of(self, entities: list[str]) -> list[FieldSpec]:
        join_keys: list[FieldSpec] = []
        for e in entities:
            for k in self.entities[e].join_keys:
                if k.name not in [j.name for j in join_keys]:
                    join_keys.append(k)
        return join_keys

    def check_stream_view(self, view: StreamFeatureViewSpec) -> StreamFeatureViewSpec | None:
        source = self.push_sources.get(view.source)
        if source is None:
            hint = "push sources: " + (", ".join(sorted(self.push_sources)) or "none defined")
            if view.source in self.sources:
                hint = f"{view.source!r} is a FileSource; stream views read a PushSource"
            self.error(view, f"unknown push source {view.source!r}", hint=hint)
            return None
        unknown = [e for e in view.entities if e not in self.entities]
        for e in unknown:
            self.error(view, f"unknown entity {e!r}", hint="define it with Entity(...)")
        if unknown:
            return None
        types = {c.name: c.dtype for c in source.columns}
        before = len(self.errors)
        join_keys = []
        for key in self._keys_of(view.entities):
            if key.name not in types:
                self.error(
                    view,
                    f"join key {key.name!r} is not a field of push source {source.name!r}",
                    hint=f"fields: {', '.join(types)}",
                )
                continue
            join_keys.append(FieldSpec(name=key.name, dtype=types[key.name]))
        interval = view.aggregation_interval_seconds
        if interval <= 0:
            self.error(view, "aggregation_interval must be positive")
        features = []
        for f in view.features:
            column = f.name if isinstance(f, AttributeSpec) else f.column
            if column is not None and column not in types:
                self.error(
                    view,
                    f"feature {f.name!r} reads {column!r}, which push source {source.name!r} "
                    "does not have",
                    hint=f"fields: {', '.join(types)}",
                )
                continue
            if isinstance(f, AttributeSpec):
                features.append(f.model_copy(update={"dtype": types[column]}))
                continue
            col_type = types.get(column) if column else None
            if f.function in NUMERIC_AGGREGATES and col_type not in NUMERIC_DTYPES:
                self.error(
                    view,
                    f"Aggregate {f.function!r} over {column!r} of type {col_type}: needs a "
                    "numeric column",
                )
                continue
            if interval > 0 and f.window_seconds % interval:
                self.error(
                    view,
                    f"the window of {f.name!r} ({f.window_seconds}s) is not a multiple of the "
                    f"aggregation interval ({interval}s)",
                    hint="windows are whole numbers of tiles: make the interval divide every "
                    "window (e.g. aggregation_interval='1m' for 1h and 1d windows)",
                )
                continue
            features.append(f.model_copy(update={"dtype": compute.aggregate_dtype(f, col_type)}))
        names = [f.name for f in view.features]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            self.error(view, f"feature name {dup!r} is used twice")
        if len(self.errors) > before:
            return None
        return view.model_copy(
            update={
                "join_keys": join_keys,
                "features": features,
                "timestamp_field": source.timestamp_field,
            }
        )

    def check_realtime_view(
        self, view: RealtimeFeatureViewSpec, views: dict[str, FeatureViewSpec]
    ) -> RealtimeFeatureViewSpec | None:
        from contextkit.realtime import run_realtime, sample_inputs

        before = len(self.errors)
        inputs = []
        for name in view.inputs:
            upstream = views.get(name)
            if upstream is None:
                known = self.views.keys() | self.stream_views.keys()
                if name not in known:
                    self.error(
                        view,
                        f"unknown feature view {name!r}",
                        hint="realtime views read batch or stream feature views: "
                        + (", ".join(sorted(known)) or "none defined"),
                    )
                continue
            inputs.append(upstream)
        if len(self.errors) > before or len(inputs) != len(view.inputs):
            return None
        join_keys: list[FieldSpec] = []
        for upstream in inputs:
            for key in upstream.join_keys:
                if key.name not in [k.name for k in join_keys]:
                    join_keys.append(key)
        enriched = view.model_copy(update={"join_keys": join_keys})
        try:
            run_realtime(enriched, *sample_inputs(enriched, inputs))
        except ContextKitError as exc:
            self.error(view, exc.message, hint=exc.hint)
            return None
        return enriched

    # -- embedding views --------------------------------------------------------------------
    def check_embedding_view(
        self, ws: Workspace, view: EmbeddingViewSpec, good: set[str], models: dict | None
    ) -> EmbeddingViewSpec | None:
        ok = True
        for name in view.sources:
            if (
                name not in self.sources
                and name not in self.views
                and (name not in self.push_sources)
            ):
                self.error(
                    view,
                    f"unknown source {name!r}",
                    hint="define it in the repo (a FileSource or a feature view) or fix the name",
                )
                ok = False
        if view.mode == "column" and len(view.sources) != 1:
            self.error(view, "an embedding view without a transformation reads one source")
            ok = False
        for e in view.entities:
            if e not in self.entities:
                self.error(view, f"unknown entity {e!r}", hint="define it with Entity(...)")
                ok = False
        if view.mode != "column" and any(s in self.push_sources for s in view.sources):
            self.error(
                view,
                "an embedding view over a push source takes its text from a column, without a "
                "transformation",
                hint="use EmbeddingView(source=<push source>, text=<column>, ...)",
            )
            ok = False
        if not ok or any(s not in good and s not in self.push_sources for s in view.sources):
            return None
        join_keys: list[FieldSpec] = []
        for e in view.entities:
            for k in self.entities[e].join_keys:
                if k.name not in [j.name for j in join_keys]:
                    join_keys.append(k)
        ts = view.timestamp_field
        if ts is None and view.mode == "column":
            pushed = self.push_sources.get(view.sources[0])
            # The source's timestamp field, if any.
            ts = pushed.timestamp_field if pushed else self._default_timestamp(view)
        probe = view.model_copy(update={"join_keys": join_keys, "timestamp_field": ts})
        schema = self._output_schema(ws, view, compute.embedding_transformation(probe))
        if schema is None:
            return None
        types = {c.name: c.dtype for c in schema}
        columns = ", ".join(types)
        for key in join_keys:
            if key.name not in types:
                self.error(
                    view,
                    f"join key {key.name!r} is missing from the view's output",
                    hint=f"select {key.name} (output columns: {columns})",
                )
                ok = False
        text = view.text_column
        if text not in types:
            self.error(
                view,
                f"text column {text!r} is not in the view's output",
                hint=f"pass text=<one of: {columns}>",
            )
            ok = False
        elif types[text] != String:
            self.error(
                view,
                f"text column {text!r} has type {types[text]}, not string",
                hint=f"cast it in a transformation: CAST({text} AS VARCHAR)",
            )
            ok = False
        if ts is not None and ts not in types:
            self.error(
                view,
                f"timestamp_field {ts!r} is not in the view's output",
                hint=f"output columns: {columns}",
            )
            ok = False
        elif ts is not None and types[ts] != Timestamp:
            self.error(view, f"timestamp_field {ts!r} has type {types[ts]}, not a timestamp")
            ok = False
        from contextkit.embeddings.pipeline import SYSTEM_COLUMNS

        metadata_schema = []
        keys = {k.name for k in join_keys}
        for column in view.metadata:
            if column in SYSTEM_COLUMNS or column in keys or column == text:
                self.error(
                    view,
                    f"metadata column {column!r} clashes with a key or a column every vector "
                    "table has",
                    hint="rename it in a transformation (reserved: "
                    + ", ".join(SYSTEM_COLUMNS)
                    + ")",
                )
                ok = False
            elif column not in types:
                self.error(
                    view,
                    f"metadata column {column!r} is not in the view's output",
                    hint=f"output columns: {columns}",
                )
                ok = False
            else:
                metadata_schema.append(FieldSpec(name=column, dtype=types[column]))
        if len(set(view.metadata)) != len(view.metadata):
            self.error(view, "a metadata column is listed twice")
            ok = False
        checked = {text: String, **{m.name: m.dtype for m in metadata_schema}}
        for message, hint in expectation_problems(view.expectations, checked, what="column"):
            self.error(view, message, hint)
            ok = False
        model = self._check_model(view, models)
        if model is None or not ok:
            return None
        return probe.model_copy(
            update={
                "join_keys": [FieldSpec(name=k.name, dtype=types[k.name]) for k in join_keys],
                "metadata_schema": metadata_schema,
                "model_name": model[0],
                "dimension": model[1],
            }
        )

    def _check_model(
        self, view: EmbeddingViewSpec, models: dict | None
    ) -> tuple[str, int | None] | None:
        """The model's identity and dimension, from the config alone (no model load, no call)."""
        from contextkit.embeddings import Chunker, EmbeddingError, get_encoder
        from contextkit.embeddings.encoders import known_dimension

        try:
            encoder = get_encoder(view.model, models, base_dir=self.root)
            if view.chunking is not None:  # checks token chunks fit the model (no load)
                Chunker.from_config(view.chunking.model_dump(), encoder)
            return encoder.name, known_dimension(encoder)
        except EmbeddingError as exc:
            self.error(view, exc.message, hint=exc.hint)
            return None

    # -- searches and prompts -----------------------------------------------------------------
    def check_search(
        self,
        owner: AnySpec,
        search: SearchSpec,
        embedding_views: dict[str, EmbeddingViewSpec],
        request_fields: set[str] | None,
    ) -> None:
        if search.view not in self.embedding_views:
            hint = "embedding views: " + (", ".join(sorted(self.embedding_views)) or "none")
            if search.view in self.views:
                hint = f"{search.view!r} is a feature view; searches run over embedding views"
            self.error(
                owner, f"search {search.name!r}: unknown embedding view {search.view!r}", hint
            )
            return
        view = embedding_views.get(search.view)
        if view is None:
            return  # its own problem was reported
        if search.filter is not None:
            from contextkit.stores.vector import InvalidFilterError, parse_filter

            try:
                parse_filter(search.filter, _arrow_types(view))
            except InvalidFilterError as exc:
                self.error(owner, f"search {search.name!r}: {exc.message}", hint=exc.hint)
        if (
            request_fields is not None
            and search.query_from != "query"
            and search.query_from not in request_fields
        ):
            self.error(
                owner,
                f"search {search.name!r} takes its query from {search.query_from!r}, which is "
                "not a request-context field",
                hint="declare it with RequestField(...) in the prompt's request_context, or use "
                'query_from="query" (the request\'s query text)',
            )

    def check_feature_refs(
        self, owner: AnySpec, refs: list[FeatureRefSpec], views: dict[str, FeatureViewSpec]
    ) -> dict[str, tuple[str, str | None]]:
        """Check a service's or prompt's use of feature views; returns join key -> (view, type)."""
        key_types: dict[str, tuple[str, str | None]] = {}
        all_views = self.views.keys() | self.stream_views.keys() | self.realtime_views.keys()
        for ref in refs:
            if ref.view not in all_views:
                self.error(
                    owner,
                    f"unknown feature view {ref.view!r}",
                    hint="views: " + (", ".join(sorted(all_views)) or "none defined"),
                )
                continue
            view = views.get(ref.view)
            if view is None:
                continue
            if not view.online:
                self.error(
                    owner,
                    f"view {ref.view!r} is offline-only (online=False) but "
                    f"{owner.kind.replace('_', ' ')}s serve online",
                    hint=f"set online=True on {ref.view!r} or leave it out",
                )
            known = {f.name for f in view.features}
            for name in ref.features or []:
                if name not in known:
                    self.error(
                        owner,
                        f"view {ref.view!r} has no feature {name!r}",
                        hint=f"its features are: {', '.join(sorted(known))}",
                    )
            for key in view.join_keys:
                seen = key_types.setdefault(key.name, (ref.view, key.dtype))
                if seen[1] != key.dtype:
                    self.error(
                        owner,
                        f"join key {key.name!r} is {key.dtype} in view {ref.view!r} but "
                        f"{seen[1]} in view {seen[0]!r}",
                        hint="make the key the same type in both views",
                    )
        return key_types

    def check_prompt(
        self,
        prompt: PromptViewSpec,
        views: dict[str, FeatureViewSpec],
        embedding_views: dict[str, EmbeddingViewSpec],
    ) -> PromptViewSpec | None:
        from contextkit.prompts import PromptError

        before = len(self.errors)
        key_types = self.check_feature_refs(prompt, prompt.features, views)
        fields = {f.name for f in prompt.request_context}
        for search in prompt.searches:
            self.check_search(prompt, search, embedding_views, fields)
        names = [s.name for s in prompt.searches]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            self.error(prompt, f"two searches are named {dup!r}", hint="pass Search(..., name=...)")
        for f in prompt.request_context:
            if f.name in key_types:
                self.error(prompt, f"request field {f.name!r} has the name of a join key")
        try:
            template = load_template(prompt, self.root)
        except PromptError as exc:
            self.errors.append(_prompt_error(prompt, exc, self.root))
            return None
        selected = {}
        for ref in prompt.features:
            view = views.get(ref.view)
            if view is not None:
                selected[ref.view] = set(ref.features or [f.name for f in view.features])
        available = {
            "features": selected,
            "documents": set(names),
            "request": fields,
            "entities": set(key_types),
        }
        used = []
        for var in template.variables():
            where = _template_location(prompt, var, self.root)
            top = var.path[0]
            used.append(var.dotted)
            if top not in TEMPLATE_NAMES:
                self.errors.append(
                    DefinitionError(
                        f"prompt {prompt.name!r}: unknown variable {top!r}",
                        location=where,
                        hint="templates read " + ", ".join(TEMPLATE_NAMES),
                    )
                )
                continue
            if top == "query" or len(var.path) < 2:
                continue
            second = var.path[1]
            if top == "features":
                if second not in selected:
                    self.errors.append(
                        DefinitionError(
                            f"prompt {prompt.name!r}: unknown feature view {second!r} in "
                            f"{var.dotted}",
                            location=where,
                            hint="the prompt's features are: "
                            + (", ".join(sorted(selected)) or "none (pass features=[...])"),
                        )
                    )
                elif len(var.path) > 2 and var.path[2] not in selected[second]:
                    self.errors.append(
                        DefinitionError(
                            f"prompt {prompt.name!r}: unknown feature {var.path[2]!r} of view "
                            f"{second!r} in {var.dotted}",
                            location=where,
                            hint=f"{second} has: {', '.join(sorted(selected[second]))}",
                        )
                    )
            elif second not in available[top]:
                what = {"documents": "search", "request": "request field", "entities": "join key"}
                self.errors.append(
                    DefinitionError(
                        f"prompt {prompt.name!r}: unknown {what[top]} {second!r} in {var.dotted}",
                        location=where,
                        hint=f"declared: {', '.join(sorted(available[top])) or 'none'}",
                    )
                )
        if len(self.errors) > before:
            return None
        self.check_sample_render(prompt, template, views, names, key_types)
        if len(self.errors) > before:
            return None
        return prompt.model_copy(update={"variables": sorted(set(used))})

    def check_sample_render(self, prompt, template, views, searches, key_types) -> None:
        """Render the template once with a sample of every value it may read (one value per
        feature, ``top_k`` documents per search) within the render limits: a template that
        cannot render even that in time, or builds too much text, fails here, not in serving.
        Only limit errors count: the sample's values are not the data's."""
        from contextkit.prompts import PromptError, PromptLimitError

        features = {}
        for ref in prompt.features:
            view = views.get(ref.view)
            if view is not None:
                wanted = ref.features or [f.name for f in view.features]
                dtypes = {f.name: f.dtype for f in view.features}
                features[ref.view] = {name: _sample_value(dtypes.get(name)) for name in wanted}
        top_k = {s.name: s.top_k for s in prompt.searches}
        context = {
            "features": features,
            "documents": {name: _sample_documents(name, top_k.get(name, 5)) for name in searches},
            "request": {f.name: _sample_value(f.dtype) for f in prompt.request_context},
            "query": "a sample question",
            "entities": {key: _sample_value(dtype) for key, (_, dtype) in key_types.items()},
        }
        limits = self.render_limits
        try:
            if prompt.format == "messages":
                template.render_messages(context, model=prompt.model, limits=limits)
            else:
                template.render(context, model=prompt.model, limits=limits)
        except PromptLimitError as exc:
            setting = {"timeout_s": "render_timeout_s"}.get(exc.limit, exc.limit)
            where = None
            if exc.line:
                line = _TemplateLine(exc.template or "", exc.line)
                where = _template_location(prompt, line, self.root)
            self.errors.append(
                DefinitionError(
                    f"prompt {prompt.name!r}: a sample render failed: {exc.reason}",
                    location=where or _prompt_error(prompt, exc, self.root).location,
                    hint="make the template loop over fewer items and build less text, or raise "
                    f"prompts.{setting} in contextkit.yaml",
                )
            )
        except PromptError:
            pass  # a missing or odd sample value: the data decides, at request time

    def check_prompt_llm(self, prompt: PromptViewSpec, llm: LLMConfig) -> None:
        """The prompt view's ``model`` is one litellm knows (offline) or the repo declares
        (``llm.models``, or any name when ``llm.api_base`` is set), and its ``params`` are
        generation parameters from the one allow list: a repo may not pick the endpoint, key
        or headers through params either."""
        from contextkit.prompts import (
            LLMNotConfiguredError,
            LLMParamError,
            check_generation_params,
            check_model,
        )

        try:
            check_generation_params(prompt.params, where="params")
        except LLMParamError as exc:
            self.error(
                prompt,
                exc.message,
                hint="allowed: " + ", ".join(exc.allowed) + "; the endpoint and key come from "
                "llm.api_base and llm.api_key_env in contextkit.yaml",
            )
        if prompt.model:
            try:
                check_model(prompt.model, declared=llm.models, api_base=llm.api_base)
            except LLMNotConfiguredError as exc:
                self.error(prompt, exc.message, hint=exc.hint)

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


class _TemplateLine:
    """Where in a prompt's template something happened (the fields of a TemplateVariable
    that ``_template_location`` reads)."""

    def __init__(self, template: str, line: int) -> None:
        self.template = template
        self.line = line


def _sample_value(dtype: str | None):
    from datetime import UTC, datetime

    from contextkit.types import list_item_dtype

    item = list_item_dtype(dtype) if dtype else None
    if item is not None:
        return [_sample_value(item)] * 3
    samples = {Int64: 1, Float64: 1.5, Bool: True, Timestamp: datetime(2024, 1, 1, tzinfo=UTC)}
    return samples.get(dtype, "sample")


def _sample_documents(search: str, top_k: int) -> list[dict]:
    return [
        {
            "id": f"{search}-{i}",
            "text": f"Sample document {i} of {search}.",
            "score": 1.0 / (1 + i),
            "key": {},
            "metadata": {},
            "chunk_index": 0,
            "char_offset": 0,
        }
        for i in range(top_k)
    ]


def load_template(prompt: PromptViewSpec, root: Path | None = None):
    """The prompt's compiled template: a ``PromptTemplate``, or for messages a ``ChatTemplate``.

    Templates are compiled from the spec's text (files were read at plan time), named after
    their file when they came from one, so errors point there.
    """
    from contextkit.prompts import ChatTemplate, PromptTemplate

    if prompt.format == "messages":
        return ChatTemplate(list(prompt.messages), name=prompt.name)
    return PromptTemplate(prompt.template or "", name=prompt.template_file or prompt.name)


def _template_location(prompt: PromptViewSpec, var, root: Path) -> str | None:
    """file:line of a template variable: in its template file, or in the Python file that
    holds the inline template (found by looking for the template's text after the PromptView
    line)."""
    source, file = prompt.template or "", prompt.template_file
    if prompt.messages and var.template.endswith("]"):
        index = int(var.template.rsplit("[", 1)[1][:-1])
        source = prompt.messages[index][1]
        file = prompt.message_files[index] if prompt.message_files else None
    if file:
        return f"{file}:{var.line}"
    if prompt.location is None:
        return None
    line = _inline_line(root / prompt.location.file, prompt.location.line, source, var.line)
    if line is None:
        return f"{prompt.location} (template line {var.line})"
    return f"{prompt.location.file}:{line}"


def _inline_line(file: Path, start: int, source: str, template_line: int) -> int | None:
    first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    if not first:
        return None
    try:
        lines = file.read_text().splitlines()
    except OSError:
        return None
    offset = next((i for i, ln in enumerate(source.splitlines()) if ln.strip() == first), 0)
    probe = first[:40]
    for number in range(max(start, 1), len(lines) + 1):
        if probe in lines[number - 1]:
            return number + (template_line - 1) - offset
    return None


def _prompt_error(prompt: PromptViewSpec, exc, root: Path) -> DefinitionError:
    line = getattr(exc, "line", None)
    template = getattr(exc, "template", None) or ""
    file = prompt.template_file
    if template.endswith("]") and prompt.message_files:
        file = prompt.message_files[int(template.rsplit("[", 1)[1][:-1])]
    if file:
        where = f"{file}:{line}" if line else file
    else:
        where = str(prompt.location) if prompt.location else None
        if where and line:
            where += f" (template {template}, line {line})"
    return DefinitionError(f"prompt {prompt.name!r}: {exc.message}", location=where, hint=exc.hint)


def _arrow_types(view: EmbeddingViewSpec) -> dict:
    """The filterable columns of a view's vector table (keys and metadata), as Arrow types."""
    from contextkit.types import arrow_type

    columns = [*view.join_keys, *view.metadata_schema]
    return {f.name: arrow_type(f.dtype or String) for f in columns}


def validate(
    specs: list[AnySpec],
    root: Path,
    models: dict[str, dict] | None = None,
    llm: LLMConfig | None = None,
    *,
    render_limits: RenderLimits | None = None,
) -> list[AnySpec]:
    """Check ``specs`` against each other and the data; return them enriched with schemas.

    ``render_limits`` (``prompts.RenderLimits``, default: the defaults) bound each prompt view's
    sample render.

    ``models`` is the repo config's ``models:`` section (embedding views name one), ``llm`` its
    ``llm:`` section (prompt views' models are checked against it). Raises
    :class:`ValidationErrors` listing every problem found.
    """
    checker = _Checker(specs, root, render_limits)
    con = compute.connect_duckdb()
    try:
        good_sources = checker.check_sources(con)
        order = checker.view_order()
        ws = Workspace(con, root, good_sources, {})
        for source in checker.push_sources.values():  # empty, with the declared schema
            con.register(source.name, compute.empty_table(source.columns))
        checked: dict[str, FeatureViewSpec] = {}
        good = set(good_sources)
        for name in order:
            result = checker.check_view(ws, checker.views[name], good)
            if result is not None:
                checked[name] = result
                ws.views[name] = result
                good.add(name)
        embedded: dict[str, EmbeddingViewSpec] = {}
        for name, view in checker.embedding_views.items():
            result = checker.check_embedding_view(ws, view, good, models)
            if result is not None:
                embedded[name] = result

        for source in checker.push_sources.values():
            checker.check_push_source(source)
        streams: dict[str, StreamFeatureViewSpec] = {}
        for name, view in checker.stream_views.items():
            result = checker.check_stream_view(view)
            if result is not None:
                streams[name] = result
        realtime: dict[str, RealtimeFeatureViewSpec] = {}
        for name, view in checker.realtime_views.items():
            result = checker.check_realtime_view(view, {**checked, **streams})
            if result is not None:
                realtime[name] = result
        servable = {**checked, **streams, **realtime}
        prompts: dict[str, PromptViewSpec] = {}
        for name, prompt in checker.prompts.items():
            checker.check_prompt_llm(prompt, llm or LLMConfig())
            result = checker.check_prompt(prompt, servable, embedded)
            if result is not None:
                prompts[name] = result
        for service in checker.services.values():
            checker.check_service(service, servable, embedded)
    finally:
        con.close()
    if checker.errors:
        raise ValidationErrors(checker.errors)
    enriched = {**checker.sources, **checked, **streams, **realtime, **embedded, **prompts}
    return [
        enriched.get(s.name, s) if s.kind not in ("entity", "context_service") else s for s in specs
    ]


def _first_line(exc: Exception) -> str:
    """The gist of a (DuckDB) error: its message lines, without the echoed query and caret."""
    lines = []
    for line in str(exc).strip().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("LINE ") or set(stripped) <= {"^"}:
            continue
        lines.append(stripped)
    return " ".join(lines[:3]) if lines else type(exc).__name__
