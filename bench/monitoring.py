"""Monitoring's cost: materialization with and without it, and UI pages over a 200-view registry.

Part 1, materialization. Two copies of the quickstart over the same generated data (200,000
orders by default), one with ``monitoring: {enabled: false}`` in its config. Each round runs a
full materialization of the three feature views in both repos (the order alternates between
rounds), then an incremental (nothing new) run of the ``product_docs`` embedding view, whose
model is the ``hash`` encoder here so that encoding costs nothing and monitoring's share shows.
Per view: the median job time with and without, the ratio (target: < 1.10), and the time
monitoring took inside the job (``computed_ms``: copying the rows to measure, the statistics, the
drift and the expectations) with its share of the job time without monitoring; on a loaded
machine the share is the steadier number.

Part 2, the web UI. A registry of 200 feature views (100 attribute views and 100 aggregate views
over one source, 20 services of 10 views, 5 prompt views), each materialized twice (so every view
has statistics, drift and history), served in-process (FastAPI's test client, auth off). Each
page is requested ``--requests`` times after a warm-up; the server-side render time (the
partial's ``Server-Timing``) and the whole request (test client, in-process) are reported, p50
and p95 (target: p95 < 200 ms server-side).

    python bench/monitoring.py                       # ~2-3 min on 2 cores
    python bench/monitoring.py --orders 50000 --rounds 3 --views 60   # quicker
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from _common import (
    apply_quickstart,
    console,
    copy_quickstart,
    floor_hour,
    generate_data,
    machine_line,
    percentile,
    verdict,
)

FEATURE_VIEWS = ["user_order_stats", "user_profile", "product_attributes"]
HASH_MODEL = "models:\n  minilm: {type: hash, dimension: 64}\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=200_000, help="order rows to generate")
    p.add_argument("--rounds", type=int, default=7, help="materialization rounds per repo")
    p.add_argument("--views", type=int, default=200, help="feature views in the UI registry")
    p.add_argument("--requests", type=int, default=20, help="requests per UI page")
    p.add_argument("--skip-materialize", action="store_true", help="only the UI part")
    p.add_argument("--skip-ui", action="store_true", help="only the materialization part")
    return p.parse_args()


# -- part 1: materialization with and without monitoring ---------------------------------------
def materialization(args: argparse.Namespace, tmp: Path) -> None:
    end = floor_hour()
    repos = {}
    for mode in ("on", "off"):
        repo = copy_quickstart(tmp / f"qs-{mode}")
        extra = HASH_MODEL + ("monitoring: {enabled: false}\n" if mode == "off" else "")
        with (repo / "contextkit.yaml").open("a") as config:
            config.write(extra)
        if mode == "on":
            generate_data(repo, orders=args.orders, end=end)
        else:
            import shutil

            shutil.copytree(repos["on"][0] / "data", repo / "data")
        ctx = apply_quickstart(repo)
        ctx.materialize(["product_docs"])  # encode once; later runs are incremental no-ops
        repos[mode] = (repo, ctx)

    times: dict[tuple[str, str], list[float]] = {}
    measured: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
        for mode in order:
            ctx = repos[mode][1]
            for result in ctx.materialize(FEATURE_VIEWS, end=end, full=True):
                times.setdefault((result.view, mode), []).append(result.duration_s)
            [docs] = ctx.materialize(["product_docs"])
            times.setdefault(("product_docs (incremental)", mode), []).append(docs.duration_s)
            if mode == "on":
                for view in [*FEATURE_VIEWS, "product_docs"]:
                    stats = ctx.monitoring.quality(view)["stats"] or {}
                    label = view if view != "product_docs" else "product_docs (incremental)"
                    measured.setdefault(label, []).append(stats.get("computed_ms", 0.0))

    from rich.table import Table

    table = Table(
        title=f"Materialization, monitoring on vs off ({args.orders:,} orders, {args.rounds} "
        "rounds, median job time)",
        title_justify="left",
    )
    for column in ("view", "rows", "off (s)", "on (s)", "on / off", "monitoring in job (ms)",
                   "its share of off", "target < 1.10x"):  # fmt: skip
        table.add_column(column, justify="left" if column == "view" else "right")
    for view in [*FEATURE_VIEWS, "product_docs (incremental)"]:
        on = statistics.median(times[(view, "on")])
        off = statistics.median(times[(view, "off")])
        stats_view = view.split(" ")[0]
        rows = repos["on"][1].monitoring.quality(stats_view)["stats"]["rows"]
        table.add_row(
            view,
            f"{rows:,}",
            f"{off:.3f}",
            f"{on:.3f}",
            f"{on / off:.3f}x",
            f"{statistics.median(measured[view]):.1f}",
            f"{statistics.median(measured[view]) / 1000 / off:.1%}",
            verdict(on / off, 1.10),
        )
    console().print(table)
    for _repo, ctx in repos.values():
        ctx.close()


# -- part 2: UI pages over 200 views --------------------------------------------------------------
def big_registry(root: Path, views: int) -> Path:
    """A repo of ``views`` feature views over one generated source, with services and prompts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    (root / "data").mkdir()
    (root / "contextkit.yaml").write_text("project: ui_bench\n")
    rng = np.random.default_rng(1)
    n = 5000
    end = floor_hour()
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(rng.integers(0, 500, n), pa.int64()),
                "amount": pa.array(rng.gamma(2.0, 30.0, n), pa.float64()),
                "tier": pa.array(rng.choice(["free", "plus", "pro"], n), pa.string()),
                "ts": pa.array(
                    [end - timedelta(minutes=int(m)) for m in rng.integers(1, 60 * 24 * 20, n)],
                    pa.timestamp("us", tz="UTC"),
                ),
            }
        ),
        root / "data" / "events.parquet",
    )
    lines = [
        "from datetime import timedelta",
        "from contextkit import (Aggregate, Attribute, ContextService, Entity, FileSource,",
        "                        PromptView, batch_feature_view)",
        "",
        'user = Entity(name="user", join_keys=["user_id"])',
        'events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")',
    ]
    names = []
    for i in range(views):
        name = f"view_{i:03d}"
        names.append(name)
        if i % 2:
            features = (
                f'[Aggregate("amount", "sum", "{1 + i % 7}d"), '
                f'Aggregate("amount", "count", "{1 + i % 7}d")]'
            )
        else:
            features = '[Attribute("amount"), Attribute("tier")]'
        lines += [
            "",
            f"@batch_feature_view(sources=[events], entities=[user], features={features},",
            "                    batch_schedule=timedelta(hours=1))",
            f"def {name}(events):",
            f'    return f"SELECT user_id, amount * {1 + i % 5} AS amount, tier, ts FROM '
            '{events}"',
        ]
    for s in range(views // 10):
        members = ", ".join(names[s * 10 : s * 10 + 10])
        prompt = ""
        if s < 5:
            lines += [
                "",
                f"prompt_{s} = PromptView(name='prompt_{s}', template='Spend: "
                f"{{{{ features.{names[s * 10]}.amount }}}}', features=[{names[s * 10]}])",
            ]
            prompt = f", prompts=[prompt_{s}]"
        lines.append(
            f"service_{s} = ContextService(name='service_{s}', features=[{members}]{prompt})"
        )
    (root / "defs.py").write_text("\n".join(lines) + "\n")
    return root


def ui(args: argparse.Namespace, tmp: Path) -> None:
    from fastapi.testclient import TestClient

    import contextkit
    from contextkit.server.app import create_app

    root = big_registry(tmp / "ui-repo", args.views)
    began = time.perf_counter()
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    applied = time.perf_counter() - began
    end = floor_hour()
    ctx.materialize(end=end - timedelta(days=1))
    ctx.materialize(end=end)
    setup = time.perf_counter() - began
    pages = [
        ("workspaces", "/ui/partial/"),
        ("workspace overview (200 views)", "/ui/partial/w/prod"),
        ("lineage (whole graph)", "/ui/partial/w/prod/lineage"),
        ("view (charts, history)", "/ui/partial/w/prod/views/view_001"),
        ("service", "/ui/partial/w/prod/services/service_0"),
        ("jobs", "/ui/partial/w/prod/jobs"),
        ("alerts", "/ui/partial/w/prod/alerts"),
        ("playground", "/ui/partial/w/prod/playground"),
        ("GET /v1/views (API)", "/v1/views"),
        ("GET /metrics (API)", "/metrics"),
    ]
    from rich.table import Table

    table = Table(
        title=f"UI pages over {args.views} views ({args.requests} requests each after 3 warm-up;"
        f" setup: apply {applied:.0f} s, apply + 2 materializations {setup:.0f} s)",
        title_justify="left",
    )
    for column in ("page", "bytes", "render p50 (ms)", "render p95 (ms)", "request p50 (ms)",
                   "request p95 (ms)", "target p95 < 200 ms"):  # fmt: skip
        table.add_column(column, justify="left" if column == "page" else "right")
    with TestClient(create_app(ctx, auth=False)) as client:
        for label, path in pages:
            renders, requests = [], []
            size = 0
            for i in range(args.requests + 3):
                t0 = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - t0) * 1000
                assert response.status_code == 200, (path, response.text[:300])
                size = len(response.content)
                if i < 3:
                    continue
                requests.append(elapsed)
                timing = response.headers.get("server-timing", "")
                renders.append(float(timing.split("dur=")[1]) if "dur=" in timing else elapsed)
            renders.sort()
            requests.sort()
            table.add_row(
                label,
                f"{size:,}",
                f"{percentile(renders, 50):.1f}",
                f"{percentile(renders, 95):.1f}",
                f"{percentile(requests, 50):.1f}",
                f"{percentile(requests, 95):.1f}",
                verdict(percentile(renders, 95), 200.0),
            )
    console().print(table)
    ctx.close()


def main() -> None:
    args = parse_args()
    console().print(machine_line())
    with tempfile.TemporaryDirectory(prefix="ck-bench-monitoring-") as tmp:
        if not args.skip_materialize:
            materialization(args, Path(tmp))
        if not args.skip_ui:
            ui(args, Path(tmp))


if __name__ == "__main__":
    main()
