"""Fine-tune a cross-encoder on one eval set, here and offline, so that bench/rerank_eval.py can
measure what the reranker stage is worth (no cross-encoder weights are packaged or downloadable).

    python bench/rerank_train.py --set man-pages --out /tmp/rerank_models/ce-man
    python bench/rerank_eval.py --cross-encoder /tmp/rerank_models/ce-man --docs 300

The start is the packaged bi-encoder (all-MiniLM-L6-v2, a 6-layer BERT) read as a
``BertForSequenceClassification`` with one label: the encoder is MiniLM's, the head is new.
Training pairs come from the set's documents after the first ``--holdout`` (rerank_eval.py's
``--docs`` window, so the evaluation's queries and documents of this set stay unseen): for each
sampled query, its relevant document (label 1), ``--negatives`` documents drawn from the top
``--pool`` non-relevant candidates of the default first stage (hybrid blend over the training
documents) and ``--easy`` random non-relevant documents (label 0). Binary cross-entropy, AdamW
with linear warm-up and decay, a plain torch loop; everything seeded. The folder written (model
and tokenizer, with ``model_max_length`` = ``--max-length``) loads with ``CrossEncoder(path)``.

The defaults are the recipe of the man-pages run in bench/README.md (about 15 minutes on 2
cores). Shorter runs (one epoch of 1,800 pairs, hard negatives only, lr 3e-5 or 1e-4) stayed at
the loss of the class prior and ranked below the first stage.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import rerank_eval
from _common import index_documents
from rerank_eval import FIRST_STAGE, evalsets


def training_pairs(
    docs: list[dict], queries: list[dict], *, negatives: int, pool: int, easy: int, seed: int
) -> list[tuple[str, str, float]]:
    """(query, document text, label) for each query: its relevant document, ``negatives`` hard
    negatives from the first stage's top ``pool`` candidates over ``docs`` and ``easy`` random
    non-relevant documents."""
    from contextkit.embeddings.onnx_encoder import OnnxEncoder

    enc = OnnxEncoder(quantize="int8", cache_dir=Path("/tmp/ckbench/onnx"), query_cache_size=0)
    store = index_documents(enc, docs, "ck-rerank-train-")
    text = {d["id"]: d["text"] for d in docs}
    qvec = enc.encode([q["query"] for q in queries]).astype(np.float32)
    rng = random.Random(seed)
    pairs = []
    for q, v in zip(queries, qvec, strict=True):
        hits = store.search("t", vector=v, text=q["query"], top_k=pool + 1, **FIRST_STAGE)
        relevant = set(q["relevant_ids"])
        wrong = [h["key"]["doc"] for h in hits if h["key"]["doc"] not in relevant][:pool]
        pairs += [(q["query"], text[doc], 1.0) for doc in q["relevant_ids"]]
        picked = rng.sample(wrong, min(negatives, len(wrong)))
        others = [d["id"] for d in docs if d["id"] not in relevant and d["id"] not in picked]
        picked += rng.sample(others, min(easy, len(others)))
        pairs += [(q["query"], text[doc], 0.0) for doc in picked]
    rng.shuffle(pairs)
    return pairs


def fine_tune(pairs: list[tuple[str, str, float]], args: argparse.Namespace) -> dict:
    """``args.epochs`` epochs of BCE over ``pairs``; saves model and tokenizer to ``args.out``."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    from contextkit.embeddings import packaged_model_path

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(
        packaged_model_path(), model_max_length=args.max_length
    )
    model = AutoModelForSequenceClassification.from_pretrained(packaged_model_path(), num_labels=1)
    model.train()
    per_epoch = (len(pairs) + args.batch - 1) // args.batch
    steps = per_epoch * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    losses = []
    began = time.perf_counter()
    for step in range(steps):
        if step and step % per_epoch == 0:
            random.Random(args.seed + step).shuffle(pairs)
        first = (step % per_epoch) * args.batch
        batch = pairs[first : first + args.batch]
        inputs = tokenizer(
            [p[0] for p in batch], [p[1] for p in batch], truncation="only_second",
            max_length=args.max_length, padding=True, return_tensors="pt",
        )  # fmt: skip
        logits = model(**inputs).logits.squeeze(-1)
        labels = torch.tensor([p[2] for p in batch])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 20 == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps} loss(last 20) {np.mean(losses[-20:]):.4f} "
                  f"{time.perf_counter() - began:.0f}s", flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    return {"steps": steps, "train_s": round(time.perf_counter() - began, 1),
            "loss_first_20": round(float(np.mean(losses[:20])), 4),
            "loss_last_20": round(float(np.mean(losses[-20:])), 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=evalsets.SETS, required=True, help="the set to train on")
    ap.add_argument(
        "--holdout", type=int, default=300, help="first documents kept out (eval's --docs)"
    )
    ap.add_argument(
        "--train-docs", type=int, default=1700, help="documents after the holdout searched"
    )
    ap.add_argument("--queries", type=int, default=1300, help="training queries sampled")
    ap.add_argument("--negatives", type=int, default=2, help="hard negatives per query")
    ap.add_argument("--easy", type=int, default=1, help="random negatives per query")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--pool", type=int, default=15, help="negatives drawn from this many top candidates"
    )
    ap.add_argument("--max-length", type=int, default=128, help="tokens per (query, document) pair")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="the model folder to write")
    args = ap.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    began = time.perf_counter()
    folder = Path(rerank_eval.__file__).parent / "evalsets" / args.set
    docs, queries = evalsets.load_set(folder)
    docs = docs[args.holdout : args.holdout + args.train_docs]
    ids = {d["id"] for d in docs}
    queries = [q for q in queries if set(q["relevant_ids"]) <= ids]
    queries = random.Random(args.seed).sample(queries, min(args.queries, len(queries)))
    pairs = training_pairs(
        docs, queries, negatives=args.negatives, pool=args.pool, easy=args.easy, seed=args.seed
    )
    mined_s = time.perf_counter() - began
    positive = sum(p[2] for p in pairs)
    print(f"{args.set}: {len(pairs)} pairs ({positive:.0f} positive) from {len(queries)} queries "
          f"over {len(docs)} documents in {mined_s:.0f}s", flush=True)  # fmt: skip
    report = {
        "set": args.set, "holdout_docs": args.holdout, "train_docs": len(docs),
        "train_queries": len(queries), "pairs": len(pairs), "mining_s": round(mined_s, 1),
        **fine_tune(pairs, args), "wall_s": None,
        "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    report["wall_s"] = round(time.perf_counter() - began, 1)
    (args.out / "training.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
