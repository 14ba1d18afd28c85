"""Writes: :meth:`TableWrites.apply_changes` upserts and deletes chunks in one LanceDB commit
(all or nothing), creating the table with its checked schema on first use. A mixin of
:class:`~contextkit.stores.vector.LanceVectorStore`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from contextkit.stores._vector_common import (
    KEY_COLUMNS_METADATA,
    SYSTEM_COLUMNS,
    VectorSchemaError,
    check_table_name,
    key_columns_of,
    object_store,
)

_REQUIRED_TYPES = {
    "id": pa.string(),
    "chunk_index": pa.int32(),
    "char_offset": pa.int64(),
    "text": pa.string(),
    "content_hash": pa.string(),
    "row_hash": pa.string(),
}
_UPDATED_AT = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of one :meth:`LanceVectorStore.apply_changes` (one commit, or none)."""

    version: int | None
    previous_version: int | None
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    created: bool = False

    @property
    def committed(self) -> bool:
        return self.version != self.previous_version


class TableWrites:
    # -- writes -----------------------------------------------------------------------------------

    @object_store("writing a table")
    def apply_changes(
        self,
        table: str,
        upserts: Iterable[pa.RecordBatch] | pa.RecordBatchReader,
        delete_ids: Iterable[str] = (),
        *,
        dim: int,
        key_columns: Sequence[str] | None = None,
        replace: bool = False,
        schema: pa.Schema | None = None,
    ) -> ApplyResult:
        """Upsert the chunks in ``upserts`` (by ``id``) and delete ``delete_ids``, in one commit.

        ``upserts`` is consumed lazily (an iterator of record batches in the pipeline's layout,
        see the module doc; ``updated_at`` is added here). The table is created on first use
        (``key_columns`` is then required and stored). ``replace=True`` overwrites the whole table
        with ``upserts`` in one commit (``delete_ids`` ignored): the path for a rebuild after the
        model, the dimension or the metadata columns changed. Without it, rows of another
        dimension or another column set raise :class:`VectorSchemaError` before anything is
        written.

        All or nothing: if ``upserts`` raises half-way, nothing is committed, the error propagates
        and the previous version stays current (a table created by this call is dropped again).
        Returns the new version (``committed`` is False when there was nothing to do).

        ``schema``: the rows' layout (the pipeline's, as ``upserts`` would have it). With it, a
        table that does not exist is created even when ``upserts`` yields nothing: empty, in one
        commit (a view whose documents are none is searchable, with no hits). Without it, such a
        call creates nothing.
        """
        check_table_name(table)
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise VectorSchemaError(f"dim must be a positive integer, got {dim!r}")
        delete_ids = list(dict.fromkeys(delete_ids))
        batches = iter(upserts)
        layout = schema
        with self._write_lock(table):
            handle = self._open(table) if self.has_table(table) else None
            previous = int(handle.version) if handle is not None else None
            if handle is not None and not replace:
                schema = handle.schema
                _check_dimension(table, schema, dim)
                stored_keys = key_columns_of(schema)
                if key_columns is not None and list(key_columns) != stored_keys:
                    raise VectorSchemaError(
                        f"vector table {table!r} is keyed by {stored_keys}, "
                        f"not {list(key_columns)}",
                        hint="the view's keys changed: rebuild (apply_changes(..., replace=True))",
                    )
            first = next(batches, None)  # may run the first encoder batch
            if handle is not None and not replace:
                if first is not None:
                    _check_columns(table, schema, first.schema)
                elif not delete_ids:
                    return ApplyResult(version=previous, previous_version=previous)
            elif first is not None or (handle is None and layout is not None):
                keys = list(key_columns) if key_columns is not None else None
                if keys is None and handle is not None:
                    keys = key_columns_of(handle.schema)
                if keys is None:
                    raise VectorSchemaError(
                        f"creating vector table {table!r} needs key_columns",
                        hint="pass the view's entity key columns, e.g. key_columns=['doc_id']",
                    )
                incoming = first.schema if first is not None else layout
                assert incoming is not None
                schema = _table_schema(table, incoming, dim, keys)
            elif handle is not None:
                schema = handle.schema  # replace with nothing: an empty table, same layout
            else:
                return ApplyResult(version=None, previous_version=None)

            source = _Source(first, batches, schema, dim, datetime.now(UTC))
            reader = pa.RecordBatchReader.from_batches(schema, source)
            created = handle is None
            if created:
                self._forget(table)  # a table deleted behind this process's back: stale caches
                handle = self._db.create_table(table, schema=schema)
                with self._lock:
                    self._tables[table] = handle
                    self._opened.add(table)
            start_version = int(handle.version)
            try:
                if created and first is None:  # nothing to write: the empty table is the commit
                    inserted, updated, deleted = 0, 0, 0
                elif replace or created:
                    handle.add(reader, mode="overwrite" if replace else "append")
                    inserted, updated, deleted = source.rows, 0, 0
                else:
                    from lancedb.expr import col, lit

                    merge = (
                        handle.merge_insert("id")
                        .when_matched_update_all()
                        .when_not_matched_insert_all()
                    )
                    if delete_ids:
                        merge = merge.when_not_matched_by_source_delete(
                            col("id").isin([lit(i) for i in delete_ids])
                        )
                    res = merge.execute(reader)
                    inserted = int(res.num_inserted_rows)
                    updated = int(res.num_updated_rows)
                    deleted = int(res.num_deleted_rows)
            except BaseException as exc:
                problem = self._undo(table, handle, created, start_version)
                if problem:
                    (source.error or exc).add_note(problem)
                # LanceDB reports an error raised inside the upserts iterator as a RuntimeError
                # of the Arrow C stream: re-raise the original (an EncoderFailure, ...) instead.
                if source.error is not None and source.error is not exc:
                    raise source.error from exc
                raise
            finally:
                with self._lock:
                    self._exact.pop(table, None)
            return ApplyResult(
                version=int(handle.version),
                previous_version=previous,
                inserted=inserted,
                updated=updated,
                deleted=deleted,
                created=created,
            )

    def _undo(self, table: str, handle: Any, created: bool, start_version: int) -> str | None:
        """Put the table back as it was after a failed write; say what went wrong, if anything
        (the write's own error is the one raised, this becomes a note on it)."""
        try:
            if created:
                with self._lock:
                    self._tables.pop(table, None)
                self._db.drop_table(table)
            elif int(handle.version) != start_version:
                handle.restore(start_version)
        except Exception as exc:
            return (
                f"contextkit could not undo the failed write to vector table {table!r}: {exc}; "
                f"restore version {start_version} by hand (LanceVectorStore.restore)"
            )
        return None


def _check_dimension(table: str, schema: pa.Schema, dim: int) -> None:
    stored = schema.field("vector").type.list_size
    if stored != dim:
        raise VectorSchemaError(
            f"vector table {table!r} stores {stored}-dimensional vectors, the rows have {dim}",
            hint="the view's model changed: rebuild the table (apply_changes(..., replace=True))",
        )


def _check_columns(table: str, schema: pa.Schema, incoming: pa.Schema) -> None:
    have = [n for n in schema.names if n != "updated_at"]
    got = [n for n in incoming.names if n != "updated_at"]
    if set(have) != set(got):
        missing = sorted(set(have) - set(got))
        extra = sorted(set(got) - set(have))
        raise VectorSchemaError(
            f"the rows don't match vector table {table!r}: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"new {', '.join(extra)}" if extra else "",
                )
                if part
            ),
            hint="the view's columns changed: rebuild the table (apply_changes(..., replace=True))",
        )


def _table_schema(table: str, incoming: pa.Schema, dim: int, keys: Sequence[str]) -> pa.Schema:
    names = incoming.names
    for name, dtype in _REQUIRED_TYPES.items():
        if name not in names:
            raise VectorSchemaError(f"rows for {table!r} have no {name!r} column")
        if not incoming.field(name).type.equals(dtype) and not (
            pa.types.is_integer(incoming.field(name).type) and pa.types.is_integer(dtype)
        ):
            raise VectorSchemaError(
                f"column {name!r} of rows for {table!r} is {incoming.field(name).type}, not {dtype}"
            )
    if "vector" not in names:
        raise VectorSchemaError(f"rows for {table!r} have no 'vector' column")
    for key in keys:
        if key not in names or key in SYSTEM_COLUMNS:
            raise VectorSchemaError(
                f"key column {key!r} is not a key/metadata column of the rows for {table!r}"
            )
    for name in names:
        if not name or "." in name or "`" in name:
            raise VectorSchemaError(
                f"column name {name!r} cannot be stored in LanceDB",
                hint="column names must be non-empty and contain no '.' or '`'",
            )
    fields = []
    for f in incoming:
        if f.name == "updated_at":
            continue
        if f.name == "vector":
            f = pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)
        elif f.name in _REQUIRED_TYPES:
            f = pa.field(f.name, _REQUIRED_TYPES[f.name], nullable=False)
        fields.append(f)
    fields.append(pa.field("updated_at", _UPDATED_AT, nullable=False))
    return pa.schema(fields, metadata={KEY_COLUMNS_METADATA: json.dumps(list(keys)).encode()})


class _Source:
    """The upserts as conformed record batches (table column order, ``updated_at`` stamped),
    remembering an error raised upstream so it can be re-raised as itself."""

    def __init__(
        self,
        first: pa.RecordBatch | None,
        rest: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        dim: int,
        now: datetime,
    ) -> None:
        self.first, self.rest, self.schema, self.dim, self.now = first, rest, schema, dim, now
        self.rows = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self.first is None:
            return
        try:
            yield from self._conform(self.first)
            for batch in self.rest:
                yield from self._conform(batch)
        except GeneratorExit:  # the writer stopped reading: its own error is the one to raise
            raise
        except BaseException as exc:
            self.error = exc
            raise

    def _conform(self, batch: pa.RecordBatch | pa.Table) -> Iterator[pa.RecordBatch]:
        parts = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        for part in parts:
            if part.num_rows == 0:
                continue
            names = part.schema.names
            vtype = part.schema.field("vector").type if "vector" in names else None
            if vtype is None or getattr(vtype, "list_size", None) != self.dim:
                raise VectorSchemaError(
                    f"a batch has vectors of type {vtype}, expected {self.dim} float32 values"
                )
            arrays = []
            for f in self.schema:
                if f.name == "updated_at":
                    arrays.append(pa.array([self.now] * part.num_rows, _UPDATED_AT))
                    continue
                if f.name not in names:
                    raise VectorSchemaError(f"a batch has no column {f.name!r}")
                column = part.column(f.name)
                arrays.append(column if column.type.equals(f.type) else column.cast(f.type))
            self.rows += part.num_rows
            yield pa.RecordBatch.from_arrays(arrays, schema=self.schema)
