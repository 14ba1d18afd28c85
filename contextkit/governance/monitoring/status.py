"""What the CLI, the server and the UI read: one status per view, the quality report of a view,
open alerts, and the pinned reference jobs (``ctx.monitoring``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from contextkit.compute.quality.drift import REFERENCE_SETTING
from contextkit.compute.quality.online_change import OnlineSnapshot, online_snapshot
from contextkit.errors import NotFoundError
from contextkit.framework.specs import (
    EmbeddingViewSpec,
    FeatureViewSpec,
    RealtimeFeatureViewSpec,
    StreamFeatureViewSpec,
)
from contextkit.governance.monitoring.alerts import (
    Alert,
    alert_order,
    live_alerts,
    repaired,
    stored_alert,
)
from contextkit.governance.monitoring.freshness import (
    AnyView,
    Freshness,
    freshness,
    iso_s,
    realtime_freshness,
    stream_freshness,
)
from contextkit.stores.registry import (
    COMPLETED_STATUSES,
    JobRecord,
    JobStatsRecord,
)

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime


@dataclass(frozen=True)
class ViewStatus:
    """One view's state: its newest job, its freshness, its numbers and its open alerts."""

    workspace: str
    name: str
    kind: str
    last_job: JobRecord | None
    last_completed: JobRecord | None
    stats: JobStatsRecord | None
    freshness: Freshness
    alerts: list[Alert]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "last_job": job_dict(self.last_job) if self.last_job else None,
            "rows": self.stats.rows if self.stats else None,
            "max_drift": self.stats.max_drift if self.stats else None,
            "freshness": self.freshness.to_dict(),
            "alerts": [a.to_dict() for a in self.alerts],
        }


def job_dict(job: JobRecord) -> dict[str, Any]:
    """A job record as JSON (times in ISO 8601)."""
    return {
        "id": job.id,
        "workspace": job.workspace,
        "view": job.view,
        "status": job.status,
        "range_start": job.range_start,
        "range_end": job.range_end,
        "rows_offline": job.rows_offline,
        "rows_online": job.rows_online,
        "started_at": iso_s(job.started_at),
        "finished_at": iso_s(job.finished_at),
        "duration_s": job.duration_s,
        "error": job.error,
        "kind": job.details.get("kind", "batch_feature_view"),
    }


class Monitoring:
    """Quality, drift, freshness and alerts of a workspace's views: ``ctx.monitoring``.

    ::

        ctx.monitoring.status()                  # one ViewStatus per view
        ctx.monitoring.quality("user_profile")   # the numbers of its newest job, and its history
        ctx.monitoring.alerts()                  # open alerts, newest first
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.registry = runtime.registry

    def _views(self, workspace: str | None) -> dict[str, AnyView]:
        specs = self.runtime.specs(workspace)
        return {
            **specs.views,
            **specs.embedding_views,
            **specs.stream_views,
            **specs.realtime_views,
        }

    def status(self, workspace: str | None = None, *, now: float | None = None) -> list[ViewStatus]:
        """Every view of the workspace (batch, stream, realtime and embedding views) with its
        newest job, freshness and alerts."""
        name = workspace or self.runtime.workspace
        views = self._views(name)
        latest = {j.view: j for j in self.registry.latest_jobs(name)}
        completed = {j.view: j for j in self.registry.last_succeeded_jobs() if j.workspace == name}
        stats = {s.view: s for s in self.registry.latest_job_stats(name, with_stats=False)}
        stored: dict[str, list[Alert]] = {}
        for record in self.registry.list_alerts(name):
            stored.setdefault(record.view, []).append(stored_alert(record))
        max_shrink = self.runtime.config.monitoring.max_online_shrink
        ingested: dict[str, float | None] = {}
        out = []
        for view_name in sorted(views):
            view = views[view_name]
            done = completed.get(view_name)
            view_stats = stats.get(view_name)
            snapshot = None
            if isinstance(view, StreamFeatureViewSpec):
                if view.source not in ingested:
                    from contextkit.compute.streaming import last_ingest_time

                    ingested[view.source] = last_ingest_time(self.runtime, name, view.source)
                fresh = stream_freshness(view, ingested[view.source], now=now)
            elif isinstance(view, RealtimeFeatureViewSpec):
                fresh = realtime_freshness(view)
            else:
                if isinstance(view, FeatureViewSpec) and view.online and done is not None:
                    snapshot = online_snapshot(self.registry.list_jobs(name, view_name, 50))
                fresh = freshness(
                    view, done, self._snapshot_stats(view_stats, snapshot), now=now,
                    online=snapshot,
                )  # fmt: skip
            alerts = [a for a in stored.get(view_name, []) if not repaired(a, done)] + live_alerts(
                name, view, latest.get(view_name), fresh, snapshot, max_shrink
            )
            out.append(
                ViewStatus(
                    name,
                    view_name,
                    view.kind,
                    latest.get(view_name),
                    done,
                    view_stats,
                    fresh,
                    sorted(alerts, key=alert_order),
                )
            )
        return out

    def _snapshot_stats(
        self, newest: JobStatsRecord | None, snapshot: OnlineSnapshot | None
    ) -> JobStatsRecord | None:
        """The statistics of the job that wrote the online snapshot: the newest measured job's,
        unless that one did not refresh it (a backfill), else the snapshot job's own."""
        if snapshot is None or (newest is not None and newest.job_id == snapshot.job.id):
            return newest
        record = self.registry.get_job_stats(snapshot.job.id)
        return record if record is not None and record.scope == "online" else None

    def alerts(
        self, workspace: str | None = None, *, include_resolved: bool = False
    ) -> list[Alert]:
        """Open alerts of the workspace's views (with ``include_resolved``, resolved ones too),
        errors first, then newest first."""
        name = workspace or self.runtime.workspace
        views = self._views(name)
        out: list[Alert] = []
        for status in self.status(name):
            out.extend(status.alerts)
        if include_resolved:
            out += [
                stored_alert(r)
                for r in self.registry.list_alerts(name, open_only=False)
                if r.resolved_at is not None and r.view in views
            ]
        return sorted(out, key=alert_order)

    def quality(self, view: str, *, job: str | None = None, runs: int = 30) -> dict[str, Any]:
        """The numbers of a view's newest measured job (or of ``job``), and its history.

        ``{"view", "kind", "job", "stats", "history": [{"job_id", "status", "at", "rows",
        "max_drift", "null_rates": {...}, "psi": {...}}, ...]}`` (history newest first).
        """
        spec = self._view(view)
        workspace = self.runtime.workspace
        records = self.registry.list_job_stats(workspace, view, limit=runs)
        chosen = None
        if job is not None:
            chosen = self.registry.get_job_stats(job)
            if chosen is None or chosen.view != view or chosen.workspace != workspace:
                raise NotFoundError(
                    f"job {job!r} of view {view!r} has no quality statistics",
                    hint=f"`contextkit jobs --view {view}` lists its jobs",
                )
        elif records:
            chosen = next((r for r in records if r.status in COMPLETED_STATUSES), records[0])
        history = [
            {
                "job_id": r.job_id,
                "status": r.status,
                "at": iso_s(r.created_at),
                "scope": r.scope,
                "rows": r.rows,
                "max_drift": r.max_drift,
                "null_rates": {n: c.get("null_rate") for n, c in r.stats["columns"].items()},
                "psi": {
                    n: (c.get("drift") or {}).get("psi") for n, c in r.stats["columns"].items()
                },
                "centroid_shift": (r.stats.get("vectors") or {})
                .get("drift", {})
                .get("centroid_shift"),
                "failed": [e["message"] for e in r.stats.get("expectations", []) if not e["ok"]],
            }
            for r in records
        ]
        pinned = self.registry.get_setting(REFERENCE_SETTING.format(workspace=workspace, view=view))
        # an embedding view's search plan (exact or ANN, parameters, recall reached) is in the
        # details of its job record
        record = self.registry.get_job(chosen.job_id) if chosen else None
        search_plan = (record.details or {}).get("search") if record else None
        return {
            "workspace": workspace,
            "view": view,
            "kind": spec.kind,
            "job": chosen.job_id if chosen else None,
            "job_status": chosen.status if chosen else None,
            "scope": chosen.scope if chosen else None,
            "stats": chosen.stats if chosen else None,
            "reference": pinned or "previous",
            "history": history,
            "search": search_plan,
        }

    def set_reference(self, view: str, job: str | None) -> None:
        """Pin the job later jobs of ``view`` measure drift against (None: the previous job)."""
        self._view(view)
        key = REFERENCE_SETTING.format(workspace=self.runtime.workspace, view=view)
        if job is None:
            self.registry.set_setting(key, "")
            return
        record = self.registry.get_job_stats(job)
        if record is None or record.view != view or record.workspace != self.runtime.workspace:
            raise NotFoundError(
                f"job {job!r} of view {view!r} has no quality statistics to compare with",
                hint=f"pick a job of {view} from `contextkit quality {view}`",
            )
        self.registry.set_setting(key, job)

    def _view(self, name: str) -> FeatureViewSpec | EmbeddingViewSpec:
        views = self._views(None)
        if name not in views:
            raise NotFoundError(
                f"unknown view {name!r} in workspace {self.runtime.workspace!r}",
                hint="views: " + (", ".join(sorted(views)) or "none applied"),
            )
        return views[name]


def stats_json(stats: dict[str, Any] | None) -> str:
    """Statistics as compact JSON (for logs and tests)."""
    return json.dumps(stats, separators=(",", ":"), default=str)
