"""Sizing Redis for the online store: memory per 1M entities and write rate, per view shape.

Starts its own ``redis-server`` (no persistence) on a free port in a temp dir, unless ``--url``
names one (then a throwaway key prefix is used and deleted). For each shape it measures Redis's
``used_memory`` before and after writing ``--entities`` entities with the store's own calls,
and the rows written per second:

* ``1 float``: an attribute view with one float feature (key, event time, value);
* ``1 float, ttl``: the same with a ttl (each key carries an expiry);
* ``7 columns``: a quickstart-like view (key, event time, 3 ints, 3 floats, 1 short string);
* ``tiles``: an aggregate stream view's tiles, ``--tiles`` hourly tiles per entity with count,
  sum, min, max and last (written through an ingest-style transaction; scaled to 1M entities).

Memory is linear in the entities (one key or one hash per entity), so a run with fewer entities
still gives the per-1M figure; the table prints both the measured and the per-1M numbers.

    python bench/redis_sizing.py                        # 1M entities per shape, ~2-4 min
    python bench/redis_sizing.py --entities 200000      # quicker

Only 127.0.0.1 is contacted; the server is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from _common import console, keep_bench_folder_off_path, machine_line
from online_redis import start_redis

keep_bench_folder_off_path()

T0 = 1_700_000_000_000_000  # event times, microseconds
HOUR = 3_600_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="an existing Redis (default: start a private redis-server)")
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--tile-entities", type=int, default=10_000, help="entities for `tiles`")
    p.add_argument("--tiles", type=int, default=24, help="tiles per entity for `tiles`")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    return p.parse_args(argv)


def used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def shapes(n: int):
    """(name, keys, columns, rows, ttl) of the materialized shapes."""
    cats = ["books", "games", "garden", "tools", "music"]
    one = [("event_timestamp", "timestamp"), ("amount", "float64")]
    seven = [("event_timestamp", "timestamp"), ("orders", "int64"), ("days", "int64"),
             ("tier", "int64"), ("spend", "float64"), ("avg", "float64"), ("score", "float64"),
             ("category", "string")]  # fmt: skip
    key = [("user_id", "int64")]
    now = int(time.time() * 1e6)
    yield "1 float", key, one, ((u, now, u * 0.5) for u in range(n)), None
    yield "1 float, ttl", key, one, ((u, now, u * 0.5) for u in range(n)), 30 * 86_400
    yield (
        "7 columns",
        key,
        seven,
        (
            (u, now, u % 97, u % 31, u % 5, u * 0.5, u * 1.25, (u % 100) / 3, cats[u % 5])
            for u in range(n)
        ),
        None,
    )


def write_tiles(store, table: str, entities: int, tiles: int) -> int:
    """Tiles of an aggregate stream view (count, sum, min, max, last of one float), written in
    transactions of 2,000 rows as ingest does; returns the rows written."""
    keys = [("user_id", "int64"), ("tile", "int64")]
    cols = [(n, "int64") for n in ("__n", "__max_ts", "price__n")]
    cols += [(f"price__{n}", "float64") for n in ("sum", "min", "max", "last")]
    cols += [("price__last_ts", "int64"), ("price__last_seq", "int64")]
    names = [n for n, _ in keys + cols]
    batch: list[list] = []
    written = 0
    base = T0 - T0 % HOUR

    def flush(rows: list[list]) -> None:
        def work(w):
            w.ensure_table(table, keys, cols)
            w.upsert(table, names, rows)

        store.transact(work)

    for u in range(entities):
        for t in range(tiles):
            tile = base + t * HOUR
            batch.append([u, tile, 3, tile + 5, 3, 30.0, 5.0, 15.0, 12.0, tile + 5, u * tiles + t])
            if len(batch) == 2_000:
                flush(batch)
                written += len(batch)
                batch = []
    if batch:
        flush(batch)
        written += len(batch)
    return written


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import redis
    from rich.table import Table

    from contextkit.stores.redis_online import RedisOnlineStore

    out = console()
    out.print(machine_line())
    workdir = Path(tempfile.mkdtemp(prefix="ck-redis-sizing-"))
    proc, url = (None, args.url) if args.url else start_redis(workdir)
    prefix = f"sizing:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    results = []
    try:
        store = RedisOnlineStore(url, prefix=prefix)
        for name, keys, cols, rows, ttl in shapes(args.entities):
            load = os.getloadavg()[0]
            before = used_memory(client)
            began = time.perf_counter()
            n = store.replace_table(
                f"w__{name.replace(' ', '_')}", keys, cols, rows, ttl_seconds=ttl
            )
            seconds = time.perf_counter() - began
            grown = used_memory(client) - before
            results.append({"shape": name, "entities": n, "rows": n, "bytes": grown,
                            "seconds": seconds, "load": [load, os.getloadavg()[0]]})  # fmt: skip
        load = os.getloadavg()[0]
        before = used_memory(client)
        began = time.perf_counter()
        rows = write_tiles(store, "w__tiles", args.tile_entities, args.tiles)
        seconds = time.perf_counter() - began
        results.append({"shape": f"tiles ({args.tiles}/entity)", "entities": args.tile_entities,
                        "rows": rows, "bytes": used_memory(client) - before, "seconds": seconds,
                        "load": [load, os.getloadavg()[0]]})  # fmt: skip
        store.close()
    finally:
        keys = list(client.scan_iter(match=prefix + ":*", count=10_000))
        for i in range(0, len(keys), 10_000):
            client.unlink(*keys[i : i + 10_000])
        client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    table = Table(title="Redis memory and write rate per view shape")
    for column in ("shape", "entities", "Redis memory", "bytes/entity", "MiB per 1M entities",
                   "rows/s", "load (1 min) before/after"):  # fmt: skip
        table.add_column(column)
    for r in results:
        per = r["bytes"] / r["entities"]
        table.add_row(
            r["shape"], f"{r['entities']:,}", f"{r['bytes'] / 2**20:,.1f} MiB", f"{per:,.0f}",
            f"{per * 1e6 / 2**20:,.0f}", f"{r['rows'] / r['seconds']:,.0f}",
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f}",
        )  # fmt: skip
    out.print(table)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
