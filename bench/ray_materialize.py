"""Materializing a feature view on Ray vs the local engine: time and the driver's peak memory.

Generates the quickstart data with ``--orders`` (default 1,000,000) orders in a temp dir, copies
the repo twice (one per engine, so neither reads the other's stores), and materializes
``user_order_stats`` (12 windowed aggregates; offline Parquet, the inputs table, online SQLite)
with ``full=True`` in each, each run in its own Python subprocess so its peak RSS is its own:

* ``local``: the local engine (DuckDB in the process);
* ``ray``: ``compute: {engine: ray, partitions: N}``: a local Ray runtime started in the driver
  (``ray.init(address="local")``, all cores), which is timed apart ("start Ray") before the job;
  the job's tasks run in Ray worker processes, whose memory is not the driver's.

Peak RSS is sampled every 5 ms with psutil during the job and cross-checked with ``ru_maxrss``.
The driver's RSS on Ray includes the object-store pages it maps while it streams the partitions'
rows into the stores (shared memory, the node's). Before any number is reported, the two runs'
row counts and online tables are compared (every cell; doubles within 1e-12 relative).

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
from datetime import datetime
from pathlib import Path

from _common import (
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
ENGINES = ("local", "ray")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=1_000_000, help="order rows to generate")
    p.add_argument("--users", type=int, default=1000, help="users to generate")
    p.add_argument("--partitions", type=int, default=4, help="Ray tasks per job")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--part-timeout", type=float, default=900, help="seconds per run, at most")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repos (path is printed)")
    p.add_argument("--part", choices=("generate", *ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--end", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.orders < 1 or args.users < 1 or args.partitions < 1:
        p.error("--orders, --users and --partitions must be >= 1")
    return args


def set_engine(repo: Path, engine: str, partitions: int) -> None:
    import yaml

    config = yaml.safe_load((repo / "contextkit.yaml").read_text())
    config["compute"] = {"engine": engine, "partitions": partitions, "connect_timeout_s": 120}
    (repo / "contextkit.yaml").write_text(yaml.safe_dump(config))


def part_engine(repo: Path, end: datetime) -> dict:
    ctx = apply_quickstart(repo)
    compute = ctx.runtime.config.compute
    start_ray_s = 0.0
    if compute.engine_for(VIEW) == "ray":
        from contextkit.compute.ray.runtime import connect

        began = time.perf_counter()
        connect(compute)
        start_ray_s = time.perf_counter() - began
    with PeakRSS() as mem:
        began = time.perf_counter()
        (job,) = ctx.materialize([VIEW], end=end, full=True)
        wall = time.perf_counter() - began
    return {
        "wall_s": wall,
        "start_ray_s": start_ray_s,
        "rows_offline": job.rows_offline,
        "rows_online": job.rows_online,
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
        result = part_engine(args.repo, end)
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
        shutil.copytree(repos["local"], repos["ray"])
        for engine, repo in repos.items():
            set_engine(repo, engine, args.partitions)
        out.print(f"data: {args.orders:,} orders, {args.users:,} users; end {end.isoformat()}")
        load_before = os.getloadavg()
        results = {}
        for engine in ENGINES:
            out.print(f"  running {engine} ...")
            results[engine] = run_part(engine, repos[engine], end, args)
        load_after = os.getloadavg()
        local, remote = results["local"], results["ray"]
        counts = ("rows_offline", "rows_online")
        if any(local[c] != remote[c] for c in counts) or not same_rows(
            online_rows(local["online_db"]), online_rows(remote["online_db"])
        ):
            out.print("[bold red]the engines' results differ: no numbers reported[/]")
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


def report(out, results: dict, args: argparse.Namespace) -> None:
    from rich.table import Table

    local, remote = results["local"], results["ray"]
    table = Table(title=f"{VIEW}, {args.orders:,} orders, full recompute (same run)")
    for col in ("engine", "job s", "start Ray s", "driver peak RSS", "RSS increase", "ru_maxrss"):
        table.add_column(col, justify="right")
    for engine in ENGINES:
        r = results[engine]
        table.add_row(
            engine,
            f"{r['wall_s']:.2f}",
            f"{r['start_ray_s']:.2f}" if engine == "ray" else "-",
            fmt_mib(r["rss_peak"]),
            fmt_mib(r["rss_peak"] - r["rss_before"]),
            fmt_mib(r["ru_maxrss"]),
        )
    table.add_row(
        "ray / local",
        ratio(remote["wall_s"], local["wall_s"]),
        "",
        ratio(remote["rss_peak"], local["rss_peak"]),
        ratio(remote["rss_peak"] - remote["rss_before"], local["rss_peak"] - local["rss_before"]),
        "",
    )
    out.print(table)
    out.print(
        f"rows: {local['rows_offline']:,} offline, {local['rows_online']:,} online (both engines;"
        f" online tables equal cell for cell); Ray: {args.partitions} partitions"
    )


if __name__ == "__main__":
    sys.exit(main())
