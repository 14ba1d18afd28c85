"""Two serving nodes vs one, on one deployment, under a bounded concurrent load on loopback.

Starts a private ``redis-server`` (no persistence), builds a small repo (one batch feature view of
``--users`` users, 6 features, served by one service) whose online store is that Redis, applies
and materializes it, then starts two ``contextkit serve`` processes on it. The load is
``POST /v1/features`` for one random entity, from ``--concurrency`` client threads, each with its
own keep-alive connection and one request in flight (so at most that many requests are in the
system at once). Rounds alternate between **one node** (every connection to node A) and **two
nodes** (connections spread round robin over A and B), ``--seconds`` each, and report
throughput, p50 and p99 per round and the two-node/one-node throughput ratio.

On a machine with fewer cores than the two servers and the client need (2 cores here), the two
nodes share the same cores: the ratio then shows what a second node **costs** (two event loops,
two processes' caches) rather than how serving **scales**; with a core or more per node it
approaches the node count until Redis or the client is the limit. The registry is a SQLite file
both nodes read (one machine), the online store the shared Redis; serving reads only Redis
per request (the definitions are cached and follow the registry's data version).

    python bench/two_nodes.py                       # ~1 min
    python bench/two_nodes.py --seconds 5 --rounds 2 --concurrency 8

Only 127.0.0.1 is contacted; servers are stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import Summary, console, fmt_ms, keep_bench_folder_off_path, load_line, machine_line
from online_redis import start_redis

keep_bench_folder_off_path()

CLI = str(Path(sys.executable).parent / "contextkit")
END = datetime(2024, 6, 1, tzinfo=UTC)
DEFS = """
from datetime import timedelta
from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[
    Attribute("a"), Attribute("b"), Attribute("c"), Attribute("d"), Attribute("tier"),
    Attribute("vip"),
])
def profile(events):
    return f"SELECT user_id, a, b, c, d, tier, vip, ts FROM {events}"

svc = ContextService(name="svc", features=[profile])
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument(
        "--concurrency", type=int, default=16, help="client threads (requests in flight)"
    )
    p.add_argument("--seconds", type=float, default=8.0, help="length of one round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per configuration (alternating)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def build_repo(root: Path, redis_url: str, users: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import contextkit

    (root / "data").mkdir(parents=True)
    (root / "defs.py").write_text(DEFS)
    (root / "contextkit.yaml").write_text(
        f"project: twonodes\nonline_store: {{url: '{redis_url}', prefix: bench}}\n"
    )
    rng = random.Random(7)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(range(users), pa.int64()),
                "a": pa.array([rng.random() for _ in range(users)], pa.float64()),
                "b": pa.array([rng.randrange(1000) for _ in range(users)], pa.int64()),
                "c": pa.array([rng.random() * 100 for _ in range(users)], pa.float64()),
                "d": pa.array([rng.randrange(50) for _ in range(users)], pa.int64()),
                "tier": pa.array([rng.choice(["free", "plus", "pro"]) for _ in range(users)]),
                "vip": pa.array([rng.random() < 0.1 for _ in range(users)]),
                "ts": pa.array([END - timedelta(days=1)] * users, pa.timestamp("us", tz="UTC")),
            }
        ),
        root / "data" / "events.parquet",
    )
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    [job] = ctx.materialize(end=END)
    assert job.status == "succeeded", job
    ctx.close()


def start_node(root: Path, workdir: Path, name: str) -> tuple[subprocess.Popen, int]:
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - the process writes it
    proc = subprocess.Popen(
        [CLI, "serve", "--no-auth", "--workspace", "prod", "--port", "0", "--repo", str(root)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 300
    port = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: node {name} exited; see {workdir / name}.log")
        text = (workdir / f"{name}.log").read_text(errors="replace")
        found = re.search(r"Uvicorn running on http://[^\s:]+:(\d+)", text)
        if found:
            port = int(found.group(1))
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return proc, port
            except OSError:
                pass
        time.sleep(0.2)
    sys.exit(f"error: node {name} not ready (port {port}); see {workdir / name}.log")


def run_round(ports: list[int], concurrency: int, seconds: float, users: int) -> dict:
    """``concurrency`` threads, each a keep-alive connection to ``ports[i % len(ports)]``."""
    latencies: list[list[int]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop = time.monotonic() + seconds
    start_gate = threading.Barrier(concurrency + 1)

    def client(i: int) -> None:
        rng = random.Random(i)
        conn = http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=30)
        start_gate.wait()
        while time.monotonic() < stop:
            body = json.dumps({"service": "svc", "entities": {"user_id": [rng.randrange(users)]}})
            began = time.perf_counter_ns()
            conn.request("POST", "/v1/features", body, {"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            latencies[i].append(time.perf_counter_ns() - began)
            if response.status != 200:
                errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    start_gate.wait()
    began = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    samples = [x for per in latencies for x in per]
    summary = Summary.of_ns(samples)
    return {"rps": len(samples) / elapsed, "p50": summary.p50, "p99": summary.p99,
            "requests": len(samples), "errors": sum(errors)}  # fmt: skip


def main() -> None:
    args = parse_args()
    out = console()
    out.print(machine_line())
    workdir = Path(tempfile.mkdtemp(prefix="ck-two-nodes-"))
    redis_proc, redis_url = start_redis(workdir)
    nodes: list[subprocess.Popen] = []
    try:
        root = workdir / "repo"
        build_repo(root, redis_url, args.users)
        started = [start_node(root, workdir, name) for name in ("a", "b")]
        nodes = [proc for proc, _ in started]
        ports = [port for _, port in started]
        for port_set in ([ports[0]], ports):  # warm both paths before measuring
            run_round(port_set, args.concurrency, 1.0, args.users)
        results: dict[str, list[dict]] = {"one node": [], "two nodes": []}
        load_before = os.getloadavg()
        for _ in range(args.rounds):
            results["one node"].append(
                run_round([ports[0]], args.concurrency, args.seconds, args.users)
            )
            results["two nodes"].append(
                run_round(ports, args.concurrency, args.seconds, args.users)
            )
        load_after = os.getloadavg()
    finally:
        for proc in nodes:
            proc.terminate()
        for proc in nodes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis_proc.terminate()
        redis_proc.wait(timeout=30)

    from rich.table import Table

    table = Table(title=f"POST /v1/features, 1 entity, {args.concurrency} requests in flight")
    for column in ("config", "round", "req/s", "p50 ms", "p99 ms", "requests", "errors"):
        table.add_column(column, justify="right")
    for config, rounds in results.items():
        for i, r in enumerate(rounds, 1):
            table.add_row(config, str(i), f"{r['rps']:,.0f}", fmt_ms(r["p50"]), fmt_ms(r["p99"]),
                          f"{r['requests']:,}", str(r["errors"]))  # fmt: skip
    out.print(table)
    one = sorted(r["rps"] for r in results["one node"])[len(results["one node"]) // 2]
    two = sorted(r["rps"] for r in results["two nodes"])[len(results["two nodes"]) // 2]
    out.print(
        f"median throughput: one node {one:,.0f} req/s, two nodes {two:,.0f} req/s, "
        f"ratio two/one {two / one:.2f}x on {os.cpu_count()} cores"
    )
    if (os.cpu_count() or 1) < 4:
        out.print(
            "[yellow]fewer cores than two servers and the client need: the ratio shows the "
            "overhead of a second node on shared cores, not scaling[/]"
        )
    out.print(load_line(load_before, load_after, "the measured rounds", own=3.0))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratio": two / one}, indent=2))


if __name__ == "__main__":
    main()
