"""Calibrated vector search on REAL embeddings: numpy exact vs LanceDB's default query vs
contextkit's store (the calibrated plan, and each configuration forced).

Vectors: ``bench/search_corpus.py`` (real passages from the man pages and Python's standard
library, encoded by the packaged all-MiniLM-L6-v2 through ONNX int8); queries: the eval sets'
queries (``bench/evalsets``), encoded the same way, so queries are not rows of the table. Per
size, one table is written through ``LanceVectorStore.apply_changes`` + ``ensure_indexes`` (the
calls ``materialize`` makes: the index kinds compared and the plan calibrated; ``ann_min_rows``
lowered so every size gets an index) and then, in ``--rounds`` interleaved rounds:

* ``numpy exact``: brute-force cosine over the float32 matrix (the truth for recall@10);
* ``lancedb default (ids)`` / ``(same columns)``: LanceDB's default query,
  ``table.search(q).distance_type("cosine").limit(10)`` (ef = 1.5 x k, no refine) on a copy of
  the table with LanceDB's IVF_HNSW_SQ index (what contextkit built before calibration),
  returning the ids only, or the columns the store returns;
* ``store calibrated``: ``LanceVectorStore.search`` following the calibrated plan;
* ``store forced <method>``: the store on a copy of the table calibrated with only that
  method allowed (``calibrate(methods=...)``), so it serves with that method's calibrated
  parameters.

    python bench/search_corpus.py --rows 50000           # encode once (slow on 2 cores)
    python bench/search_calibration.py --sizes 20000,50000 --queries 300
    python bench/search_calibration.py --synthetic --sizes 20000   # no corpus: see below

``--synthetic`` replaces the corpus with embedding-like random vectors (200 clusters in a space
whose variance decays like 1 / (1 + i) over the directions, as real embeddings concentrate on a
few; queries drawn the same way, not rows): for build-time and plan comparisons when the corpus
is not there, never for recall claims about real text. Each size's JSON holds
``ensure_indexes_s``, the index kinds built (``plan.index_builds``) and skipped
(``plan.index_skipped``, with why).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from contextkit.stores.vector import LanceVectorStore


def table_rows(vectors: np.ndarray, texts: list[str]) -> pa.RecordBatch:
    n, dim = vectors.shape
    ids = [f"p{i}" for i in range(n)]
    digest = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    return pa.record_batch(
        {
            "id": pa.array([f"{i}#0" for i in ids]),
            "passage": pa.array(ids),
            "chunk_index": pa.array([0] * n, pa.int32()),
            "char_offset": pa.array([0] * n, pa.int64()),
            "text": pa.array(texts),
            "content_hash": pa.array(digest),
            "row_hash": pa.array(digest),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        }
    )


def synthetic(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """Embedding-like unit vectors: 200 cluster centres and spreads whose variance decays over
    the directions, in a random rotation (``--synthetic``)."""
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / np.sqrt(1 + np.arange(dim))
    basis = np.linalg.qr(np.random.default_rng(1).standard_normal((dim, dim)))[0]
    centres = (np.random.default_rng(2).standard_normal((200, dim)) * spectrum) @ basis.T
    spread = 0.5 * (rng.standard_normal((n, dim)) * spectrum) @ basis.T
    v = centres[rng.integers(0, 200, n)] + spread + 0.3 * centres.mean(axis=0)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_size(n: int, vectors: np.ndarray, texts: list[str], queries: np.ndarray, args) -> dict:
    import lancedb
    from lancedb.index import HnswSq

    vectors = vectors[:n]
    load = {"before": os.getloadavg()}
    folder = Path(tempfile.mkdtemp(prefix=f"ck-search-{n}-"))
    bounds = {}  # the store's memory bounds, when --exact-cache-max-bytes sets them
    if args.exact_cache_max_bytes:
        bounds = {"exact_cache_max_bytes": args.exact_cache_max_bytes,
                  "exact_cache_total_bytes": max(args.exact_cache_max_bytes, 2 << 30)}  # fmt: skip
    store = LanceVectorStore(folder, ann_min_rows=min(n, 20_000), **bounds)
    store.apply_changes("t", [table_rows(vectors, texts[:n])], dim=vectors.shape[1],
                        key_columns=["passage"])  # fmt: skip
    began = time.perf_counter()
    report = store.ensure_indexes("t")
    build_s = time.perf_counter() - began
    plan = report.plan
    # LanceDB's default: its IVF_HNSW_SQ index on a copy, queried with its defaults.
    default_folder = folder.with_name(folder.name + "-default")
    shutil.copytree(folder, default_folder)
    raw = lancedb.connect(str(default_folder)).open_table("t")
    began = time.perf_counter()
    raw.create_index("vector", config=HnswSq(distance_type="cosine", num_partitions=1),
                     replace=True)  # fmt: skip
    default_build_s = time.perf_counter() - began
    # Each method forced, on its own copy (a plan is stored with the tables).
    forced: dict[str, LanceVectorStore] = {}
    forced_plans: dict[str, dict] = {}
    for method in args.forced.split(",") if args.forced else ():
        copy = folder.with_name(f"{folder.name}-{method}")
        shutil.copytree(folder, copy)
        if method == "ann" and plan.index is None:  # builds skipped: the default kind, to
            # show what the skip saved (the table's own index, had one been built)
            lancedb.connect(str(copy)).open_table("t").create_index(
                "vector", config=HnswSq(distance_type="cosine", num_partitions=1)
            )
        forced[method] = LanceVectorStore(copy, **bounds)
        began = time.perf_counter()
        forced_plan = forced[method].calibrate("t", methods=(method,))
        forced_plans[method] = {**forced_plan.as_dict(), "calibrate_s": round(
            time.perf_counter() - began, 1)}  # fmt: skip
        forced[method].warm("t")
    served = LanceVectorStore(folder, **bounds)
    served.warm("t")
    assert served.search_plan("t") == plan
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    k = 10
    columns = ["id", "passage", "chunk_index", "char_offset", "text", "updated_at", "_distance"]

    def numpy_exact(q):
        sims = np.einsum("ij,j->i", unit, q / np.linalg.norm(q))
        top = np.argpartition(-sims, k)[:k]
        return [f"p{i}#0" for i in top[np.argsort(-sims[top])]]

    def lance(q, select):
        b = raw.search(q).distance_type("cosine").limit(k).select(select)
        return b.to_arrow().column("id").to_pylist()

    def store_path(s):
        return lambda q: [h["id"] for h in s.search("t", vector=q, top_k=k)]

    paths = {
        "numpy exact": numpy_exact,
        "lancedb default (ids)": lambda q: lance(q, ["id", "_distance"]),
        "lancedb default (same columns)": lambda q: lance(q, columns),
        f"store calibrated ({plan.method})": store_path(served),
        **{f"store forced {m}": store_path(s) for m, s in forced.items()},
    }
    truth = [set(numpy_exact(q)) for q in queries]
    times: dict[str, list[float]] = {p: [] for p in paths}
    recall: dict[str, float] = {}
    for name, fn in paths.items():  # untimed: recall, and warm-up
        hits = sum(len(set(fn(q)) & t) for q, t in zip(queries, truth, strict=True))
        recall[name] = hits / (k * len(queries))
    load["timing_start"] = os.getloadavg()
    order = list(paths)
    per_round = np.array_split(np.arange(len(queries)), args.rounds)
    for r, part in enumerate(per_round):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            fn = paths[name]
            for i in part:
                began = time.perf_counter()
                fn(queries[i])
                times[name].append((time.perf_counter() - began) * 1000)
    load["after"] = os.getloadavg()
    for extra in (default_folder, *(Path(s.uri) for s in forced.values()), folder):
        shutil.rmtree(extra, ignore_errors=True)
    default_p50 = pct(times["lancedb default (same columns)"], 50)
    return {
        "rows": n,
        "memory_bounds": bounds or "store defaults",
        "ensure_indexes_s": round(build_s, 1),
        "lancedb_default_index_build_s": round(default_build_s, 1),
        "plan": plan.as_dict() if plan else None,
        "forced_plans": forced_plans,
        "load_average": load,
        "paths": {
            p: {
                "recall@10": round(recall[p], 4),
                "p50_ms": round(pct(times[p], 50), 3),
                "p99_ms": round(pct(times[p], 99), 3),
                "p50_vs_lancedb_default": round(pct(times[p], 50) / default_p50, 2),
            }
            for p in paths
        },  # fmt: skip
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/ckbench"))
    ap.add_argument("--vectors", default="vectors_20000.npy")
    ap.add_argument("--sizes", default="20000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--forced",
        default="exact,projected,ann",
        help="the methods timed forced, each on its own calibrated copy ('' for none: the "
        "forced ANN builds an index on its copy when the plan skipped the builds, minutes at "
        "200k rows)",
    )
    ap.add_argument(
        "--exact-cache-max-bytes",
        type=int,
        default=None,
        help="the stores' per-table bound on in-memory copies (default: the store's, 512 MiB; "
        "1M x 384 rows need ~2 GiB for exact and projected search to be candidates)",
    )
    ap.add_argument(
        "--synthetic",
        action="store_true",
        help="embedding-like random vectors instead of the corpus (build times)",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    if args.synthetic:
        vectors = synthetic(max(int(s) for s in args.sizes.split(",")))
        texts = [f"synthetic passage {i}" for i in range(len(vectors))]
        all_q = synthetic(max(args.queries, 1), seed=99)
    else:
        vectors = np.load(args.data / args.vectors)
        texts = (args.data / "texts.txt").read_text().split("\n")
        all_q = np.load(args.data / "queries.npy")
    queries = all_q[rng.choice(len(all_q), size=min(args.queries, len(all_q)), replace=False)]
    out = []
    for n in sorted(int(s) for s in args.sizes.split(",")):
        if n > len(vectors):
            print(f"skipping {n}: only {len(vectors)} encoded vectors", file=sys.stderr)
            continue
        result = run_size(n, vectors, texts, queries, args)
        out.append(result)
        print(json.dumps(result, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
