"""Search latency: ``POST /v1/search`` on a real server vs. the store layer vs. a raw LanceDB
query on the same table, at 20,000 and 200,000 chunks; recall@10 of the ANN index vs. exact.

Builds a repo in a temp dir with one embedding view per size (``docs_<n>``: product descriptions
from the quickstart generator, metadata name/category/brand/price/sku, model ``minilm``), applies
it to a live ``prod`` workspace and writes each view's vector table **without the real model**:
the chunks go through the real pipeline (``plan_encode``) and the store
(``LanceVectorStore.apply_changes`` + ``ensure_indexes``, the same calls ``materialize`` makes),
but their vectors come from contextkit's ``HashEncoder``: seeded random unit vectors, 384
dimensions (encoding 200k texts with MiniLM would take ~2 h here). The table layout is the one
MiniLM would produce, so the server searches it as a MiniLM view.

Then starts ``contextkit serve`` (one uvicorn worker, ``--no-auth``) on a free port on 127.0.0.1
and times, in interleaved rounds, per size:

* raw LanceDB (baseline): ``lancedb.connect(path).open_table(t).search(q).distance_type("cosine")
  .limit(k).select([...]).to_arrow()``, in this process, the ANN index used when there is one;
* store layer: ``LanceVectorStore.search(t, vector=q, top_k=k)`` in this process (up to 20,000 rows
  it answers from its exact numpy copy, above that from LanceDB and the ANN index);
* HTTP ``POST /v1/search`` with a ready ``vector`` in the body (no query encoding);
* HTTP ``POST /v1/search`` with a ``query`` text, encoded by MiniLM in the server (one row);
* HTTP ``GET /health``: the HTTP stack's floor.

Recall@10: ``--recall-queries`` random unit queries; exact top 10 by brute force in numpy over the
stored vectors vs. the top 10 of the raw LanceDB query and of the store. Random unit vectors in
384 dimensions are the hardest case for an ANN index (no cluster structure to exploit);
``--data clustered`` writes vectors near 1,000 random centres instead (noise 0.6 per dimension)
and draws the queries the same way, closer to the structure of real embeddings.

    python bench/search.py                          # ~6-12 min on 2 cores (HNSW build at 200k)
    python bench/search.py --sizes 20000 --requests 300   # ~1-2 min

Targets (issue 4): server overhead (HTTP p50 - raw LanceDB p50) under 1 ms; recall@10 >= 0.95 at
200k. Only 127.0.0.1 is contacted; the server is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import (
    WORKSPACE,
    Summary,
    console,
    fmt_ms,
    keep_bench_folder_off_path,
    load_generator,
    load_line,
    machine_line,
    ratio,
)
from online import Server, free_port

keep_bench_folder_off_path()

DIM = 384
OVERHEAD_TARGET_MS = 1.0
RECALL_TARGET = 0.95
CLUSTERS, CLUSTER_NOISE = 1000, 0.6  # --data clustered: centres, noise per dimension
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
METADATA = ["name", "category", "brand", "price", "sku"]
QUESTIONS = [
    "waterproof hiking boots for muddy trails", "noise-cancelling earbuds for the commute",
    "non-stick frying pan that works on induction", "a gift book for a keen gardener",
    "lightweight running shoes with a cushioned midsole", "portable charger with USB-C",
    "cast iron skillet for searing steaks", "tent for fast hiking and backpacking",
    "kids toy that is safe for toddlers", "moisturiser for sensitive skin",
    "garden hose that does not kink", "ergonomic office chair for long days",
    "yoga mat with good grip", "mechanical keyboard for programmers",
    "coffee grinder with precise settings", "winter boots that keep feet warm",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20000,200000", help="chunks per table, comma separated")
    p.add_argument("--requests", type=int, default=1000, help="timed requests per path and size")
    p.add_argument("--warmup", type=int, default=100, help="untimed requests per path first")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the requests span")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--recall-queries", type=int, default=200)
    p.add_argument(
        "--data",
        choices=("random", "clustered"),
        default="random",
        help="vectors: random unit (HashEncoder) or clustered around 1,000 centres",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--server-timeout", type=float, default=120.0, help="seconds to wait for /health"
    )
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repo (path is printed)")
    args = p.parse_args(argv)
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not args.sizes or min(args.sizes) < 100 or args.requests < args.rounds or args.rounds < 1:
        p.error("sizes >= 100, --rounds >= 1 and --requests >= --rounds are required")
    if not 1 <= args.top_k <= 100 or args.recall_queries < 1:
        p.error("--top-k in 1..100 and --recall-queries >= 1 are required")
    return args


def view_name(n: int) -> str:
    return f"docs_{n}"


def table_name(n: int) -> str:
    return f"{WORKSPACE}__{view_name(n)}"


# -- the repo and its vector tables ---------------------------------------------------------------
def write_repo(root: Path, sizes: list[int], seed: int) -> dict[int, Path]:
    import pyarrow.parquet as pq

    data = root / "data"
    data.mkdir(parents=True)
    load_generator().generate(
        root / "gen", users=1, products=max(sizes), orders=1, articles=1, seed=seed
    )
    products = pq.read_table(root / "gen" / "products.parquet")
    shutil.rmtree(root / "gen")
    files = {}
    defs = [
        "from contextkit import EmbeddingView, Entity, FileSource",
        'product = Entity(name="product", join_keys=["product_id"])',
    ]
    for n in sizes:
        files[n] = data / f"products_{n}.parquet"
        pq.write_table(products.slice(0, n), files[n])
        defs.append(
            textwrap.dedent(
                f"""\
                products_{n} = FileSource(name="products_{n}", path="data/products_{n}.parquet",
                                          timestamp_field="updated_at")
                {view_name(n)} = EmbeddingView(name="{view_name(n)}", source=products_{n},
                    entities=[product], text="description", model="minilm", metadata={METADATA!r})
                """
            )
        )
    (root / "contextkit.yaml").write_text("project: bench_search\n")
    (root / "defs.py").write_text("\n".join(defs) + "\n")
    return files


class ClusteredEncoder:
    """``--data clustered``: each text's vector lies near one of ``centres`` random directions
    (picked by a hash of the text), plus Gaussian noise: a stand-in for the cluster structure of
    real embeddings. As meaningless as ``HashEncoder``; implements the same Encoder protocol."""

    def __init__(self, name: str, centres, noise: float = CLUSTER_NOISE) -> None:
        self.name, self.dimension, self.batch_size, self.normalize = name, DIM, 2048, True
        self.centres, self.noise = centres, noise

    def encode(self, texts: list[str]):
        import hashlib

        import numpy as np

        out = np.empty((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            noise = np.random.default_rng(seed).standard_normal(DIM)
            out[i] = self.centres[seed % len(self.centres)] + self.noise * noise
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def centres(seed: int):
    import numpy as np

    return np.random.default_rng(seed + 1).standard_normal((CLUSTERS, DIM)).astype(np.float32)


def build_table(ctx, n: int, path: Path, data: str, seed: int) -> dict[str, float]:
    """The view's table through the pipeline and the store, with seeded synthetic vectors."""
    import pyarrow.parquet as pq

    from contextkit.embeddings import HashEncoder, plan_encode
    from contextkit.embeddings.encoders import PACKAGED_MODEL_NAME

    # The packaged model's name, so the content hashes are the ones a MiniLM run would write.
    if data == "clustered":
        encoder = ClusteredEncoder(PACKAGED_MODEL_NAME, centres(seed))
    else:
        encoder = HashEncoder(dimension=DIM, name=PACKAGED_MODEL_NAME, batch_size=2048)
    rows = pq.read_table(path, columns=["product_id", "description", *METADATA])
    t0 = time.perf_counter()
    store = ctx.vectors
    with plan_encode(
        rows.to_batches(4096), encoder=encoder, key_columns=["product_id"],
        text_column="description", metadata_columns=METADATA,
    ) as plan:  # fmt: skip
        store.apply_changes(
            table_name(n), plan.batches(), plan.delete_ids, dim=DIM, key_columns=["product_id"]
        )
    t1 = time.perf_counter()
    report = store.ensure_indexes(table_name(n))
    t2 = time.perf_counter()
    return {"write_s": t1 - t0, "index_s": t2 - t1, "indexes": report.created}


# -- measurements ---------------------------------------------------------------------------------
def query_vectors(rng, count: int, data: str, seed: int):
    """Random unit queries; with ``--data clustered``, drawn like the documents (near a centre)."""
    import numpy as np

    q = rng.standard_normal((count, DIM)).astype(np.float32)
    if data == "clustered":
        c = centres(seed)
        q = c[rng.integers(0, len(c), count)] + CLUSTER_NOISE * q
    return q / np.linalg.norm(q, axis=1, keepdims=True)


class Http:
    """One keep-alive connection (TCP_NODELAY); ``post`` returns the body, checking the status."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        self.conn.request(method, path, body, HEADERS if body is not None else {})
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path} answered {resp.status}: {payload[:500]!r}")
        return payload

    def close(self) -> None:
        self.conn.close()


def recall_at_k(found: list[list[str]], exact: list[list[str]], k: int) -> float:
    return sum(len(set(f[:k]) & set(e[:k])) for f, e in zip(found, exact, strict=True)) / (
        k * len(exact)
    )


def measure_recall(tbl, store, n: int, queries, k: int) -> dict[str, float]:
    import numpy as np

    data = tbl.to_arrow().select(["id", "vector"])
    ids = np.asarray(data.column("id").to_pylist(), dtype=object)
    flat = data.column("vector").combine_chunks().flatten().to_numpy()
    matrix = flat.reshape(len(ids), DIM).astype(np.float32, copy=False)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    exact = []
    for start in range(0, len(queries), 50):
        sims = queries[start : start + 50] @ matrix.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        for row, cand in zip(sims, top, strict=True):
            exact.append(list(ids[cand[np.argsort(-row[cand])]]))
    raw = [
        tbl.search(q, vector_column_name="vector").distance_type("cosine").limit(k)
        .select(["id", "_distance"]).to_arrow().column("id").to_pylist()
        for q in queries
    ]  # fmt: skip
    via_store = [[h["id"] for h in store.search(table_name(n), vector=q, top_k=k)] for q in queries]
    del matrix, flat, data
    return {"raw": recall_at_k(raw, exact, k), "store": recall_at_k(via_store, exact, k)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = console()
    out.print(f"[bold]contextkit bench: search[/]  {machine_line()}")
    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-search-"))
    server: Server | None = None
    try:
        import lancedb
        import numpy as np
        import psutil

        import contextkit
        from contextkit.stores.vector import LanceVectorStore

        root = tmp / "repo"
        out.print(f"generating {max(args.sizes):,} product descriptions ...")
        files = write_repo(root, args.sizes, args.seed)
        ctx = contextkit.connect(root, workspace=WORKSPACE)
        ctx.create_workspace(WORKSPACE, live=True)
        ctx.apply(ctx.plan(root))
        builds = {}
        for n in args.sizes:
            out.print(f"writing {n:,} chunks ({args.data} vectors) and building indexes ...")
            builds[n] = build_table(ctx, n, files[n], args.data, args.seed)
            out.print(
                f"  write {builds[n]['write_s']:.1f}s, ensure_indexes {builds[n]['index_s']:.1f}s "
                f"({', '.join(builds[n]['indexes']) or 'none'})"
            )
        ctx.close()

        port = free_port()
        server = Server(root, port, tmp / "server.log")
        out.print(f"server (pid {server.proc.pid}) starting on 127.0.0.1:{port} ...")
        startup = server.wait_healthy(args.server_timeout)
        out.print(f"  healthy after {startup:.1f}s (MiniLM and the tables warmed)")
        server_proc = psutil.Process(server.proc.pid)

        vector_path = root / ".contextkit" / "vectors"
        db = lancedb.connect(str(vector_path))
        store = LanceVectorStore(vector_path)
        rng = np.random.default_rng(args.seed)
        k = args.top_k
        results: dict[int, dict[str, Summary]] = {}
        server_ms: dict[tuple[int, str], float] = {}  # CPU ms per call doing the search
        client_ms: dict[tuple[int, str], float] = {}  # HTTP rows: this client's CPU ms per call
        recall: dict[int, dict[str, float]] = {}
        index_kind: dict[int, str] = {}
        store_path: dict[int, str] = {}
        load_before = os.getloadavg()
        for n in args.sizes:
            tbl = db.open_table(table_name(n))
            indices = tbl.list_indices()
            index_kind[n] = ", ".join(f"{i.index_type}({','.join(i.columns)})" for i in indices)
            has_ann = any(tuple(i.columns) == ("vector",) for i in indices)
            store_path[n] = (
                "exact numpy copy"
                if n <= store.exact_search_max_rows
                else ("LanceDB + ANN index" if has_ann else "LanceDB, flat")
            )
            columns = [f.name for f in tbl.schema if f.name not in ("vector", "content_hash",
                                                                    "row_hash")]  # fmt: skip
            queries = query_vectors(rng, 64, args.data, args.seed)
            store.warm(table_name(n))
            bodies = [
                json.dumps(
                    {"workspace": WORKSPACE, "view": view_name(n), "vector": q.tolist(), "top_k": k}
                ).encode()
                for q in queries
            ]
            text_bodies = [
                json.dumps(
                    {"workspace": WORKSPACE, "view": view_name(n), "query": t, "top_k": k}
                ).encode()
                for t in QUESTIONS
            ]
            client = Http(port)
            # The same answer three ways, checked once before timing.
            first = json.loads(client.call("POST", "/v1/search", bodies[0]))["results"]
            mine = store.search(table_name(n), vector=queries[0], top_k=k)
            if [h["id"] for h in first] != [h["id"] for h in mine] or len(first) != k:
                raise RuntimeError("the server's and the store's results differ")

            def raw_query(i, tbl=tbl, columns=columns, queries=queries):
                q = queries[i % len(queries)]
                tbl.search(q, vector_column_name="vector").distance_type("cosine").limit(k).select(
                    [*columns, "_distance"]
                ).to_arrow()

            def store_query(i, n=n, queries=queries):
                store.search(table_name(n), vector=queries[i % len(queries)], top_k=k)

            def http_vector(i, client=client, bodies=bodies):
                client.call("POST", "/v1/search", bodies[i % len(bodies)])

            def http_text(i, client=client, bodies=text_bodies):
                client.call("POST", "/v1/search", bodies[i % len(bodies)])

            def health(i, client=client):
                client.call("GET", "/health")

            paths = {"raw": raw_query, "store": store_query, "http": http_vector,
                     "http_text": http_text, "health": health}  # fmt: skip
            samples: dict[str, list[int]] = {key: [] for key in paths}
            cpu: dict[str, float] = dict.fromkeys(paths, 0.0)  # server process
            own: dict[str, float] = dict.fromkeys(paths, 0.0)  # this process (all threads)
            per_round = args.requests // args.rounds
            out.print(
                f"timing {n:,} chunks: {len(paths)} paths x {per_round * args.rounds} requests "
                f"in {args.rounds} interleaved rounds ..."
            )
            for fn in paths.values():
                for i in range(args.warmup):
                    fn(i)
            gc.collect()
            gc.freeze()
            clock = time.perf_counter_ns
            for r in range(args.rounds):
                for key, fn in paths.items():
                    t = server_proc.cpu_times()
                    s0, c0 = t.user + t.system, time.process_time()
                    bucket = samples[key]
                    for i in range(r * per_round, (r + 1) * per_round):
                        t0 = clock()
                        fn(i)
                        bucket.append(clock() - t0)
                    t = server_proc.cpu_times()
                    cpu[key] += t.user + t.system - s0
                    own[key] += time.process_time() - c0
            gc.unfreeze()
            client.close()
            results[n] = {key: Summary.of_ns(v) for key, v in samples.items()}
            for key in paths:
                # raw / store run here: their CPU is this process's; HTTP rows: the server's
                spent = own[key] if key in ("raw", "store") else cpu[key]
                server_ms[(n, key)] = spent * 1e3 / len(samples[key])
                if key not in ("raw", "store"):
                    client_ms[(n, key)] = own[key] * 1e3 / len(samples[key])
            out.print(f"recall@{k} over {args.recall_queries} queries ...")
            recall_q = query_vectors(rng, args.recall_queries, args.data, args.seed)
            recall[n] = measure_recall(tbl, store, n, recall_q, k)
        load_after = os.getloadavg()

        report(out, args, results, server_ms, client_ms, recall, index_kind, store_path, builds)
        out.print(load_line(load_before, load_after, "the timed runs"))
        if args.json:
            dump = {
                "machine": machine_line(),
                "args": {k: v for k, v in vars(args).items() if k != "json"},
                "builds": builds,
                "index": index_kind,
                "store_path": store_path,
                "recall": recall,
                "cpu_ms": {f"{n}:{key}": v for (n, key), v in server_ms.items()},
                "client_cpu_ms": {f"{n}:{key}": v for (n, key), v in client_ms.items()},
                "results": {
                    str(n): {key: s.__dict__ for key, s in v.items()} for n, v in results.items()
                },
                "loadavg_before": load_before,
                "loadavg_after": load_after,
            }
            args.json.write_text(json.dumps(dump, indent=2, default=str))
        return 0
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            out.print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(
    out, args, results, server_ms, client_ms, recall, index_kind, store_path, builds
) -> None:
    from rich.table import Table

    labels = {
        "raw": "raw LanceDB query (baseline)",
        "store": "store: LanceVectorStore.search",
        "http": "HTTP POST /v1/search, vector",
        "http_text": "HTTP POST /v1/search, query text (MiniLM)",
        "health": "HTTP GET /health (stack floor)",
    }
    table = Table(
        title=f"Search latency in ms, top {args.top_k}, 384-dim vectors: "
        f"{args.requests:,} sequential requests per row in {args.rounds} interleaved rounds "
        f"after {args.warmup} warm-up. HTTP = client round trip (keep-alive). CPU = user+system "
        "CPU ms per call of the process doing the search: this one for raw and store (LanceDB's "
        "threads included), the server for HTTP; client CPU = this client's, HTTP rows",
        title_justify="left",
    )
    for col in ("path", "chunks", "p50", "p99", "mean", "max", "p50 / raw", "p50 - raw",
                "p50 - store", "CPU", "CPU - raw", "client CPU"):  # fmt: skip
        table.add_column(col, justify="left" if col == "path" else "right")
    for n, rows in results.items():
        raw, store = rows["raw"], rows["store"]
        for key, s in rows.items():
            vs = key in ("store", "http", "http_text")
            label = labels[key] + (f" [{store_path[n]}]" if key == "store" else "")
            table.add_row(
                label, f"{n:,}", fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.mean),
                fmt_ms(s.max), ratio(s.p50, raw.p50) if vs else "",
                f"{s.p50 - raw.p50:+.3f}" if vs else "",
                f"{s.p50 - store.p50:+.3f}" if key in ("http", "http_text") else "",
                fmt_ms(server_ms[(n, key)]),
                f"{server_ms[(n, key)] - server_ms[(n, 'raw')]:+.3f}" if vs else "",
                fmt_ms(client_ms[(n, key)]) if (n, key) in client_ms else "",
            )  # fmt: skip
        table.add_section()
    out.print(table)

    rec = Table(
        title=f"Recall@{args.top_k} vs exact brute force ({args.recall_queries} queries, "
        f"{args.data} vectors) and index build time (LanceVectorStore.ensure_indexes)",
        title_justify="left",
    )
    for col in ("chunks", "indexes on the table", "raw LanceDB query", "store.search",
                "index build s", "target", "result"):  # fmt: skip
        rec.add_column(col, justify="left" if col == "indexes on the table" else "right")
    for n in results:
        at_target = n == max(results)
        value = recall[n]["store"]
        rec.add_row(
            f"{n:,}", index_kind[n], f"{recall[n]['raw']:.3f}", f"{value:.3f}",
            f"{builds[n]['index_s']:.1f}", f">= {RECALL_TARGET}" if at_target else "",
            ("[green]met[/]" if value >= RECALL_TARGET else "[bold red]MISSED[/]")
            if at_target else "",
        )  # fmt: skip
    out.print(rec)

    targets = Table(
        title="Targets (issue 4): server overhead = HTTP p50 (vector in the body) - raw LanceDB "
        "p50",
        title_justify="left",
    )
    for col in ("chunks", "HTTP p50", "raw p50", "overhead ms", "target ms", "result",
                "server CPU - raw CPU"):  # fmt: skip
        targets.add_column(col, justify="right")
    for n, rows in results.items():
        over = rows["http"].p50 - rows["raw"].p50
        targets.add_row(
            f"{n:,}", fmt_ms(rows["http"].p50), fmt_ms(rows["raw"].p50), f"{over:+.3f}",
            f"< {OVERHEAD_TARGET_MS}",
            "[green]met[/]" if over < OVERHEAD_TARGET_MS else "[bold red]MISSED[/]",
            f"{server_ms[(n, 'http')] - server_ms[(n, 'raw')]:+.3f}",
        )  # fmt: skip
    out.print(targets)


if __name__ == "__main__":
    sys.exit(main())
