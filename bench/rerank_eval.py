"""The reranker stage on the eval sets (issue 19 item 5): recall@10, MRR@10 and nDCG@10 of the
default first stage (hybrid, the blend over 50 candidates per list) without and with a local
cross-encoder reranking its top ``--depth`` candidates, and the time the stage adds per query.

    python bench/rerank_eval.py --cross-encoder /models/ms-marco-MiniLM-L-6-v2 --docs 1000
    python bench/rerank_eval.py --docs 300        # no model: a tiny random one, plumbing only
    python bench/rerank_eval.py --cross-encoder /tmp/rerank_models/ce-man --sets stdlib-docstrings

No cross-encoder weights are packaged with contextkit and nothing is downloaded, so without
``--cross-encoder`` the script builds a one-layer BERT cross-encoder with random weights (on the
packaged MiniLM's vocabulary): its numbers show that the stage runs end to end and what it costs
per candidate at that size, not what reranking is worth. Documents are one chunk each, encoded
with the packaged MiniLM through ONNX int8, as in bench/fusion_eval.py. bench/rerank_train.py
fine-tunes a cross-encoder here from the packaged MiniLM on one set, keeping out the first
``--docs`` documents of that set (this script's window) so that both sets stay held out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "evalsets"))
import build as evalsets  # noqa: E402
from _common import index_documents  # noqa: E402

from contextkit.compute.rerank import RerankOptions, rerank  # noqa: E402
from contextkit.retrieval.evaluation import score  # noqa: E402

FIRST_STAGE = {"mode": "hybrid", "fusion": "blend", "depth": 50}


def random_cross_encoder(folder: Path) -> Path:
    """A one-layer BERT cross-encoder with random weights on MiniLM's vocabulary (no download)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from contextkit.embeddings import packaged_model_path

    folder.mkdir(parents=True, exist_ok=True)
    vocab = packaged_model_path() / "vocab.txt"
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), model_max_length=256)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1000, help="documents (and their queries) per set")
    ap.add_argument("--queries", type=int, default=200, help="at most this many queries per set")
    ap.add_argument("--depth", type=int, default=50, help="candidates handed to the reranker")
    ap.add_argument("--cross-encoder", type=Path, default=None, help="a CrossEncoder folder")
    ap.add_argument("--sets", nargs="+", choices=evalsets.SETS, default=list(evalsets.SETS))
    ap.add_argument("--out", type=Path, default=Path("/tmp/ckbench/rerank.json"))
    args = ap.parse_args()
    from contextkit.embeddings.onnx_encoder import OnnxEncoder

    if args.cross_encoder is None:
        model = random_cross_encoder(Path(tempfile.mkdtemp(prefix="ck-rerank-")) / "random-ce")
        what = "a random one-layer cross-encoder (plumbing only: its quality means nothing)"
    else:
        model = args.cross_encoder.resolve()
        what = str(model)
    options = RerankOptions(model=f"local:{model}", depth=args.depth)
    enc = OnnxEncoder(quantize="int8", cache_dir=Path("/tmp/ckbench/onnx"), query_cache_size=0)
    results: dict = {"reranker": what, "depth": args.depth, "first_stage": FIRST_STAGE,
                     "load_average": os.getloadavg()[0]}  # fmt: skip
    for name in args.sets:
        docs, queries = evalsets.load_set(Path(__file__).parent / "evalsets" / name, args.docs)
        queries = queries[: args.queries]
        store = index_documents(enc, docs, "ck-rerank-store-")
        qvec = enc.encode([q["query"] for q in queries]).astype(np.float32)
        rerank(options, "warm", [{"text": "warm", "score": 0.0}], 1)  # loads the model
        sums = {"first stage": np.zeros(3), "reranked": np.zeros(3)}
        stage_ms = []
        for q, v in zip(queries, qvec, strict=True):
            hits = store.search(
                "t", vector=v, text=q["query"], top_k=max(10, args.depth), **FIRST_STAGE
            )
            began = time.perf_counter()
            reranked = rerank(options, q["query"], hits[: args.depth], 10)
            stage_ms.append((time.perf_counter() - began) * 1000)
            for label, ranked in (("first stage", hits), ("reranked", reranked)):
                sums[label] += score([h["key"]["doc"] for h in ranked], q["relevant_ids"], 10)
        n = max(1, len(queries))
        rows = {
            label: dict(zip(("recall@10", "mrr@10", "ndcg@10"), np.round(s / n, 4).tolist(),
                            strict=True))
            for label, s in sums.items()
        }  # fmt: skip
        rows["rerank_ms_p50"] = round(float(np.median(stage_ms)), 2)
        results[name] = {"documents": len(docs), "queries": len(queries), **rows}
        print(name, json.dumps(results[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
