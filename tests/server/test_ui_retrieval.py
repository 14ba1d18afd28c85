"""The UI's Retrieval page: each embedding view's measured search plan (method, index,
calibrated parameters, reached recall) and the stored ``contextkit eval`` runs with their change
against the previous run, rendered from a real materialized repo; reading it needs a key."""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

import contextkit
from contextkit.compute.layout import vector_table
from contextkit.retrieval.evaluation import LabelledQuery, evaluate
from contextkit.server.app import create_app

DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")
articles = EmbeddingView(name="articles", source=docs, entities=[doc], text="body", model="h")
notes = EmbeddingView(name="notes", source=docs, entities=[doc], text="body", model="h")
"""
WORDS = ["lamp", "boot", "tent", "pan", "kettle", "rope", "stove", "chair", "desk", "mug"]


def test_the_retrieval_page_shows_search_plans_and_eval_runs(tmp_path):
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        textwrap.dedent(
            """\
            project: retrieval_ui
            models:
              h: {type: hash, dimension: 8}
            """
        )
    )
    (root / "defs.py").write_text(DEFS)
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    rows = [
        {"doc_id": f"d{i}", "body": f"{WORDS[i % 10]} number {i} {WORDS[(i * 3) % 10]}",
         "updated_at": t0}
        for i in range(300)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "docs.parquet")
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["articles"])
    # An ANN index on this small table, and a plan that serves it (calibration may measure
    # exact search faster here; methods=("ann",) keeps the ANN's calibrated parameters).
    table = vector_table("prod", "articles")
    ctx.vectors.ann_min_rows, ctx.vectors.index_candidates_max_rows = 100, 0
    ctx.vectors.ensure_indexes(table)
    plan = ctx.vectors.calibrate(table, methods=("ann",))
    assert plan is not None and plan.index is not None and plan.params and plan.recall is not None
    assert plan.method == "ann" and plan.p50_ms is not None

    queries = [LabelledQuery(f"{w} number {i}", (f"d{i}",)) for i, w in enumerate(WORDS)]
    configs = [{"name": "bm25", "mode": "text"}, {"name": "cosine", "mode": "vector"}]
    first = evaluate(ctx.runtime, "articles", queries, queries_hash="q1", configs=configs)
    second = evaluate(ctx.runtime, "articles", queries, queries_hash="q1", configs=configs)
    assert second["compared_with"]["at"] == first["at"]

    with TestClient(create_app(ctx, auth=False)) as client:
        assert client.get("/ui/w/prod/retrieval").status_code == 200  # the shell
        page = client.get("/ui/partial/w/prod/retrieval")
        assert page.status_code == 200, page.text
        html = page.text
    plans = html[html.index('id="search-plans"') : html.index("Evaluation runs")]
    articles = plans[plans.index('data-view="articles"') : plans.index('data-view="notes"')]
    assert ("ANN" if plan.method == "ann" else "exact") in articles
    assert plan.index in articles
    for name, value in plan.params.items():
        assert f"{name}={value}" in articles
    assert f"{plan.recall:.3f}" in articles and f"target {plan.target}" in articles
    assert "300" in articles and plan.reason in articles
    measured = re.search(r'plan-candidates">(.*?)</td>', articles, re.S)
    assert measured is not None
    for c in plan.candidates:  # every configuration measured, with its p50
        assert c["method"] in measured.group(1)
        if "p50_ms" in c:
            assert f"{c['p50_ms']:.2f} ms" in measured.group(1)
    assert "not materialized yet" in plans[plans.index('data-view="notes"') :]

    runs = html[html.index("Evaluation runs") :]
    assert runs.count('class="eval-run"') == 2
    newest, oldest = runs.split('class="eval-run"')[1:]
    assert f"change since version {first['version']}" in newest
    assert "first run of these queries" in oldest
    text_recall = next(c for c in second["configs"] if c["name"] == "bm25")
    row = re.search(r'data-config="bm25">(.*?)</tr>', newest, re.S)
    assert row is not None and f"{text_recall['recall']:.3f}" in row.group(1)
    assert row.group(1).count('class="delta') == 5  # recall, MRR, nDCG, p50, p99 changes
    assert 'class="delta' not in oldest
    ctx.close()

    locked = contextkit.connect(root, workspace="prod")
    with TestClient(create_app(locked, auth=True)) as client:
        assert client.get("/ui/partial/w/prod/retrieval").status_code == 401
    locked.close()
