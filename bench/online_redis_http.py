"""`/v1/features` over HTTP on Redis vs SQLite vs a raw redis-py pipeline; 1M rows into Redis.

Starts its own ``redis-server`` (no persistence) on a free port in a temp dir. Then:

* **read**: the quickstart (``--users`` users), materialized into the SQLite online store and
  into Redis. Two servers run the same app (``contextkit.server.app.create_app``, no auth), one on
  each store, each in its own process. For 1, 10 and 100 entities, interleaved rounds time a
  ``POST /v1/features`` of the ``support_assistant`` service (two views) over one keep-alive
  connection to each server, the HTTP floor: the same reads by a raw redis-py pipeline served
  by a one-route FastAPI app on uvicorn (same client, connection and JSON answer, no auth,
  no checks; ``floor_app``), and the limit: that raw pipeline in this process (one MGET per
  view of the same keys, values decoded with orjson), no HTTP. Both overheads of contextkit
  are printed: over the floor (what contextkit adds to serving the read over HTTP) and over
  the in-process pipeline (the issue's target, < 0.3 ms at 1 entity).
* **materialize**: a view of ``--rows`` entities (default 1,000,000; an attribute view of 6
  features) materialized by the core (``Context.materialize``: DuckDB, the offline Parquet, and
  the online stage's bulk write to Redis) in a child process; the online stage is timed on its
  own (rows/s) and the child's peak RSS reported. Then the same job again (``full``: a re-run
  writes the same rows: a new generation, the flip, the old one deleted); the old generation's
  delete is timed on its own too (part of the online stage), with the part of it spent in a
  SCAN of the keyspace (none when it goes by name: see ``RedisOnlineStore._drop_generation``).

    python bench/online_redis_http.py                        # ~3-5 min on 2 busy cores
    python bench/online_redis_http.py --rows 200000 --requests 600   # quicker

Only 127.0.0.1 is contacted; servers are stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import (
    WORKSPACE,
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

keep_bench_folder_off_path()

SERVICE = "support_assistant"
HEADERS = {"Content-Type": "application/json"}
TARGET_OVERHEAD_MS = 0.3
TARGET_ROWS_PER_S = 100_000
BENCH = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--orders", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=2000, help="timed requests per size and path")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows materialized into Redis")
    p.add_argument("--skip-write", action="store_true")
    p.add_argument("--skip-read", action="store_true")
    p.add_argument("--json", type=Path, help="also write the results here")
    # internal: the child roles
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--materialize", help=argparse.SUPPRESS)
    p.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--end", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(BENCH))
    from online_redis import start_redis as start

    return start(workdir)


def open_context(repo: Path, online: str):
    """The repo's Context on the SQLite online store, or on Redis (``redis://``): the store is
    built here (config wiring of backends is separate work)."""
    import contextkit

    ctx = contextkit.connect(repo, workspace=WORKSPACE)
    if online != "sqlite":
        from contextkit.stores.redis_online import RedisOnlineStore

        ctx.runtime.online.close()
        ctx.runtime.online = RedisOnlineStore(online, prefix="bench")
    return ctx


# -- child: a server on one store --------------------------------------------------------------


def serve_child(args: argparse.Namespace) -> None:
    import uvicorn

    from contextkit.server.app import create_app

    if args.floor:
        app = floor_app(args.repo, args.serve)
    else:
        app = create_app(open_context(args.repo, args.serve), auth=False)
    # Keep-alive well past uvicorn's 5 s: a client's connection idles while the other paths run
    # their round (and their warm-up), and a reconnect would be timed.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                timeout_keep_alive=300)  # fmt: skip


class Server:
    def __init__(self, repo: Path, online: str, log: Path, *, floor: bool = False) -> None:
        self.port = free_port()
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, __file__, "--serve", online, "--repo", str(repo),
               "--port", str(self.port), *(["--floor"] if floor else [])]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; log:\n{self.log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                ok = conn.getresponse().status == 200
                conn.close()
                if ok:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not healthy; log:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


class Client:
    """One keep-alive HTTP connection posting /v1/features."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __call__(self, users: list[int]) -> dict:
        body = json.dumps({"workspace": WORKSPACE, "service": SERVICE,
                           "entities": {"user_id": users}}).encode()  # fmt: skip
        self.conn.request("POST", "/v1/features", body, HEADERS)
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/v1/features answered {resp.status}: {payload[:300]!r}")
        return payload


def floor_app(repo: Path, url: str):
    """The HTTP floor: a one-route FastAPI app answering ``POST /v1/features`` with the raw
    pipeline's reads (one MGET per view, no metas, no auth, no checks, no metrics, no
    middleware) in the same JSON as contextkit (asserted before timing). What the service reads
    (key prefixes, columns, types) is looked up once at start."""
    import orjson
    import redis
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    ctx = open_context(repo, url)
    reader = ctx.service_reader(SERVICE)
    reader.read(ctx.online, {"user_id": [1]})  # the store learns the tables' generations
    by_view = {r.view: r for r in reader.reads}
    assert all(r.kind == "batch" for r in reader.reads), "the floor reads batch views only"
    views = []
    for view in reader.output:
        read = by_view[view]
        meta = ctx.online._metas[read.table]
        at = [meta.index[c] for c in read.columns]  # event_timestamp, then the features
        bools = [d == "bool" for d in read.dtypes]
        views.append((meta.data, at, bools))
    [(key, key_type)] = reader.join_keys
    metadata = {"workspace": reader.workspace, "service": reader.service,
                "feature_names": [key, *reader.feature_names],
                "types": [key_type, *reader.feature_types]}  # fmt: skip
    ctx.runtime.close()
    client = redis.Redis.from_url(url)
    app = FastAPI()

    async def features(request: Request) -> Response:
        keys = orjson.loads(await request.body())["entities"][key]
        keys = keys if isinstance(keys, list) else [keys]
        n = len(keys)
        pipe = client.pipeline(transaction=False)
        for prefix, _, _ in views:
            pipe.execute_command("MGET", *[f"{prefix}{k}" for k in keys])
        results = [{"values": keys, "statuses": ["PRESENT"] * n, "event_timestamps": [None] * n}]
        for (_, at, bools), values in zip(views, pipe.execute(), strict=True):
            rows = [None if v is None else orjson.loads(v) for v in values]
            stamps = [None if r is None else iso_micros(r[at[0]]) for r in rows]
            statuses = ["MISSING" if r is None else "PRESENT" for r in rows]
            for i, is_bool in zip(at[1:], bools, strict=True):
                col = [None if r is None else r[i] for r in rows]
                if is_bool:
                    col = [None if v is None else bool(v) for v in col]
                results.append({"values": col, "statuses": statuses, "event_timestamps": stamps})
        body = orjson.dumps({"metadata": metadata, "results": results})
        return Response(body, media_type="application/json")

    # This module's annotations are strings that FastAPI resolves in the module's globals,
    # where the lazily imported names are not: give it the types themselves.
    features.__annotations__ = {"request": Request, "return": Response}
    app.post("/v1/features")(features)
    app.get("/health")(lambda: {"status": "ok"})  # what Server.wait_healthy asks
    return app


def iso_micros(micros: int) -> str:
    """An event time as /v1/features writes it (ISO 8601, UTC, ``Z``)."""
    seconds, us = divmod(micros, 1_000_000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=us)
    return moment.isoformat().replace("+00:00", "Z")


def raw_reader(url: str, repo: Path):
    """A redis-py pipeline doing the service's reads (one MGET per view), values decoded."""
    import orjson
    import redis

    ctx = open_context(repo, url)
    reader = ctx.service_reader(SERVICE)
    reader.read(ctx.online, {"user_id": [1]})  # the store learns the tables' generations
    store = ctx.online
    prefixes = [store._metas[r.table].data for r in reader.reads]
    client = redis.Redis.from_url(url)

    def read(users: list[int]):
        pipe = client.pipeline(transaction=False)
        for prefix in prefixes:
            pipe.mget([f"{prefix}{u}" for u in users])
        return [[None if v is None else orjson.loads(v) for v in vs] for vs in pipe.execute()]

    return read


def time_reads(args, paths: dict, users: int) -> dict[int, dict[str, Summary]]:
    rng = random.Random(7)
    out: dict[int, dict[str, Summary]] = {}
    for size in (1, 10, 100):
        batches = [[rng.randrange(users) for _ in range(size)] for _ in range(64)]
        for fn in paths.values():
            for i in range(args.warmup):
                fn(batches[i % 64])
        samples: dict[str, list[int]] = {name: [] for name in paths}
        rounds = 20
        per_round = max(1, args.requests // rounds)
        for r in range(rounds):  # interleaved: load drift hits every path alike
            order = list(paths.items())
            if r % 2:
                order.reverse()
            for name, fn in order:
                for i in range(per_round):
                    keys = batches[(r * per_round + i) % 64]
                    began = time.perf_counter_ns()
                    fn(keys)
                    samples[name].append(time.perf_counter_ns() - began)
        out[size] = {name: Summary.of_ns(s) for name, s in samples.items()}
    return out


RAW, FLOOR = "raw redis-py pipeline", "HTTP floor: raw pipeline behind FastAPI"


def run_reads(args, url: str, workdir: Path, servers: list, report: dict, out) -> None:
    """The read part: contextkit on SQLite and on Redis, the HTTP floor and the raw pipeline,
    interleaved; the table and both overheads at 1 entity. ``servers`` gets the servers
    started (the caller stops them on errors)."""
    repo = copy_quickstart(workdir / "quickstart")
    end = floor_hour()
    generate_data(repo, users=args.users, orders=args.orders, end=end)
    ctx = apply_quickstart(repo)
    ctx.materialize(end=end)  # SQLite online store (and the offline store)
    redis_ctx = open_context(repo, url)
    redis_ctx.materialize(end=end)  # the same online values, into Redis
    servers += [Server(repo, "sqlite", workdir / "sqlite.log"),
                Server(repo, url, workdir / "redis.log.http"),
                Server(repo, url, workdir / "floor.log.http", floor=True)]  # fmt: skip
    for s in servers:
        s.wait_healthy(timeout=600)  # three servers start at once on a busy machine
    sqlite_http, redis_http, floor_http = (Client(s.port) for s in servers)
    answer = json.loads(redis_http([1, 2, 3]))
    assert json.loads(sqlite_http([1, 2, 3])) == answer == json.loads(floor_http([1, 2, 3]))
    paths = {"HTTP, SQLite": sqlite_http, "HTTP, Redis": redis_http, FLOOR: floor_http,
             RAW: raw_reader(url, repo)}  # fmt: skip
    reads = time_reads(args, paths, args.users)
    report["reads"] = {size: {name: vars(s) for name, s in r.items()} for size, r in reads.items()}
    from rich.table import Table

    table = Table("entities", "path", "p50 ms", "p99 ms", "over raw p50", "over floor p50")
    for size, r in reads.items():
        raw, floor = r[RAW].p50, r[FLOOR].p50
        for name, s in r.items():
            over_raw = f"{s.p50 - raw:+.3f}" if name != RAW else ""
            over_floor = f"{s.p50 - floor:+.3f}" if name not in (RAW, FLOOR) else ""
            table.add_row(str(size), name, fmt_ms(s.p50), fmt_ms(s.p99), over_raw, over_floor)
    out.print(table)
    one = reads[1]
    for label, base in (("the in-process raw pipeline", RAW), ("the HTTP floor", FLOOR)):
        over = one["HTTP, Redis"].p50 - one[base].p50
        verdict = "met" if over < TARGET_OVERHEAD_MS else "MISSED"
        out.print(
            f"1 entity p50: contextkit (HTTP, Redis) over {label}: {over:+.3f} ms "
            f"(< {TARGET_OVERHEAD_MS} ms: {verdict})"
        )
    floor_over_raw = one[FLOOR].p50 - one[RAW].p50
    over_sqlite = one["HTTP, Redis"].p50 - one["HTTP, SQLite"].p50
    out.print(
        f"the HTTP floor itself is {floor_over_raw:+.3f} ms over the raw pipeline; Redis over "
        f"SQLite through the same server {over_sqlite:+.3f} ms"
    )
    for s in servers:
        s.stop()
    servers.clear()


# -- child: materialize one big view into Redis --------------------------------------------------

BIG_DEFS = """
from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

customer = Entity(name="customer", join_keys=["customer_id"])
accounts = FileSource(name="accounts", path="data/accounts.parquet", timestamp_field="ts")

@batch_feature_view(sources=[accounts], entities=[customer], mode="sql", features=[
    Attribute("balance"), Attribute("limit_"), Attribute("segment"), Attribute("region"),
    Attribute("active"), Attribute("score"),
])
def account(accounts):
    return f"SELECT * FROM {accounts}"

accounts_service = ContextService(name="accounts_service", features=[account])
"""


def write_big_repo(root: Path, rows: int, end: datetime) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text("project: bench_big\n")
    (root / "defs.py").write_text(BIG_DEFS)
    rng = np.random.default_rng(1)
    ids = np.arange(rows, dtype=np.int64)
    ts = np.datetime64(end.replace(tzinfo=None), "us") - rng.integers(1, 86_400_000_000, rows)
    table = pa.table({
        "customer_id": ids,
        "balance": rng.random(rows) * 1000,
        "limit_": rng.integers(0, 50_000, rows),
        "segment": pa.array(rng.choice(["retail", "smb", "enterprise"], rows)),
        "region": pa.array(rng.choice(["eu", "us", "apac", "latam"], rows)),
        "active": rng.random(rows) > 0.3,
        "score": rng.random(rows),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    pq.write_table(table, root / "data" / "accounts.parquet")


def hwm_bytes() -> int:
    """This process's peak RSS (VmHWM: per address space, so not the parent's from before exec,
    which ru_maxrss keeps)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_deletes(spent: dict[str, float]) -> None:
    """Add the seconds the Redis store spends deleting a replaced generation to ``spent``:
    ``delete`` in all, ``scan`` of it finding keys by SCAN."""
    from contextkit.stores.redis_online import RedisOnlineStore

    def timed(name: str, method):
        def run(*args, **kwargs):
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - began

        return run

    RedisOnlineStore._drop_generation = timed("delete", RedisOnlineStore._drop_generation)
    RedisOnlineStore._unlink_matching = timed("scan", RedisOnlineStore._unlink_matching)


def materialize_child(args: argparse.Namespace) -> None:
    end = datetime.fromisoformat(args.end)
    ctx = open_context(args.repo, args.materialize)
    stages: dict[str, float] = {}
    current: list = [None, 0.0]
    spent: dict[str, float] = {}
    time_deletes(spent)

    def on_stage(view: str, stage: str) -> None:
        now = time.perf_counter()
        if current[0] is not None:
            stages[current[0]] = stages.get(current[0], 0.0) + now - current[1]
        current[0], current[1] = stage, now

    ctx.specs()
    before = hwm_bytes()  # imports, registry
    results = []
    for full in (False, True):
        stages.clear()
        spent.clear()
        current[0] = None
        began = time.perf_counter()
        [job] = ctx.materialize(["account"], end=end, full=full, on_stage=on_stage)
        total = time.perf_counter() - began
        on_stage("account", "done")
        online_s = stages.get("online", float("nan"))
        results.append(
            {"rows_online": job.rows_online, "total_s": total, "online_s": online_s,
             "stages": dict(stages), "delete_s": spent.get("delete", 0.0),
             "delete_scan_s": spent.get("scan", 0.0)}
        )  # fmt: skip
    peak = hwm_bytes()
    print(json.dumps({"runs": results, "peak_rss": peak, "rss_before": before}))


def run_materialize(args, url: str, workdir: Path) -> dict:
    repo = workdir / "big"
    end = floor_hour()
    write_big_repo(repo, args.rows, end)
    import contextkit

    ctx = contextkit.connect(repo, workspace=WORKSPACE)
    ctx.create_workspace(WORKSPACE, live=True)
    ctx.apply(ctx.plan(repo))
    ctx.runtime.close()
    done = subprocess.run(
        [sys.executable, __file__, "--materialize", url, "--repo", str(repo),
         "--end", end.isoformat()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"materialize child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        return serve_child(args)
    if args.materialize:
        return materialize_child(args)
    out = console()
    out.print(machine_line())
    workdir = Path(tempfile.mkdtemp(prefix="ck-bench-redis-http-"))
    redis_proc, url = start_redis(workdir)
    servers: list[Server] = []
    report: dict = {"machine": machine_line(), "load_before": load()}
    try:
        if not args.skip_read:
            run_reads(args, url, workdir, servers, report, out)
        if not args.skip_write:
            result = run_materialize(args, url, workdir)
            report["materialize"] = result
            for label, run in zip(("first run", "re-run (full)"), result["runs"], strict=True):
                rate = run["rows_online"] / run["online_s"]
                out.print(
                    f"materialize {run['rows_online']:,} rows into Redis, {label}: job "
                    f"{run['total_s']:.1f} s, online stage {run['online_s']:.1f} s = "
                    f"{rate:,.0f} rows/s (target >= {TARGET_ROWS_PER_S:,}: "
                    f"{'met' if rate >= TARGET_ROWS_PER_S else 'MISSED'})"
                )
                if run["delete_s"]:
                    write_rate = run["rows_online"] / (run["online_s"] - run["delete_s"])
                    out.print(
                        f"  of which the old generation's delete {run['delete_s']:.2f} s "
                        f"(SCAN of the keyspace: {run['delete_scan_s']:.2f} s); the online "
                        f"stage without it {write_rate:,.0f} rows/s"
                    )
            peak = result["peak_rss"] / 2**20
            before = result["rss_before"] / 2**20
            out.print(
                f"peak RSS of the materializing process: {peak:.0f} MiB "
                f"({before:.0f} MiB before the first job: imports, registry)"
            )
        report["load_after"] = load()
        out.print(f"load (1/5 min) before {report['load_before']}, after {report['load_after']}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
    finally:
        for s in servers:
            s.stop()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
