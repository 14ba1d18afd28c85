"""What a job left in its view's online table, compared with the job before it: a run that
empties the table, or shrinks it by more than ``monitoring.max_online_shrink``, ends with a
warning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from contextkit.framework.expectations import format_age
from contextkit.framework.specs import (
    FeatureViewSpec,
)
from contextkit.stores.registry import (
    COMPLETED_STATUSES,
    JobRecord,
)

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class OnlineSnapshot:
    """What the newest job that refreshed a view's online table left there, and what the job
    before it (that refreshed it) had left."""

    job: JobRecord
    rows: int
    previous_rows: int | None
    previous_job: str | None


def refreshed_online(job: JobRecord) -> bool:
    """Whether a completed job replaced its view's online table (a backfill of a past range or
    an offline-only view does not). Jobs recorded before this was kept count when they wrote
    entities."""
    if job.status not in COMPLETED_STATUSES:
        return False
    if "online" in job.details:
        return bool(job.details["online"])
    return bool(job.rows_online)


def online_snapshot(jobs: Iterable[JobRecord]) -> OnlineSnapshot | None:
    """The online snapshot of a view from its jobs (newest first); None when no job wrote it."""
    found = [j for j in jobs if refreshed_online(j)][:2]
    if not found:
        return None
    previous = found[1] if len(found) > 1 else None
    return OnlineSnapshot(
        found[0],
        int(found[0].rows_online or 0),
        None if previous is None else int(previous.rows_online or 0),
        None if previous is None else previous.id,
    )


def online_change_warning(
    view: FeatureViewSpec,
    rows: int,
    previous: int | None,
    max_shrink: float | None,
    *,
    end: str | None = None,
) -> str | None:
    """Why a job's online snapshot of ``rows`` entities (``previous`` before it) is suspicious,
    or None: it is empty (always), or it lost more than ``max_shrink`` (a share) of a populated
    table. The job's warning and the view's alert share this text."""
    where = f"online table of {view.name!r}"
    if rows == 0:
        before = f", the previous job left {previous:,}" if previous else ""
        why = (
            f"no entity has a value within the ttl ({format_age(view.ttl_seconds)}) before the "
            f"job's end{f' {end}' if end else ''}"
            if view.ttl_seconds
            else "the view's query returned no row as of the job's end"
        )
        return (
            f"the {where} is empty: this job left 0 entities{before}; the view serves nothing "
            f"({why}: check --end and the source's newest rows)"
        )
    if previous and max_shrink is not None and rows < previous * (1.0 - max_shrink):
        lost = 1.0 - rows / previous
        return (
            f"the {where} shrank by {lost:.0%}: {rows:,} entities, {previous:,} before "
            f"(monitoring.max_online_shrink is {max_shrink:.0%})"
        )
    return None
