"""Rich renderings of monitoring data for the CLI: ``contextkit status`` and ``contextkit quality``.

Kept apart from :mod:`contextkit.governance.monitoring` (which computes) so that importing the
numbers never imports rich, and the CLI commands stay thin.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from contextkit.compute.quality.drift import PSI_MODERATE, PSI_SIGNIFICANT
from contextkit.framework.expectations import format_age
from contextkit.governance.monitoring import Alert, ViewStatus

_STATE_COLORS = {
    "fresh": "green",
    "late": "yellow",
    "stale": "red",
    "expired": "red",
    "empty": "bold red",
    "never": "dim",
    "request_time": "cyan",
}
_KINDS = {
    "batch_feature_view": "features",
    "stream_feature_view": "stream",
    "realtime_feature_view": "realtime",
    "embedding_view": "embedding",
}
_JOB_COLORS = {"succeeded": "green", "warning": "yellow", "failed": "red", "running": "cyan"}


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e7 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:,.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _psi(value: float | None) -> str:
    if value is None:
        return "-"
    color = "green" if value < PSI_MODERATE else "yellow" if value < PSI_SIGNIFICANT else "red"
    return f"[{color}]{value:.3f}[/]"


def status_table(statuses: Sequence[ViewStatus], workspace: str, now: float | None = None):
    """One row per view: kind, newest job, rows, freshness, drift and alerts."""
    from rich.table import Table

    now = time.time() if now is None else now
    table = Table(title=f"Workspace {workspace!r}", title_justify="left")
    for column in ("view", "kind", "last job", "rows", "newest value", "freshness", "drift",
                   "alerts"):  # fmt: skip
        table.add_column(column, no_wrap=column in ("view", "freshness"))
    for s in statuses:
        job = s.last_job
        fresh = s.freshness
        age = "-" if fresh.data_age_s is None else f"{format_age(fresh.data_age_s)} old"
        if s.kind == "stream_feature_view":  # updated at ingest: no job
            last = "[dim]no jobs: updated at ingest[/]"
            if fresh.last_ingest is not None:
                age = f"ingested {format_age(now - fresh.last_ingest)} ago"
        elif s.kind == "realtime_feature_view":
            last, age = "[dim]no jobs[/]", "at request time"
        elif job is None:
            last = "[dim]never run[/]"
        else:
            color = _JOB_COLORS.get(job.status, "white")
            when = format_age(now - (job.finished_at or job.started_at))
            last = f"[{color}]{job.status}[/] {when} ago"
        rows = s.stats.rows if s.stats else fresh.online_rows
        counts = {"error": 0, "warning": 0}
        for alert in s.alerts:
            counts[alert.severity] = counts.get(alert.severity, 0) + 1
        alerts = " ".join(
            f"[{'red' if k == 'error' else 'yellow'}]{n} {k}{'s' if n > 1 else ''}[/]"
            for k, n in counts.items()
            if n
        )
        table.add_row(
            s.name,
            _KINDS.get(s.kind, s.kind),
            last,
            _num(rows),
            age,
            f"[{_STATE_COLORS.get(fresh.state, 'white')}]{fresh.state}[/]",
            _psi(s.stats.max_drift if s.stats else None),
            alerts or "[green]none[/]",
        )
    return table


def alerts_table(alerts: Sequence[Alert], now: float | None = None):
    """The alerts, errors first."""
    from rich.table import Table

    now = time.time() if now is None else now
    table = Table(title="Alerts", title_justify="left")
    for column in ("severity", "view", "kind", "since", "message"):
        table.add_column(column, no_wrap=column != "message")
    for a in alerts:
        color = "red" if a.severity == "error" else "yellow"
        kind = f"{a.kind}({a.subject})" if a.subject else a.kind
        table.add_row(
            f"[{color}]{a.severity}[/]",
            a.view,
            kind,
            f"{format_age(now - a.since)} ago",
            a.message,
        )
    return table


def quality_tables(quality: dict[str, Any]) -> list[Any]:
    """The numbers of one job of a view (per column), its expectations, and its recent runs."""
    from rich.table import Table

    out: list[Any] = []
    stats = quality.get("stats")
    view = quality["view"]
    if not stats:
        if quality.get("kind") == "stream_feature_view":
            return [
                f"{view!r} is a stream view: it is updated as records are ingested, and no "
                "materialization job measures it (`contextkit status` shows its last ingest)."
            ]
        if quality.get("kind") == "realtime_feature_view":
            return [
                f"{view!r} is a realtime view: it is computed at request time and nothing is "
                "materialized, so there are no quality statistics."
            ]
        return [f"No quality statistics for {view!r} yet: run `contextkit materialize {view}`."]
    drift = stats.get("drift") or {}
    reference = drift.get("reference_job") or "none (first measured job)"
    header = (
        f"[bold]{view}[/] job {quality['job']} ({quality.get('job_status') or '?'}): "
        f"{_num(stats.get('rows'))} rows, scope {stats.get('scope')}; drift reference: "
        f"{reference}"
    )
    if stats.get("newest_event_us") is not None:
        from contextkit.compute.quality.statistics import iso_micros

        header += (
            f"; event times {iso_micros(stats.get('oldest_event_us'))} .. "
            f"{iso_micros(stats.get('newest_event_us'))}"
        )
    out.append(header)
    if not stats.get("complete", True):
        out.append("[yellow]monitoring is off: only the expectations' columns were measured[/]")
    table = Table(title="Columns", title_justify="left")
    for column in ("column", "type", "null rate", "min", "p50", "mean", "max", "std",
                   "distinct / top values", "PSI"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("column", "type") else "right")
    for name, c in stats.get("columns", {}).items():
        q = c.get("quantiles") or {}
        if c["kind"] in ("categorical", "boolean"):
            top = ", ".join(f"{v} ({n})" for v, n in (c.get("top") or [])[:3])
            described = f"{c.get('distinct', '-')}: {top}" if top else str(c.get("distinct", "-"))
        else:
            described = ""
        kind = "text length" if c["kind"] == "text" else (c.get("dtype") or c["kind"])
        table.add_row(
            name,
            kind,
            f"{c['null_rate']:.2%}",
            _num(c.get("min")),
            _num(q.get("p50")),
            _num(c.get("mean")),
            _num(c.get("max")),
            _num(c.get("std")),
            described,
            _psi((c.get("drift") or {}).get("psi")),
        )
    out.append(table)
    vectors = stats.get("vectors")
    if vectors:
        norm = vectors.get("norm") or {}
        shift = (vectors.get("drift") or {}).get("centroid_shift")
        dimension = "ok" if vectors["dimension_ok"] else f"expected {vectors['expected_dimension']}"
        out.append(
            f"vectors: {_num(vectors['count'])} measured, dimension {vectors['dimension']} "
            f"({dimension}), norm {_num(norm.get('min'))} .. {_num(norm.get('max'))} (mean "
            f"{_num(norm.get('mean'))}), {vectors['zero']} zero, {vectors['non_finite']} "
            f"non-finite; centroid shift {'-' if shift is None else f'{shift:.4f}'}"
        )
    plan = quality.get("search")
    if plan:
        params = ", ".join(f"{k} {v}" for k, v in (plan.get("params") or {}).items()) or "-"
        recall = "-" if plan.get("recall") is None else f"{plan['recall']:.3f}"
        out.append(
            f"vector search: {plan['method']} ({plan.get('reason') or ''}); ANN index "
            f"{plan.get('index') or 'none'}, parameters {params}, recall@{plan.get('k')} vs "
            f"exact {recall} on {plan.get('sample')} sampled rows (target "
            f"{plan.get('target')}); p50 {_num(plan.get('p50_ms'))} ms (exact "
            f"{_num(plan.get('exact_p50_ms'))} ms, ANN {_num(plan.get('ann_p50_ms'))} ms); "
            f"measured at {_num(plan.get('rows'))} rows"
        )
        measured = [
            f"{c['method']}"
            + (f" ({', '.join(f'{k} {v}' for k, v in c['params'].items())})" if c["params"] else "")
            + f": recall {c['recall']:.3f}, p50 "
            + (f"{_num(c['p50_ms'])} ms" if "p50_ms" in c else "not timed (target not reached)")
            for c in plan.get("candidates") or []
        ]
        builds = [
            f"{b['index']} built in {b['build_s']:.1f} s, p50 {_num(b['p50_ms'])} ms"
            + (" (kept)" if b.get("chosen") else "")
            for b in plan.get("index_builds") or []
        ]
        if measured:
            out.append("  configurations measured: " + "; ".join(measured))
        if builds:
            out.append("  index kinds compared: " + "; ".join(builds))
        skipped: dict[str, list[str]] = {}  # reason -> the kinds not built for it
        for s in plan.get("index_skipped") or []:
            skipped.setdefault(s["reason"], []).append(s["index"])
        if skipped:
            why = "; ".join(f"{', '.join(kinds)} {reason}" for reason, kinds in skipped.items())
            out.append("  index kinds skipped: " + why)
    expectations = stats.get("expectations") or []
    if expectations:
        checks = Table(title="Expectations", title_justify="left")
        for column in ("", "expectation", "result"):
            checks.add_column(column)
        for e in expectations:
            mark = "[green]pass[/]" if e["ok"] else "[red]FAIL[/]"
            label = f"{e['kind']}({e['subject']})" if e["subject"] else e["kind"]
            checks.add_row(mark, label, e["message"])
        out.append(checks)
    history = quality.get("history") or []
    if len(history) > 1:
        runs = Table(title="Recent runs (newest first)", title_justify="left")
        for column in ("job", "status", "measured at", "rows", "max drift", "failed"):
            runs.add_column(column)
        for h in history:
            color = _JOB_COLORS.get(h["status"] or "", "white")
            runs.add_row(
                h["job_id"],
                f"[{color}]{h['status']}[/]",
                h["at"],
                _num(h["rows"]),
                _psi(h["max_drift"]),
                "; ".join(h["failed"]),
            )
        out.append(runs)
    return out
