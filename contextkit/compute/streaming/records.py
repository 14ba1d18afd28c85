"""Pushed records: checking them against a push source's schema (each error by its index),
the result of an ingest call, and the conversions between typed values and the stores' native
form (timestamps as epoch microseconds, bools as 0/1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from contextkit.framework.specs import PushSourceSpec
from contextkit.types import Bool, String, Timestamp, epoch_micros, parse_value

if TYPE_CHECKING:
    pass


US = 1_000_000
EVENT_TIMESTAMP = "event_timestamp"


# -- record validation ----------------------------------------------------------------------------


@dataclass
class Record:
    index: int
    values: dict[str, Any]  # typed Python values (timestamps as aware datetimes)
    ts: int  # event time, microseconds
    ingest_id: str | None


@dataclass
class IngestResult:
    """What an ingest call did (``to_response()`` is the HTTP body)."""

    source: str
    workspace: str
    dry_run: bool
    accepted: int
    duplicates: list[int] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    views_updated: list[str] = field(default_factory=list)
    ingested_at: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        """How many records were refused (a record with several errors counts once)."""
        return len({e["index"] for e in self.errors})

    def to_response(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "source": self.source,
            "dry_run": self.dry_run,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": self.errors,
            "views_updated": self.views_updated,
            "ingested_at": self.ingested_at,
            "metadata": {"timings_ms": self.timings_ms},
        }


def check_records(
    source: PushSourceSpec,
    key_columns: set[str],
    records: Sequence[Any],
    *,
    now: datetime,
    max_future_s: float,
) -> tuple[list[Record], list[dict[str, Any]]]:
    """Typed records and the per-record errors (``{"index", "field", "message"}``)."""
    schema = {c.name: c.dtype or String for c in source.columns}
    required = key_columns | {source.timestamp_field}
    horizon = now.timestamp() + max_future_s
    good: list[Record] = []
    errors: list[dict[str, Any]] = []

    def fail(index: int, name: str | None, message: str) -> None:
        errors.append({"index": index, "field": name, "message": message})

    for index, raw in enumerate(records):
        ingest_id = None
        if isinstance(raw, Mapping) and "record" in raw and isinstance(raw["record"], Mapping):
            ingest_id = raw.get("idempotency_key")
            if ingest_id is not None and not isinstance(ingest_id, str | int):
                fail(index, "idempotency_key", "must be a string")
                continue
            ingest_id = None if ingest_id is None else str(ingest_id)
            unknown_envelope = set(raw) - {"record", "idempotency_key"}
            if unknown_envelope:
                fail(index, None, f"unknown envelope key(s): {', '.join(sorted(unknown_envelope))}")
                continue
            raw = raw["record"]
        if not isinstance(raw, Mapping):
            fail(index, None, f"a record must be an object, got {type(raw).__name__}")
            continue
        before = len(errors)
        for name in raw:
            if name not in schema:
                fail(index, name, f"unknown field (the schema has: {', '.join(schema)})")
        values: dict[str, Any] = {}
        for name, dtype in schema.items():
            if name not in raw:
                fail(index, name, f"missing field ({dtype})")
                continue
            value = raw[name]
            if value is None:
                if name in required:
                    fail(index, name, "must not be null (a join key or the timestamp)")
                values[name] = None
                continue
            try:
                values[name] = parse_value(dtype, value)
            except ValueError as exc:
                fail(index, name, f"{exc}, got {value!r}")
        if len(errors) > before:
            continue
        moment = values[source.timestamp_field]
        if moment.timestamp() > horizon:
            fail(
                index,
                source.timestamp_field,
                f"{moment.isoformat()} is more than {max_future_s:g} s ahead of the server's clock",
            )
            continue
        good.append(Record(index, values, epoch_micros(moment), ingest_id))
    return good, errors


def stored_value(dtype: str, value: Any) -> Any:
    if value is None:
        return None
    if dtype == Timestamp:
        return epoch_micros(value)
    if dtype == Bool:
        return int(value)
    return value


def typed_value(dtype: str, value: Any) -> Any:
    """A logged (stored) value as the typed value a record holds."""
    if value is None:
        return None
    if dtype == Timestamp:
        return from_us(value)
    if dtype == Bool:
        return bool(value)
    return value


def from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
