"""Checks of feature views: batch (SQL or pandas, dry-run in DuckDB against the sources'
real schemas), stream and realtime views."""

from __future__ import annotations

from contextkit.errors import ContextKitError, DefinitionError
from contextkit.framework import transformations
from contextkit.framework.expectations import expectation_problems
from contextkit.framework.specs import (
    NUMERIC_AGGREGATES,
    AnySpec,
    AttributeSpec,
    FeatureViewSpec,
    FieldSpec,
    RealtimeFeatureViewSpec,
    StreamFeatureViewSpec,
)
from contextkit.framework.transformations import EVENT_TIMESTAMP, Workspace
from contextkit.framework.validation.messages import first_line
from contextkit.types import NUMERIC_DTYPES, Timestamp


class FeatureViewChecks:
    """The feature views checks of :class:`~contextkit.framework.validation.checker.Checker`."""

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
                    self.error(view, f"unknown entity {e!r}", hint=self.entities_hint())
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
            body = transformations.output_sql(ws, transformation, sample_rows=100)
            return transformations.describe(ws.con, f"SELECT * FROM ({body}) LIMIT 0")
        except ContextKitError as exc:
            cause = exc.__cause__
            if isinstance(cause, NameError) and cause.name:
                # A pandas/arrow function is stored by its source and re-created alone.
                self.error(
                    view,
                    f"the {transformation.mode} transformation reads {cause.name!r}, which is "
                    "defined outside the function: the function must be self-contained (it is "
                    "stored by its source code and re-created alone at materialization)",
                    hint=f"define {cause.name} (or import it) inside the function, or write its "
                    "value in the function",
                    at=self._error_line(view, cause, cause.name),
                )
                return None
            self.errors.append(
                exc if isinstance(exc, DefinitionError) else DefinitionError(str(exc))
            )
        except Exception as exc:
            self.error(
                view,
                f"the transformation does not run: {first_line(exc)}",
                hint="fix the query; source tables are named after the sources, with their "
                "columns: " + self._columns_hint(view),
                at=self._error_line(view, exc),
            )
        return None

    def _error_line(self, view: AnySpec, exc: Exception, name: str | None = None) -> str | None:
        """``file:line`` of the line inside the view's function that the engine's error names
        (the first quoted name in its message, such as a column that does not exist); None when
        it cannot be told."""
        import re

        if view.location is None:
            return None
        names = [name] if name else [n for n in re.findall(r'"([^"\n]+)"', str(exc)) if n.strip()]
        if not names:
            return None
        try:
            lines = (self.root / view.location.file).read_text().splitlines()
        except OSError:
            return None
        start = view.location.line - 1
        body = next(
            (i for i in range(start, len(lines)) if re.match(r"\s*(async\s+)?def\s", lines[i])),
            start,
        )
        end = len(lines)
        for i in range(body + 1, len(lines)):  # the function ends at the next top-level line
            if lines[i].strip() and not lines[i][0].isspace() and not lines[i].startswith(")"):
                end = i
                break
        pattern = re.compile(r"(?<![\w.])" + re.escape(names[0]) + r"(?![\w])")
        for i in [*range(body, end), *range(start, body)]:
            if pattern.search(lines[i]):
                return f"{view.location.file}:{i + 1}"
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
                out.append(
                    f.model_copy(update={"dtype": transformations.aggregate_dtype(f, col_type)})
                )
        return out if ok else None

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
            self.error(view, f"unknown entity {e!r}", hint=self.entities_hint())
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
            features.append(
                f.model_copy(update={"dtype": transformations.aggregate_dtype(f, col_type)})
            )
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
        from contextkit.framework.realtime import run_realtime, sample_inputs

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
