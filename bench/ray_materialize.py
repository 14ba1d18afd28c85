"""Materializing a feature view on Ray vs the local engine: time, rows read per task, driver memory.

Generates the quickstart data with ``--orders`` (default 1,000,000) orders over 90 days in a temp
dir, copies the repo once per engine (so none reads another's stores), and materializes
``user_order_stats`` (12 windowed aggregates up to 30 days; offline Parquet, the inputs table,
online SQLite) over the same range, ``[end - 91 days, end)`` with ``full=True``, each run in its
own Python subprocess so its peak RSS is its own:

* ``local``: the local engine (DuckDB in the process);
* ``ray-whole``: Ray, ``--partitions`` entity buckets, each task reading the *whole* source and
  dropping other entities after the view's SQL (what every Ray job did before the partitioned
  read: the bench turns the pushdown off in its driver);
* ``ray``: Ray, ``--partitions`` buckets, each task reading only its bucket's share of the source
  and the range's rows (the pushdown, docs/compute.md);
* ``ray-chunks``: the same, and the range cut into ``--time-chunk`` chunks (chunks x buckets
  tasks; each chunk reads its 30-day lookback again).

With ``--repeat N`` the engines run N interleaved rounds and each engine's fastest run is
shown (every run's wall time is in ``--json``). Each Ray run starts a local Ray runtime in its
driver (``ray.init(address="local")``, all cores), timed apart ("start Ray") before the job.
Rows read per task come from the job record (``details.ray.rows_read``; ``ray-whole``: the
whole file is scanned by each task, by construction), the tasks' own seconds from
``details.ray.task_s``. Peak RSS is sampled
every 5 ms with psutil. Before any number is reported, every run's row counts and online table
are compared with the local engine's (every cell; doubles within 1e-12 relative).

    python bench/ray_materialize.py                      # 1,000,000 orders
    python bench/ray_materialize.py --orders 100000      # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from _common import (
    WORKSPACE,
    apply_quickstart,
    console,
    copy_quickstart,
    floor_hour,
    fmt_mib,
    generate_data,
    load_line,
    machine_line,
    ratio,
    run_child,
)
from materialize import PeakRSS, ru_maxrss_bytes

VIEW = "user_order_stats"
ENGINES = ("local", "ray-whole", "ray", "ray-chunks")
RANGE = timedelta(days=91)  # the generated orders span the 90 days before the end


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=1_000_000, help="order rows to generate")
    p.add_argument("--users", type=int, default=1000, help="users to generate")
    p.add_argument("--partitions", type=int, default=4, help="entity buckets per Ray job")
    p.add_argument("--time-chunk", default="30d", help="time chunk of the ray-chunks run")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeat", type=int, default=1, help="rounds; each engine's best is shown")
    p.add_argument("--part-timeout", type=float, default=900, help="seconds per run, at most")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repos (path is printed)")
    p.add_argument("--part", choices=("generate", *ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--end", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.orders, args.users, args.partitions, args.repeat) < 1:
        p.error("--orders, --users, --partitions and --repeat must be >= 1")
    return args


def set_engine(repo: Path, engine: str, args: argparse.Namespace) -> None:
    import yaml

    config = yaml.safe_load((repo / "contextkit.yaml").read_text())
    compute: dict = {"engine": "local" if engine == "local" else "ray"}
    compute |= {"partitions": args.partitions, "connect_timeout_s": 120}
    if engine == "ray-chunks":
        compute["time_chunk"] = args.time_chunk
    config["compute"] = compute
    (repo / "contextkit.yaml").write_text(yaml.safe_dump(config))


def part_engine(repo: Path, end: datetime, engine: str) -> dict:
    import contextkit
    from contextkit.errors import WorkspaceError

    try:
        ctx = apply_quickstart(repo)
    except WorkspaceError:  # a later round: the repo is applied already
        ctx = contextkit.connect(repo, workspace=WORKSPACE)
    compute = ctx.runtime.config.compute
    start_ray_s = 0.0
    if engine == "ray-whole":  # the read before the pushdown: every task reads the whole source
        from contextkit.compute.ray import features
        from contextkit.compute.ray.partitions import Analysis

        features.analyse = lambda *_a, **_k: Analysis(None, "turned off by the bench")
    if compute.engine_for(VIEW) == "ray":
        from contextkit.compute.ray.runtime import connect

        began = time.perf_counter()
        connect(compute)
        start_ray_s = time.perf_counter() - began
    with PeakRSS() as mem:
        began = time.perf_counter()
        (job,) = ctx.materialize([VIEW], start=end - RANGE, end=end, full=True)
        wall = time.perf_counter() - began
    import duckdb

    source = str(repo / "data" / "orders.parquet")
    [(source_rows,)] = duckdb.sql(f"SELECT count(*) FROM read_parquet('{source}')").fetchall()
    return {
        "wall_s": wall,
        "start_ray_s": start_ray_s,
        "rows_offline": job.rows_offline,
        "rows_online": job.rows_online,
        "source_rows": source_rows,
        "ray": job.details.get("ray"),
        "rss_before": mem.before,
        "rss_peak": mem.peak,
        "ru_maxrss": ru_maxrss_bytes(),
        "online_db": str(ctx.runtime.config.online_path),
    }


def run_part_here(args: argparse.Namespace) -> int:
    end = datetime.fromisoformat(args.end)
    if args.part == "generate":
        generate_data(args.repo, users=args.users, orders=args.orders, seed=args.seed, end=end)
        result: dict = {}
    else:
        result = part_engine(args.repo, end, args.part)
    print("RESULT " + json.dumps(result))
    return 0


def run_part(part: str, repo: Path, end: datetime, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--part", part, "--repo", str(repo),
        "--end", end.isoformat(), "--orders", str(args.orders), "--users", str(args.users),
        "--seed", str(args.seed),
    ]  # fmt: skip
    return run_child(cmd, f"run {part!r}", args.part_timeout)


def online_rows(db: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        [name] = [
            r[0]
            for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if r[0].endswith(f"__{VIEW}")
        ]
        return sorted(con.execute(f'SELECT * FROM "{name}"').fetchall(), key=lambda r: r[0])


def same_rows(a: list[tuple], b: list[tuple]) -> bool:
    def cell(x, y) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-12)
        return x == y

    return len(a) == len(b) and all(
        len(r) == len(s) and all(cell(x, y) for x, y in zip(r, s, strict=True))
        for r, s in zip(a, b, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part:
        return run_part_here(args)
    out = console()
    out.print(f"[bold]materialize on Ray vs local[/]  {machine_line()}")
    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-ray-mat-"))
    try:
        end = floor_hour()
        repos = {engine: tmp / engine for engine in ENGINES}
        copy_quickstart(repos["local"])
        run_part("generate", repos["local"], end, args)
        for engine, repo in repos.items():
            if engine != "local":
                shutil.copytree(repos["local"], repo)
            set_engine(repo, engine, args)
        out.print(f"data: {args.orders:,} orders, {args.users:,} users; end {end.isoformat()}")
        load_before = os.getloadavg()
        results: dict[str, dict] = {}
        for round_ in range(args.repeat):  # engines interleaved, so load drift hits them all
            for engine in ENGINES:
                out.print(f"  round {round_ + 1}: running {engine} ...")
                r = run_part(engine, repos[engine], end, args)
                r["walls"] = [*results.get(engine, {}).get("walls", []), r["wall_s"]]
                if engine not in results or r["wall_s"] < results[engine]["wall_s"]:
                    results[engine] = r
                results[engine]["walls"] = r["walls"]
        load_after = os.getloadavg()
        local = results["local"]
        counts = ("rows_offline", "rows_online")
        want = online_rows(local["online_db"])
        for engine in ENGINES[1:]:
            got = results[engine]
            if any(local[c] != got[c] for c in counts) or not same_rows(
                online_rows(got["online_db"]), want
            ):
                out.print(f"[bold red]{engine} differs from the local engine: no numbers[/]")
                return 1
        report(out, results, args)
        out.print(load_line(load_before, load_after, "the runs", own=2.0))
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": machine_line(),
                        "orders": args.orders,
                        "partitions": args.partitions,
                        "time_chunk": args.time_chunk,
                        "results": results,
                        "loadavg_before": load_before,
                        "loadavg_after": load_after,
                    },
                    indent=2,
                )
            )
        return 0
    finally:
        if args.keep:
            out.print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def task_seconds(r: dict) -> str:
    """The tasks' own seconds (in their workers), all together / the longest."""
    ray = r.get("ray")
    return "-" if ray is None else f"{ray['task_s']['total']:.1f} / {ray['task_s']['max']:.1f}"


def read_per_task(r: dict) -> tuple[str, str, str]:
    """Tasks, rows read by the largest task, and by all tasks together."""
    ray = r.get("ray")
    if ray is None:
        return "-", f"{r['source_rows']:,} (1 process)", f"{r['source_rows']:,}"
    read = ray["rows_read"]
    if read["total"] is None:  # whole source in every task (not counted by the job)
        return (
            str(ray["tasks"]),
            f"{r['source_rows']:,} (whole source)",
            f"{r['source_rows'] * ray['tasks']:,}",
        )
    return str(ray["tasks"]), f"{read['max_task']:,}", f"{read['total']:,}"


def report(out, results: dict, args: argparse.Namespace) -> None:
    from rich.table import Table

    local = results["local"]
    title = f"{VIEW}, {args.orders:,} orders, 91 days, full recompute (same run"
    title += f", best of {args.repeat})" if args.repeat > 1 else ")"
    table = Table(title=title)
    for col in (
        "engine", "tasks", "rows read, largest task", "rows read, all tasks", "job s",
        "vs local", "task s, sum / max", "start Ray s", "driver peak RSS", "RSS increase",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for engine in ENGINES:
        r = results[engine]
        tasks, largest, total = read_per_task(r)
        table.add_row(
            engine,
            tasks,
            largest,
            total,
            f"{r['wall_s']:.2f}",
            ratio(r["wall_s"], local["wall_s"]),
            task_seconds(r),
            f"{r['start_ray_s']:.2f}" if engine != "local" else "-",
            fmt_mib(r["rss_peak"]),
            fmt_mib(r["rss_peak"] - r["rss_before"]),
        )
    out.print(table)
    pushed = results["ray"]["ray"]["pushdown"]
    out.print(
        f"rows: {local['rows_offline']:,} offline, {local['rows_online']:,} online (every engine;"
        f" online tables equal cell for cell); source {local['source_rows']:,} orders; "
        f"{args.partitions} buckets, ray-chunks: time_chunk {args.time_chunk}; "
        f"pushdown: {pushed['why']}"
    )


if __name__ == "__main__":
    sys.exit(main())
