"""The vector store's shared vocabulary: system columns, limits, its errors, the decorators
that turn LanceDB and object-store failures into them, and the few helpers every part uses.

Part of :mod:`contextkit.stores.vector` (import from there).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import numpy as np
import pyarrow as pa

from contextkit.stores.errors import MissingError, StoreFailure, StoreUnavailable

SYSTEM_COLUMNS = (
    "id",
    "chunk_index",
    "char_offset",
    "text",
    "content_hash",
    "row_hash",
    "vector",
    "updated_at",
)
"""Columns every vector table has; the rest are key and metadata columns."""

KEY_COLUMNS_METADATA = b"contextkit.key_columns"
MAX_TOP_K = 1000
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
STORE_NAME = "vector store"

# -- errors --------------------------------------------------------------------------------------


class VectorStoreError(StoreFailure):
    """The vector store cannot do what was asked."""

    code = "vector_store_error"
    http_status = 500


class VectorTableMissingError(MissingError):
    """The table does not exist (the view was never materialized, or was dropped)."""

    code = "vector_table_missing"
    http_status = 404


class VectorSchemaError(VectorStoreError):
    """The rows don't fit the table: another vector dimension, other columns."""

    code = "vector_schema_mismatch"
    http_status = 409


class InvalidFilterError(VectorStoreError):
    """A search filter names an unknown column, an unknown operator or a wrongly typed value."""

    code = "invalid_filter"
    http_status = 400


class InvalidSearchError(VectorStoreError):
    """A search request is malformed: mode, top_k, query vector or text."""

    code = "invalid_search"
    http_status = 400


class VectorTableUnreadableError(StoreUnavailable):
    """LanceDB cannot read the table's files (damaged, or removed by hand)."""

    code = "store_error"
    http_status = 503


class VectorTableLostError(VectorTableMissingError, VectorTableUnreadableError):
    """A table this process was reading has been deleted behind its back (not by
    :meth:`LanceVectorStore.drop_table`). Missing for a materialization, which rebuilds it;
    unreadable (503, not 404) for a search, until then."""

    code = "store_error"
    http_status = 503


def object_store(doing: str):
    """On S3, turn the object store's failures in the method into one clear error (missing
    bucket, refused credentials, unreachable endpoint); other errors pass through."""

    def wrap(method):
        @functools.wraps(method)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self._loc is None:
                return method(self, *args, **kwargs)
            with self._loc.translating(STORE_NAME, doing):
                return method(self, *args, **kwargs)

        return run

    return wrap


def reads_table(method):
    """Turn LanceDB's own errors while reading ``table`` (the method's first argument) into a
    :class:`VectorTableUnreadableError`, or a :class:`VectorTableLostError` when the table has
    gone. LanceDB raises OSError, RuntimeError or ValueError for files it cannot find or read."""

    @functools.wraps(method)
    def reading(self: Any, table: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, table, *args, **kwargs)
        except StoreFailure:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            raise self._unreadable(table.split("@", 1)[0], exc) from exc

    return reading


def lance_reason(exc: BaseException) -> str:
    """LanceDB's message without the Rust source location it appends."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r",\s*/\S+\.rs:\d+:\d+", "", text)[:300]


def check_table_name(table: str) -> None:
    if not isinstance(table, str) or not _TABLE_NAME.match(table) or ".." in table:
        raise VectorStoreError(
            f"invalid vector table name {table!r}",
            hint="use letters, digits, '_', '-' and '.', e.g. 'dev__product_docs'",
        )


def key_columns_of(schema: pa.Schema) -> list[str]:
    raw = (schema.metadata or {}).get(KEY_COLUMNS_METADATA)
    return list(json.loads(raw)) if raw else []


def as_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = array.type.list_size
    if len(array) == 0:
        return np.empty((0, dim), dtype=np.float32)
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(len(array), dim)
