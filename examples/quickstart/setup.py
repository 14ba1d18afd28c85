"""Bring the quickstart to a served state: workspace, apply, materialize. Safe to re-run.

Used by `make run` with --features-only: the feature views are materialized here (seconds), and
the server, started with --materialize-embeddings, encodes the embedding views while it already
serves (searches answer 503 view_warming until then). The same steps by hand are:
    contextkit workspace create prod --live --repo examples/quickstart
    contextkit apply --repo examples/quickstart --workspace prod --yes
    contextkit materialize --repo examples/quickstart --workspace prod
    contextkit serve --repo examples/quickstart --workspace prod --no-auth
(or materialize only the feature views by name, and serve with --materialize-embeddings).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

import contextkit
from contextkit.errors import ContextKitError
from contextkit.framework.plan import render_plan

HERE = Path(__file__).resolve().parent
WORKSPACE = "prod"


def main() -> int:
    console = Console()
    features_only = "--features-only" in sys.argv[1:]
    try:
        ctx = contextkit.connect(HERE, workspace=WORKSPACE)
        if WORKSPACE not in {w.name for w in ctx.list_workspaces()}:
            ctx.create_workspace(WORKSPACE, live=True)
            ctx.select_workspace(WORKSPACE)
        plan = ctx.plan(HERE)
        console.print(render_plan(plan))
        if not plan.is_empty:
            ctx.apply(plan)
        # The first run encodes every product description and help article with the packaged
        # MiniLM model (minutes on 2 cores); later runs encode only what changed. With
        # --features-only the server does that while it serves (`serve --materialize-embeddings`).
        specs = ctx.specs()
        views = (
            [v for v in specs.materialized_order() if v in specs.views] if features_only else None
        )
        what = "feature views" if features_only else "feature views and embedding views"
        with console.status(f"materializing {what}...") as status:

            def on_progress(view, p):
                status.update(f"{view}: encoding {p.chunks_done}/{p.chunks_total} chunks, "
                              f"{p.docs_per_s:.0f} docs/s")  # fmt: skip

            for job in ctx.materialize(views, on_progress=on_progress):
                if job.kind == "embedding_view":
                    d = job.details
                    console.print(
                        f"[green]materialized[/] {job.view}: {d['documents']} documents, "
                        f"{job.rows_online} chunks, {d['texts_encoded']} encoded in "
                        f"{job.duration_s:.2f}s"
                    )
                else:
                    console.print(
                        f"[green]materialized[/] {job.view}: {job.rows_offline} offline rows, "
                        f"{job.rows_online} online entities in {job.duration_s:.2f}s"
                    )
    except ContextKitError as exc:
        console.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            console.print(f"[yellow]hint:[/] {exc.hint}")
        return 1
    port = os.environ.get("PORT", "8000")
    features = (
        '{"workspace": "prod", "service": "support_assistant", "entities": {"user_id": [1, 2]}}'
    )
    search = (
        '{"workspace": "prod", "view": "product_docs", "query": "waterproof hiking boots", '
        '"top_k": 3, "mode": "hybrid"}'
    )
    context = (
        '{"workspace": "prod", "service": "support_assistant", "entities": {"user_id": 7}, '
        '"query": "My hiking boots leak after a week. Can I return them?"}'
    )
    # The answer too, with no key: the built-in contextkit/echo model repeats the question after
    # a line counting what it received (set a provider key and drop "model" for a real answer).
    answer = context[:-1] + ', "complete": true, "model": "contextkit/echo"}'
    console.print("\n[bold]Materialized.[/] Once the server logs Ready, in another terminal:\n")
    if features_only:
        names = ", ".join(ctx.specs().embedding_views)
        console.print(
            f"(The server encodes the embedding views ({names}) in the background and logs its "
            "progress. Until each lands, /v1/search of it answers 503 view_warming with "
            "Retry-After, and /v1/context answers with the features and the prompt, that "
            "search's documents empty and marked in metadata.warming.)\n",
            highlight=False,
        )
    for path, body in (
        ("/v1/features", features),
        ("/v1/search", search),
        ("/v1/context", context),
        ("/v1/context", answer),
    ):
        print(
            f"curl -s -X POST http://127.0.0.1:{port}{path} "
            f"-H 'content-type: application/json' -d '{body}'\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
