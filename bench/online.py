"""Online retrieval latency: ``POST /v1/features`` on a real server vs. the SDK vs. raw SQLite.

Builds the quickstart in a temp dir (generated data, a live ``prod`` workspace, applied and
materialized), starts ``contextkit serve`` as its own uvicorn process (one worker) on a free port
on 127.0.0.1, and times sequential requests of the ``support_assistant`` service for 1, 10 and
100 entities with a reused keep-alive ``http.client.HTTPConnection`` (client-side round trip).
The same key batches are then read in-process with ``ctx.get_features`` and, as the baseline,
with plain ``sqlite3`` SELECTs on the two online tables the service reads.

    python bench/online.py                      # defaults: 2,000 requests per size
    python bench/online.py --requests 300       # quicker
    python bench/online.py --json out.json      # also write the numbers as JSON

Only 127.0.0.1 is contacted; the server is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
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
    ratio,
    verdict,
)

SERVICE = "support_assistant"
VIEWS = ("user_order_stats", "user_profile")  # the views support_assistant reads
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
# Targets (ms): (entities, statistic) -> bound.
TARGETS = {(1, "p50"): 0.8, (1, "p99"): 1.5, (100, "p50"): 2.5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="timed requests per size")
    p.add_argument("--warmup", type=int, default=200, help="untimed requests per size first")
    p.add_argument("--sizes", default="1,10,100", help="entities per request, comma separated")
    p.add_argument("--users", type=int, default=1000, help="users in the generated data")
    p.add_argument("--orders", type=int, default=50_000, help="orders in the generated data")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--server-timeout", type=float, default=300.0, help="seconds to wait for /health (ready)"
    )
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repo (path is printed)")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.requests < 1 or args.warmup < 0 or not args.sizes or min(args.sizes) < 1:
        p.error("--requests >= 1, --warmup >= 0 and sizes >= 1 are required")
    return args


# -- server process -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def contextkit_script() -> str:
    script = Path(sys.executable).with_name("contextkit")
    if not script.exists():
        raise SystemExit(f"error: console script not found next to the interpreter: {script}")
    return str(script)


class Server:
    """``contextkit serve`` in its own process group; ``stop()`` is safe to call more than once."""

    def __init__(self, repo: Path, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [
            contextkit_script(), "serve", "--repo", str(repo), "--workspace", WORKSPACE,
            "--host", "127.0.0.1", "--port", str(port), "--no-auth",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, timeout: float) -> float:
        """Seconds until ``GET /health`` answered 200; raises if the process dies or times out."""
        began = time.perf_counter()
        deadline = began + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}; log:\n{self.log_tail()}"
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.perf_counter() - began
                conn.close()
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not healthy after {timeout:.0f}s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()


class CpuMeter:
    """CPU time (user + system) per request of the server process and of this client."""

    def __init__(self, server_pid: int) -> None:
        import psutil

        self._server = psutil.Process(server_pid)
        self.server_ms: dict[object, float] = {}
        self.client_ms: dict[object, float] = {}

    def _server_cpu(self) -> float:
        t = self._server.cpu_times()
        return t.user + t.system

    @contextmanager
    def measure(self, key: object, requests: int):
        s0, c0 = self._server_cpu(), time.process_time()
        yield
        s1, c1 = self._server_cpu(), time.process_time()
        self.server_ms[key] = (s1 - s0) * 1e3 / requests
        self.client_ms[key] = (c1 - c0) * 1e3 / requests


# -- measurements ---------------------------------------------------------------------------------
def key_batches(user_ids: list[int], size: int, count: int, seed: int) -> list[list[int]]:
    """``count`` distinct batches of ``size`` user ids (no repeats within a batch)."""
    rng = random.Random(seed * 1_000 + size)
    size_in_pool = min(size, len(user_ids))
    return [rng.sample(user_ids, size_in_pool) for _ in range(count)]


def time_http(
    port: int, batches: list[list[int]], requests: int, warmup: int
) -> tuple[list[int], int]:
    """Round-trip times (ns) of ``requests`` POSTs over one keep-alive connection."""
    bodies = [
        json.dumps(
            {"workspace": WORKSPACE, "service": SERVICE, "entities": {"user_id": b}}
        ).encode()
        for b in batches
    ]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Check the answer once, with the real parser, before timing anything.
    conn.request("POST", "/v1/features", bodies[0], HEADERS)
    resp = conn.getresponse()
    payload = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"POST /v1/features answered {resp.status}: {payload[:500]!r}")
    result = json.loads(payload)
    returned = len(result["results"][0]["values"])
    if returned != len(batches[0]):
        raise RuntimeError(f"asked for {len(batches[0])} entities, got {returned}")
    samples: list[int] = []
    errors = 0
    n_bodies = len(bodies)
    clock = time.perf_counter_ns
    for i in range(warmup + requests):
        body = bodies[i % n_bodies]
        t0 = clock()
        conn.request("POST", "/v1/features", body, HEADERS)
        resp = conn.getresponse()
        resp.read()
        t1 = clock()
        if resp.status != 200:
            errors += 1
        if i >= warmup:
            samples.append(t1 - t0)
    conn.close()
    return samples, errors


def time_health(port: int, requests: int, warmup: int) -> list[int]:
    """Round trips of ``GET /health``: the HTTP stack's floor, with no feature work."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    clock = time.perf_counter_ns
    for i in range(warmup + requests):
        t0 = clock()
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        t1 = clock()
        if resp.status != 200:
            raise RuntimeError(f"GET /health answered {resp.status}")
        if i >= warmup:
            samples.append(t1 - t0)
    conn.close()
    return samples


def time_calls(fn, batches: list[list[int]], requests: int, warmup: int) -> list[int]:
    samples = []
    n = len(batches)
    clock = time.perf_counter_ns
    for i in range(warmup + requests):
        keys = batches[i % n]
        t0 = clock()
        fn(keys)
        t1 = clock()
        if i >= warmup:
            samples.append(t1 - t0)
    return samples


def raw_sqlite_reader(online_db: Path):
    """The baseline: one ``SELECT ... WHERE user_id IN (...)`` per view, as plain sqlite3."""
    con = sqlite3.connect(online_db, isolation_level=None, cached_statements=1024)
    tables = [f'"{WORKSPACE}__{view}"' for view in VIEWS]
    for table in tables:
        con.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()  # fail early if missing
    sql_by_size: dict[int, list[str]] = {}

    def read(keys: list[int]) -> list[list[tuple]]:
        sqls = sql_by_size.get(len(keys))
        if sqls is None:
            marks = ",".join("?" * len(keys))
            sqls = sql_by_size[len(keys)] = [
                f"SELECT * FROM {t} WHERE user_id IN ({marks})" for t in tables
            ]
        return [con.execute(sql, keys).fetchall() for sql in sqls]

    return read, con


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = console()
    out.print(f"[bold]contextkit online benchmark[/]  {machine_line()}")
    # SIGTERM should run the finally blocks (stop the server, remove the temp dir) too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-online-"))
    repo = tmp / "quickstart"
    server: Server | None = None
    try:
        t0 = time.perf_counter()
        copy_quickstart(repo)
        generate_data(repo, users=args.users, orders=args.orders, seed=args.seed)
        ctx = apply_quickstart(repo)
        jobs = ctx.materialize()
        setup_s = time.perf_counter() - t0
        online_rows = {j.view: j.rows_online for j in jobs}
        online_db = ctx.config.online_path
        ctx.close()  # the server and the SDK below open their own connections
        out.print(
            f"setup: quickstart with {args.users:,} users / {args.orders:,} orders built, applied "
            f"and materialized in {setup_s:.1f}s; online rows: {online_rows}"
        )

        port = free_port()
        server = Server(repo, port, tmp / "server.log")
        ready_s = server.wait_healthy(args.server_timeout)
        out.print(
            f"server: pid {server.proc.pid} on 127.0.0.1:{port}, healthy after {ready_s:.2f}s"
        )

        user_ids = list(range(1, args.users + 1))
        batches = {n: key_batches(user_ids, n, 64, args.seed) for n in args.sizes}
        results: dict[str, dict[int, Summary]] = {
            "raw": {}, "sdk": {}, "sdk+json": {}, "http": {},
        }  # fmt: skip
        gc.collect()
        gc.freeze()  # keep the client's own collector pauses out of the round trips

        load_before = os.getloadavg()
        cpu = CpuMeter(server.proc.pid)
        with cpu.measure("health", args.warmup + args.requests):
            health = Summary.of_ns(time_health(port, args.requests, args.warmup))
        for n in args.sizes:
            with cpu.measure(n, args.warmup + args.requests):
                samples, errors = time_http(port, batches[n], args.requests, args.warmup)
            if errors:
                raise RuntimeError(f"{errors} of {len(samples)} requests with {n} entities failed")
            results["http"][n] = Summary.of_ns(samples)
            out.print(
                f"  HTTP {n:>3} entities: p50 {results['http'][n].p50:.3f} ms, server CPU "
                f"{cpu.server_ms[n]:.3f} ms/request, client CPU {cpu.client_ms[n]:.3f} ms/request"
            )
        load_after = os.getloadavg()

        if server.proc.poll() is not None:
            raise RuntimeError(f"server died during the run; log:\n{server.log_tail()}")
        server.stop()  # free the CPU for the in-process measurements

        import orjson

        import contextkit

        sdk = contextkit.connect(repo, workspace=WORKSPACE)  # a fresh context, as the server has

        def sdk_read(keys):
            return sdk.get_features(SERVICE, entities={"user_id": keys})

        def sdk_read_json(keys):
            return orjson.dumps(sdk.get_features(SERVICE, entities={"user_id": keys}).to_response())

        raw_read, raw_con = raw_sqlite_reader(online_db)
        for n in args.sizes:
            b = batches[n]
            results["raw"][n] = Summary.of_ns(time_calls(raw_read, b, args.requests, args.warmup))
            results["sdk"][n] = Summary.of_ns(time_calls(sdk_read, b, args.requests, args.warmup))
            results["sdk+json"][n] = Summary.of_ns(
                time_calls(sdk_read_json, b, args.requests, args.warmup)
            )
        raw_con.close()
        gc.unfreeze()

        report(out, args, results, health, cpu)
        load = (
            f"load average (1 min) {load_before[0]:.2f} before / {load_after[0]:.2f} after "
            "the HTTP runs"
        )
        if max(load_before[0], load_after[0]) > 1.5:
            load += (
                f" [bold yellow]- other processes shared the {os.cpu_count()} cores: round trips "
                "are inflated; server CPU ms/request is the less load-sensitive number[/]"
            )
        out.print(load)
        if args.json:
            dump = {
                "machine": machine_line(),
                "requests": args.requests,
                "warmup": args.warmup,
                "health": health.__dict__,
                "server_cpu_ms_per_request": {str(k): v for k, v in cpu.server_ms.items()},
                "client_cpu_ms_per_request": {str(k): v for k, v in cpu.client_ms.items()},
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                "results": {
                    k: {str(n): s.__dict__ for n, s in v.items()} for k, v in results.items()
                },
            }
            args.json.write_text(json.dumps(dump, indent=2))
        return 0
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            out.print(f"kept: {repo}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(out, args, results, health: Summary, cpu: CpuMeter) -> None:
    from rich.table import Table

    labels = {
        "raw": "raw sqlite3 SELECT (baseline)",
        "sdk": "SDK ctx.get_features",
        "sdk+json": "SDK + to_response + orjson",
        "http": "HTTP POST /v1/features",
    }
    table = Table(
        title=f"Latency per request in ms: {args.requests:,} sequential requests per row after "
        f"{args.warmup} warm-up. HTTP = client-side round trip (keep-alive); server / client "
        "CPU = user+system CPU per request of the server process / of this client",
        title_justify="left",
    )
    cols = ("path", "entities", "p50", "p99", "mean", "max", "p50 / raw", "p50 / SDK",
            "server CPU", "client CPU")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "path" else "right")
    for n in args.sizes:
        raw, sdk = results["raw"][n], results["sdk"][n]
        for key in ("raw", "sdk", "sdk+json", "http"):
            s = results[key][n]
            table.add_row(
                labels[key], str(n), fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.mean), fmt_ms(s.max),
                ratio(s.p50, raw.p50), ratio(s.p50, sdk.p50) if key in ("sdk+json", "http") else "",
                fmt_ms(cpu.server_ms[n]) if key == "http" else "",
                fmt_ms(cpu.client_ms[n]) if key == "http" else "",
            )  # fmt: skip
        table.add_section()
    table.add_row(
        "HTTP GET /health (stack floor)", "-", fmt_ms(health.p50), fmt_ms(health.p99),
        fmt_ms(health.mean), fmt_ms(health.max), "", "", fmt_ms(cpu.server_ms["health"]),
        fmt_ms(cpu.client_ms["health"]),
    )  # fmt: skip
    out.print(table)

    targets = Table(
        title="Targets (HTTP POST /v1/features, client round trip)", title_justify="left"
    )
    for col in ("metric", "measured ms", "target ms", "measured / target", "result"):
        targets.add_column(col, justify="left" if col == "metric" else "right")
    for (n, stat), bound in TARGETS.items():
        if n not in results["http"]:
            continue
        value = getattr(results["http"][n], stat)
        targets.add_row(
            f"{n} entit{'y' if n == 1 else 'ies'} {stat}", fmt_ms(value), f"< {bound}",
            ratio(value, bound), verdict(value, bound),
        )  # fmt: skip
    out.print(targets)


if __name__ == "__main__":
    sys.exit(main())
