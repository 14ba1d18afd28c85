"""Rendered datasets with searches: the events' queries encoded per row vs in one batched call
per batch of events (issue 19), on the local engine, in one run.

Builds a repo in a temp dir: ``--docs`` short documents in one embedding view on the packaged
all-MiniLM-L6-v2 (the quickstart's ``minilm``: ONNX Runtime when ``contextkit[onnx]`` is
installed, else torch), materialized once, and a prompt view with one vector search (top 5).
Two sets of ``--events`` events: every query distinct, and ``--distinct`` queries each repeated.
Each is rendered with ``generate_dataset(...).to_arrow()`` in two ways, in interleaved rounds in
this process (the model loaded and warmed once before):

* ``batched``: the dataset as it runs: per batch of events (8,192), the distinct query texts of
  each search are encoded in one ``encoder.encode`` call, then every row searches by vector;
* ``per row``: each row's query encoded alone on the model's single-text path without its cache
  (``_encode_one``, what a per-row encode costs), the batched call made a no-op.

Both produce the same document ids for every row (checked) before any time is reported.

    python bench/dataset_queries.py                        # 1,000 docs; 2,000 events
    python bench/dataset_queries.py --docs 200 --events 300 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import console, load_line, machine_line, ratio

TOPICS = ("returns", "shipping", "payments", "accounts", "warranty", "sizes", "gift cards")
DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource, PromptView, Search

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")
doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="minilm")

answer = PromptView(
    name="answer",
    template="{% for d in documents.docs %}{{ d.id }};{% endfor %} Q: {{ query }}",
    searches=[Search(doc_text, name="docs", top_k=5)],
)
"""
CONFIG = """\
project: bench_dataset_queries
models:
  minilm: {type: sentence-transformers, path: default, backend: onnx}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--distinct", type=int, default=200, help="queries of the repeated set")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--backend", default="onnx", choices=("onnx", "torch"))
    return p.parse_args(argv)


def build(root: Path, args: argparse.Namespace):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import contextkit

    rng = np.random.default_rng(19)
    (root / "data").mkdir(parents=True)
    config = CONFIG if args.backend == "onnx" else CONFIG.replace(", backend: onnx", "")
    (root / "contextkit.yaml").write_text(config)
    (root / "defs.py").write_text(DEFS)
    bodies = [
        f"Article {i} on {TOPICS[i % len(TOPICS)]}: step {rng.integers(1, 9)} of the "
        f"{TOPICS[(i * 3) % len(TOPICS)]} guide, for orders over {rng.integers(10, 500)} euros."
        for i in range(args.docs)
    ]
    pq.write_table(
        pa.table(
            {
                "doc_id": list(range(args.docs)),
                "body": bodies,
                "updated_at": pa.array([datetime(2024, 1, 1, tzinfo=UTC)] * args.docs,
                                       pa.timestamp("us", tz="UTC")),
            }
        ),
        root / "data" / "docs.parquet",
    )  # fmt: skip
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize()
    return ctx


def events(n: int, distinct: int | None):
    import pandas as pd

    now = datetime.now(UTC)
    count = distinct or n
    texts = [f"how do {TOPICS[i % len(TOPICS)]} work for order number {i}?" for i in range(count)]
    return pd.DataFrame(
        {
            "ts": pd.Series([now] * n, dtype="M8[us, UTC]"),
            "query": [texts[i % count] for i in range(n)],
        }
    )


class PerRow:
    """The view's encoder with its batched call made a no-op: rows encode alone (below)."""

    def __init__(self, inner):
        self.inner = inner

    def encode(self, texts):
        import numpy as np

        return np.zeros((len(texts), self.inner.dimension), dtype=np.float32)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def run(ctx, frame, mode: str) -> tuple[float, list]:
    import contextkit.compute.embedding as embedding
    import contextkit.retrieval.datasets as datasets

    real_encoder, real_search = embedding.encoder_for, embedding.search_view
    if mode == "per row":
        inner = real_encoder(ctx.runtime.specs().embedding_views["doc_text"],
                             ctx.config.models, ctx.config.root.resolve())  # fmt: skip
        one = getattr(inner, "_encode_one", None) or (lambda t: inner.encode([t])[0])

        def search_view(*a, query=None, vector=None, **kw):
            return real_search(*a, query=query, vector=one(query), **kw)

        embedding.encoder_for = lambda *a, **k: PerRow(inner)
        embedding.search_view = search_view
    try:
        began = time.perf_counter()
        table = datasets.generate_dataset(ctx.runtime, frame, "answer", documents=True).to_arrow()
        seconds = time.perf_counter() - began
    finally:
        embedding.encoder_for, embedding.search_view = real_encoder, real_search
    return seconds, [r["docs"] for r in table.column("document_ids").to_pylist()]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = console()
    work = Path(tempfile.mkdtemp(prefix="ckdsq-"))
    try:
        began = time.perf_counter()
        ctx = build(work / "repo", args)
        out.print(f"setup {time.perf_counter() - began:.0f} s ({args.docs:,} docs encoded)")
        sets = {
            f"{args.events:,} distinct queries": events(args.events, None),
            f"{args.distinct:,} queries x {args.events // args.distinct}": events(
                args.events, args.distinct
            ),
        }
        run(ctx, events(20, None), "batched")  # load and warm the model, open the table
        load_before = os.getloadavg()
        times: dict[tuple[str, str], list[float]] = {}
        for _round in range(args.rounds):
            for name, frame in sets.items():
                results = {}
                for mode in ("per row", "batched"):
                    seconds, ids = run(ctx, frame, mode)
                    times.setdefault((name, mode), []).append(seconds)
                    results[mode] = ids
                assert results["per row"] == results["batched"], f"{name}: documents differ"
        load_after = os.getloadavg()
        out.print(machine_line())
        from rich.table import Table

        table = Table(title=f"generate_dataset(...).to_arrow(), {args.events:,} events, "
                            f"{args.docs:,} docs, minilm ({args.backend})")  # fmt: skip
        for col in ("events", "per row s", "batched s", "batched / per row", "rows/s batched"):
            table.add_column(col, justify="right")
        for name in sets:
            per_row = statistics.median(times[name, "per row"])
            batched = statistics.median(times[name, "batched"])
            table.add_row(name, f"{per_row:.2f}", f"{batched:.2f}", ratio(batched, per_row),
                          f"{args.events / batched:,.0f}")  # fmt: skip
        out.print(table)
        out.print(f"medians of {args.rounds} interleaved round(s); same document ids per row")
        out.print(load_line(load_before, load_after, "the runs"))
        ctx.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
