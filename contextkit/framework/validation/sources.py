"""Checks of file sources, database sources and push sources."""

from __future__ import annotations

from contextkit.framework import transformations
from contextkit.framework.database_sources import DatabaseTables
from contextkit.framework.specs import (
    DatabaseSourceSpec,
    FieldSpec,
    FileSourceSpec,
    PushSourceSpec,
)
from contextkit.framework.validation.messages import first_line
from contextkit.types import Timestamp


class SourceChecks:
    """The sources checks of :class:`~contextkit.framework.validation.checker.Checker`."""

    # -- sources ---------------------------------------------------------------------------
    def check_sources(self, con) -> dict[str, FileSourceSpec]:
        good = {}
        for name, source in self.sources.items():
            if isinstance(source, DatabaseSourceSpec):
                checked = self.check_database_source(con, source)
                if checked is not None:
                    good[name] = checked
                continue
            if not transformations.source_file_exists(source, self.root):
                self.error(
                    source,
                    f"file not found: {source.path}",
                    hint="paths are relative to the repo root; generate or copy the data first",
                )
                continue
            raw = source.model_copy(update={"timestamp_field": None})
            try:
                columns = transformations.describe(
                    con, transformations.source_scan_sql(raw, self.root, con)
                )
            except Exception as exc:
                self.error(
                    source,
                    f"cannot read {source.path} as {source.format}: {first_line(exc)}",
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

    def check_database_source(self, con, source: DatabaseSourceSpec) -> DatabaseSourceSpec | None:
        """The source's columns as the database reports them (a ``LIMIT 0`` query, no row
        read), and its timestamp_field checked; None (and an error) when it cannot be read."""
        from contextkit.stores.errors import StoreFailure

        tables = DatabaseTables(con)
        try:
            tables.register_schema(source)
            columns = transformations.describe(
                con, f"SELECT * FROM {transformations.quote(source.name)}"
            )
        except StoreFailure as exc:
            self.error(source, exc.message, hint=exc.hint)
            return None
        types = {c.name: c.dtype for c in columns}
        ts = source.timestamp_field
        if ts is not None and ts not in types:
            what = f"table {source.table}" if source.table else "the query"
            self.error(
                source,
                f"timestamp_field {ts!r} is not a column of {what}",
                hint=f"columns are: {', '.join(types)}",
            )
            return None
        if ts is not None and types[ts] != Timestamp:
            self.error(
                source,
                f"timestamp_field {ts!r} has type {types[ts]}, not a timestamp",
                hint="use a timestamp/timestamptz column, or cast it in the source's query",
            )
            return None
        return source.model_copy(update={"columns": columns})

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
