"""The serving cache: ``POST /v1/features`` answered from the cache (hit) vs read from the online
store (miss), and the cache's memory per 100k cached entities.

A generated repo (``--users`` users, one feature view of two aggregates) is applied and
materialized to a SQLite online store in a temp dir; two services read the same view, one with
``cache=timedelta(hours=1)``. Requests go through the whole ASGI app (body parsing, routing,
metrics middleware; no network), in interleaved rounds so load on a shared machine hits every
path alike:

- ``hit``: the cached service, keys already in the cache;
- ``miss``: the cached service, keys never asked before (store read, then the entries kept);
- ``bypass``: the cached service with ``"cache": false`` (store read, cache untouched);
- ``uncached``: the service without ``cache=`` (the path every service took before the cache).

Memory: the traced allocations (``tracemalloc``) of filling an empty cache with ``--users``
entities, 1000 per ``ctx.get_features`` call, scaled to 100k entities::

    python bench/serving_cache.py                 # 100k users, 10 rounds x 200 requests, 1 and 20
    python bench/serving_cache.py --rounds 3      # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFS = """\
from datetime import timedelta
from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[
    Aggregate(column="amount", function="sum", time_window=timedelta(days=7)),
    Aggregate(column="amount", function="count", time_window=timedelta(days=7)),
])
def spend(events):
    return f"SELECT user_id, amount, ts FROM {events}"

cached = ContextService(name="cached", features=[spend], cache=timedelta(hours=1))
uncached = ContextService(name="uncached", features=[spend])
"""
CONFIG = """\
project: bench_cache
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""
END = datetime(2024, 6, 1, tzinfo=UTC)
# This script's folder is first on sys.path when run as a file; a script there named like a
# package the server imports would shadow it (as bench/mcp.py did before its rename). Nothing
# here imports from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]


def build_repo(root: Path, users: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import contextkit

    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(CONFIG)
    (root / "defs.py").write_text(DEFS)
    ids = list(range(1, users + 1))
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(ids, pa.int64()),
                "amount": pa.array([float(i % 97) for i in ids], pa.float64()),
                "ts": pa.array(
                    [END - timedelta(hours=1 + i % 48) for i in ids], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        root / "data" / "events.parquet",
    )
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=END)
    return ctx


def memory_per_100k(root: Path, users: int) -> tuple[float, int]:
    import contextkit
    from contextkit.retrieval.cache import serving_cache

    ctx = contextkit.connect(root, "prod")
    ctx.get_features("uncached", {"user_id": [1]})  # readers and specs built before tracing
    cache = serving_cache(ctx.runtime)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for start in range(1, users + 1, 1000):
        ctx.get_features("cached", {"user_id": list(range(start, min(start + 1000, users + 1)))})
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    entries = len(cache)
    ctx.close()
    return used * 100_000 / entries / 2**20, entries


async def time_requests(client, bodies: list[bytes]) -> list[float]:
    out = []
    for body in bodies:
        began = time.perf_counter()
        response = await client.post(
            "/v1/features", content=body, headers={"content-type": "application/json"}
        )
        out.append(time.perf_counter() - began)
        assert response.status_code == 200, response.text
    return out


def body(service: str, users: list[int], cache: bool = True) -> bytes:
    import orjson

    data = {"service": service, "entities": {"user_id": users}}
    if not cache:
        data["cache"] = False
    return orjson.dumps(data)


async def latency(root: Path, users: int, rounds: int, n: int, batch: int) -> dict[str, list]:
    import httpx

    import contextkit
    from contextkit.server.app import create_app

    ctx = contextkit.connect(root, "prod")
    app = create_app(ctx, auth=False)
    transport = httpx.ASGITransport(app=app)
    hot = list(range(1, 1 + 200 * batch))  # the keys hits ask for
    fresh = iter(range(1 + 200 * batch, users + 1))  # keys asked once each (misses)
    out: dict[str, list[float]] = {"hit": [], "miss": [], "bypass": [], "uncached": []}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        warm = [body("cached", hot[i : i + batch]) for i in range(0, len(hot), batch)]
        await time_requests(client, warm)  # fills the hot keys
        await time_requests(client, [body("uncached", hot[:batch])] * 50)
        for _ in range(rounds):
            chunks = [hot[(i * batch) % len(hot) :][:batch] for i in range(n)]
            paths = {
                "hit": [body("cached", c) for c in chunks],
                "miss": [body("cached", [next(fresh) for _ in range(batch)]) for _ in range(n)],
                "bypass": [body("cached", c, cache=False) for c in chunks],
                "uncached": [body("uncached", c) for c in chunks],
            }
            for name, bodies in paths.items():
                out[name] += await time_requests(client, bodies)
    ctx.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200, help="per path and round")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 20], help="entities/request")
    args = parser.parse_args()
    os.environ.setdefault("CONTEXTKIT_SERVING_CACHE_ENTRIES", str(2 * args.users))
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        began = time.perf_counter()
        build_repo(root, args.users).close()
        print(
            f"# repo of {args.users} users applied and materialized in "
            f"{time.perf_counter() - began:.1f} s"
        )
        mib, entries = memory_per_100k(root, args.users)
        print(f"memory: {mib:.1f} MiB per 100k cached entities ({entries} entries, 2 features)")
        for batch in args.batch:
            needed = 200 * batch + args.rounds * args.requests * batch
            if needed > args.users:
                print(f"batch {batch}: skipped (needs {needed} users for fresh misses)")
                continue
            times = asyncio.run(latency(root, args.users, args.rounds, args.requests, batch))
            print(
                f"\n/v1/features, {batch} entit{'y' if batch == 1 else 'ies'} per request, "
                f"{args.rounds} x {args.requests} requests per path"
            )
            print(f"{'path':<10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
            for name, values in times.items():
                print(
                    f"{name:<10} {pct(values, 0.5):8.3f} {pct(values, 0.99):8.3f} "
                    f"{statistics.fmean(values) * 1000:8.3f}"
                )
    print(f"# load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
