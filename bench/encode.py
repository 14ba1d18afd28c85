"""Encoding backends side by side: sentence-transformers on torch vs ONNX Runtime fp32 vs int8.

One process loads the packaged all-MiniLM-L6-v2 six ways: ``SentenceTransformerEncoder``
(torch), ``OnnxEncoder()`` (fp32), ``OnnxEncoder(quantize="int8")`` (the default int8: the
exported graph quantized, every projection int8 with the feed-forward inputs' outlier channels
split off into a float32 side path, see ``embeddings/onnx_export.py``; batches run in length
buckets), the int8 quantization of the graph
fused by ONNX Runtime's transformer optimizer (``optimize=True``, in length buckets), the int8
encoder as it was before (each ``batch_size`` slice of the length order padded to its longest
text, ``length_buckets=False``) and the int8 encoder with ``batch_size=1`` (each text run alone,
so its vector does not depend on the other texts: the quickstart's setting; the batch rows give
it the same texts in one ``encode`` call).
The ONNX variants are exported into ``--cache-dir`` first (export time reported, not timed with
the rest). It measures, in
``--rounds`` interleaved rounds (the backend order rotating per round, so that load from other
processes falls on all alike):

* one query: ``--queries`` single-text encodes per backend and round, cycling over distinct
  query texts of the eval sets, query cache off. For torch both the path the server takes today
  (``encoder.encode([q])[0]``: ``SentenceTransformer.encode`` for one text) and the new
  ``encode_query`` fast path (direct forward pass); for ONNX ``encode_query``. Plus the cost of
  an LRU cache hit. p50 / p99 in ms.
* batch: per round, for each text source (``products``: the quickstart's product descriptions,
  ``eval docs``: the eval sets' documents, shuffled) and each batch size in ``--batch-sizes``
  (32 and 128: one ``encoder.encode`` call of that many texts, the encoder's ``batch_size`` set
  to it, as the pipeline calls it), every backend encodes the same texts; documents per second
  (wall) and process CPU milliseconds per document (all threads). The ``vs torch`` columns are
  the median over rounds of each round's speed-up (torch's wall time over the backend's on the
  same texts in the same round), so load that moves between rounds cancels out.

Then quality, untimed: every document and query of the eval sets (``--eval-docs`` documents per
set, with their queries; ``bench/evalsets``) encoded by each backend; cosine of each vector to the
torch vector (mean and min, documents and queries apart); recall@10 and MRR@10 of exact cosine
search in numpy; and ONNX int8 queries against torch documents (a table encoded before a switch
of backend). The product descriptions (no labelled queries) get the cosines only: the 2,000 of
the timed rounds, in batches of 128.

    python bench/encode.py                       # ~10 min on 2 idle cores
    python bench/encode.py --no-quality --rounds 3   # timing only, ~4 min idle

Targets (issue 19, item 2): one-query p50 <= 0.35x torch's; int8 batch throughput >= 2x torch's
with cosine >= 0.99 to the torch vectors; recall@10 within 0.01 of torch's on every set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    Summary,
    console,
    keep_bench_folder_off_path,
    load_generator,
    load_line,
    machine_line,
    ratio,
)
from evalsets.build import SETS, load_set

keep_bench_folder_off_path()

EVALSETS = Path(__file__).resolve().parent / "evalsets"
ONE_QUERY_TARGET = 0.35  # p50 over torch's p50, at most
BATCH_TARGET = 2.0  # int8 docs/s over torch's, at least
COSINE_TARGET = 0.99
RECALL_TOLERANCE = 0.01
K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default=",".join(SETS), help="eval sets under bench/evalsets")
    p.add_argument("--eval-docs", type=int, default=1000, help="documents per eval set")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--queries", type=int, default=100, help="one-query encodes per round")
    p.add_argument("--batch-sizes", default="32,128", help="texts per encode call")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: torch's)")
    p.add_argument("--cache-dir", type=Path, help="ONNX export cache (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--no-quality", action="store_true", help="timed rounds only")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.rounds < 1 or args.queries < 1 or min(args.batch_sizes) < 1 or args.eval_docs < 10:
        p.error("--rounds, --queries, --batch-sizes >= 1 and --eval-docs >= 10 are required")
    return args


INT8 = "onnx int8"  # the default int8 encoder
INT8_OPT = "onnx int8, optimized graph"
INT8_BEFORE = "onnx int8 before (no buckets)"
INT8_ALONE = "onnx int8, each text alone"  # batch_size 1: the quickstart's (no batch dependence)


def build_encoders(cache_dir: Path, threads: int, batch_size: int = 32) -> dict:
    """The six encoders, unloaded (models are shared per process: one load for all sizes)."""
    from contextkit.embeddings import OnnxEncoder, SentenceTransformerEncoder

    common = {"cache_dir": cache_dir, "threads": threads, "query_cache_size": 0}
    return {
        "torch": SentenceTransformerEncoder(query_cache_size=0, batch_size=batch_size),
        "onnx fp32": OnnxEncoder(batch_size=batch_size, **common),
        INT8: OnnxEncoder(quantize="int8", batch_size=batch_size, **common),
        INT8_OPT: OnnxEncoder(quantize="int8", optimize=True, batch_size=batch_size, **common),
        INT8_BEFORE: OnnxEncoder(
            quantize="int8",
            length_buckets=False,
            batch_size=batch_size,
            **common,
        ),
        INT8_ALONE: OnnxEncoder(quantize="int8", batch_size=1, **common),
    }


def load_encoders(cache_dir: Path, threads: int) -> tuple[dict, dict[str, float]]:
    encoders = build_encoders(cache_dir, threads)
    export_s = {}
    for name, encoder in encoders.items():
        began = time.perf_counter()
        encoder.encode(["warm up"])  # loads (and for ONNX exports) the model
        export_s[name] = time.perf_counter() - began
    return encoders, export_s


def product_descriptions(n: int = 2000) -> list[str]:
    """The quickstart's product descriptions (its data generator, seeded)."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="ck-bench-products-") as tmp:
        load_generator().generate(tmp, users=1, products=n, orders=1, articles=1, seed=7)
        return pq.read_table(Path(tmp) / "products.parquet").column("description").to_pylist()


def one_query_round(fn, texts: list[str], n: int, offset: int) -> list[int]:
    samples = []
    for i in range(n):
        text = texts[(offset + i) % len(texts)]
        began = time.perf_counter_ns()
        fn(text)
        samples.append(time.perf_counter_ns() - began)
    return samples


def timed_rounds(
    encoders: dict, queries: list[str], sources: dict[str, list[str]], args, cache_dir, threads
) -> dict:
    from contextkit.embeddings import QueryCache

    one_query = {
        "torch encode(\\[q]) (today)": lambda t, e=encoders["torch"]: e.encode([t])[0],
        "torch encode_query": encoders["torch"].encode_query,
        **{f"{name} encode_query": encoders[name].encode_query for name in ONNX_QUERY_ROWS},
    }
    cache = QueryCache(1024)
    cache.put("m", queries[0], encoders[INT8].encode_query(queries[0]))
    one_query["LRU cache hit"] = lambda _t: cache.get("m", queries[0])
    samples: dict[str, list[int]] = {name: [] for name in one_query}
    sized = {b: build_encoders(cache_dir, threads, b) for b in args.batch_sizes}
    cells = [(src, b) for src in sources for b in args.batch_sizes]
    wall: dict = {(c, name): [] for c in cells for name in encoders}
    cpu_ms: dict = {(c, name): [] for c in cells for name in encoders}
    names_q, names_b = list(one_query), list(encoders)
    for r in range(args.rounds):
        for name in names_q[r % len(names_q) :] + names_q[: r % len(names_q)]:
            samples[name] += one_query_round(one_query[name], queries, args.queries, r * 7919)
        for src, b in cells:
            texts = sources[src]
            batch = [texts[(r * b + i) % len(texts)] for i in range(b)]
            for name in names_b[r % len(names_b) :] + names_b[: r % len(names_b)]:
                began, cpu = time.perf_counter(), time.process_time()
                sized[b][name].encode(batch)
                wall[(src, b), name].append(time.perf_counter() - began)
                cpu_ms[(src, b), name].append((time.process_time() - cpu) / b * 1000)
    batch = {}
    for src, b in cells:
        for name in encoders:
            walls = wall[(src, b), name]
            speedups = [t / w for t, w in zip(wall[(src, b), "torch"], walls, strict=True)]
            batch[f"{src}|{b}|{name}"] = {
                "docs_per_s": statistics.median(b / w for w in walls),
                "vs_torch": statistics.median(speedups),
                "vs_torch_range": [min(speedups), max(speedups)],
                "cpu_ms_per_doc": statistics.median(cpu_ms[(src, b), name]),
            }
    return {"one_query": {name: Summary.of_ns(s) for name, s in samples.items()}, "batch": batch}


ONNX_QUERY_ROWS = ("onnx fp32", INT8, INT8_OPT)


def product_cosines(encoders: dict, texts: list[str], batch_size: int = 128) -> dict:
    """Cosine of each backend's product-description vectors to torch's (mean and min), encoded
    in calls of ``batch_size`` texts as the pipeline does."""
    import numpy as np

    def encode_all(encoder) -> np.ndarray:
        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        return np.concatenate([encoder.encode(chunk) for chunk in chunks])

    reference = encode_all(encoders["torch"])
    rows = {}
    for name, encoder in encoders.items():
        if name in ("torch", INT8_BEFORE):
            continue
        cos = np.sum(encode_all(encoder) * reference, axis=1)
        rows[name] = {"cos_docs_mean": float(cos.mean()), "cos_docs_min": float(cos.min())}
    return {"documents": len(texts), "rows": rows}


def quality(encoders: dict, sets: dict) -> dict:
    import numpy as np

    out = {}
    for set_name, (docs, queries) in sets.items():
        doc_texts = [d["text"] for d in docs]
        query_texts = [q["query"] for q in queries]
        relevant = [set(q["relevant_ids"]) for q in queries]
        ids = np.array([d["id"] for d in docs])
        vectors = {}
        for name, encoder in encoders.items():
            if name == INT8_BEFORE:
                continue  # its vectors were measured before; only its speed is compared
            began = time.perf_counter()
            d = encoder.encode(doc_texts)
            q = np.stack([encoder.encode_query(t) for t in query_texts])
            vectors[name] = (d, q, time.perf_counter() - began)
        ref_d, ref_q, _ = vectors["torch"]
        rows = {}
        for name, (d, q, seconds) in vectors.items():
            cos_d = np.sum(d * ref_d, axis=1)
            cos_q = np.sum(q * ref_q, axis=1)
            rows[name] = {
                **retrieval(q, d, ids, relevant),
                "cos_docs_mean": float(cos_d.mean()),
                "cos_docs_min": float(cos_d.min()),
                "cos_queries_mean": float(cos_q.mean()),
                "cos_queries_min": float(cos_q.min()),
                "encode_s": seconds,
            }
        d8_q = vectors[INT8][1]
        rows["int8 queries x torch docs"] = retrieval(d8_q, ref_d, ids, relevant)
        out[set_name] = {"documents": len(docs), "queries": len(queries), "rows": rows}
    return out


def retrieval(q, d, ids, relevant: list[set]) -> dict:
    """recall@K and MRR@K of exact cosine search (the vectors are unit length)."""
    import numpy as np

    scores = q @ d.T
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(top, order, axis=1)
    recall, rr = [], []
    for row, wanted in zip(top, relevant, strict=True):
        found = [i for i, doc_id in enumerate(ids[row]) if doc_id in wanted]
        recall.append(len(found) / len(wanted))
        rr.append(1 / (found[0] + 1) if found else 0.0)
    return {"recall@10": float(np.mean(recall)), "mrr@10": float(np.mean(rr))}


def report(out, timed: dict, qual: dict, export_s: dict, threads: int) -> dict:
    from rich.table import Table

    base = timed["one_query"]["torch encode(\\[q]) (today)"]
    table = Table(title="One query (ms, query cache off)", title_justify="left")
    for col in ("path", "p50", "p99", "mean", "p50 vs today"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, s in timed["one_query"].items():
        table.add_row(name, f"{s.p50:.3f}", f"{s.p99:.3f}", f"{s.mean:.3f}", ratio(s.p50, base.p50))
    out.print(table)

    table = Table(
        title="Batch encode (median over rounds; vs torch: median of per-round speed-ups)",
        title_justify="left",
    )
    cols = ("texts", "batch", "backend", "docs/s", "vs torch", "range", "CPU ms/doc")
    for col in cols:
        table.add_column(col, justify="left" if col in ("texts", "backend") else "right")
    for key, row in timed["batch"].items():
        src, size, name = key.split("|")
        low, high = row["vs_torch_range"]
        table.add_row(
            src,
            size,
            name,
            f"{row['docs_per_s']:.1f}",
            f"{row['vs_torch']:.2f}x",
            f"{low:.2f}-{high:.2f}",
            f"{row['cpu_ms_per_doc']:.1f}",
        )
    out.print(table)
    out.print(
        "first load (export where missing) s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in export_s.items())
    )

    for set_name, info in qual.items():
        table = Table(
            title=f"Quality on {set_name} ({info['documents']} documents, "
            f"{info['queries']} queries; exact cosine search)",
            title_justify="left",
        )
        cols = ("backend", "recall@10", "MRR@10", "cos docs mean/min", "cos queries mean/min")
        for col in cols:
            table.add_column(col, justify="left" if col == "backend" else "right")
        for name, row in info["rows"].items():
            cos_d = (
                f"{row['cos_docs_mean']:.4f} / {row['cos_docs_min']:.4f}"
                if "cos_docs_mean" in row
                else "-"
            )
            cos_q = (
                f"{row['cos_queries_mean']:.4f} / {row['cos_queries_min']:.4f}"
                if "cos_queries_mean" in row
                else "-"
            )
            table.add_row(name, f"{row['recall@10']:.4f}", f"{row['mrr@10']:.4f}", cos_d, cos_q)
        out.print(table)

    products = timed.get("product_cosines")
    if products:
        table = Table(
            title=f"Cosine to torch, {products['documents']} product descriptions (batches of 128)",
            title_justify="left",
        )
        for col in ("backend", "cos mean", "cos min"):
            table.add_column(col, justify="left" if col == "backend" else "right")
        for name, row in products["rows"].items():
            table.add_row(name, f"{row['cos_docs_mean']:.4f}", f"{row['cos_docs_min']:.4f}")
        out.print(table)

    checks = []
    for name in ONNX_QUERY_ROWS:
        p50 = timed["one_query"][f"{name} encode_query"].p50
        checks.append(
            (
                f"{name} one-query p50 <= {ONE_QUERY_TARGET}x torch",
                p50 / base.p50,
                p50 / base.p50 <= ONE_QUERY_TARGET,
            )
        )
    for key, row in timed["batch"].items():
        src, size, name = key.split("|")
        if name == INT8:
            checks.append(
                (
                    f"onnx int8 batch >= {BATCH_TARGET}x torch ({src}, {size})",
                    row["vs_torch"],
                    row["vs_torch"] >= BATCH_TARGET,
                )
            )
    if products:
        for stat in ("mean", "min"):
            cos = products["rows"][INT8][f"cos_docs_{stat}"]
            checks.append(
                (f"products: {INT8} {stat} cosine >= {COSINE_TARGET}", cos, cos >= COSINE_TARGET)
            )
    for set_name, info in qual.items():
        rows = info["rows"]
        for name in ("onnx fp32", INT8):
            for stat in ("mean", "min"):
                cos = rows[name][f"cos_docs_{stat}"]
                checks.append(
                    (
                        f"{set_name}: {name} {stat} doc cosine >= {COSINE_TARGET}",
                        cos,
                        cos >= COSINE_TARGET,
                    )
                )
            gap = rows[name]["recall@10"] - rows["torch"]["recall@10"]
            checks.append(
                (
                    f"{set_name}: {name} recall@10 within {RECALL_TOLERANCE} of torch",
                    gap,
                    abs(gap) <= RECALL_TOLERANCE or gap > 0,
                )
            )
    table = Table(title="Targets (issue 19, item 2)", title_justify="left")
    for col in ("target", "measured", "verdict"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for label, value, ok in checks:
        table.add_row(
            label,
            f"{value:+.4f}" if "recall" in label else f"{value:.3f}",
            "[green]met[/]" if ok else "[bold red]MISSED[/]",
        )
    out.print(table)
    out.print(f"ONNX Runtime intra-op threads: {threads}")
    return {"checks": [{"target": c[0], "value": c[1], "met": c[2]} for c in checks]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = console()
    out.print(machine_line())
    import torch

    threads = args.threads or torch.get_num_threads()
    sets = {name: load_set(EVALSETS / name, args.eval_docs) for name in args.sets.split(",")}
    queries = [q["query"] for _docs, qs in sets.values() for q in qs]
    docs = [d["text"] for ds, _qs in sets.values() for d in ds]
    random.Random(19).shuffle(docs)  # the sets mixed, so every batch holds both kinds
    sources = {"products": product_descriptions(), "eval docs": docs}
    with tempfile.TemporaryDirectory(prefix="ck-bench-encode-") as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        encoders, export_s = load_encoders(cache_dir, threads)
        out.print(
            "models loaded (ONNX exported where missing): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in export_s.items())
        )
        load_before = os.getloadavg()
        timed = timed_rounds(encoders, queries, sources, args, cache_dir, threads)
        load_after = os.getloadavg()
        out.print(load_line(load_before, load_after, "the timed rounds"))
        qual = {} if args.no_quality else quality(encoders, sets)
        if not args.no_quality:
            timed["product_cosines"] = product_cosines(encoders, sources["products"])
    verdicts = report(out, timed, qual, export_s, threads)
    if args.json:
        payload = {
            "machine": machine_line(),
            "load": [load_before, load_after],
            "one_query": {k: vars(v) for k, v in timed["one_query"].items()},
            "batch": timed["batch"],
            "quality": qual,
            "product_cosines": timed.get("product_cosines"),
            "export_s": export_s,
            **verdicts,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
