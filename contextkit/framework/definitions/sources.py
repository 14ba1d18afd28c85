"""Sources: files read in batch, push sources fed by the ingest API, request sources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from contextkit.framework.definitions._base import Definition, caller_location
from contextkit.framework.specs import (
    FieldSpec,
    FileSourceSpec,
    PushSourceSpec,
)
from contextkit.types import Field


class FileSource(Definition):
    """A Parquet, CSV or JSONL file (or glob) of rows, with the column holding each row's time.

    ``path`` is relative to the repo root unless absolute; ``format`` is guessed from the suffix.
    """

    kind = "file_source"

    def __init__(
        self,
        name: str,
        path: str,
        timestamp_field: str | None = None,
        format: Literal["parquet", "csv", "jsonl"] | None = None,
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        self.path = str(path)
        self.timestamp_field = timestamp_field
        self.format = format or _guess_format(self.path)
        if self.format not in ("parquet", "csv", "jsonl"):
            raise self._error(
                f"source {name!r}: cannot tell the format of {self.path!r}",
                hint='pass format="parquet", "csv" or "jsonl"',
            )

    def to_spec(self, root: str | None = None) -> FileSourceSpec:
        return FileSourceSpec(
            path=self.path,
            format=self.format,
            timestamp_field=self.timestamp_field,
            **self._common(root),
        )


def _guess_format(path: str) -> str | None:
    lowered = path.lower()
    for suffix, fmt in ((".parquet", "parquet"), (".csv", "csv"), (".jsonl", "jsonl")):
        if lowered.endswith(suffix) or lowered.endswith(suffix + ".gz"):
            return fmt
    if lowered.endswith(".ndjson") or lowered.endswith(".json"):
        return "jsonl"
    return None


class PushSource(Definition):
    """Records pushed over the ingest API (``POST /v1/ingest``), with a declared schema.

    ::

        page_views = PushSource(
            name="page_views",
            schema=[Field("user_id", Int64), Field("product_id", Int64), Field("ts", Timestamp)],
            timestamp_field="ts",
        )

    Every record must carry every field of the schema (``None`` is allowed except for join keys
    and the timestamp). ``batch_source``: a FileSource with the same columns holding the events
    from before the push source existed; offline retrieval reads it with the ingest log.
    """

    kind = "push_source"

    def __init__(
        self,
        name: str,
        schema: Sequence[Field],
        timestamp_field: str,
        *,
        batch_source: FileSource | str | None = None,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        if not schema or not all(isinstance(f, Field) for f in schema):
            raise self._error(
                f"push source {name!r}: schema must be a non-empty list of Field(name, dtype)",
                hint='e.g. schema=[Field("user_id", Int64), Field("ts", Timestamp)]',
            )
        names = [f.name for f in schema]
        if len(set(names)) != len(names):
            raise self._error(f"push source {name!r}: a field is listed twice in the schema")
        if timestamp_field not in names:
            raise self._error(
                f"push source {name!r}: timestamp_field {timestamp_field!r} is not in the schema",
                hint=f"fields: {', '.join(names)}",
            )
        if next(f for f in schema if f.name == timestamp_field).dtype != "timestamp":
            raise self._error(
                f"push source {name!r}: timestamp_field {timestamp_field!r} must be a Timestamp"
            )
        self.schema = list(schema)
        self.timestamp_field = timestamp_field
        self.batch_source = batch_source

    def to_spec(self, root: str | None = None) -> PushSourceSpec:
        batch = self.batch_source
        return PushSourceSpec(
            columns=[FieldSpec(name=f.name, dtype=f.dtype) for f in self.schema],
            timestamp_field=self.timestamp_field,
            batch_source=batch if isinstance(batch, str | None) else batch.name,
            **self._common(root),
        )


class RequestSource:
    """Values sent with each request (``request_context``), typed: the input of realtime views.

    ``RequestSource(schema=[Field("request_ts", Timestamp), Field("query", String)])``
    """

    def __init__(self, schema: Sequence[Field]) -> None:
        if not schema or not all(isinstance(f, Field) for f in schema):
            raise ValueError("RequestSource needs schema=[Field(name, dtype), ...]")
        self.schema = list(schema)
