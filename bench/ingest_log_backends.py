"""Ingest throughput by where the durable ingest log lives (issue 14): in-process
``ingest_records`` with the repo of ``bench/ingest.py`` (a push source, an attribute stream view
and a 10-minute-tile aggregate view), batches of 1 and 100 records, on three store setups:

* **embedded**: the SQLite online store, which is its own log (one transaction);
* **redis + sqlite log**: Redis online, the log in one node's ``ingest_log.db`` (SQLite registry);
* **redis + postgres log**: Redis online, the log shared in the PostgreSQL registry database.

The configurations run interleaved, ``--rounds`` times each, so the machine's load touches them
alike; the table gives the median records/s and the ratio to the embedded store. A private
``redis-server`` and PostgreSQL cluster are started (PostgreSQL with the test suite's helper,
tests/backends.py), unless ``--redis`` / ``--postgres`` name existing ones.

    python bench/ingest_log_backends.py                 # ~1-2 min
    python bench/ingest_log_backends.py --seconds 1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

from _common import console, keep_bench_folder_off_path, load_line, machine_line
from ingest import DEFS, in_process
from online_redis import start_redis

keep_bench_folder_off_path()

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="per configuration and batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--redis", help="an existing Redis URL (default: a private redis-server)")
    p.add_argument("--postgres", help="an existing PostgreSQL URL (default: a private cluster)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def start_postgres():
    sys.path.insert(0, str(ROOT))
    from tests.backends import PostgresServer, _postgres_bin

    sys.path.remove(str(ROOT))
    bin_dir = _postgres_bin()
    if bin_dir is None:
        sys.exit("error: PostgreSQL is not installed (Debian package postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="ck-bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, user="postgres")
    server = PostgresServer(bin_dir, folder)
    server.start()
    return server


def repo(root: Path, stores: str):
    import contextkit

    root.mkdir(parents=True)
    (root / "contextkit.yaml").write_text(f"project: ingest_log_bench\n{stores}")
    (root / "defs.py").write_text(textwrap.dedent(DEFS))
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return ctx


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from rich.table import Table

    from contextkit.compute.streaming import ingest_log

    out = console()
    out.print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="ck-bench-ingest-log-"))
    redis_proc, redis_url = (None, args.redis) if args.redis else start_redis(work)
    pg = None if args.postgres else start_postgres()
    contexts = {}
    try:
        pg_url = args.postgres or pg.create_database()
        prefix = f"bench:{uuid.uuid4().hex[:6]}"
        online = f"online_store: {{url: '{redis_url}', prefix: '{prefix}'}}\n"
        contexts = {
            "embedded": repo(work / "embedded", ""),
            "redis + sqlite log": repo(work / "sqlite-log", online),
            "redis + postgres log": repo(work / "pg-log", f"registry: {pg_url}\n" + online),
        }
        for name, ctx in contexts.items():
            out.print(f"{name}: log in {type(ingest_log(ctx)).__name__}")
        sizes = [1, 100]
        rates: dict[tuple[str, int], list[float]] = {}
        load_before = os.getloadavg()
        for _ in range(args.rounds):
            for name, ctx in contexts.items():
                for size in sizes:
                    rate = in_process(ctx, size, args.seconds, args.users)
                    rates.setdefault((name, size), []).append(rate)
        load_after = os.getloadavg()
    finally:
        for ctx in contexts.values():
            ctx.close()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=30)
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title="in-process ingest_records: median records/s (rounds)")
    table.add_column("log")
    for size in sizes:
        table.add_column(f"batch {size}")
        table.add_column("vs embedded")
    results = {}
    for name in contexts:
        row = [name]
        for size in sizes:
            median = statistics.median(rates[(name, size)])
            base = statistics.median(rates[("embedded", size)])
            results[f"{name}|{size}"] = rates[(name, size)]
            row += [f"{median:,.0f}", f"{median / base:.2f}x"]
        table.add_row(*row)
    out.print(table)
    out.print(load_line(load_before, load_after, "the runs", own=1.5))
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
