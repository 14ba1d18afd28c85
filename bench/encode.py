"""Encoding backends side by side: sentence-transformers on torch vs ONNX Runtime fp32 vs int8.

One process loads the packaged all-MiniLM-L6-v2 three ways (``SentenceTransformerEncoder``,
``OnnxEncoder()``, ``OnnxEncoder(quantize="int8")``; the ONNX variants are exported into
``--cache-dir`` first, export time reported but not timed with the rest) and measures, in
``--rounds`` interleaved rounds (the backend order rotating per round, so that load from other
processes falls on all alike):

* one query: ``--queries`` single-text encodes per backend and round, cycling over distinct
  query texts of the eval sets, query cache off. For torch both the path the server takes today
  (``encoder.encode([q])[0]``: ``SentenceTransformer.encode`` for one text) and the new
  ``encode_query`` fast path (direct forward pass); for ONNX ``encode_query``. Plus the cost of
  an LRU cache hit. p50 / p99 in ms.
* batch: ``--batch-docs`` eval-set documents per backend and round through ``encoder.encode``
  (batches of 32, as the pipeline calls it); documents per second (wall) and process CPU
  milliseconds per document (all threads; less sensitive to other load than wall time). The
  ``vs torch`` columns are speed-ups: torch's time over the backend's.

Then quality, untimed: every document and query of the eval sets (``--eval-docs`` documents per
set, with their queries; ``bench/evalsets``) encoded by each backend; cosine of each vector to the
torch vector (mean and min, documents and queries apart); recall@10 and MRR@10 of exact cosine
search in numpy; and ONNX int8 queries against torch documents (a table encoded before a switch
of backend).

    python bench/encode.py                       # ~4-6 min on 2 idle cores
    python bench/encode.py --eval-docs 300 --rounds 3 --queries 100   # ~1-2 min

Targets (issue 19, item 2): one-query p50 <= 0.35x torch's; int8 batch throughput >= 2x torch's
with cosine >= 0.99 to the torch vectors; recall@10 within 0.01 of torch's on every set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import Summary, console, keep_bench_folder_off_path, load_line, machine_line, ratio
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
    p.add_argument("--queries", type=int, default=200, help="one-query encodes per round")
    p.add_argument("--batch-docs", type=int, default=96, help="documents per batch round")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: torch's)")
    p.add_argument("--cache-dir", type=Path, help="ONNX export cache (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--no-quality", action="store_true", help="timed rounds only")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.queries < 1 or args.batch_docs < 1 or args.eval_docs < 10:
        p.error("--rounds, --queries, --batch-docs >= 1 and --eval-docs >= 10 are required")
    return args


def build_encoders(cache_dir: Path, threads: int) -> tuple[dict, dict[str, float]]:
    from contextkit.embeddings import OnnxEncoder, SentenceTransformerEncoder

    encoders = {
        "torch": SentenceTransformerEncoder(query_cache_size=0),
        "onnx fp32": OnnxEncoder(cache_dir=cache_dir, threads=threads, query_cache_size=0),
        "onnx int8": OnnxEncoder(
            cache_dir=cache_dir, threads=threads, quantize="int8", query_cache_size=0
        ),
    }
    export_s = {}
    for name, encoder in encoders.items():
        began = time.perf_counter()
        encoder.encode(["warm up"])  # loads (and for ONNX exports) the model
        export_s[name] = time.perf_counter() - began
    return encoders, export_s


def one_query_round(fn, texts: list[str], n: int, offset: int) -> list[int]:
    samples = []
    for i in range(n):
        text = texts[(offset + i) % len(texts)]
        began = time.perf_counter_ns()
        fn(text)
        samples.append(time.perf_counter_ns() - began)
    return samples


def timed_rounds(encoders: dict, queries: list[str], docs: list[str], args) -> dict:
    from contextkit.embeddings import QueryCache

    one_query = {
        "torch encode([q]) (today)": lambda t, e=encoders["torch"]: e.encode([t])[0],
        "torch encode_query": encoders["torch"].encode_query,
        "onnx fp32 encode_query": encoders["onnx fp32"].encode_query,
        "onnx int8 encode_query": encoders["onnx int8"].encode_query,
    }
    cache = QueryCache(1024)
    cache.put("m", queries[0], encoders["onnx int8"].encode_query(queries[0]))
    one_query["LRU cache hit"] = lambda _t: cache.get("m", queries[0])
    samples: dict[str, list[int]] = {name: [] for name in one_query}
    docs_per_s: dict[str, list[float]] = {name: [] for name in encoders}
    cpu_ms: dict[str, list[float]] = {name: [] for name in encoders}
    names_q, names_b = list(one_query), list(encoders)
    for r in range(args.rounds):
        for name in names_q[r % len(names_q) :] + names_q[: r % len(names_q)]:
            samples[name] += one_query_round(one_query[name], queries, args.queries, r * 7919)
        batch = [docs[(r * args.batch_docs + i) % len(docs)] for i in range(args.batch_docs)]
        for name in names_b[r % len(names_b) :] + names_b[: r % len(names_b)]:
            began, cpu = time.perf_counter(), time.process_time()
            encoders[name].encode(batch)
            docs_per_s[name].append(len(batch) / (time.perf_counter() - began))
            cpu_ms[name].append((time.process_time() - cpu) / len(batch) * 1000)
    return {
        "one_query": {name: Summary.of_ns(s) for name, s in samples.items()},
        "docs_per_s": {name: statistics.median(v) for name, v in docs_per_s.items()},
        "cpu_ms_per_doc": {name: statistics.median(v) for name, v in cpu_ms.items()},
    }


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
        d8_q = vectors["onnx int8"][1]
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

    base = timed["one_query"]["torch encode([q]) (today)"]
    table = Table(title="One query (ms, query cache off)", title_justify="left")
    for col in ("path", "p50", "p99", "mean", "p50 vs today"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, s in timed["one_query"].items():
        table.add_row(name, f"{s.p50:.3f}", f"{s.p99:.3f}", f"{s.mean:.3f}", ratio(s.p50, base.p50))
    out.print(table)

    torch_dps = timed["docs_per_s"]["torch"]
    table = Table(title="Batch encode (median over rounds)", title_justify="left")
    torch_cpu = timed["cpu_ms_per_doc"]["torch"]
    for col in ("backend", "docs/s", "vs torch", "CPU ms/doc", "vs torch ", "load + export s"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for name, dps in timed["docs_per_s"].items():
        cpu = timed["cpu_ms_per_doc"][name]
        table.add_row(
            name,
            f"{dps:.1f}",
            ratio(dps, torch_dps),
            f"{cpu:.1f}",
            ratio(torch_cpu, cpu),
            f"{export_s[name]:.1f}",
        )
    out.print(table)

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

    checks = []
    for name in ("onnx fp32", "onnx int8"):
        p50 = timed["one_query"][f"{name} encode_query"].p50
        checks.append(
            (
                f"{name} one-query p50 <= {ONE_QUERY_TARGET}x torch",
                p50 / base.p50,
                p50 / base.p50 <= ONE_QUERY_TARGET,
            )
        )
    int8_ratio = timed["docs_per_s"]["onnx int8"] / torch_dps
    checks.append(
        (f"onnx int8 batch >= {BATCH_TARGET}x torch", int8_ratio, int8_ratio >= BATCH_TARGET)
    )
    for set_name, info in qual.items():
        rows = info["rows"]
        for name in ("onnx fp32", "onnx int8"):
            cos = rows[name]["cos_docs_mean"]
            checks.append(
                (
                    f"{set_name}: {name} mean doc cosine >= {COSINE_TARGET}",
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
    with tempfile.TemporaryDirectory(prefix="ck-bench-encode-") as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        encoders, export_s = build_encoders(cache_dir, threads)
        out.print(
            "models loaded (ONNX exported where missing): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in export_s.items())
        )
        load_before = os.getloadavg()
        timed = timed_rounds(encoders, queries, docs, args)
        load_after = os.getloadavg()
        out.print(load_line(load_before, load_after, "the timed rounds"))
        qual = {} if args.no_quality else quality(encoders, sets)
    verdicts = report(out, timed, qual, export_s, threads)
    if args.json:
        payload = {
            "machine": machine_line(),
            "load": [load_before, load_after],
            "one_query": {k: vars(v) for k, v in timed["one_query"].items()},
            "docs_per_s": timed["docs_per_s"],
            "cpu_ms_per_doc": timed["cpu_ms_per_doc"],
            "quality": qual,
            "export_s": export_s,
            **verdicts,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
