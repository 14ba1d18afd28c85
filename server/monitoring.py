"""Monitoring over HTTP: ``GET /v1/views``, ``/v1/views/{name}``, ``/v1/jobs``, ``/v1/alerts``, and
the freshness and quality gauges of ``/metrics`` (:func:`quality_collectors`).

Thin over :attr:`contextkit.client.Context.monitoring`; every route needs the ``reader`` role in
the workspace it reads.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from contextkit.client import Context
from contextkit.compute.push_embeddings import push_encoder
from contextkit.errors import BadRequestError, NotFoundError
from contextkit.governance.lineage import lineage
from contextkit.governance.monitoring import FRESHNESS_STATES, ViewStatus, job_dict
from contextkit.server.common import READER, ServerState, ok_example
from contextkit.server.metrics import Metrics

# Every status a job can have (queued and cancelled: jobs of the jobs API), and "abandoned": the
# failed jobs whose process died before they finished.
JOB_STATUSES = ("queued", "running", "succeeded", "warning", "failed", "cancelled", "abandoned")


class JobSummary(BaseModel):
    """A materialization job (times in ISO 8601)."""

    id: str
    workspace: str
    view: str
    status: str = Field(description="queued, running, succeeded, warning, failed, cancelled")
    range_start: str | None
    range_end: str | None
    rows_offline: int | None
    rows_online: int | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    error: str | None
    kind: str


class Alert(BaseModel):
    id: str
    workspace: str
    view: str
    source: str = Field(description="expectation, push, freshness, job or online")
    kind: str
    subject: str
    severity: str = Field(description="error or warning")
    message: str
    job_id: str | None
    since: str | None
    updated_at: str | None
    resolved_at: str | None


class ViewSummary(BaseModel):
    """A view: what it is (by kind: features or the embedded text and metadata, model and
    dimension, source, inputs) and its state (newest job, rows, drift, freshness, alerts)."""

    model_config = ConfigDict(extra="allow")  # the fields of its kind

    name: str
    kind: str
    description: str
    owner: str | None
    entities: list[str]
    join_keys: list[dict[str, Any]]
    features: list[dict[str, Any]]
    online: bool
    expectations: dict[str, Any] | None
    last_job: JobSummary | None
    rows: int | None
    max_drift: float | None
    freshness: dict[str, Any] = Field(description="state, data age, lag, schedule, reasons.")
    alerts: list[Alert]


class ViewsResponse(BaseModel):
    """Answer of ``GET /v1/views``."""

    workspace: str
    views: list[ViewSummary]


class Lineage(BaseModel):
    upstream: list[str]
    downstream: list[str]
    graph: dict[str, Any] = Field(description="The view's neighbourhood: nodes and edges.")


class ViewDetail(BaseModel):
    """Answer of ``GET /v1/views/{name}``."""

    workspace: str
    view: ViewSummary
    spec: dict[str, Any] = Field(description="The applied spec, as the registry holds it.")
    lineage: Lineage
    job: str | None = Field(description="The id of the newest measured job.")
    stats: dict[str, Any] | None = Field(description="Its statistics: columns, vectors, ...")
    history: list[dict[str, Any]] = Field(description="The recent runs, newest first.")


class JobsResponse(BaseModel):
    """Answer of ``GET /v1/jobs``."""

    workspace: str
    jobs: list[JobSummary]


class AlertsResponse(BaseModel):
    """Answer of ``GET /v1/alerts``."""

    workspace: str
    alerts: list[Alert]
    counts: dict[str, int] = Field(description="Open alerts per severity.")


_FRESHNESS_EXAMPLE = {
    "state": "fresh",
    "newest_event": "2026-12-01T05:58:12.120000Z",
    "data_age_s": 1843.2,
    "materialized_at": "2026-12-01T06:00:00Z",
    "lag_s": 1755.0,
    "schedule_s": 3600,
    "ttl_s": 2592000,
    "max_staleness_s": 7200,
    "reasons": [],
}
_JOB_EXAMPLE = {
    "id": "5f0c2b9e81aa",
    "workspace": "prod",
    "view": "user_order_stats",
    "status": "warning",
    "range_start": "2026-12-01T05:00:00+00:00",
    "range_end": "2026-12-01T06:00:00+00:00",
    "rows_offline": 312,
    "rows_online": 819,
    "started_at": "2026-12-01T06:00:01.200000Z",
    "finished_at": "2026-12-01T06:00:02.950000Z",
    "duration_s": 1.75,
    "error": "expectation failed: amount_sum_7d: 2 of 819 values outside [0, 10000] ...",
    "kind": "batch_feature_view",
}
_ALERT_EXAMPLE = {
    "id": "0d3f6a1c22b4",
    "workspace": "prod",
    "view": "user_order_stats",
    "source": "expectation",
    "kind": "between",
    "subject": "amount_sum_7d",
    "severity": "warning",
    "message": "amount_sum_7d: 2 of 819 values outside [0, 10000] (min 0, max 12410.5)",
    "job_id": "5f0c2b9e81aa",
    "since": "2026-12-01T06:00:02.940000Z",
    "updated_at": "2026-12-01T06:00:02.940000Z",
    "resolved_at": None,
}
_VIEW_EXAMPLE = {
    "name": "user_order_stats",
    "kind": "batch_feature_view",
    "description": "Spend and order counts of completed orders.",
    "owner": "growth",
    "entities": ["user"],
    "join_keys": [{"name": "user_id", "dtype": "int64"}],
    "features": [{"name": "amount_sum_7d", "dtype": "float64"}],
    "online": True,
    "offline": True,
    "expectations": {
        "not_null": {},
        "between": {"amount_sum_7d": [0, 10000]},
        "max_staleness_seconds": 7200,
        "max_drift": None,
        "on_failure": "warn",
    },
    "last_job": _JOB_EXAMPLE,
    "rows": 819,
    "max_drift": 0.012,
    "freshness": _FRESHNESS_EXAMPLE,
    "alerts": [_ALERT_EXAMPLE],
}
VIEWS_EXAMPLE = {"workspace": "prod", "views": [_VIEW_EXAMPLE]}
VIEW_EXAMPLE = {
    "workspace": "prod",
    "view": _VIEW_EXAMPLE,
    "spec": {"kind": "batch_feature_view", "name": "user_order_stats", "sql": "SELECT ..."},
    "lineage": {
        "upstream": ["file_source:orders"],
        "downstream": ["context_service:support_assistant", "prompt_view:support_prompt"],
        "graph": {
            "nodes": [{"id": "file_source:orders", "kind": "file_source", "name": "orders"}],
            "edges": [{"from": "file_source:orders", "to": "batch_feature_view:user_order_stats"}],
        },
    },
    "job": "5f0c2b9e81aa",
    "stats": {
        "rows": 819,
        "scope": "online",
        "columns": {
            "amount_sum_7d": {
                "kind": "numeric",
                "count": 640,
                "nulls": 179,
                "null_rate": 0.2186,
                "min": 3.5,
                "max": 12410.5,
                "mean": 402.1,
                "quantiles": {"p50": 233.9, "p99": 3120.0},
                "drift": {"psi": 0.012, "reference_job": "9a1e07c3d2f0"},
            }
        },
        "drift": {"reference_job": "9a1e07c3d2f0", "max_psi": 0.012, "column": "amount_sum_7d"},
    },
    "history": [
        {
            "job_id": "5f0c2b9e81aa",
            "status": "warning",
            "at": "2026-12-01T06:00:02.940000Z",
            "rows": 819,
            "max_drift": 0.012,
            "null_rates": {"amount_sum_7d": 0.2186},
            "psi": {"amount_sum_7d": 0.012},
        }
    ],
}
JOBS_EXAMPLE = {"workspace": "prod", "jobs": [_JOB_EXAMPLE]}
ALERTS_EXAMPLE = {"workspace": "prod", "alerts": [_ALERT_EXAMPLE], "counts": {"warning": 1}}


def view_summary(spec: Any, status: ViewStatus) -> dict[str, Any]:
    """What ``/v1/views`` says of one view: its definition in brief, its state and alerts.

    Every kind has the same keys; a stream view adds its ``source`` (its freshness is that of
    its newest ingested record), a realtime view its ``inputs`` (it is computed at request
    time: no job, ``freshness.state`` is ``request_time``)."""
    out: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "description": spec.description,
        "owner": spec.owner,
        "entities": list(getattr(spec, "entities", [])),
        "join_keys": [k.model_dump() for k in spec.join_keys],
    }
    if spec.kind == "embedding_view":
        out["features"] = [{"name": spec.text_column, "dtype": "string"}] + [
            m.model_dump() for m in spec.metadata_schema
        ]
        out.update(model=spec.model_name or spec.model, dimension=spec.dimension)
    else:
        out["features"] = [{"name": f.name, "dtype": f.dtype} for f in spec.features]
        out.update(offline=getattr(spec, "offline", False))
    if spec.kind == "stream_feature_view":
        out["source"] = spec.source
    elif spec.kind == "realtime_feature_view":
        out["inputs"] = list(spec.inputs)
    out["online"] = spec.online
    expectations = getattr(spec, "expectations", None)
    out["expectations"] = expectations.model_dump() if expectations else None
    out.update({k: v for k, v in status.to_dict().items() if k not in ("name", "kind")})
    return out


def view_detail(ctx: Context, name: str, runs: int = 30) -> dict[str, Any]:
    """``/v1/views/{name}``: the spec, lineage, newest statistics and recent runs of a view."""
    statuses = {s.name: s for s in ctx.monitoring.status()}
    if name not in statuses:
        known = sorted(_views(ctx))
        raise NotFoundError(
            f"unknown view {name!r} in workspace {ctx.workspace!r}",
            hint="views: " + (", ".join(known) or "none applied"),
        )
    status = statuses[name]
    spec = _views(ctx)[name]
    graph = lineage(ctx.specs())
    node = f"{spec.kind}:{name}"
    quality = ctx.monitoring.quality(name, runs=runs)
    return {
        "workspace": ctx.workspace,
        "view": view_summary(spec, status),
        "spec": spec.model_dump(mode="json"),
        "lineage": {
            "upstream": sorted(graph.upstream(node)),
            "downstream": sorted(graph.downstream(node)),
            "graph": graph.neighborhood(node).to_dict(),
        },
        "job": quality["job"],
        "stats": quality["stats"],
        "history": quality["history"],
    }


def _views(ctx: Context) -> dict[str, Any]:
    specs = ctx.specs()
    return {**specs.feature_views, **specs.embedding_views}


def _int_param(value: str | None, name: str, default: int, high: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= high:
        raise BadRequestError(f"`{name}` must be an integer in 1..{high}", details={"field": name})
    return int(value)


def routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/views", responses=ok_example(VIEWS_EXAMPLE))
    async def views(request: Request, workspace: str | None = None) -> ViewsResponse:
        """The views of a workspace (batch, stream, realtime and embedding), each with its newest
        job, row count, freshness (stream views: since their newest ingested record; realtime
        views: computed at request time), drift and open alerts."""
        c = state.context(request, workspace, READER)

        def build() -> ViewsResponse:
            specs = _views(c)
            statuses = c.monitoring.status()
            return ViewsResponse(
                workspace=c.workspace,
                views=[
                    ViewSummary.model_validate(view_summary(specs[s.name], s)) for s in statuses
                ],
            )

        return await run_in_threadpool(build)

    @router.get("/v1/views/{name}", responses=ok_example(VIEW_EXAMPLE))
    async def view(
        request: Request, name: str, workspace: str | None = None, runs: str | None = None
    ) -> ViewDetail:
        """One view: its spec, lineage (upstream and downstream objects), the statistics of its
        newest measured job and a summary of its recent runs (``runs``, default 30)."""
        c = state.context(request, workspace, READER)
        count = _int_param(runs, "runs", 30, 500)
        return ViewDetail.model_validate(await run_in_threadpool(view_detail, c, name, count))

    @router.get("/v1/jobs", responses=ok_example(JOBS_EXAMPLE))
    async def jobs(
        request: Request,
        workspace: str | None = None,
        view: str | None = None,
        status: str | None = None,
        limit: str | None = None,
    ) -> JobsResponse:
        """Materialization jobs, newest first; filter by ``view`` and ``status`` (queued,
        running, succeeded, warning, failed, cancelled, or abandoned: failed because its process
        died); ``limit`` (default 50, at most 1000)."""
        c = state.context(request, workspace, READER)
        count = _int_param(limit, "limit", 50, 1000)
        if status is not None and status not in JOB_STATUSES:
            raise BadRequestError(
                f"unknown job status {status!r}",
                hint=f"use one of {', '.join(JOB_STATUSES)}",
                details={"field": "status"},
            )
        found = c.jobs(view, count if status is None else max(count, 1000))
        wanted = (
            (lambda j: j.abandoned)
            if status == "abandoned"
            else (lambda j: status in (None, j.status))
        )
        selected = [j for j in found if wanted(j)][:count]
        return JobsResponse.model_validate(
            {"workspace": c.workspace, "jobs": [job_dict(j) for j in selected]}
        )

    @router.get("/v1/alerts", responses=ok_example(ALERTS_EXAMPLE))
    async def alerts(
        request: Request, workspace: str | None = None, include_resolved: bool = False
    ) -> AlertsResponse:
        """Open alerts of the workspace's views, errors first: expectations the newest data
        failed, failed push-based encodes, stale, expired, empty or late views, online tables a
        job shrank, and views whose last job failed."""
        c = state.context(request, workspace, READER)
        found = await run_in_threadpool(c.monitoring.alerts, include_resolved=include_resolved)
        counts: dict[str, int] = {}
        for a in found:
            if a.resolved_at is None:
                counts[a.severity] = counts.get(a.severity, 0) + 1
        return AlertsResponse.model_validate(
            {"workspace": c.workspace, "alerts": [a.to_dict() for a in found], "counts": counts}
        )

    return router


# -- /metrics ------------------------------------------------------------------------------------
class _Snapshot:
    """Each live workspace's view statuses and newest statistics, shared by the gauges of one
    scrape and recomputed when the registry changed or a few seconds passed."""

    def __init__(self, state: ServerState, max_age_s: float = 5.0) -> None:
        self.state = state
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._key: Any = None
        self._at = 0.0
        self._data: list[tuple[str, list[ViewStatus], dict[str, Any]]] = []

    def get(self) -> list[tuple[str, list[ViewStatus], dict[str, Any]]]:
        registry = self.state.ctx.registry
        with self._lock:
            key = registry.change_token()
            if key == self._key and time.monotonic() - self._at < self.max_age_s:
                return self._data
            data = []
            for workspace in self.state.ctx.list_workspaces():
                if not workspace.live:
                    continue
                ctx = self.state.ctx.use(workspace.name)
                stats = {s.view: s.stats for s in registry.latest_job_stats(workspace.name)}
                data.append((workspace.name, ctx.monitoring.status(), stats))
            self._key, self._at, self._data = key, time.monotonic(), data
            return data


def quality_collectors(metrics: Metrics, state: ServerState) -> None:
    """Gauges of freshness, data quality, drift and alerts per view, read at scrape time."""
    snapshot = _Snapshot(state)

    def data_age():
        for workspace, statuses, _ in snapshot.get():
            for s in statuses:
                if s.freshness.data_age_s is not None:
                    yield (workspace, s.name), s.freshness.data_age_s

    def freshness_state():
        for workspace, statuses, _ in snapshot.get():
            for s in statuses:
                for name in FRESHNESS_STATES:
                    yield (workspace, s.name, name), 1.0 if s.freshness.state == name else 0.0

    def rows():
        for workspace, statuses, _ in snapshot.get():
            for s in statuses:
                if s.stats is not None and s.stats.rows is not None:
                    yield (workspace, s.name), s.stats.rows

    def column_values(what: str):
        for workspace, _statuses, stats in snapshot.get():
            for view, data in stats.items():
                for column, entry in (data.get("columns") or {}).items():
                    value = (
                        entry.get("null_rate")
                        if what == "null_rate"
                        else (entry.get("drift") or {}).get("psi")
                    )
                    if value is not None:
                        yield (workspace, view, column), value

    def centroid_shift():
        for workspace, _statuses, stats in snapshot.get():
            for view, data in stats.items():
                shift = ((data.get("vectors") or {}).get("drift") or {}).get("centroid_shift")
                if shift is not None:
                    yield (workspace, view), shift

    def alerts():
        for workspace, statuses, _ in snapshot.get():
            for s in statuses:
                counts = {"error": 0, "warning": 0}
                for alert in s.alerts:
                    counts[alert.severity] = counts.get(alert.severity, 0) + 1
                for severity, count in counts.items():
                    yield (workspace, s.name, severity), count

    metrics.collector(
        "contextkit_view_data_age_seconds",
        "Age of the newest value a view serves: now minus the newest event time of its online "
        "snapshot (embedding views: since their newest successful job).",
        "gauge",
        ("workspace", "view"),
        data_age,
    )
    metrics.collector(
        "contextkit_view_freshness_state",
        "1 for the view's freshness state (" + ", ".join(FRESHNESS_STATES) + "), 0 for the others.",
        "gauge",
        ("workspace", "view", "state"),
        freshness_state,
    )
    metrics.collector(
        "contextkit_view_rows",
        "Rows the view's newest measured job wrote (online entities, offline rows or documents).",
        "gauge",
        ("workspace", "view"),
        rows,
    )
    metrics.collector(
        "contextkit_feature_null_rate",
        "Share of null values of a feature (or embedding-view column) in the newest measured job.",
        "gauge",
        ("workspace", "view", "feature"),
        lambda: column_values("null_rate"),
    )
    metrics.collector(
        "contextkit_feature_drift_psi",
        "Population stability index of a feature in the newest measured job vs its reference.",
        "gauge",
        ("workspace", "view", "feature"),
        lambda: column_values("psi"),
    )
    metrics.collector(
        "contextkit_embedding_centroid_shift",
        "1 - cosine between the centroid of an embedding view's vectors and its reference's.",
        "gauge",
        ("workspace", "view"),
        centroid_shift,
    )

    def push_failures():
        counts = push_encoder().failure_counts(state.ctx.config.registry_key)
        seen = set()
        for workspace, statuses, _ in snapshot.get():
            for s in statuses:
                if s.kind == "embedding_view":
                    seen.add((workspace, s.name))
                    yield (workspace, s.name), counts.get((workspace, s.name), 0)
        for key, count in counts.items():
            if key not in seen:
                yield key, count

    metrics.collector(
        "contextkit_push_embedding_failures_total",
        "Push-based encodes of ingested records that failed in this process, per embedding view "
        "(the records stay out of the vector table until the view is materialized).",
        "counter",
        ("workspace", "view"),
        push_failures,
    )
    metrics.collector(
        "contextkit_view_alerts",
        "Open alerts per view and severity (failed expectations, freshness, failed jobs).",
        "gauge",
        ("workspace", "view", "severity"),
        alerts,
    )
