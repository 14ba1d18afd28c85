"""Hybrid fusion settings on the eval sets (issue 19 item 4): recall@10 and MRR@10 of vector,
text and hybrid search (RRF and the normalised-score blend, several depths and weights) over
the labelled sets in ``bench/evalsets`` (one chunk per document, MiniLM through ONNX int8).

    python bench/fusion_eval.py --docs 1000 --out /tmp/ckbench/fusion.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "evalsets"))
import build as evalsets  # noqa: E402
from _common import index_documents  # noqa: E402

from contextkit.retrieval.evaluation import score  # noqa: E402

CONFIGS = [
    {"mode": "vector"},
    {"mode": "text"},
    *({"mode": "hybrid", "fusion": "rrf", "depth": d, "weights": w}
      for d in (20, 50) for w in ((1, 1), (1, 0.5), (0.5, 1))),
    *({"mode": "hybrid", "fusion": "blend", "depth": d, "weights": w}
      for d in (20, 50) for w in ((1, 1), (1, 0.5), (0.5, 1))),
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1000, help="documents (and their queries) per set")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ckbench/fusion.json"))
    args = ap.parse_args()
    from contextkit.embeddings.onnx_encoder import OnnxEncoder

    enc = OnnxEncoder(quantize="int8", cache_dir=Path("/tmp/ckbench/onnx"), query_cache_size=0)
    results = {}
    for name in ("stdlib-docstrings", "man-pages"):
        docs, queries = evalsets.load_set(Path(__file__).parent / "evalsets" / name, args.docs)
        began = time.perf_counter()
        store = index_documents(enc, docs, "ck-fusion-")
        qvec = enc.encode([q["query"] for q in queries]).astype(np.float32)
        print(f"{name}: indexed {len(docs)} docs in {time.perf_counter() - began:.0f}s", flush=True)
        rows = []
        for config in CONFIGS:
            sums = [0.0, 0.0, 0.0]
            for q, v in zip(queries, qvec, strict=True):
                hits = store.search("t", vector=v, text=q["query"], top_k=10, **config)
                for j, value in enumerate(score([h["key"]["doc"] for h in hits],
                                                q["relevant_ids"], 10)):  # fmt: skip
                    sums[j] += value
            n = len(queries)
            metrics = [round(value / n, 4) for value in sums]
            names = ("recall@10", "mrr@10", "ndcg@10")
            rows.append(dict(config, **dict(zip(names, metrics, strict=True))))
            print(name, rows[-1], flush=True)
        results[name] = {"documents": len(docs), "queries": len(queries), "rows": rows}
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
