"""The Redis online store: batched reads vs a raw redis-py pipeline, and bulk writes of 1M rows.

Starts its own ``redis-server`` (no persistence) on a free port in a temp dir, unless ``--url``
names one. Then:

* **read**: two materialized views of ``--users`` users (like the quickstart's service: 7 and 4
  columns). For 1, 10 and 100 entities, interleaved rounds time (a) ``RedisOnlineStore.read_many``
  over both views (one round trip), (b) ``RedisOnlineStore.read`` once per view (how the core
  calls it today: one round trip per view) and (c) the limit: a raw redis-py pipeline doing the
  same reads (one MGET per view of the same keys, each value decoded with orjson).
* **write**: ``replace_table`` of ``--rows`` rows (default 1,000,000; 8 columns) in a child
  process, so its peak RSS is the write's own; then the same rows again (a re-run: a new
  generation, the flip, and the old generation deleted). Beside it, the raw limit: redis-py
  pipelines of MSET with the same pre-encoded keys and values (no generation, no count).

    python bench/online_redis.py                   # ~1-2 min
    python bench/online_redis.py --rows 200000 --requests 500    # quicker

Only 127.0.0.1 is contacted; the server is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Summary, console, fmt_ms, keep_bench_folder_off_path, machine_line, ratio

keep_bench_folder_off_path()

T0 = 1_700_000_000_000_000
STATS = "prod__user_order_stats"
PROFILE = "prod__user_profile"
KEY = [("user_id", "int64")]
STATS_COLS = [("event_timestamp", "timestamp"), ("orders_1d", "int64"), ("orders_7d", "int64"),
              ("spend_7d", "float64"), ("spend_30d", "float64"), ("avg_30d", "float64"),
              ("last_category", "string")]  # fmt: skip
PROFILE_COLS = [("event_timestamp", "timestamp"), ("tier", "string"), ("vip", "bool"),
                ("signup_days", "int64")]  # fmt: skip
WRITE_COLS = STATS_COLS  # 8 columns with the key
TARGET_ROWS_PER_S = 100_000
TARGET_OVERHEAD_MS = 0.3  # issue 14: contextkit over the raw pipeline, 1 entity, p50 (HTTP too)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an existing Redis (default: start a private redis-server)")
    p.add_argument("--users", type=int, default=100_000, help="users in the read tables")
    p.add_argument("--requests", type=int, default=2000, help="timed reads per size and row")
    p.add_argument("--warmup", type=int, default=200, help="untimed reads per size first")
    p.add_argument("--sizes", default="1,10,100", help="entities per read, comma separated")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows written")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: a child's write run
    p.add_argument("--prefix", default="bench", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- the server ----------------------------------------------------------------------------------


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("error: redis-server is not installed (Debian package redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--save", "", "--appendonly", "no", "--logfile", str(workdir / "redis.log")],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"error: redis-server did not start; see {workdir / 'redis.log'}")
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


# -- write -------------------------------------------------------------------------------------


def rows(n: int, salt: int = 0):
    cats = ["books", "games", "garden", "tools", "music"]
    for u in range(n):
        yield (u, T0 + u, u % 7 + salt, u % 31, u * 0.5, u * 1.25, (u % 100) / 3, cats[u % 5])


def write_child(args: argparse.Namespace) -> None:
    """One timed write in this (child) process; prints JSON for the parent."""
    from contextkit.stores.redis_online import RedisOnlineStore

    store = RedisOnlineStore(args.url, prefix=args.prefix)
    out = {}
    if args.phase == "contextkit":
        for label, salt in (("first", 0), ("rerun", 1)):
            began, cpu = time.perf_counter(), time.process_time()
            count = store.replace_table(STATS, KEY, WRITE_COLS, rows(args.rows, salt))
            out[label] = {"seconds": time.perf_counter() - began, "count": count,
                          "cpu": time.process_time() - cpu}  # fmt: skip
    else:  # raw: redis-py pipelines of MSET, the same keys and values
        import orjson

        client = store._redis
        began, cpu = time.perf_counter(), time.process_time()
        chunk: dict[str, bytes] = {}
        for row in rows(args.rows):
            chunk[f"{args.prefix}:raw:{row[0]}"] = orjson.dumps(list(row[1:]))
            if len(chunk) >= 5000:
                client.mset(chunk)
                chunk = {}
        if chunk:
            client.mset(chunk)
        out["first"] = {"seconds": time.perf_counter() - began, "count": args.rows,
                        "cpu": time.process_time() - cpu}  # fmt: skip
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    store.close()
    print(json.dumps(out))


def run_write(args: argparse.Namespace, phase: str, prefix: str) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--url", args.url, "--rows",
               str(args.rows), "--prefix", prefix]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"error: the {phase} write failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_rss() -> int:
    """Peak RSS of a child that only imports the store: what the write adds is above it."""
    code = (
        "import resource, contextkit.stores.redis_online, orjson; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout)  # fmt: skip


# -- read --------------------------------------------------------------------------------------


def time_reads(args, store, sizes: list[int]) -> dict[int, dict[str, tuple[Summary, float]]]:
    """Per size and path: the latency summary and the client CPU ms per read."""
    import orjson

    from contextkit.stores.online import TableRead

    client = store._redis
    stats_names = [c for c, _ in STATS_COLS]
    profile_names = [c for c, _ in PROFILE_COLS]
    results: dict[int, dict[str, tuple[Summary, float]]] = {}
    rng = random.Random(7)
    stats_data, profile_data = store._metas[STATS].data, store._metas[PROFILE].data
    for size in sizes:
        batches = [[(rng.randrange(args.users),) for _ in range(size)] for _ in range(64)]

        def many(keys):
            return store.read_many(
                [TableRead(STATS, ["user_id"], stats_names, keys),
                 TableRead(PROFILE, ["user_id"], profile_names, keys)]
            )  # fmt: skip

        def per_view(keys):
            return (
                store.read(STATS, ["user_id"], stats_names, keys),
                store.read(PROFILE, ["user_id"], profile_names, keys),
            )

        def raw(keys):
            pipe = client.pipeline(transaction=False)
            pipe.mget([f"{stats_data}{k[0]}" for k in keys])
            pipe.mget([f"{profile_data}{k[0]}" for k in keys])
            a, b = pipe.execute()
            return (
                [None if v is None else tuple(orjson.loads(v)) for v in a],
                [None if v is None else tuple(orjson.loads(v)) for v in b],
            )

        candidates = {"contextkit read_many": many, "contextkit read per view": per_view,
                      "raw redis-py pipeline": raw}  # fmt: skip
        first = batches[0]
        assert many(first)[0] == raw(first)[0], "both paths read the same rows"
        samples: dict[str, list[int]] = {name: [] for name in candidates}
        cpu: dict[str, float] = dict.fromkeys(candidates, 0.0)
        for fn in candidates.values():
            for i in range(args.warmup):
                fn(batches[i % 64])
        gc.disable()
        try:
            rounds = 20
            per_round = max(1, args.requests // rounds)
            for r in range(rounds):  # interleaved, so drift in machine load hits all alike
                order = list(candidates.items())
                if r % 2:
                    order.reverse()
                for name, fn in order:
                    cpu_began = time.process_time()
                    for i in range(per_round):
                        keys = batches[(r * per_round + i) % 64]
                        began = time.perf_counter_ns()
                        fn(keys)
                        samples[name].append(time.perf_counter_ns() - began)
                    cpu[name] += time.process_time() - cpu_began
        finally:
            gc.enable()
        results[size] = {
            name: (Summary.of_ns(s), cpu[name] * 1000 / len(s)) for name, s in samples.items()
        }
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.phase:
        write_child(args)
        return
    from rich.table import Table

    from contextkit.stores.redis_online import RedisOnlineStore

    out = console()
    workdir = Path(tempfile.mkdtemp(prefix="ck-bench-redis-"))
    proc = None
    try:
        if not args.url:
            proc, args.url = start_redis(workdir)
        out.print(machine_line())
        out.print(f"redis: {args.url}  load average {os.getloadavg()[0]:.2f}")
        store = RedisOnlineStore(args.url, prefix="bench-read")
        store.replace_table(
            STATS, KEY, STATS_COLS,
            ((u, T0, u % 7, u % 31, u * 0.5, u * 1.25, u / 3, "books") for u in range(args.users)),
        )  # fmt: skip
        store.replace_table(
            PROFILE, KEY, PROFILE_COLS,
            ((u, T0, f"tier{u % 3}", u % 2 == 0, u % 900) for u in range(args.users)),
        )  # fmt: skip
        sizes = [int(s) for s in args.sizes.split(",")]
        reads = time_reads(args, store, sizes)
        store.drop_table(STATS)
        store.drop_table(PROFILE)

        table = Table(title=f"reads of 2 views, {args.users:,} users, {args.requests} per row (ms)")
        columns = ("entities", "path", "p50", "p99", "mean", "p50 vs raw", "p50 over raw",
                   "client CPU/req", "CPU over raw")  # fmt: skip
        for column in columns:
            table.add_column(column, justify="right" if column != "path" else "left")
        for size, by_path in reads.items():
            raw, raw_cpu = by_path["raw redis-py pipeline"]
            for path, (s, cpu) in by_path.items():
                table.add_row(
                    str(size), path, fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.mean),
                    ratio(s.p50, raw.p50), f"{s.p50 - raw.p50:+.3f}", fmt_ms(cpu),
                    f"{cpu - raw_cpu:+.3f}",
                )  # fmt: skip
        out.print(table)
        overhead = reads[sizes[0]]["contextkit read_many"][0].p50 - (
            reads[sizes[0]]["raw redis-py pipeline"][0].p50
        )
        out.print(
            f"read_many overhead over the raw pipeline at {sizes[0]} entity, p50: "
            f"{overhead:+.3f} ms (target < {TARGET_OVERHEAD_MS} ms: "
            f"{'met' if overhead < TARGET_OVERHEAD_MS else 'MISSED'})"
        )

        base = baseline_rss()
        ck = run_write(args, "contextkit", "bench-write")
        raw_write = run_write(args, "raw", "bench-raw")
        import redis

        info = redis.Redis.from_url(args.url).info("memory")
        wt = Table(title=f"writing {args.rows:,} rows of 8 columns")
        for column in ("path", "seconds", "rows/s", "vs raw", "client CPU s", "rows per CPU s",
                       "peak RSS", "RSS over import"):  # fmt: skip
            wt.add_column(column, justify="right" if column != "path" else "left")
        raw_rate = args.rows / raw_write["first"]["seconds"]
        for label, result, rss in (
            ("contextkit replace_table", ck["first"], ck["peak_rss"]),
            ("contextkit re-run (flip + delete old)", ck["rerun"], ck["peak_rss"]),
            ("raw redis-py MSET pipelines", raw_write["first"], raw_write["peak_rss"]),
        ):
            rate = args.rows / result["seconds"]
            wt.add_row(
                label, f"{result['seconds']:.2f}", f"{rate:,.0f}", ratio(rate, raw_rate),
                f"{result['cpu']:.2f}", f"{args.rows / result['cpu']:,.0f}",
                f"{rss / 2**20:,.0f} MiB", f"{(rss - base) / 2**20:,.0f} MiB",
            )  # fmt: skip
        out.print(wt)
        rate = args.rows / ck["first"]["seconds"]
        out.print(
            f"replace_table: {rate:,.0f} rows/s (target >= {TARGET_ROWS_PER_S:,}: "
            f"{'met' if rate >= TARGET_ROWS_PER_S else 'MISSED'}); count returned "
            f"{ck['first']['count']:,}; redis used_memory after "
            f"{info['used_memory'] / 2**20:,.0f} MiB (1 table + the raw copy); "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "reads": {
                            str(k): {p: {**vars(s), "cpu_ms": c} for p, (s, c) in v.items()}
                            for k, v in reads.items()
                        },
                        "write": ck,
                        "raw_write": raw_write,
                        "baseline_rss": base,
                    },
                    indent=2,
                )
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
