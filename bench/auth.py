"""What auth and workers cost and buy: ``POST /v1/features`` with API keys on vs off, and
``contextkit serve --workers 2`` vs 1 under a bounded load.

Builds the quickstart like ``bench/online.py``, creates a reader key, and starts real
``contextkit serve`` processes on free ports on 127.0.0.1:

1. **auth on vs off** (one worker each, started side by side): ``--no-auth --no-access-log``,
   ``--no-auth`` (JSON access log on, the default) and auth on (key in ``Authorization: Bearer``,
   access log on). Sequential 1-entity requests over one keep-alive connection, measured in
   interleaved rounds (``--rounds`` x ``--per-round`` per server) so that load from other
   processes falls on all of them alike; p50/p99 of the client round trip and server CPU per
   request. Target: auth adds **< 0.1 ms** to p50 and p99.
2. **workers**: ``--workers 1`` then ``--workers 2`` (auth on), each driven by ``--clients``
   client processes sending ``--load-requests`` requests each over keep-alive connections
   (reconnecting every 50 requests, so connections spread over the workers). Throughput =
   all requests / wall time; plus p50/p99 under that load.

    python bench/auth.py                       # ~1 min
    python bench/auth.py --rounds 5 --load-requests 500   # quicker
    python bench/auth.py --json out.json

Only 127.0.0.1 is contacted; every server is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    WORKSPACE,
    Summary,
    apply_quickstart,
    console,
    copy_quickstart,
    fmt_ms,
    generate_data,
    machine_line,
    verdict,
)
from online import SERVICE, VIEWS, CpuMeter, Server, contextkit_script, free_port

ADDED_TARGET_MS = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (auth on/off)")
    p.add_argument("--per-round", type=int, default=300, help="requests per server per round")
    p.add_argument("--warmup", type=int, default=300, help="untimed requests per server first")
    p.add_argument("--clients", type=int, default=4, help="client processes for the load test")
    p.add_argument("--load-requests", type=int, default=1500, help="requests per load client")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--orders", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if min(args.rounds, args.per_round, args.clients, args.load_requests) < 1:
        p.error("--rounds, --per-round, --clients and --load-requests must be >= 1")
    return args


class Serve(Server):
    """``contextkit serve`` with extra flags (``online.Server`` with a configurable command)."""

    def __init__(self, repo: Path, port: int, log_path: Path, *flags: str) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [contextkit_script(), "serve", "--repo", str(repo), "--workspace", WORKSPACE,
               "--host", "127.0.0.1", "--port", str(port), *flags]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        # With --workers the server is a process group (supervisor + workers): stop them all.
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()


def body(user_id: int) -> bytes:
    return json.dumps(
        {"workspace": WORKSPACE, "service": SERVICE, "entities": {"user_id": [user_id]}}
    ).encode()


def connect(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def timed_requests(
    conn: http.client.HTTPConnection, headers: dict, bodies: list[bytes], n: int, start: int
) -> list[int]:
    """Round trips (ns) of ``n`` POSTs; raises on any non-200."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(start, start + n):
        t0 = clock()
        conn.request("POST", "/v1/features", bodies[i % len(bodies)], headers)
        resp = conn.getresponse()
        payload = resp.read()
        t1 = clock()
        if resp.status != 200:
            raise RuntimeError(f"POST /v1/features answered {resp.status}: {payload[:300]!r}")
        samples.append(t1 - t0)
    return samples


# -- load generator (child processes) --------------------------------------------------------------
def load_client(port: int, key: str, requests: int, seed: int, out: mp.Queue, go) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    bodies = [body(1 + (seed * 7919 + i * 104729) % 1000) for i in range(64)]
    samples: list[int] = []
    errors = 0
    conn = connect(port)
    clock = time.perf_counter_ns
    out.put("ready")
    go.wait(timeout=120)  # all clients start together, after their imports
    began = time.monotonic()  # system-wide clock: comparable across the client processes
    for i in range(requests):
        if i and i % 50 == 0:  # a new connection may land on another worker
            conn.close()
            conn = connect(port)
        t0 = clock()
        conn.request("POST", "/v1/features", bodies[i % len(bodies)], headers)
        resp = conn.getresponse()
        resp.read()
        samples.append(clock() - t0)
        errors += resp.status != 200
    conn.close()
    out.put((samples, errors, began, time.monotonic()))


def run_load(port: int, key: str, clients: int, requests: int) -> dict:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    go = ctx.Event()
    procs = [
        ctx.Process(target=load_client, args=(port, key, requests, seed, queue, go))
        for seed in range(clients)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        if queue.get(timeout=120) != "ready":
            raise RuntimeError("a load client failed to start")
    go.set()
    results = [queue.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    wall = max(r[3] for r in results) - min(r[2] for r in results)
    samples = [s for r in results for s in r[0]]
    errors = sum(r[1] for r in results)
    if errors:
        raise RuntimeError(f"{errors} of {len(samples)} load requests failed")
    return {"requests": len(samples), "wall_s": wall, "rps": len(samples) / wall,
            "latency": Summary.of_ns(samples)}  # fmt: skip


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = console()
    out.print(f"[bold]contextkit auth + workers benchmark[/]  {machine_line()}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-auth-"))
    repo = tmp / "quickstart"
    servers: list[Serve] = []
    try:
        copy_quickstart(repo)
        generate_data(repo, users=args.users, orders=args.orders, seed=args.seed)
        ctx = apply_quickstart(repo)
        ctx.materialize(list(VIEWS))  # only what support_assistant reads: no embedding work
        key = ctx.access.create_key("bench", workspace=WORKSPACE, role="reader").key
        ctx.close()

        # 1. auth on vs off, interleaved.
        variants = {
            "auth off, access log off": ("--no-auth", "--no-access-log"),
            "auth off (--no-auth)": ("--no-auth",),
            "auth on (Bearer key)": (),
        }
        running: dict[str, Serve] = {}
        for name, flags in variants.items():
            server = Serve(repo, free_port(), tmp / f"{len(running)}.log", *flags)
            servers.append(server)
            running[name] = server
        for server in running.values():
            server.wait_healthy(300)
        bodies = [body(1 + (i * 104729) % args.users) for i in range(64)]
        plain = {"Content-Type": "application/json"}
        headers = {
            name: {**plain, "Authorization": f"Bearer {key}"} if "auth on" in name else plain
            for name in running
        }
        conns = {name: connect(s.port) for name, s in running.items()}
        for name in running:
            timed_requests(conns[name], headers[name], bodies, args.warmup, 0)
        gc.collect()
        gc.freeze()
        samples: dict[str, list[int]] = {name: [] for name in running}
        cpu = {name: 0.0 for name in running}
        meters = {name: CpuMeter(s.proc.pid) for name, s in running.items()}
        load_before = os.getloadavg()
        for r in range(args.rounds):
            order = list(running) if r % 2 == 0 else list(reversed(running))
            for name in order:
                with meters[name].measure(r, args.per_round):
                    samples[name] += timed_requests(
                        conns[name], headers[name], bodies, args.per_round, r * args.per_round
                    )
                cpu[name] += meters[name].server_ms[r] / args.rounds
        load_after = os.getloadavg()
        gc.unfreeze()
        for conn in conns.values():
            conn.close()
        for server in running.values():
            server.stop()
        auth = {name: Summary.of_ns(s) for name, s in samples.items()}

        # 2. workers: 1 then 2, each alone on the machine.
        workers = {}
        for n in (1, 2):
            server = Serve(repo, free_port(), tmp / f"w{n}.log", "--workers", str(n),
                           "--no-access-log")  # fmt: skip
            servers.append(server)
            server.wait_healthy(300)
            run_load(server.port, key, args.clients, max(50, args.load_requests // 10))  # warm
            workers[n] = run_load(server.port, key, args.clients, args.load_requests)
            server.stop()

        report(out, args, auth, cpu, workers, load_before, load_after)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": machine_line(),
                        "auth": {k: v.__dict__ for k, v in auth.items()},
                        "server_cpu_ms": cpu,
                        "workers": {
                            str(n): {**w, "latency": w["latency"].__dict__}
                            for n, w in workers.items()
                        },
                        "loadavg": [load_before, load_after],
                    },
                    indent=2,
                )
            )
        return 0
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def report(out, args, auth, cpu, workers, load_before, load_after) -> None:
    from rich.table import Table

    base_name = "auth off (--no-auth)"
    base = auth[base_name]
    table = Table(
        title=f"POST /v1/features, 1 entity: {args.rounds} interleaved rounds x {args.per_round} "
        "sequential keep-alive requests per server (client round trip, ms)",
        title_justify="left",
    )
    for col in ("server", "requests", "p50", "p99", "mean", "p50 - no-auth", "p99 - no-auth",
                "server CPU ms/req"):  # fmt: skip
        table.add_column(col, justify="left" if col == "server" else "right")
    for name, s in auth.items():
        table.add_row(
            name, f"{s.count:,}", fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.mean),
            f"{s.p50 - base.p50:+.3f}", f"{s.p99 - base.p99:+.3f}", fmt_ms(cpu[name]),
        )  # fmt: skip
    out.print(table)

    on = auth["auth on (Bearer key)"]
    targets = Table(title="Target: auth adds < 0.1 ms", title_justify="left")
    for col in ("metric", "added ms", "target ms", "result"):
        targets.add_column(col, justify="left" if col == "metric" else "right")
    for stat in ("p50", "p99"):
        added = getattr(on, stat) - getattr(base, stat)
        targets.add_row(
            f"auth on - off, {stat}", f"{added:+.3f}", f"< {ADDED_TARGET_MS}",
            verdict(added, ADDED_TARGET_MS),
        )  # fmt: skip
    cpu_added = cpu["auth on (Bearer key)"] - cpu[base_name]
    targets.add_row(
        "auth on - off, server CPU/request", f"{cpu_added:+.3f}", f"< {ADDED_TARGET_MS}",
        verdict(cpu_added, ADDED_TARGET_MS),
    )  # fmt: skip
    out.print(targets)

    load = Table(
        title=f"Throughput under load: {args.clients} client processes x {args.load_requests} "
        f"requests (auth on, 1 entity), {os.cpu_count()} cores shared by clients and server",
        title_justify="left",
    )
    for col in ("server", "requests", "wall s", "requests/s", "vs 1 worker", "p50 ms", "p99 ms"):
        load.add_column(col, justify="left" if col == "server" else "right")
    one = workers[1]["rps"]
    for n, w in workers.items():
        load.add_row(
            f"--workers {n}", f"{w['requests']:,}", f"{w['wall_s']:.2f}", f"{w['rps']:,.0f}",
            f"{w['rps'] / one:.2f}x", fmt_ms(w["latency"].p50), fmt_ms(w["latency"].p99),
        )  # fmt: skip
    out.print(load)
    note = f"load average (1 min) {load_before[0]:.2f} before / {load_after[0]:.2f} after part 1"
    if max(load_before[0], load_after[0]) > 1.5:
        note += " [bold yellow]- other processes shared the cores; compare server CPU/request[/]"
    out.print(note)


if __name__ == "__main__":
    sys.exit(main())
