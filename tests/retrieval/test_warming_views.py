"""Serving before the embedding views finish: an applied embedding view whose vector table is not
built yet (never materialized, or its first job still running) is *warming*. A search of it is a
503 ``view_warming`` with ``Retry-After`` that names the view (and the running job, with its
encode progress); ``/v1/context`` answers 200 with the features and the rendered prompt, that
search's documents an empty list, marked in ``metadata.warming``. Once the job lands, the next
request serves the documents (same server, no restart). An unknown view stays a 404.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.server.app import create_app

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(hours=12)

DEFS = """
from datetime import timedelta
from contextkit import (Aggregate, ContextService, EmbeddingView, Entity, FileSource, PromptView,
                        Search, batch_feature_view, embedding_view)

user = Entity(name="user", join_keys=["user_id"])
doc = Entity(name="doc", join_keys=["doc_id"])
orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="ts")

@batch_feature_view(sources=[orders], entities=[user], mode="sql",
                    features=[Aggregate(column="amount", function="sum",
                                        time_window=timedelta(days=7))])
def spend(orders):
    return f"SELECT user_id, amount, ts FROM {orders}"

doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="hashed")

note = PromptView(
    name="note",
    template="spent {{ features.spend.amount_sum_7d }}; {{ documents.articles | length }} articles",
    features=[spend],
    searches=[Search(doc_text, name="articles", top_k=2)],
)

svc = ContextService(name="svc", features=[spend], prompts=[note])

# Views whose jobs land with no documents: an empty source, and a query that keeps no row.
nodocs = FileSource(name="nodocs", path="data/nodocs.parquet", timestamp_field="ts")
empty_docs = EmbeddingView(name="empty_docs", source=nodocs, entities=[doc], text="body",
                           model="hashed")

@embedding_view(sources=[docs], entities=[doc], text="body", model="hashed")
def no_match(docs):
    return f"SELECT doc_id, body, ts FROM {docs} WHERE body LIKE '%zeppelin%'"

bare = PromptView(
    name="bare",
    template="{{ documents.empty | length }} + {{ documents.none | length }} articles",
    searches=[Search(empty_docs, name="empty", top_k=2), Search(no_match, name="none", top_k=2)],
)

bare_svc = ContextService(name="bare_svc", prompts=[bare])
"""

CONTEXT = {"service": "svc", "entities": {"user_id": 1}, "query": "coffee grinders"}


def tables() -> dict[str, pa.Table]:
    topics = ["running shoes", "coffee grinders", "desk lamps", "garden hoses"]
    stamp = pa.timestamp("us", tz="UTC")
    return {
        "nodocs.parquet": pa.table({"doc_id": pa.array([], pa.string()),
                                    "body": pa.array([], pa.string()), "ts": pa.array([], stamp)}),
        "orders.parquet": pa.table({
            "user_id": pa.array([1, 1], pa.int64()), "amount": pa.array([5, 7], pa.int64()),
            "ts": pa.array([T0, T0 + timedelta(hours=1)], pa.timestamp("us", tz="UTC")),
        }),
        "docs.parquet": pa.table({
            "doc_id": [f"d{i}" for i in range(8)],
            "body": [f"Article {i} about {topics[i % 4]}." for i in range(8)],
            "ts": pa.array([T0] * 8, pa.timestamp("us", tz="UTC")),
        }),
    }  # fmt: skip


@pytest.fixture
def served(make_repo):
    root = make_repo({"defs.py": DEFS}, data=tables())
    with (root / "contextkit.yaml").open("a") as config:
        config.write("models:\n  hashed: {type: hash, dimension: 16}\n")
    sys.modules.pop("defs", None)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["spend"], end=END)  # the features only: doc_text is applied, not built
    with TestClient(create_app(ctx, auth=False)) as client:
        yield ctx, client
    sys.modules.pop("defs", None)
    ctx.close()


def search(client, view: str = "doc_text"):
    return client.post("/v1/search", json={"view": view, "query": "coffee grinders", "top_k": 2})


def test_warming_then_served_without_a_restart(served) -> None:
    ctx, client = served
    # Before any job: a 503 that says what is going on and when to come back.
    answer = search(client)
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "view_warming"
    assert "'doc_text'" in error["message"] and "warming" in error["message"]
    assert error["details"]["view"] == "doc_text" and "job" not in error["details"]
    assert "contextkit materialize doc_text" in error["details"]["hint"]
    assert int(answer.headers["Retry-After"]) == error["details"]["retry_after_s"] >= 1
    unknown = search(client, "nope")  # a view that is not applied stays a 404
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert "Retry-After" not in unknown.headers
    # Readiness stays 200 (features are served) and lists what is warming.
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    warming = {w["view"]: w for w in health.json()["warming"]}
    assert set(warming) == {"doc_text", "empty_docs", "no_match"}
    assert warming["doc_text"] == {
        "workspace": "prod", "view": "doc_text", "job": None, "status": "not materialized",
        "progress": None, "retry_after_s": 5,
    }  # fmt: skip
    # The OpenAI-style vector store search shares the path (and the header).
    store = client.post("/v1/vector_stores/doc_text/search", json={"query": "coffee"})
    assert store.status_code == 503 and store.json()["error"]["code"] == "view_warming"
    assert "Retry-After" in store.headers

    # The context still answers: features, the prompt (which saw an empty list), the mark.
    context = client.post("/v1/context", json=CONTEXT)
    assert context.status_code == 200, context.text
    body = context.json()
    assert body["features"]["spend"]["values"] == {"amount_sum_7d": 12}
    assert body["documents"] == {"articles": []}
    assert body["prompt"]["text"].strip() == "spent 12; 0 articles"
    warming = body["metadata"]["warming"]["articles"]
    assert warming["status"] == "warming" and warming["view"] == "doc_text"
    # MCP's get_context tells the agent too (its text, not only the structured content).
    from contextkit.server.mcp.results import context_result

    told = context_result(ctx.get_context("svc", {"user_id": 1}, query="coffee grinders"))
    assert "(warming: embedding view 'doc_text'" in told.content[0].text

    # While the first job encodes, the 503 names it and its progress.
    during = []

    def on_progress(view, progress):
        if not during:
            during.append(search(client))
            during.append(client.get("/health"))

    ctx.materialize(["doc_text"], on_progress=on_progress)
    running, health = during
    assert running.status_code == 503
    details = running.json()["error"]["details"]
    assert details["job"]["status"] == "running"
    assert details["job"]["id"] in running.json()["error"]["message"]
    assert details["job"]["encoded"]["chunks_total"] == 8
    assert health.status_code == 200
    (job,) = [w for w in health.json()["warming"] if w["view"] == "doc_text"]
    assert (job["job"], job["status"]) == (details["job"]["id"], "running")

    # The job landed: the same server serves the documents.
    found = search(client)
    assert found.status_code == 200, found.text
    assert len(found.json()["results"]) == 2
    body = client.post("/v1/context", json=CONTEXT).json()
    assert len(body["documents"]["articles"]) == 2 and "warming" not in body["metadata"]
    assert body["prompt"]["text"].strip() == "spent 12; 2 articles"
    warming = client.get("/health").json()["warming"]
    assert {w["view"] for w in warming} == {"empty_docs", "no_match"}


def test_a_landed_view_without_documents_answers_empty(served) -> None:
    """A job that landed with no documents (an empty source, a query that keeps no row) leaves
    a view with nothing to find: searches answer 200 with no hits, not warming, not a 404."""
    ctx, client = served
    assert search(client, "empty_docs").json()["error"]["code"] == "view_warming"  # not yet run
    jobs = ctx.materialize(["empty_docs", "no_match"])
    assert [(j.status, j.rows_offline, j.rows_online) for j in jobs] == [("succeeded", 0, 0)] * 2
    for view in ("empty_docs", "no_match"):
        answer = search(client, view)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"] == []
        store = client.post(f"/v1/vector_stores/{view}/search", json={"query": "coffee"})
        assert store.status_code == 200, store.text
        assert store.json()["data"] == []
    context = client.post("/v1/context", json={"service": "bare_svc", "query": "coffee"})
    assert context.status_code == 200, context.text
    body = context.json()
    assert body["documents"] == {"empty": [], "none": []}
    assert "warming" not in body["metadata"]
    assert body["prompt"]["text"].strip() == "0 + 0 articles"
    assert ctx.search("empty_docs", "coffee").hits == []
    # landed, though empty: not warming (doc_text, never materialized here, still is)
    assert [w["view"] for w in client.get("/health").json()["warming"]] == ["doc_text"]
    # an empty job that landed without a table (as before empty tables were made): still empty
    ctx.vectors.drop_table("prod__empty_docs")
    assert search(client, "empty_docs").json()["results"] == []
