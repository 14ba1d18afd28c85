"""Validation: turn a loaded repo into checked, enriched specs, or say exactly what is wrong.

Checks (each error names the file and line of the object and gives a hint): references to unknown
entities, sources and views; dependency cycles; missing or unreadable source files; timestamp
columns of the wrong type; SQL that does not bind (run with LIMIT 0 in DuckDB against the sources'
real schemas); join keys and timestamps missing from a view's output; features over missing or
non-numeric columns; services over unknown views or features.
"""

from __future__ import annotations

from pathlib import Path

from contextkit import compute
from contextkit.compute import EVENT_TIMESTAMP, Workspace, quote
from contextkit.definitions import _Definition
from contextkit.errors import ContextKitError, DefinitionError, ValidationErrors
from contextkit.repo import Repo
from contextkit.specs import (
    NUMERIC_AGGREGATES,
    AttributeSpec,
    ContextServiceSpec,
    EntitySpec,
    FeatureViewSpec,
    FieldSpec,
    FileSourceSpec,
)
from contextkit.types import NUMERIC_DTYPES, Timestamp

AnySpec = EntitySpec | FileSourceSpec | FeatureViewSpec | ContextServiceSpec


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
    def __init__(self, specs: list[AnySpec], root: Path) -> None:
        self.root = root
        self.errors: list[DefinitionError] = []
        self.entities = {s.name: s for s in specs if isinstance(s, EntitySpec)}
        self.sources = {s.name: s for s in specs if isinstance(s, FileSourceSpec)}
        self.views = {s.name: s for s in specs if isinstance(s, FeatureViewSpec)}
        self.services = {s.name: s for s in specs if isinstance(s, ContextServiceSpec)}
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
        try:
            if view.mode == "sql":
                ws._register_upstream(probe)
                schema = compute.describe(ws.con, f"SELECT * FROM ({view.sql}) LIMIT 0")
            else:
                sample = probe.model_copy(update={"features": []})
                table = ws._run_python(sample, None, None, sample_rows=100)
                schema = compute.describe(ws.con, f"SELECT * FROM {quote(table)}")
        except ContextKitError as exc:
            self.errors.append(
                exc if isinstance(exc, DefinitionError) else DefinitionError(str(exc))
            )
            return None
        except Exception as exc:
            self.error(
                view,
                f"the transformation does not run: {_first_line(exc)}",
                hint="fix the query; source tables are named after the sources, with their "
                "columns: " + self._columns_hint(view),
            )
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
        return view.model_copy(
            update={
                "timestamp_field": ts,
                "join_keys": [FieldSpec(name=k.name, dtype=types[k.name]) for k in join_keys],
                "output_schema": schema,
                "features": features,
            }
        )

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

    # -- services --------------------------------------------------------------------------
    def check_service(self, service: ContextServiceSpec, views: dict[str, FeatureViewSpec]) -> None:
        key_types: dict[str, tuple[str, str | None]] = {}
        for ref in service.features:
            if ref.view not in self.views:
                self.error(
                    service,
                    f"unknown feature view {ref.view!r}",
                    hint="views: " + (", ".join(sorted(self.views)) or "none defined"),
                )
                continue
            view = views.get(ref.view)
            if view is None:
                continue
            if not view.online:
                self.error(
                    service,
                    f"view {ref.view!r} is offline-only (online=False) but services serve online",
                    hint=f"set online=True on {ref.view!r} or leave it out of the service",
                )
            known = {f.name for f in view.features}
            for name in ref.features or []:
                if name not in known:
                    self.error(
                        service,
                        f"view {ref.view!r} has no feature {name!r}",
                        hint=f"its features are: {', '.join(sorted(known))}",
                    )
            for key in view.join_keys:
                seen = key_types.setdefault(key.name, (ref.view, key.dtype))
                if seen[1] != key.dtype:
                    self.error(
                        service,
                        f"join key {key.name!r} is {key.dtype} in view {ref.view!r} but "
                        f"{seen[1]} in view {seen[0]!r}",
                        hint="make the key the same type in both views",
                    )


def validate(specs: list[AnySpec], root: Path) -> list[AnySpec]:
    """Check ``specs`` against each other and the data; return them enriched with schemas.

    Raises :class:`ValidationErrors` listing every problem found.
    """
    checker = _Checker(specs, root)
    con = compute.connect_duckdb()
    try:
        good_sources = checker.check_sources(con)
        order = checker.view_order()
        ws = Workspace(con, root, good_sources, {})
        checked: dict[str, FeatureViewSpec] = {}
        good = set(good_sources)
        for name in order:
            result = checker.check_view(ws, checker.views[name], good)
            if result is not None:
                checked[name] = result
                ws.views[name] = result
                good.add(name)
        for service in checker.services.values():
            checker.check_service(service, checked)
    finally:
        con.close()
    if checker.errors:
        raise ValidationErrors(checker.errors)
    enriched = {**checker.sources, **checked}
    return [
        enriched.get(s.name, s) if s.kind in ("file_source", "batch_feature_view") else s
        for s in specs
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
