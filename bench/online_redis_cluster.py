"""`/v1/features` over HTTP on one Redis vs a 3-master Redis Cluster, in one run (ratios).

Starts its own ``redis-server`` (no persistence) and three cluster-enabled ones joined by
``redis-cli --cluster create`` (no replicas), on free loopback ports in a temp dir. Then:

* **read**: the quickstart (``--users`` users) materialized into both. Two servers run the same
  app (``contextkit.server.app.create_app``, no auth), one per store, each in its own process.
  For 1, 10 and 100 entities, interleaved rounds time a ``POST /v1/features`` of the
  ``support_assistant`` service (two views) over one keep-alive connection to each server.
  On the cluster a request is one pipeline sent to every master it touches at once (one MGET
  per slot), so the cost over one Redis is the per-master work, not extra round trips.
* **store level**: the same reads without HTTP, in this process: ``read_many`` of the service's
  views on one Redis and on the cluster, and redis-py's own cluster pipeline sending the
  cluster's data reads (one MGET per slot, no metas, nothing decoded): what the store's
  per-master batch replaced.
* **materialize**: ``--rows`` entities (an attribute view of 6 features) materialized by the
  core into each, the online stage timed on its own (rows/s): MSET chunks on one Redis,
  ``SET .. GET`` per key packed per master on the cluster.

    python bench/online_redis_cluster.py                           # ~3 min on 2 busy cores
    python bench/online_redis_cluster.py --requests 600 --rows 100000   # quicker

On one machine the cluster's three masters share its cores with the server and the client:
this shows the cost of the cluster layout, not its scaling. Only 127.0.0.1 is contacted;
servers are stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    Summary,
    apply_quickstart,
    console,
    copy_quickstart,
    floor_hour,
    fmt_ms,
    generate_data,
    keep_bench_folder_off_path,
    machine_line,
)
from online_redis_http import (
    SERVICE,
    Client,
    Server,
    load,
    open_context,
    run_materialize,
    start_redis,
    time_reads,
)

keep_bench_folder_off_path()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--orders", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=2000, help="timed requests per size and path")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rows", type=int, default=200_000, help="rows materialized into each")
    p.add_argument("--skip-write", action="store_true")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workdir: Path, masters: int = 3) -> tuple[list[subprocess.Popen], str]:
    """``masters`` cluster-enabled redis-servers joined into one cluster (no replicas);
    returns their processes and the ``redis+cluster://`` URL of the first."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        sys.exit("error: redis-server and redis-cli are needed (Debian redis-server, redis-tools)")
    procs, ports = [], []
    for i in range(masters):
        folder = workdir / f"cluster-{i}"
        folder.mkdir()
        port = free_port()
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(folder),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    str(folder / "redis.log"),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-config-file",
                    str(folder / "nodes.conf"),
                ],
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        )
        ports.append(port)

    def answers(port: int, *command: str) -> str:
        done = subprocess.run([cli, "-p", str(port), *command], capture_output=True, text=True,
                              timeout=10, check=False)  # fmt: skip
        return done.stdout

    deadline = time.monotonic() + 60
    while not all("PONG" in answers(p, "ping") for p in ports):
        if time.monotonic() > deadline:
            sys.exit(f"error: the cluster's redis-servers did not start; see {workdir}")
        time.sleep(0.05)
    subprocess.run(
        [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas",
         "0", "--cluster-yes"], check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    while not all("cluster_state:ok" in answers(p, "cluster", "info") for p in ports):
        if time.monotonic() > deadline:
            sys.exit("error: the cluster did not reach cluster_state:ok")
        time.sleep(0.1)
    return procs, f"redis+cluster://127.0.0.1:{ports[0]}/0"


def store_paths(repo: Path, single: str, cluster: str) -> dict:
    """In-process reads of the service's views (1, 10 or 100 users): ``read_many`` on each
    store, and redis-py's cluster pipeline doing the cluster's data MGETs (one per slot)."""
    from contextkit.stores._redis_keyspace import slot_of
    from contextkit.stores.online import TableRead

    paths = {}
    for label, url in (("read_many, one Redis", single), ("read_many, Redis Cluster", cluster)):
        ctx = open_context(repo, url)
        reader = ctx.service_reader(SERVICE)
        reads = [r for r in reader.reads if r.kind == "batch"]
        store = ctx.online

        def read(users, store=store, reads=reads) -> list:
            return store.read_many(
                [TableRead(r.table, r.keys, r.columns, [(u,) for u in users]) for r in reads]
            )

        read([1])  # the store learns the tables' generations
        paths[label] = read
    prefixes = [store._metas[r.table].data for r in reads]  # the cluster's, from the loop
    client = store._redis

    def pipeline(users) -> list:
        pipe = client.pipeline(transaction=False)
        for prefix in prefixes:
            groups: dict[int, list[str]] = {}
            for u in users:
                key = f"{prefix}{u}"
                groups.setdefault(slot_of(key), []).append(key)
            for keys in groups.values():
                pipe.execute_command("MGET", *keys)
        return pipe.execute()

    paths["redis-py cluster pipeline, data MGETs only"] = pipeline
    return paths


def ratio_table(reads: dict, base: str):
    from rich.table import Table

    table = Table("entities", "path", "p50 ms", "p99 ms", "p50 ratio", "p99 ratio")
    for size, r in reads.items():
        first: Summary = r[base]
        for name, s in r.items():
            table.add_row(str(size), name, fmt_ms(s.p50), fmt_ms(s.p99),
                          f"{s.p50 / first.p50:.2f}x", f"{s.p99 / first.p99:.2f}x")  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = console()
    out.print(machine_line())
    workdir = Path(tempfile.mkdtemp(prefix="ck-bench-redis-cluster-"))
    single_proc, single = start_redis(workdir)
    cluster_procs, cluster = start_cluster(workdir)
    servers: list[Server] = []
    report: dict = {"machine": machine_line(), "load_before": load()}
    try:
        repo = copy_quickstart(workdir / "quickstart")
        end = floor_hour()
        generate_data(repo, users=args.users, orders=args.orders, end=end)
        apply_quickstart(repo).materialize(end=end)  # the offline store (and SQLite)
        for url in (single, cluster):
            open_context(repo, url).materialize(end=end)
        servers = [Server(repo, single, workdir / "single.log"),
                   Server(repo, cluster, workdir / "cluster.log")]  # fmt: skip
        for s in servers:
            s.wait_healthy()
        one, many = Client(servers[0].port), Client(servers[1].port)
        sample = list(range(0, args.users, max(1, args.users // 100)))
        assert json.loads(one(sample)) == json.loads(many(sample)), "the same answers"
        paths = {"HTTP, one Redis": one, "HTTP, Redis Cluster (3 masters)": many}
        reads = time_reads(args, paths, args.users)
        report["reads"] = {
            size: {name: vars(s) for name, s in r.items()} for size, r in reads.items()
        }
        out.print(ratio_table(reads, "HTTP, one Redis"))
        for s in servers:
            s.stop()
        servers = []
        local = time_reads(args, store_paths(repo, single, cluster), args.users)
        report["store_reads"] = {
            size: {name: vars(s) for name, s in r.items()} for size, r in local.items()
        }
        out.print(ratio_table(local, "read_many, one Redis"))
        if not args.skip_write:
            report["materialize"] = {}
            for label, url in (("one Redis", single), ("Redis Cluster", cluster)):
                result = run_materialize(args, url, workdir / label.replace(" ", "-"))
                report["materialize"][label] = result
                for run_label, run in zip(("first run", "re-run"), result["runs"], strict=True):
                    rate = run["rows_online"] / run["online_s"]
                    out.print(
                        f"materialize {run['rows_online']:,} rows into {label}, {run_label}: "
                        f"online stage {run['online_s']:.2f} s = {rate:,.0f} rows/s"
                    )
        report["load_after"] = load()
        out.print(f"load (1/5 min) before {report['load_before']}, after {report['load_after']}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
    finally:
        for s in servers:
            s.stop()
        for proc in [single_proc, *cluster_procs]:
            proc.terminate()
        for proc in [single_proc, *cluster_procs]:
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
