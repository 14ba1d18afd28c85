"""The web UI at ``/ui``: server-rendered pages over the registry, the monitoring data and the API.

How it fits together:

* ``GET /ui`` and every ``GET /ui/...`` page answer the same *shell*: a static HTML page holding
  no registry data, so it needs no key (the ops middleware lets the shell and ``/ui/static/``
  through unauthenticated; ``/ui/partial/`` is authenticated and rate-limited like the API).
* The shell's script (``/ui/static/ui.js``) fetches the page's content from
  ``GET /ui/partial/<the same path>``: HTML rendered here with Jinja, sent with
  ``Authorization: Bearer <key>`` (the key the user entered at login, kept in the browser's
  ``localStorage``). Partials check the key like every API route (``state.context(..., READER)``),
  so a 401 shows the login form and a 403 says which workspace the key may not read. With
  ``--no-auth`` no key is asked for.
* Links inside the UI are followed by the script (history API), so moving between pages costs one
  partial request. The playground and the search page call ``POST /v1/context`` and
  ``POST /v1/search`` from the browser, with the same key.

Charts are inline SVG computed server-side (:mod:`contextkit.server.charts`).

Admin actions. On the control plane (``create_app(..., jobs=...)``: ``contextkit control-plane``)
a caller with the ``admin`` role in the workspace sees buttons to trigger, cancel and retry jobs
(the Jobs page follows running jobs live), an Access page (create, list and revoke API keys, with
each principal's roles) and an Audit page. The buttons call the same JSON API as every client
(``POST /v1/jobs``, ``/v1/jobs/{id}/cancel|retry``, ``/v1/access/keys``), with the same key and
checks, so every action is audited once, as ``via: ui`` (:mod:`contextkit.server.admin`); a
reader is shown no buttons and would get 403 from those routes. Data plane nodes
(``contextkit serve``) show no admin actions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from contextkit.client import Context
from contextkit.compute.quality.drift import PSI_SIGNIFICANT
from contextkit.errors import ContextKitError, NotFoundError, PermissionDeniedError
from contextkit.framework.expectations import format_age
from contextkit.governance.access import ALL_WORKSPACES, ROLES
from contextkit.governance.audit import AuditLog, audit_dict
from contextkit.governance.jobs import JobService, job_view
from contextkit.governance.lineage import lineage
from contextkit.governance.monitoring import job_dict, summarize_alerts
from contextkit.server import charts, ui_search
from contextkit.server.admin import keys_of
from contextkit.server.common import ADMIN, READER, ServerState

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates" / "ui"
STATIC = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}  # fmt: skip
VIEW_KINDS = ("batch_feature_view", "embedding_view")
LOADING = '<p class="muted">Loading…</p>'
JOB_STATUSES = ("queued", "running", "succeeded", "warning", "failed", "cancelled")
ACTIVE = ("queued", "running")
REFRESH_MS = 1000  # how often a page showing queued or running jobs reloads itself


def _environment():
    from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        # Statistics grow keys over versions: a key an older job lacks renders as nothing.
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        histogram=charts.histogram,
        top_values=charts.top_values,
        line=charts.line,
        age=format_age,
        num=_num,
        pct=lambda v: "-" if v is None else f"{v:.2%}",
        psi_class=_psi_class,
        count_alerts=summarize_alerts,
        PSI_SIGNIFICANT=PSI_SIGNIFICANT,
    )
    env.filters["q"] = lambda s: quote(str(s), safe="")
    return env


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e7 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:,.2f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _psi_class(value: float | None) -> str:
    if value is None:
        return "muted"
    return "ok" if value < 0.1 else "warn" if value < PSI_SIGNIFICANT else "bad"


def _feature_views(specs: Any) -> dict[str, Any]:
    """Every view that serves features (batch, and stream and realtime where there are)."""
    return getattr(specs, "feature_views", None) or specs.views


def link(workspace: str, *parts: str) -> str:
    """The UI path of a page: ``link("prod", "views", "user_profile")``."""
    return "/ui/w/" + "/".join(quote(p, safe="") for p in (workspace, *parts))


def object_link(workspace: str, kind: str, name: str) -> str:
    if kind in VIEW_KINDS:
        return link(workspace, "views", name)
    if kind == "context_service":
        return link(workspace, "services", name)
    if kind == "prompt_view":
        return link(workspace, "prompts", name)
    return link(workspace, "objects", kind, name)


class UI:
    """The page builders; each returns ``(template, context)`` for a partial."""

    def __init__(self, state: ServerState, jobs: JobService | None = None) -> None:
        self.state = state
        self.job_service = jobs  # the control plane's: admin actions are offered only there
        self.env = _environment()
        self.pages: list[tuple[re.Pattern[str], Callable[..., tuple[str, dict[str, Any]]]]] = [
            (re.compile(r""), self.home),
            (re.compile(r"w/(?P<workspace>[^/]+)"), self.workspace),
            (re.compile(r"w/(?P<workspace>[^/]+)/lineage"), self.lineage),
            (re.compile(r"w/(?P<workspace>[^/]+)/views/(?P<name>[^/]+)"), self.view),
            (re.compile(r"w/(?P<workspace>[^/]+)/services/(?P<name>[^/]+)"), self.service),
            (re.compile(r"w/(?P<workspace>[^/]+)/prompts/(?P<name>[^/]+)"), self.prompt),
            (
                re.compile(r"w/(?P<workspace>[^/]+)/objects/(?P<kind>[^/]+)/(?P<name>[^/]+)"),
                self.object,
            ),  # fmt: skip
            (re.compile(r"w/(?P<workspace>[^/]+)/jobs"), self.jobs),
            (re.compile(r"w/(?P<workspace>[^/]+)/alerts"), self.alerts),
            (re.compile(r"w/(?P<workspace>[^/]+)/playground"), self.playground),
            (re.compile(r"w/(?P<workspace>[^/]+)/search"), self.search),
            (re.compile(r"w/(?P<workspace>[^/]+)/access"), self.access),
            (re.compile(r"w/(?P<workspace>[^/]+)/audit"), self.audit),
        ]

    def render(self, request: Request, path: str) -> str:
        from urllib.parse import unquote

        path = path.strip("/")
        for pattern, page in self.pages:
            match = pattern.fullmatch(path)
            if match:
                args = {k: unquote(v) for k, v in match.groupdict().items()}
                template, context = page(request, **args)
                if context.get("ws") is not None and "admin" not in context:
                    context["admin"] = self._admin(request, context["ws"])
                return self.env.get_template(template).render(**context)
        raise NotFoundError(f"no UI page at /ui/{path}", hint="start at /ui")

    # -- helpers -----------------------------------------------------------------------------
    def _ctx(self, request: Request, workspace: str) -> Context:
        return self.state.context(request, workspace, READER)

    def _admin(self, request: Request, workspace: str) -> bool:
        """Whether to offer admin actions: on the control plane, to an admin of the workspace."""
        if self.job_service is None:
            return False
        try:
            self.state.check_access(request, workspace, ADMIN)
        except PermissionDeniedError:
            return False
        return True

    def _admin_ctx(self, request: Request, workspace: str) -> Context:
        """The context of an admin-only page (404 off the control plane, 403 to non-admins)."""
        if self.job_service is None:
            raise NotFoundError(
                "API keys and the audit log are managed on the control plane",
                hint="open this page on the server `contextkit control-plane` runs",
            )
        return self.state.context(request, workspace, ADMIN)

    def _readable(self, request: Request, names: list[str]) -> list[str]:
        """The workspaces the caller may read (a missing or bad key is a 401 here)."""
        authorize = self.state.authorize
        if authorize is None:
            return names
        authenticate = getattr(authorize, "authenticate", None)
        if authenticate is not None:
            key = authenticate(request.scope)
            return [n for n in names if key.allows(n, READER)]
        out = []
        for name in names:
            try:
                authorize(request, name, READER)
            except PermissionDeniedError:
                continue
            out.append(name)
        return out

    @staticmethod
    def _base(c: Context, page: str, **extra: Any) -> dict[str, Any]:
        ws = c.workspace
        specs = c.specs()
        kinds = {  # a view's page: batch and embedding views have one; others, their spec's
            name: spec.kind
            for group in ("views", "embedding_views", "stream_views", "realtime_views")
            for name, spec in (getattr(specs, group, None) or {}).items()
        }
        return {
            "ws": ws,
            "live": specs.workspace.live,
            "page": page,
            "link": lambda *parts: link(ws, *parts),
            "object_link": lambda kind, name: object_link(ws, kind, name),
            "view_link": lambda name: object_link(ws, kinds.get(name, VIEW_KINDS[0]), name),
            **extra,
        }

    # -- pages -------------------------------------------------------------------------------
    def home(self, request: Request) -> tuple[str, dict[str, Any]]:
        ctx = self.state.ctx
        records = {w.name: w for w in ctx.list_workspaces()}
        rows = []
        for name in self._readable(request, sorted(records)):
            c = ctx.use(name)
            specs = c.specs()
            counts = summarize_alerts(a for s in c.monitoring.status() for a in s.alerts)
            rows.append(
                {
                    "name": name,
                    "live": records[name].live,
                    "version": records[name].version,
                    "views": len(specs.views),
                    "embedding_views": len(specs.embedding_views),
                    "services": len(specs.services),
                    "prompts": len(specs.prompts),
                    "alerts": counts,
                    "default": name == self.state.default_workspace,
                }
            )
        return "home.html", {"workspaces": rows, "page": "home", "ws": None}

    def workspace(self, request: Request, workspace: str) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        specs = c.specs()
        statuses = c.monitoring.status()
        services = []
        for service in sorted(specs.services.values(), key=lambda s: s.name):
            prompt_specs = [specs.prompts[p] for p in service.prompts if p in specs.prompts]
            views = {ref.view for ref in service.features}
            searched = {s.view for s in service.searches}
            for prompt in prompt_specs:
                views |= {ref.view for ref in prompt.features}
                searched |= {s.view for s in prompt.searches}
            services.append(
                {
                    "spec": service,
                    "views": sorted(views),
                    "embedding_views": sorted(searched),
                    "prompts": [p.name for p in prompt_specs],
                    "server_group": specs.server_group_of(service.name),
                }
            )
        alerts = [a for s in statuses for a in s.alerts]
        return "workspace.html", self._base(
            c,
            "overview",
            # The views with a page here (stream and realtime views have none yet).
            statuses=[s for s in statuses if s.kind in ("batch_feature_view", "embedding_view")],
            services=services,
            server_groups=sorted(specs.server_groups.values(), key=lambda g: g.name),
            transform_server_groups=sorted(
                specs.transform_server_groups.values(), key=lambda g: g.name
            ),
            prompts=sorted(specs.prompts),
            sources=sorted(specs.sources),
            counts=summarize_alerts(alerts),
            schedule=schedule(c, time.time()),
            now=time.time(),
        )

    def lineage(self, request: Request, workspace: str) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        graph = lineage(c.specs())
        svg = charts.lineage_graph(graph, link=lambda k, n: object_link(c.workspace, k, n))
        return "lineage.html", self._base(c, "lineage", svg=svg, graph=graph)

    def view(self, request: Request, workspace: str, name: str) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        specs = c.specs()
        spec = specs.views.get(name) or specs.embedding_views.get(name)
        if spec is None:
            raise NotFoundError(
                f"unknown view {name!r} in workspace {c.workspace!r}",
                hint="views: " + ", ".join(sorted([*specs.views, *specs.embedding_views])),
            )
        job = request.query_params.get("job")
        quality = c.monitoring.quality(name, job=job or None, runs=30)
        status = next(s for s in c.monitoring.status() if s.name == name)
        stats = quality["stats"] or {}
        history = list(reversed(quality["history"]))  # oldest first, for the charts
        threshold = (spec.expectations.max_drift if spec.expectations else None) or (
            PSI_SIGNIFICANT
        )
        columns = []
        for column, entry in (stats.get("columns") or {}).items():
            columns.append(
                {
                    "name": column,
                    "entry": entry,
                    "null_rates": [(h["job_id"], h["null_rates"].get(column)) for h in history],
                    "psi": [(h["job_id"], h["psi"].get(column)) for h in history],
                }
            )
        graph = lineage(specs)
        node = f"{spec.kind}:{name}"
        svg = charts.lineage_graph(
            graph.neighborhood(node),
            link=lambda k, n: object_link(c.workspace, k, n),
            highlight=node,
        )
        sources = []
        for source in spec.sources:
            found = next((a for a, b in graph.edges if b == node and a.endswith(f":{source}")), "")
            sources.append((found.split(":")[0] or "file_source", source))
        jobs = [job_dict(j) for j in c.jobs(name, 20)]
        return "view.html", self._base(
            c,
            "views",
            spec=spec,
            status=status,
            quality=quality,
            stats=stats,
            columns=columns,
            history=history,
            threshold=threshold,
            rows_over_runs=[(h["job_id"], h["rows"]) for h in history],
            shift_over_runs=[(h["job_id"], h["centroid_shift"]) for h in history],
            lineage_svg=svg,
            sources=sources,
            jobs=jobs,
            now=time.time(),
        )

    def service(self, request: Request, workspace: str, name: str) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        specs = c.specs()
        service = specs.services.get(name)
        if service is None:
            raise NotFoundError(f"unknown service {name!r} in workspace {c.workspace!r}")
        views = []
        for ref in service.features:
            view = _feature_views(specs).get(ref.view)
            features = [f for f in (view.features if view else []) if
                        ref.features is None or f.name in ref.features]  # fmt: skip
            views.append({"name": ref.view, "features": features, "spec": view})
        prompts = [specs.prompts[p] for p in service.prompts if p in specs.prompts]
        graph = lineage(specs)
        node = f"context_service:{name}"
        svg = charts.lineage_graph(
            graph.neighborhood(node),
            link=lambda k, n: object_link(c.workspace, k, n),
            highlight=node,
        )
        return "service.html", self._base(
            c,
            "services",
            service=service,
            views=views,
            prompts=prompts,
            lineage_svg=svg,
            server_group=specs.server_group_of(name),
        )

    def prompt(self, request: Request, workspace: str, name: str) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        specs = c.specs()
        prompt = specs.prompts.get(name)
        if prompt is None:
            raise NotFoundError(f"unknown prompt view {name!r} in workspace {c.workspace!r}")
        services = [s.name for s in specs.services.values() if name in s.prompts]
        return "prompt.html", self._base(c, "prompts", prompt=prompt, services=services)

    def object(
        self, request: Request, workspace: str, kind: str, name: str
    ) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        graph = lineage(c.specs())
        node = f"{kind}:{name}"
        if node not in graph.nodes:
            raise NotFoundError(f"no {kind} named {name!r} in workspace {c.workspace!r}")
        spec = next(
            s
            for group in vars(c.specs()).values()
            if isinstance(group, dict)
            for s in group.values()
            if getattr(s, "kind", None) == kind and s.name == name
        )
        svg = charts.lineage_graph(
            graph.neighborhood(node),
            link=lambda k, n: object_link(c.workspace, k, n),
            highlight=node,
        )
        spec_json = orjson.dumps(spec.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
        return "object.html", self._base(
            c, "objects", spec=spec, spec_json=spec_json.decode(), lineage_svg=svg
        )

    def jobs(self, request: Request, workspace: str) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        view = request.query_params.get("view") or None
        status = request.query_params.get("status") or None
        found = [j for j in c.jobs(view, 500) if status in (None, j.status)][:200]
        rows = [{**job_dict(j), **_live(j)} for j in found]
        return "jobs.html", self._base(
            c,
            "jobs",
            jobs=rows,
            view=view,
            status=status,
            statuses=JOB_STATUSES,
            views=sorted([*c.specs().views, *c.specs().embedding_views]),
            refresh_ms=REFRESH_MS if any(r["status"] in ACTIVE for r in rows) else None,
        )

    def access(self, request: Request, workspace: str) -> tuple[str, dict[str, Any]]:
        c = self._admin_ctx(request, workspace)
        show_all = request.query_params.get("all") == "1"
        keys = keys_of(self.state, c.workspace, include_inactive=show_all)
        now = time.time()
        roles: dict[str, dict[str, set[str]]] = {}  # principal -> workspace -> roles
        for k in keys:
            if k.status(now) == "active":
                roles.setdefault(k.principal, {}).setdefault(k.workspace, set()).add(k.role)
        return "access.html", self._base(
            c,
            "access",
            keys=[{"key": k, "status": k.status(now)} for k in keys],
            roles={
                p: {w: sorted(r) for w, r in sorted(ws.items())} for p, ws in sorted(roles.items())
            },  # fmt: skip
            role_names=ROLES,
            show_all=show_all,
            all_workspaces=ALL_WORKSPACES,
            now=now,
        )

    def audit(self, request: Request, workspace: str) -> tuple[str, dict[str, Any]]:
        c = self._admin_ctx(request, workspace)
        action = request.query_params.get("action") or None
        rows = AuditLog(c.registry).list(c.workspace, action=action, limit=200)
        return "audit.html", self._base(
            c, "audit", entries=[audit_dict(r) for r in rows], action=action, now=time.time()
        )

    def alerts(self, request: Request, workspace: str) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        found = c.monitoring.alerts(include_resolved=True)
        return "alerts.html", self._base(
            c,
            "alerts",
            open_alerts=[a for a in found if a.resolved_at is None],
            resolved=[a for a in found if a.resolved_at is not None][:50],
            now=time.time(),
        )

    def playground(self, request: Request, workspace: str) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        specs = c.specs()
        config = []
        for service in sorted(specs.services.values(), key=lambda s: (not s.prompts, s.name)):
            prompts = [specs.prompts[p] for p in service.prompts if p in specs.prompts]
            keys: dict[str, str] = {}
            for ref in [*service.features, *(r for p in prompts for r in p.features)]:
                view = _feature_views(specs).get(ref.view)
                for k in view.join_keys if view else []:
                    keys.setdefault(k.name, k.dtype or "string")
            fields = {}
            for p in prompts:
                for f in p.request_context:
                    fields.setdefault(
                        f.name,
                        {"name": f.name, "dtype": f.dtype, "required": f.required,
                         "default": f.default},
                    )  # fmt: skip
            searches = bool(service.searches) or any(p.searches for p in prompts)
            config.append(
                {
                    "service": service.name,
                    "keys": [{"name": k, "dtype": t} for k, t in keys.items()],
                    "prompts": [p.name for p in prompts],
                    "request_context": list(fields.values()),
                    "needs_query": searches
                    or any(v == "query" for p in prompts for v in p.variables),
                }
            )
        chosen = request.query_params.get("service")
        return "playground.html", self._base(
            c,
            "playground",
            # Read by the page's script from a <script type="application/json">: no "</script>".
            config_json=orjson.dumps({"workspace": c.workspace, "services": config})
            .decode()
            .replace("<", "\\u003c"),
            chosen=chosen or (config[0]["service"] if config else None),
            services=[s["service"] for s in config],
        )

    def search(self, request: Request, workspace: str) -> tuple[str, dict[str, Any]]:
        c = self._ctx(request, workspace)
        views = sorted(c.specs().embedding_views.values(), key=lambda v: v.name)
        chosen = request.query_params.get("view") or (views[0].name if views else None)
        return "search.html", self._base(c, "search", views=views, chosen=chosen)


def _live(job: Any) -> dict[str, Any]:
    """What the Jobs page adds to a job's row: its stage, log tail and who asked for it."""
    found = job_view(job)
    return {"progress": found["progress"], "log": found["log"][-5:],
            "display_status": found["display_status"]}  # fmt: skip


def schedule(c: Context, now: float) -> dict[str, dict[str, Any]]:
    """Per scheduled view, when the scheduler runs it next: ``{"state", "at"}`` (``at``: Unix
    seconds). ``due``: intervals are waiting (``pending`` of them); ``running``; ``planned``: the
    next period ends at ``at``; ``unplanned``: no scheduler has planned the current definition
    yet (it will at its next tick, backfill first). Dev workspaces are never scheduled."""
    from contextkit.compute.materialize import spec_hash
    from contextkit.governance.scheduler import SchedulerSettings

    specs = c.specs()
    if not specs.workspace.live:
        return {}
    registry = c.registry
    cursors = {v: found for (w, v), found in registry.list_schedules().items() if w == c.workspace}
    waiting: dict[str, dict[str, int]] = {}
    for state in ("pending", "running"):
        for interval in registry.list_intervals(c.workspace, status=state):
            counts = waiting.setdefault(interval.view, {})
            counts[state] = counts.get(state, 0) + 1
    periods = {name: (int(v.batch_schedule_seconds), spec_hash(v)) for name, v in
               specs.views.items() if v.online or v.offline}  # fmt: skip
    every = SchedulerSettings().embedding_every_s
    periods.update({name: (every, None) for name in specs.embedding_views})
    out = {}
    for name, (period, digest) in periods.items():
        counts, found = waiting.get(name, {}), cursors.get(name)
        if counts.get("running"):
            out[name] = {"state": "running", "at": None, "pending": counts.get("pending", 0)}
        elif counts.get("pending"):
            out[name] = {"state": "due", "at": None, "pending": counts["pending"]}
        elif found is None or (digest is not None and found[0] != digest):
            out[name] = {"state": "unplanned", "at": None, "pending": 0}
        else:
            out[name] = {"state": "planned", "at": found[1] + period, "pending": 0}
        out[name]["period_s"] = period
    return out


def _shell(auth: bool) -> str:
    html = (TEMPLATES / "shell.html").read_text()
    return html.replace("{{AUTH}}", "true" if auth else "false")


def routes(state: ServerState, jobs: JobService | None = None) -> APIRouter:
    """The UI's routes (``jobs``: the control plane's job service; admin actions need it)."""
    router = APIRouter(include_in_schema=False)
    router.include_router(ui_search.routes(state))  # the Retrieval page, before the catch-alls
    ui = UI(state, jobs)
    shell = _shell(state.authorize is not None)

    @router.get("/ui/static/{name}")
    async def static(name: str) -> Response:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise NotFoundError(f"no UI asset {name!r}")
        media = STATIC_TYPES.get(path.suffix, "application/octet-stream")
        return Response(path.read_bytes(), media_type=media,
                        headers={"Cache-Control": "no-cache"})  # fmt: skip

    @router.get("/ui/partial/{path:path}")
    def partial(request: Request, path: str) -> Response:
        began = time.perf_counter()
        body = ui.render(request, path)
        elapsed = (time.perf_counter() - began) * 1000
        return HTMLResponse(
            body,
            headers={"Server-Timing": f"render;dur={elapsed:.1f}", "Cache-Control": "no-store"},
        )

    @router.get("/ui")
    @router.get("/ui/{path:path}")
    def page(request: Request, path: str = "") -> Response:
        # Without auth the page's content is rendered into the shell (a first paint that needs
        # no script); the script then takes over. With auth the shell holds no data.
        content = LOADING
        if state.authorize is None:
            try:
                content = ui.render(request, path)
            except ContextKitError:
                content = LOADING  # the script fetches the partial and shows the error
        return HTMLResponse(
            shell.replace("{{CONTENT}}", content), headers={"Cache-Control": "no-cache"}
        )

    return router
