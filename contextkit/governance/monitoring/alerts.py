"""Alerts as users see them: stored ones (failed expectations, failed push-based encodes), open
until a later job repairs them, and live ones computed when asked (failed jobs; stale, expired,
empty or late views; online tables that shrank).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from contextkit.compute.push_embeddings import ALERT_KIND as PUSH_ALERT_KIND
from contextkit.compute.quality.online_change import OnlineSnapshot, online_change_warning
from contextkit.framework.specs import (
    FeatureViewSpec,
)
from contextkit.governance.monitoring.freshness import AnyView, Freshness, iso_s
from contextkit.stores.registry import (
    AlertRecord,
    JobRecord,
)

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Alert:
    """An alert as users see it: stored (expectations) or computed now (freshness, failures)."""

    id: str
    workspace: str
    view: str
    source: str  # "expectation", "push", "freshness", "job" or "online"
    kind: str
    subject: str
    severity: str
    message: str
    job_id: str | None
    since: float
    updated_at: float
    resolved_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("since", "updated_at", "resolved_at"):
            out[key] = iso_s(out[key])
        return out


def stored_alert(record: AlertRecord) -> Alert:
    return Alert(
        id=record.id,
        workspace=record.workspace,
        view=record.view,
        source="expectation",
        kind=record.kind,
        subject=record.subject,
        severity=record.severity,
        message=record.message,
        job_id=record.job_id,
        since=record.created_at,
        updated_at=record.updated_at,
        resolved_at=record.resolved_at,
    )


def repaired(alert: Alert, completed: JobRecord | None) -> bool:
    """A failed push-based encode is repaired by a job of the view that started after it (a
    materialization encodes whatever the ingest log holds that the table lacks); with monitoring
    on, that job also resolves the stored alert."""
    return (
        alert.kind == PUSH_ALERT_KIND
        and completed is not None
        and completed.started_at > alert.updated_at
    )


def live_alerts(
    workspace: str,
    view: AnyView,
    last_job: JobRecord | None,
    fresh: Freshness,
    snapshot: OnlineSnapshot | None = None,
    max_shrink: float | None = None,
) -> list[Alert]:
    out = []
    now = time.time()
    if last_job is not None and last_job.status == "failed":
        out.append(
            Alert(
                id=f"job:{workspace}:{view.name}",
                workspace=workspace,
                view=view.name,
                source="job",
                kind="job_failed",
                subject="",
                severity="error",
                message=f"last job {last_job.id} failed: {last_job.error or 'no error recorded'}",
                job_id=last_job.id,
                since=last_job.finished_at or last_job.started_at,
                updated_at=last_job.finished_at or last_job.started_at,
            )
        )
    if fresh.state in ("late", "stale", "expired", "empty"):
        expectations = getattr(view, "expectations", None)
        fail = expectations is not None and expectations.on_failure == "fail"
        error = fresh.state == "empty" or (fresh.state == "stale" and fail)
        out.append(
            Alert(
                id=f"freshness:{workspace}:{view.name}",
                workspace=workspace,
                view=view.name,
                source="freshness",
                kind=fresh.state,
                subject="",
                severity="error" if error else "warning",
                message="; ".join(fresh.reasons),
                job_id=snapshot.job.id if fresh.state == "empty" and snapshot else None,
                since=fresh.materialized_at or fresh.last_ingest or now,
                updated_at=now,
            )
        )
    if snapshot is not None and snapshot.rows > 0 and isinstance(view, FeatureViewSpec):
        shrank = online_change_warning(view, snapshot.rows, snapshot.previous_rows, max_shrink)
        if shrank is not None:
            job = snapshot.job
            out.append(
                Alert(
                    id=f"online:{workspace}:{view.name}",
                    workspace=workspace,
                    view=view.name,
                    source="online",
                    kind="online_shrink",
                    subject="",
                    severity="warning",
                    message=f"job {job.id}: {shrank}",
                    job_id=job.id,
                    since=job.finished_at or job.started_at,
                    updated_at=job.finished_at or job.started_at,
                )
            )
    return out


def alert_order(alert: Alert) -> tuple:
    return (alert.severity != "error", -alert.updated_at, alert.view, alert.kind)


def summarize_alerts(alerts: Iterable[Alert]) -> dict[str, int]:
    """``{"error": n, "warning": m}``: how many alerts of each severity."""
    out = {"error": 0, "warning": 0}
    for alert in alerts:
        out[alert.severity] = out.get(alert.severity, 0) + 1
    return out
