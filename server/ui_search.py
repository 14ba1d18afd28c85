"""The UI's Retrieval page (``/ui/w/<workspace>/retrieval``): how each embedding view's table is
searched, and what the stored ``contextkit eval`` runs measured.

- **Search plans**: per embedding view, the plan :meth:`LanceVectorStore.calibrate` measured on
  the table's own vectors and every serving process follows: exact (numpy over an in-memory
  copy) or ANN (LanceDB's index), the ANN's calibrated query parameters (``ef``,
  ``refine_factor``, ``nprobes``), the recall@k it reached against exact search and its target,
  the measured p50 of both, and why that method won. A table never calibrated is said so.
- **Evaluation runs**: per embedding view, the stored runs (newest first; the registry keeps the
  last ones, see :mod:`contextkit.retrieval.evaluation`), each configuration's recall@k, MRR@k,
  nDCG@k and latency, with the change against the previous run of the same queries and k (the
  run it was compared with when it was made).

Kept apart from :mod:`contextkit.server.ui` (which includes this router before its own
catch-all partial route): like every partial it answers ``GET /ui/partial/<path>`` with the
caller's key checked for reading the workspace, and the shell at ``/ui/...`` loads it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from contextkit.client import Context
from contextkit.compute.layout import vector_table
from contextkit.retrieval.evaluation import METRICS, stored_runs
from contextkit.server.common import READER, ServerState

TEMPLATES = Path(__file__).parent / "templates" / "ui"
PAGE = "retrieval"
HIGHER_IS_BETTER = ("recall", "mrr", "ndcg")


def _environment():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["ms"] = lambda v: "-" if v is None else f"{v:.2f} ms"
    env.filters["metric"] = lambda v: "-" if v is None else f"{v:.3f}"
    return env


def search_plans(c: Context) -> list[dict[str, Any]]:
    """Per embedding view (by name): its table, row count and search plan (a dict, or None)."""
    specs = c.specs()
    vectors = c.vectors
    out = []
    for name in sorted(specs.embedding_views):
        table = vector_table(specs.workspace.name, name)
        row: dict[str, Any] = {"view": name, "table": table, "rows": None, "plan": None}
        if vectors.has_table(table):
            row["rows"] = vectors.count_rows(table)
            plan = vectors.search_plan(table)
            row["plan"] = plan.as_dict() if plan is not None else None
        out.append(row)
    return out


def eval_runs(c: Context) -> list[dict[str, Any]]:
    """Per embedding view with stored runs: the runs newest first, each configuration with its
    ``delta`` (metric -> change) against the previous run of the same queries and k."""
    out = []
    for name in sorted(c.specs().embedding_views):
        runs = stored_runs(c.runtime, name)
        shown = []
        for i, run in enumerate(runs):
            earlier = next(
                (
                    r
                    for r in reversed(runs[:i])
                    if r.get("queries_hash") == run.get("queries_hash") and r.get("k") == run["k"]
                ),
                None,
            )
            before = {cfg["name"]: cfg for cfg in (earlier or {}).get("configs", [])}
            configs = []
            for cfg in run.get("configs", []):
                was = before.get(cfg["name"])
                delta = {m: cfg[m] - was[m] for m in METRICS if m in cfg and m in (was or {})}
                configs.append({**cfg, "delta": delta})
            shown.append(
                {**run, "configs": configs,
                 "compared_with": earlier and {"version": earlier["version"], "at": earlier["at"]}}
            )  # fmt: skip
        if shown:
            out.append({"view": name, "runs": list(reversed(shown))})
    return out


def change_class(metric: str, change: float | None) -> str:
    """``better``/``worse``/``same`` for a metric's change (latency: lower is better)."""
    if change is None or abs(change) < 5e-4:
        return "same"
    up = change > 0
    return "better" if up == (metric in HIGHER_IS_BETTER) else "worse"


def routes(state: ServerState) -> APIRouter:
    """The Retrieval page's partial (the shell route of :mod:`contextkit.server.ui` serves the
    page itself)."""
    router = APIRouter(include_in_schema=False)
    env = _environment()

    @router.get("/ui/partial/w/{workspace}/retrieval")
    def retrieval(request: Request, workspace: str) -> Response:
        began = time.perf_counter()
        c = state.context(request, workspace, READER)
        body = env.get_template("retrieval.html").render(
            ws=c.workspace,
            page=PAGE,
            admin=False,
            plans=search_plans(c),
            evaluations=eval_runs(c),
            metrics=METRICS,
            change_class=change_class,
        )
        elapsed = (time.perf_counter() - began) * 1000
        return HTMLResponse(
            body,
            headers={"Server-Timing": f"render;dur={elapsed:.1f}", "Cache-Control": "no-store"},
        )

    return router
