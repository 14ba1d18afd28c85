"""An idle scheduler's overhead: CPU and registry queries per minute with N views (default 200).

Builds a repo with N daily batch feature views over one small source, applies it to a live
workspace, lets the scheduler plan every view's first interval and completes them with a no-op
runner (the cost measured here is the scheduler's own, not the jobs'). Then the scheduler ticks
every ``--tick`` seconds of injected time for ``--minutes`` simulated minutes within the same day:
nothing is due, which is a scheduler's state nearly all the time. Measured per tick: process CPU
(``time.process_time``) and the SQL statements sent to the SQLite registry (counted by a trace
callback on its connection); reported per minute at the given tick. A second row measures the
same with the registry changing between ticks (an apply elsewhere), which forces the views'
schedulable list to be rebuilt.

    .venv/bin/python bench/scheduler.py [--views 200] [--minutes 10] [--tick 10]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import contextkit
from contextkit.governance.scheduler import Scheduler, SchedulerSettings

CONFIG = "project: bench_scheduler\n"


def defs(views: int) -> str:
    head = textwrap.dedent(
        """\
        from datetime import timedelta
        from contextkit import Attribute, Entity, FileSource, batch_feature_view

        user = Entity(name="user", join_keys=["user_id"])
        events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")
        """
    )
    body = "".join(
        textwrap.dedent(
            f"""
            @batch_feature_view(sources=[events], entities=[user], mode="sql",
                                features=[Attribute("x")], batch_schedule=timedelta(days=1))
            def view_{i:03d}(events):
                return f"SELECT user_id, x + {i} AS x, ts FROM {{events}}"
            """
        )
        for i in range(views)
    )
    return head + body


def build(root: Path, views: int) -> None:
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(CONFIG)
    (root / "bench_defs.py").write_text(defs(views))
    ts = [datetime(2024, 5, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(4)]
    pq.write_table(
        pa.table({"user_id": [1, 2, 3, 1], "x": [1.0, 2.0, 3.0, 4.0], "ts": ts}),
        root / "data" / "events.parquet",
    )


def measure(ctx, scheduler, clock, ticks: int, tick_s: float, churn: bool) -> tuple[float, int]:
    """(CPU seconds, SQL statements) over ``ticks`` idle ticks; ``churn``: another registry
    connection (as another process would) commits before every tick."""
    from contextkit.stores.registry import SQLiteRegistry

    other = SQLiteRegistry(ctx.config.registry_path)
    statements = [0]
    con = ctx.registry._con()  # the scheduler's thread's registry connection
    con.set_trace_callback(lambda _sql: statements.__setitem__(0, statements[0] + 1))
    cpu = 0.0
    try:
        for _ in range(ticks):
            clock[0] += tick_s
            if churn:
                other.set_setting("bench.churn", str(clock[0]))  # any commit elsewhere
            began = time.process_time()
            report = scheduler.tick(wait=True)
            cpu += time.process_time() - began
            assert not report.claimed and not report.planned, "the bench expects an idle tick"
    finally:
        con.set_trace_callback(None)
        other.close()
    return cpu, statements[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--tick", type=float, default=10.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    try:
        root = tmp / "repo"
        build(root, args.views)
        ctx = contextkit.connect(root, "prod")
        ctx.create_workspace("prod", live=True)
        began = time.perf_counter()
        ctx.apply(ctx.plan(root))
        print(f"applied {args.views} views in {time.perf_counter() - began:.1f}s")
        start = datetime(2024, 6, 1, 0, 5, tzinfo=UTC).timestamp()
        clock = [start]
        settings = SchedulerSettings(concurrency=8, tick_s=args.tick)
        scheduler = Scheduler(
            ctx.runtime, clock=lambda: clock[0], settings=settings, run=lambda *_: None
        )
        planned = 0
        while True:  # plan and complete (no-op) every view's first interval
            report = scheduler.tick(wait=True)
            planned += report.planned
            if not report.claimed:
                break
        print(f"planned and completed {planned} intervals")
        ticks = max(1, int(args.minutes * 60 / args.tick))
        per_min = 60 / args.tick
        rows = []
        for label, churn in (("idle, registry unchanged", False), ("idle, registry churn", True)):
            cpu, sql = measure(ctx, scheduler, clock, ticks, args.tick, churn)
            rows.append((label, cpu / ticks * 1000, cpu / ticks * per_min * 1000,
                         sql / ticks, sql / ticks * per_min))  # fmt: skip
        print(f"\n{args.views} views, tick {args.tick:g}s, {ticks} ticks per row")
        print(f"{'case':<28} {'CPU ms/tick':>12} {'CPU ms/min':>11} {'SQL/tick':>9} {'SQL/min':>8}")
        for label, ms, ms_min, q, q_min in rows:
            print(f"{label:<28} {ms:>12.2f} {ms_min:>11.1f} {q:>9.1f} {q_min:>8.0f}")
        scheduler.close()
        ctx.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
