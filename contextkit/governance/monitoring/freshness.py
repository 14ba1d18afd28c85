"""Freshness: the age of the newest value a view serves, against its declared limits.

For feature views: now minus the newest event time of the online snapshot; for embedding views
the time since the newest successful job; checked against the view's ``max_staleness``, its
``ttl`` and its ``batch_schedule``. An online snapshot with no entity is ``empty``, whatever its
age: the view serves nothing. Stream views are fresh as of their newest ingested record
(:func:`stream_freshness`); realtime views are computed at request time (``request_time``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.quality.online_change import OnlineSnapshot
from contextkit.framework.expectations import format_age
from contextkit.framework.specs import (
    EmbeddingViewSpec,
    FeatureViewSpec,
    RealtimeFeatureViewSpec,
    StreamFeatureViewSpec,
)
from contextkit.stores.registry import (
    JobRecord,
    JobStatsRecord,
)

if TYPE_CHECKING:
    pass


# -- freshness -------------------------------------------------------------------------------------
FRESHNESS_STATES = ("fresh", "late", "stale", "expired", "empty", "never", "request_time")

AnyView = FeatureViewSpec | EmbeddingViewSpec | StreamFeatureViewSpec | RealtimeFeatureViewSpec


@dataclass(frozen=True)
class Freshness:
    """How old a view's served data is, and whether that is within its declared limits.

    ``state``: ``never`` (no job ever wrote it; a stream view: no record ingested), ``empty``
    (its online table holds no entity: nothing is served), ``expired`` (the newest value is older
    than the view's ttl: nothing is served), ``stale`` (older than ``max_staleness``), ``late``
    (no successful job for more than twice the ``batch_schedule``: a run was missed),
    ``request_time`` (a realtime view: computed per request, nothing is stored), or ``fresh``.
    """

    state: str
    newest_event: float | None  # the newest event time served (Unix seconds)
    data_age_s: float | None  # now minus newest_event
    materialized_at: float | None  # the "as of" time of the newest successful job (its end)
    lag_s: float | None  # now minus materialized_at
    schedule_s: int | None
    ttl_s: int | None
    max_staleness_s: int | None
    reasons: list[str] = field(default_factory=list)
    online_rows: int | None = None  # entities in the online table (None: unknown or none kept)
    last_ingest: float | None = None  # stream views: when the newest record arrived

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["newest_event"] = iso_s(self.newest_event)
        out["materialized_at"] = iso_s(self.materialized_at)
        out["last_ingest"] = iso_s(self.last_ingest)
        return out


def iso_s(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def freshness(
    view: FeatureViewSpec | EmbeddingViewSpec,
    completed: JobRecord | None,
    stats: JobStatsRecord | None,
    *,
    now: float | None = None,
    online: OnlineSnapshot | None = None,
) -> Freshness:
    """The freshness of ``view`` given its newest completed job, the statistics of its online
    snapshot (``stats``) and what that snapshot holds (``online``; None: not known)."""
    now = time.time() if now is None else now
    embedding = isinstance(view, EmbeddingViewSpec)
    schedule = None if embedding else view.batch_schedule_seconds
    ttl = None if embedding else (view.ttl_seconds or view.max_window_seconds or None)
    limit = view.expectations.max_staleness_seconds if view.expectations else None
    if completed is None:
        return Freshness(
            "never", None, None, None, None, schedule, ttl, limit, ["never materialized"]
        )
    materialized = _parse_time(completed.range_end) or completed.finished_at
    newest = materialized if embedding else (stats.newest_event if stats is not None else None)
    lag = None if materialized is None else max(0.0, now - materialized)
    age = None if newest is None else max(0.0, now - newest)
    reasons, state = [], "fresh"
    if schedule and lag is not None and lag > 2 * schedule:
        state = "late"
        reasons.append(
            f"last successful job {format_age(lag)} ago; scheduled every {format_age(schedule)}"
        )
    measured = age if age is not None else lag
    if limit and measured is not None and measured > limit:
        state = "stale"
        reasons.insert(
            0, f"newest value is {format_age(measured)} old; max_staleness {format_age(limit)}"
        )
    if ttl and age is not None and age > ttl and not embedding:
        state = "expired"
        reasons.insert(0, f"newest value is {format_age(age)} old, past the ttl {format_age(ttl)}")
    rows = None if online is None or embedding or not view.online else online.rows
    if rows == 0:
        state = "empty"
        before = (
            f" (the job before, {online.previous_job}, left {online.previous_rows:,})"
            if online.previous_rows
            else ""
        )
        reasons.insert(
            0,
            f"the online table is empty, the view serves nothing: job {online.job.id} left 0 "
            f"entities{before}",
        )
    return Freshness(
        state, newest, age, materialized, lag, schedule, ttl, limit, reasons, online_rows=rows
    )


def stream_freshness(
    view: StreamFeatureViewSpec, last_ingest: float | None, *, now: float | None = None
) -> Freshness:
    """A stream view's freshness: the time since its source's newest ingested record. Past the
    view's ttl (or its largest window) every value it served has aged out: ``expired``."""
    now = time.time() if now is None else now
    ttl = view.ttl_seconds or view.max_window_seconds or None
    if last_ingest is None:
        return Freshness(
            "never", None, None, None, None, None, ttl, None,
            [f"no record ingested into push source {view.source!r} yet"],
        )  # fmt: skip
    age = max(0.0, now - last_ingest)
    state, reasons = "fresh", [f"newest record ingested {format_age(age)} ago"]
    if ttl and age > ttl:
        state = "expired"
        reasons.insert(
            0, f"no record ingested for {format_age(age)}, past the ttl {format_age(ttl)}"
        )
    return Freshness(
        state, None, age, None, None, None, ttl, None, reasons, last_ingest=last_ingest
    )


def realtime_freshness(view: RealtimeFeatureViewSpec) -> Freshness:
    """A realtime view is computed at request time: nothing is materialized, nothing ages."""
    inputs = f" from {', '.join(view.inputs)} and the request" if view.inputs else ""
    return Freshness(
        "request_time", None, None, None, None, None, None, None,
        [f"computed at request time{inputs}; nothing is materialized"],
    )  # fmt: skip
