"""Materialization throughput and memory: ``user_order_stats`` over 1,000,000 orders vs. DuckDB.

Generates the quickstart data with 1,000,000 orders in a temp dir, then runs each part in its own
Python subprocess so that each one's peak RSS is its own:

* ``contextkit``: apply the quickstart to a live workspace, then time
  ``ctx.materialize(["user_order_stats"])`` (offline Parquet + online SQLite; the 1h/1d/7d/30d
  sums and counts, 30d mean/max/count-distinct/last);
* ``duckdb-7d`` (baseline): a hand-written DuckDB query over the same Parquet computing the 7-day
  windowed sum and count per order (written to Parquet) and per user as of the end (fetched);
* ``duckdb-all`` (baseline): the same hand-written, for all the view's aggregates;
* ``pandas`` (reference): ``pd.read_parquet(orders)``, its in-memory size and the process RSS.

Peak RSS is sampled every 5 ms with psutil during the timed phase and cross-checked with
``ru_maxrss``; "RSS increase" is peak minus the RSS just before the phase (after imports).

    python bench/materialize.py                  # 1,000,000 orders
    python bench/materialize.py --orders 200000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
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
    machine_line,
    ratio,
    run_child,
)

VIEW = "user_order_stats"
PARTS = ("contextkit", "duckdb-7d", "duckdb-all", "pandas")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=1_000_000, help="order rows to generate")
    p.add_argument("--users", type=int, default=1000, help="users to generate")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--part-timeout", type=float, default=600, help="seconds per part, at most")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repo (path is printed)")
    # Internal: run one part in this (child) process.
    p.add_argument("--part", choices=("generate", *PARTS), help=argparse.SUPPRESS)
    p.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--end", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.orders < 1 or args.users < 1:
        p.error("--orders and --users must be >= 1")
    return args


# -- memory sampling ------------------------------------------------------------------------------
class PeakRSS:
    """Samples this process's RSS in a background thread; ``peak`` is the largest seen (bytes)."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.before = self._proc.memory_info().rss
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self.peak:
                self.peak = rss
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- parts (each runs in its own child process) ---------------------------------------------------
def part_contextkit(repo: Path, end: datetime) -> dict:
    t0 = time.perf_counter()
    ctx = apply_quickstart(repo)
    apply_s = time.perf_counter() - t0
    stages: list[tuple[str, float]] = []

    def on_stage(_view: str, stage: str) -> None:
        stages.append((stage, time.perf_counter()))

    with PeakRSS() as mem:
        began = time.perf_counter()
        (job,) = ctx.materialize([VIEW], end=end, full=True, on_stage=on_stage)
        wall = time.perf_counter() - began
    marks = [*stages, ("end", began + wall)]
    stage_s = {name: marks[i + 1][1] - at for i, (name, at) in enumerate(marks[:-1])}
    return {
        "wall_s": wall,
        "apply_s": apply_s,
        "stages_s": stage_s,
        "rows_offline": job.rows_offline,
        "rows_online": job.rows_online,
        "rss_before": mem.before,
        "rss_peak": mem.peak,
        "ru_maxrss": ru_maxrss_bytes(),
    }


def _duckdb():
    import duckdb

    # Configured like contextkit's own connections (DuckDB's default thread count).
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


WINDOWS = {"1h": "1 hour", "1d": "1 day", "7d": "7 days", "30d": "30 days"}


def baseline_queries(orders: Path, out: Path, end: datetime, all_features: bool) -> tuple[str, str]:
    """Hand-written (offline, online) queries: per-order windows to Parquet; per-user as of end."""
    src = f"read_parquet({_lit(str(orders))})"
    end_lit = f"TIMESTAMPTZ {_lit(end.isoformat())}"
    windows = WINDOWS if all_features else {"7d": "7 days"}
    offline_cols, online_cols, defs = [], [], []
    for name, interval in windows.items():
        defs.append(
            f"w{name} AS (PARTITION BY user_id ORDER BY ts "
            f"RANGE BETWEEN INTERVAL {interval} PRECEDING AND CURRENT ROW)"
        )
        offline_cols += [
            f"sum(amount) OVER w{name} AS amount_sum_{name}",
            f"count(order_id) OVER w{name} AS order_count_{name}",
        ]
        since = f"ts > {end_lit} - INTERVAL {interval}"
        online_cols += [
            f"sum(amount) FILTER (WHERE {since}) AS amount_sum_{name}",
            f"count(order_id) FILTER (WHERE {since}) AS order_count_{name}",
        ]
    if all_features:
        since = f"ts > {end_lit} - INTERVAL 30 days"
        offline_cols += [
            "avg(amount) OVER w30d AS amount_mean_30d",
            "max(amount) OVER w30d AS amount_max_30d",
            "count(DISTINCT product_id) OVER w30d AS distinct_products_30d",
            "arg_max(product_id, ts) OVER w30d AS last_product_id",
        ]
        online_cols += [
            f"avg(amount) FILTER (WHERE {since}) AS amount_mean_30d",
            f"max(amount) FILTER (WHERE {since}) AS amount_max_30d",
            f"count(DISTINCT product_id) FILTER (WHERE {since}) AS distinct_products_30d",
            f"arg_max(product_id, ts) FILTER (WHERE {since}) AS last_product_id",
        ]
    lookback = "30 days" if all_features else "7 days"
    offline = (
        f"COPY (SELECT user_id, ts AS event_timestamp, {', '.join(offline_cols)} "
        f"FROM {src} WHERE status = 'completed' AND ts < {end_lit} "
        f"WINDOW {', '.join(defs)}) TO {_lit(str(out))} (FORMAT parquet)"
    )
    online = (
        f"SELECT user_id, max(ts) AS event_timestamp, {', '.join(online_cols)} "
        f"FROM {src} WHERE status = 'completed' AND ts <= {end_lit} "
        f"AND ts > {end_lit} - INTERVAL {lookback} GROUP BY user_id"
    )
    return offline, online


def part_duckdb(repo: Path, end: datetime, all_features: bool) -> dict:
    con = _duckdb()
    out = repo / f"baseline-{'all' if all_features else '7d'}.parquet"
    offline, online = baseline_queries(repo / "data" / "orders.parquet", out, end, all_features)
    with PeakRSS() as mem:
        began = time.perf_counter()
        rows_offline = con.execute(offline).fetchone()[0]
        mid = time.perf_counter()
        rows_online = len(con.execute(online).fetchall())
        wall = time.perf_counter() - began
    return {
        "wall_s": wall,
        "stages_s": {"offline": mid - began, "online": wall - (mid - began)},
        "rows_offline": rows_offline,
        "rows_online": rows_online,
        "rss_before": mem.before,
        "rss_peak": mem.peak,
        "ru_maxrss": ru_maxrss_bytes(),
    }


def part_pandas(repo: Path) -> dict:
    import pandas as pd
    import pyarrow  # noqa: F401 - imported before measuring, like the other parts' engines

    with PeakRSS() as mem:
        began = time.perf_counter()
        frame = pd.read_parquet(repo / "data" / "orders.parquet")
        wall = time.perf_counter() - began
    return {
        "wall_s": wall,
        "rows": len(frame),
        "frame_bytes": int(frame.memory_usage(deep=True).sum()),
        "rss_before": mem.before,
        "rss_peak": mem.peak,
        "ru_maxrss": ru_maxrss_bytes(),
    }


def run_part_here(args: argparse.Namespace) -> int:
    end = datetime.fromisoformat(args.end)
    if args.part == "generate":
        began = time.perf_counter()
        generate_data(args.repo, users=args.users, orders=args.orders, seed=args.seed, end=end)
        result = {"wall_s": time.perf_counter() - began}
    elif args.part == "contextkit":
        result = part_contextkit(args.repo, end)
    elif args.part == "duckdb-7d":
        result = part_duckdb(args.repo, end, all_features=False)
    elif args.part == "duckdb-all":
        result = part_duckdb(args.repo, end, all_features=True)
    else:
        result = part_pandas(args.repo)
    print("RESULT " + json.dumps(result))
    return 0


def run_part(part: str, repo: Path, end: datetime, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--part", part, "--repo", str(repo),
        "--end", end.isoformat(), "--orders", str(args.orders), "--users", str(args.users),
        "--seed", str(args.seed),
    ]  # fmt: skip
    return run_child(cmd, f"part {part!r}", args.part_timeout)


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part:
        return run_part_here(args)
    out = console()
    out.print(f"[bold]contextkit materialization benchmark[/]  {machine_line()}")
    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-materialize-"))
    repo = tmp / "quickstart"
    try:
        end = floor_hour()
        t0 = time.perf_counter()
        copy_quickstart(repo)
        # In a child too: this process stays small, so the children's ru_maxrss (which Linux
        # carries over from the forking parent) is their own.
        run_part("generate", repo, end, args)
        orders_path = repo / "data" / "orders.parquet"
        out.print(
            f"data: {args.orders:,} orders, {args.users:,} users generated in "
            f"{time.perf_counter() - t0:.1f}s; orders.parquet is "
            f"{fmt_mib(orders_path.stat().st_size)} on disk; end {end.isoformat()}"
        )
        load_before = os.getloadavg()
        results = {}
        for part in PARTS:
            out.print(f"  running {part} ...")
            results[part] = run_part(part, repo, end, args)
            out.print(f"  {part}: {results[part]['wall_s']:.2f}s")
        load_after = os.getloadavg()
        report(out, args, results, end)
        load = f"load average (1 min) {load_before[0]:.2f} before / {load_after[0]:.2f} after"
        if max(load_before[0], load_after[0]) > 1.5:
            load += (
                f" [bold yellow]- other processes shared the {os.cpu_count()} cores; "
                "wall times are inflated[/]"
            )
        out.print(load)
        if args.json:
            dump = {
                "machine": machine_line(),
                "orders": args.orders,
                "users": args.users,
                "results": results,
                "loadavg_before": load_before,
                "loadavg_after": load_after,
            }
            args.json.write_text(json.dumps(dump, indent=2))
        return 0
    finally:
        if args.keep:
            out.print(f"kept: {repo}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(out, args, results: dict, end: datetime) -> None:
    from rich.table import Table

    ck, d7, dall, pd_ = (results[p] for p in PARTS)
    n = args.orders
    table = Table(
        title=f"Materializing {VIEW} from {n:,} orders (each row: its own subprocess; "
        "rows/s = source order rows / wall time)",
        title_justify="left",
    )
    cols = ("run", "wall s", "orders/s", "offline rows", "online rows", "peak RSS",
            "RSS increase", "wall / contextkit")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "run" else "right")

    def row(label: str, r: dict) -> None:
        table.add_row(
            label, f"{r['wall_s']:.2f}", f"{n / r['wall_s']:,.0f}",
            f"{r['rows_offline']:,}", f"{r['rows_online']:,}", fmt_mib(r["rss_peak"]),
            fmt_mib(r["rss_peak"] - r["rss_before"]), ratio(r["wall_s"], ck["wall_s"]),
        )  # fmt: skip

    row("contextkit materialize (12 aggregates)", ck)
    row("baseline: DuckDB by hand, 12 aggregates", dall)
    row("baseline: DuckDB by hand, 7d sum+count", d7)
    out.print(table)
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in ck["stages_s"].items())
    out.print(
        f"contextkit stages: {stages}; apply (not timed above) {ck['apply_s']:.2f}s. "
        f"ru_maxrss: contextkit {fmt_mib(ck['ru_maxrss'])}, "
        f"DuckDB all {fmt_mib(dall['ru_maxrss'])}, DuckDB 7d {fmt_mib(d7['ru_maxrss'])}"
    )

    mem = Table(title="Memory vs. loading the orders into pandas", title_justify="left")
    for col in ("measure", "bytes", "vs pandas DataFrame", "result"):
        mem.add_column(col, justify="left" if col == "measure" else "right")
    frame = pd_["frame_bytes"]
    mem.add_row(f"pd.read_parquet(orders): DataFrame, deep ({pd_['rows']:,} rows)", fmt_mib(frame),
                "1.00x", "")  # fmt: skip
    mem.add_row("pd.read_parquet(orders): process RSS increase",
                fmt_mib(pd_["rss_peak"] - pd_["rss_before"]),
                ratio(pd_["rss_peak"] - pd_["rss_before"], frame), "")  # fmt: skip
    increase = ck["rss_peak"] - ck["rss_before"]
    below = increase < frame
    mem.add_row(
        "contextkit materialize: process RSS increase", fmt_mib(increase), ratio(increase, frame),
        "[green]below pandas[/]" if below else "[bold red]NOT below pandas[/]",
    )  # fmt: skip
    mem.add_row(
        "contextkit materialize: peak process RSS (incl. imports)", fmt_mib(ck["rss_peak"]),
        ratio(ck["rss_peak"], frame), "",
    )  # fmt: skip
    out.print(mem)


if __name__ == "__main__":
    sys.exit(main())
