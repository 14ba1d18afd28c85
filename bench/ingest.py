"""Ingest throughput, freshness, and the read cost of a tiled 30-day aggregate.

1. **Sustained ingest over HTTP**: a repo with a push source and two stream views (an attribute
   view and a 10-minute-tile aggregate view) is served by ``contextkit serve --no-auth`` (one
   uvicorn worker) on 127.0.0.1. A bounded load loop (one keep-alive connection, sequential
   requests, so at most one request in flight) posts batches of 1, 100 and 1,000 records for a few
   seconds each and reports records/s. Baseline: the same records written in-process with
   ``contextkit.compute.streaming.ingest_records`` (no HTTP), to show what HTTP and JSON cost.
2. **Freshness** (ingest -> readable): for each of N single-record ingests, the time from sending
   the ingest to the first ``POST /v1/features`` answer that contains the new value (p50/p99).
3. **Read cost of a 30-day sliding aggregate** with 1,000,000 events for one key (1-hour tiles, so
   at most 720 tiles): p50/p99 of ``ServiceReader.read`` in-process, next to the same read with
   10,000 events, to show the cost does not grow with the number of events.

    python bench/ingest.py                    # defaults (a few minutes on 2 cores)
    python bench/ingest.py --seconds 3 --events 200000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import Summary, console, fmt_ms, machine_line, ratio, verdict

CLI = str(Path(sys.executable).parent / "contextkit")

DEFS = """\
from contextkit import (Aggregate, Attribute, ContextService, Entity, Field, Float64, Int64,
                        PushSource, StreamFeatureView, Timestamp)

user = Entity(name="user", join_keys=["user_id"])
clicks = PushSource(
    name="clicks",
    schema=[Field("user_id", Int64), Field("item", Int64), Field("price", Float64),
            Field("ts", Timestamp)],
    timestamp_field="ts",
)
last_click = StreamFeatureView(name="last_click", source=clicks, entities=[user],
                               features=[Attribute("item"), Attribute("price")])
click_stats = StreamFeatureView(
    name="click_stats", source=clicks, entities=[user],
    features=[Aggregate("item", "count", "1h"), Aggregate("price", "sum", "1d"),
              Aggregate("price", "max", "30d")],
    aggregation_interval="10m",
)
month = StreamFeatureView(
    name="month", source=clicks, entities=[user],
    features=[Aggregate("price", "sum", "30d"), Aggregate("item", "count", "30d"),
              Aggregate("price", "mean", "30d")],
    aggregation_interval="1h",
)
shopper = ContextService(name="shopper", features=[last_click, click_stats])
monthly = ContextService(name="monthly", features=[month])
"""


def build_repo(root: Path):
    import contextkit

    root.mkdir(parents=True)
    (root / "contextkit.yaml").write_text("project: ingest_bench\n")
    (root / "defs.py").write_text(textwrap.dedent(DEFS))
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return ctx


def records(n: int, users: int, start: int = 0) -> list[dict]:
    now = datetime.now(UTC)
    out = []
    for i in range(start, start + n):
        ts = now - timedelta(seconds=random.randint(0, 3600))
        out.append(
            {"user_id": i % users, "item": i % 997, "price": float(i % 50), "ts": ts.isoformat()}
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [CLI, "serve", "--no-auth", "--port", str(port), "--workspace", "prod"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(600):
        try:
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            con.request("GET", "/health")
            if con.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("the server did not start")


def post(con: http.client.HTTPConnection, path: str, body: dict) -> dict:
    data = json.dumps(body)
    con.request("POST", path, body=data, headers={"content-type": "application/json"})
    response = con.getresponse()
    payload = json.loads(response.read())
    if response.status != 200:
        raise SystemExit(f"{path} answered {response.status}: {payload}")
    return payload


def sustained(port: int, batch: int, seconds: float, users: int) -> float:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    payloads = [
        json.dumps({"source": "clicks", "records": records(batch, users, k * batch)})
        for k in range(20)
    ]
    sent, k = 0, 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        con.request(
            "POST",
            "/v1/ingest",
            body=payloads[k % 20],
            headers={"content-type": "application/json"},
        )
        response = con.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"ingest answered {response.status}")
        sent += batch
        k += 1
    return sent / (time.perf_counter() - began)


def in_process(ctx, batch: int, seconds: float, users: int) -> float:
    from contextkit.compute.streaming import ingest_records

    batches = [records(batch, users, k * batch) for k in range(20)]
    sent, k = 0, 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        ingest_records(ctx, "clicks", batches[k % 20])
        sent += batch
        k += 1
    return sent / (time.perf_counter() - began)


def freshness(port: int, n: int) -> Summary:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples = []
    for i in range(n):
        user = 10_000_000 + i  # a fresh key each time: its value is new
        item = 1000 + i
        record = {"user_id": user, "item": item, "price": 1.0, "ts": datetime.now(UTC).isoformat()}
        began = time.perf_counter_ns()
        post(con, "/v1/ingest", {"source": "clicks", "records": [record]})
        while True:
            body = post(
                con, "/v1/features", {"service": "shopper", "entities": {"user_id": [user]}}
            )
            names = body["metadata"]["feature_names"]
            if body["results"][names.index("last_click.item")]["values"][0] == item:
                break
        samples.append(time.perf_counter_ns() - began)
    return Summary.of_ns(samples)


def read_cost(ctx, events: int, reads: int) -> Summary:
    """ServiceReader.read of a 30-day aggregate for one key holding ``events`` events."""
    from contextkit.compute.streaming import ingest_records

    user = 42_000_000 + events
    now = datetime.now(UTC)
    step = timedelta(days=30) / events
    batch = []
    for i in range(events):
        ts = now - step * i
        batch.append({"user_id": user, "item": i % 1000, "price": 1.0, "ts": ts.isoformat()})
        if len(batch) == 10_000:
            ingest_records(ctx, "clicks", batch, now=now)
            batch = []
    if batch:
        ingest_records(ctx, "clicks", batch, now=now)
    reader = ctx.service_reader("monthly")
    got = reader.read(ctx.online, {"user_id": [user]}).to_dict()
    assert got["month.item_count_30d"][0] > 0.9 * events, got  # the tiles hold the events
    samples = []
    for _ in range(reads):
        began = time.perf_counter_ns()
        reader.read(ctx.online, {"user_id": [user]})
        samples.append(time.perf_counter_ns() - began)
    return Summary.of_ns(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per batch size")
    parser.add_argument("--fresh", type=int, default=500, help="freshness samples")
    parser.add_argument("--events", type=int, default=1_000_000, help="events for the read cost")
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    out = console()
    out.print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        ctx = build_repo(root)
        port = free_port()
        server = start_server(root, port)
        try:
            rows = []
            for batch in (1, 100, 1000):
                http_rate = sustained(port, batch, args.seconds, users=5000)
                local = in_process(ctx, batch, args.seconds, users=5000)
                rows.append((batch, http_rate, local))
            fresh = freshness(port, args.fresh)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        small = read_cost(ctx, 10_000, args.reads)
        big = read_cost(ctx, args.events, args.reads)

    from rich.table import Table

    table = Table(title="Sustained ingest (records/s, one connection, sequential requests)")
    for col in ("batch", "HTTP /v1/ingest", "in-process ingest_records", "HTTP / in-process"):
        table.add_column(col, justify="right")
    for batch, http_rate, local in rows:
        table.add_row(str(batch), f"{http_rate:,.0f}", f"{local:,.0f}", ratio(http_rate, local))
    out.print(table)
    hundred = next(r for r in rows if r[0] == 100)[1]
    out.print(
        f"target >= 5,000 records/s in batches of 100: {hundred:,.0f} "
        + ("[green]met[/]" if hundred >= 5000 else "[bold red]MISSED[/]")
    )
    table = Table(
        title=f"Freshness: ingest sent -> value readable over HTTP ({fresh.count} samples)"
    )
    for col in ("p50 ms", "p99 ms", "max ms", "target p99"):
        table.add_column(col, justify="right")
    table.add_row(
        fmt_ms(fresh.p50), fmt_ms(fresh.p99), fmt_ms(fresh.max), "< 50 ms " + verdict(fresh.p99, 50)
    )
    out.print(table)
    table = Table(title="Read of a 30-day aggregate (1-hour tiles) for one key, in-process")
    for col in ("events for the key", "p50 ms", "p99 ms", "vs 10k events", "target p50"):
        table.add_column(col, justify="right")
    table.add_row("10,000", fmt_ms(small.p50), fmt_ms(small.p99), "1.00x", "")
    table.add_row(
        f"{args.events:,}",
        fmt_ms(big.p50),
        fmt_ms(big.p99),
        ratio(big.p50, small.p50),
        "< 1 ms " + verdict(big.p50, 1.0),
    )
    out.print(table)


if __name__ == "__main__":
    main()
