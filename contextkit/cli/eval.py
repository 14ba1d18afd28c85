"""`contextkit eval`: retrieval quality of an embedding view on labelled queries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from contextkit.cli.shell import RepoOpt, WorkspaceOpt, app, guard, open_context, out_console


@app.command("eval")
def eval_(
    view: Annotated[str, typer.Argument(help="Embedding view to evaluate.")],
    queries: Annotated[
        Path,
        typer.Option(
            "--queries",
            "-q",
            help='JSONL of labelled queries: {"query": ..., "relevant_ids": [...], '
            '"entities"?: {...}, "filter"?: {...}}.',
        ),
    ],
    k: Annotated[int, typer.Option("--k", "-k", help="Depth of recall@k and nDCG@k.")] = 10,
    config: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--config",
            "-c",
            help='A configuration as JSON, e.g. \'{"name": "blend", "mode": "hybrid", '
            '"fusion": "blend"}\' (repeatable; default: vector, text and hybrid).',
        ),
    ] = None,
    store: Annotated[
        bool, typer.Option("--store/--no-store", help="Keep the run in the registry.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
) -> None:
    """recall@k, MRR, nDCG@k and latency per search mode and configuration, side by side,
    stored with the workspace version and compared with the previous run of the same queries."""
    with guard:
        from rich.table import Table

        from contextkit.errors import BadRequestError
        from contextkit.retrieval.evaluation import evaluate, load_queries

        configs = None
        if config:
            configs = []
            for text in config:
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise BadRequestError(f"--config {text!r} is not JSON: {exc.msg}") from None
                if not isinstance(parsed, dict):
                    raise BadRequestError(f"--config {text!r} must be a JSON object")
                configs.append(parsed)
        labelled, digest = load_queries(queries)
        ctx = open_context(repo, workspace)
        try:
            run = evaluate(
                ctx.runtime, view, labelled, queries_hash=digest, configs=configs, k=k, store=store
            )
        finally:
            ctx.close()
        console = out_console()
        if as_json:
            console.print_json(json.dumps(run))
            return
        earlier = run["compared_with"]
        title = (
            f"{view} in {run['workspace']} (version {run['version']}): {run['queries']} "
            f"queries, k={k}" + (f"; change since version {earlier['version']}" if earlier else "")
        )
        table = Table(title=title, title_justify="left")
        for column in ("configuration", f"recall@{k}", f"MRR@{k}", f"nDCG@{k}", "p50 ms",
                       "p99 ms"):  # fmt: skip
            table.add_column(column, justify="left" if column == "configuration" else "right")
        for c in run["configs"]:
            delta = c.get("delta") or {}

            def cell(metric: str, value: float, digits: int = 3, delta=delta) -> str:
                change = delta.get(metric)
                if change is None:
                    return f"{value:.{digits}f}"
                better = change > 0 if metric in ("recall", "mrr", "ndcg") else change < 0
                color = "green" if better else "red" if change else "dim"
                return f"{value:.{digits}f} [{color}]({change:+.{digits}f})[/]"

            table.add_row(
                c["name"],
                cell("recall", c["recall"]),
                cell("mrr", c["mrr"]),
                cell("ndcg", c["ndcg"]),
                cell("p50_ms", c["p50_ms"], 1),
                cell("p99_ms", c["p99_ms"], 1),
            )
        console.print(table)
