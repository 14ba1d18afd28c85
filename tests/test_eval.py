"""`contextkit eval`: recall@k, MRR, nDCG@k and latency per search mode and configuration on a
small labelled set, stored with the workspace version and compared with the previous run.

A real repo in a tmp dir; the installed `contextkit` script run as a process; the only stand-in
is the OpenAI stub behind the hosted embedding model (the network edge)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openai_stub import make_openai_stub, openai_stub  # noqa: F401  (fixtures)
from test_bad_input import run_cli

import contextkit
from contextkit.errors import BadRequestError
from contextkit.retrieval.evaluation import evaluate, load_queries, score, stored_runs

DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")
doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="stub",
                         metadata=["topic"])
"""
BODIES = {
    "hose": "A garden hose that does not kink, for watering the lawn.",
    "boots": "Waterproof hiking boots with a grippy sole for muddy trails.",
    "pan": "A cast iron frying pan for searing steaks on induction.",
    "chair": "An ergonomic office chair with lumbar support for long days.",
    "grinder": "A burr coffee grinder with precise settings for espresso.",
    "tent": "A lightweight tent for backpacking and fast hiking trips.",
}
QUERIES = [
    {"query": "garden hose watering", "relevant_ids": ["hose"]},
    {"query": "hiking boots muddy", "relevant_ids": ["boots", "tent"]},
    {"query": "frying pan steaks", "relevant_ids": ["pan"]},
    {"query": "coffee espresso", "relevant_ids": ["grinder"], "entities": {"doc_id": "grinder"}},
    {"query": "office chair", "relevant_ids": ["chair"], "filter": {"topic": "home"}},
]


def build(root: Path, stub_url: str) -> Path:
    root.mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: evals
            models:
              stub:
                type: litellm
                model: openai/stub-embedding
                api_base: {stub_url}
                dimension: 8
                api_key_env: STUB_OPENAI_KEY
                max_retries: 0
            """
        )
    )
    (root / "defs.py").write_text(DEFS)
    (root / "data").mkdir()
    ids = list(BODIES)
    pq.write_table(
        pa.table(
            {
                "doc_id": ids,
                "body": [BODIES[i] for i in ids],
                "topic": [
                    "home" if i in ("hose", "chair", "pan", "grinder") else "out" for i in ids
                ],
                "updated_at": pa.array([1_700_000_000_000_000] * len(ids)).cast(
                    pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        root / "data" / "docs.parquet",
    )
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in QUERIES) + "\n")
    return root


def test_metrics_of_one_ranking():
    assert score(["a", "x", "b"], ["a", "b"], 3) == pytest.approx(
        (1.0, 1.0, (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    )
    assert score(["x", "a"], ["a"], 2) == pytest.approx((1.0, 0.5, 1 / math.log2(3)))
    assert score(["x", "y", "a"], ["a"], 2) == (0.0, 0.0, 0.0)  # a is past k


def test_bad_labelled_files_name_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"query": "a", "relevant_ids": ["x"]}\n{"query": "b"}\n')
    with pytest.raises(BadRequestError, match=r"q.jsonl:2: 'relevant_ids'"):
        load_queries(path)
    path.write_text("not json\n")
    with pytest.raises(BadRequestError, match=r"q.jsonl:1: not JSON"):
        load_queries(path)


def test_eval_side_by_side_stored_and_compared(tmp_path, openai_stub, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")
    root = build(tmp_path / "repo", openai_stub.base_url)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["doc_text"])
    ctx.close()

    result = run_cli(root, "eval", "doc_text", "--queries", "queries.jsonl", "--k", "3",
                     "--workspace", "prod", "--json")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(result.stdout)
    assert run["version"] >= 1 and run["queries"] == 5 and run["compared_with"] is None
    by_name = {c["name"]: c for c in run["configs"]}
    assert set(by_name) == {"vector", "text", "hybrid"}
    # BM25 finds every labelled document here: each query's words are in its document
    text = by_name["text"]
    assert text["recall"] == 1.0  # "hiking" is in the tent's text too
    assert text["mrr"] == 1.0 and 0 < text["ndcg"] <= 1.0
    for c in run["configs"]:
        assert c["p50_ms"] > 0 and c["p99_ms"] >= c["p50_ms"] and c["delta"] is None

    # a second run, with a configuration of its own, compares itself with the stored one
    chunks = json.dumps({"name": "text", "mode": "text", "group_by": "chunk"})
    again = run_cli(root, "eval", "doc_text", "-q", "queries.jsonl", "--k", "3", "--workspace",
                    "prod", "--config", chunks)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "change since version" in again.stdout and "recall@3" in again.stdout
    assert "(-1.000)" in again.stdout  # chunk ids ("hose#0") are not the labelled doc ids
    ctx = contextkit.connect(root, "prod")
    runs = stored_runs(ctx.runtime, "doc_text")
    assert len(runs) == 2 and runs[0]["queries_hash"] == runs[1]["queries_hash"]
    # compared with the newest stored run of the same queries (the chunk run): no change
    labelled, digest = load_queries(root / "queries.jsonl")
    chunked = evaluate(ctx.runtime, "doc_text", labelled, queries_hash=digest, k=3, store=False,
                       configs=[{"name": "text", "mode": "text", "group_by": "chunk"}])  # fmt: skip
    assert chunked["configs"][0]["recall"] == 0.0  # "hose#0" is not "hose"
    assert chunked["configs"][0]["delta"]["recall"] == 0.0
    assert chunked["compared_with"]["at"] == runs[1]["at"]
    assert len(stored_runs(ctx.runtime, "doc_text")) == 2  # store=False kept nothing
    ctx.close()

    bad = run_cli(root, "eval", "nope", "-q", "queries.jsonl", "--workspace", "prod")
    assert bad.returncode == 1 and "embedding view 'nope'" in bad.stdout + bad.stderr
