"""Search results in the serving cache: a service declared with ``cache=`` answers an identical
search (same search, query, top_k and filter) from memory; a materialization of the embedding
view or an apply invalidates it; ``cache=False`` (``"cache": false`` in /v1/context) bypasses it.

What the cache answers is made observable by deleting the vector table's rows behind its back
(LanceDB directly: no registry change): only a search that bypasses the cache sees it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.retrieval.cache import serving_cache
from contextkit.server.app import create_app

T0 = datetime(2024, 5, 1, tzinfo=UTC)
TABLE = "prod__doc_text"
TOPICS = ["running shoes", "winter jackets", "coffee grinders", "garden hoses", "desk lamps"]

DEFS = """\
from datetime import timedelta
from contextkit import ContextService, EmbeddingView, Entity, FileSource, Search

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")

doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body",
                         model="hashed", metadata=["category"])

cached = ContextService(name="cached", searches=[Search(doc_text, top_k=3)],
                        cache=timedelta(minutes=10), description="DESCRIPTION")
plain = ContextService(name="plain", searches=[Search(doc_text, top_k=3)])
"""


def docs(n: int) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"doc_id": f"d{i:02d}", "body": f"Doc {i} about {TOPICS[i % 5]}.",
             "category": TOPICS[i % 5].split()[-1], "updated_at": T0 + timedelta(hours=i)}
            for i in range(n)
        ],
        pa.schema([("doc_id", pa.string()), ("body", pa.string()), ("category", pa.string()),
                   ("updated_at", pa.timestamp("us", tz="UTC"))]),
    )  # fmt: skip


@pytest.fixture
def ctx(make_repo):
    root = make_repo({"defs.py": DEFS}, data={"docs.parquet": docs(10)})
    with (root / "contextkit.yaml").open("a") as config:
        config.write("models:\n  hashed: {type: hash, dimension: 32}\n")
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["doc_text"])
    serving_cache(ctx.runtime).clear()
    yield ctx
    ctx.close()


def ids(ctx, service: str = "cached", **options) -> list[str]:
    result = ctx.get_context(service, query="coffee grinders", render=False, **options)
    return [hit["id"] for hit in result.documents["doc_text"]]


def ids_bypassing_the_cache(ctx) -> list[str]:
    """As ``ids``, with ``cache=False`` (parsed and assembled as ``ctx.get_context`` does)."""
    from contextkit.retrieval.assemble import assemble

    options = dict(entities=None, query="coffee grinders", request_context=None, top_k=None,
                   filter=None, searches=None, render=False, complete=False, model=None,
                   params=None, cache=False)  # fmt: skip
    plan, request = ctx.context_request("cached", None, options)
    return [hit["id"] for hit in assemble(ctx.runtime, plan, request).documents["doc_text"]]


def counts(ctx) -> tuple[int, int, int]:
    cache = serving_cache(ctx.runtime)
    return tuple(c.get("cached", 0) for c in (cache.search_hits, cache.search_misses,
                                               cache.search_bypassed))  # fmt: skip


def empty_the_table_behind_the_cache(ctx) -> None:
    ctx.vectors._open(TABLE).delete("true")


def test_an_identical_search_is_answered_from_memory(ctx) -> None:
    first = ids(ctx)
    assert len(first) == 3 and counts(ctx) == (0, 1, 0)
    empty_the_table_behind_the_cache(ctx)
    assert ids(ctx) == first and counts(ctx) == (1, 1, 0)  # from memory
    assert ids_bypassing_the_cache(ctx) == [] and counts(ctx) == (1, 1, 1)  # the store: empty
    assert ids(ctx) == first  # a bypass leaves the cache as it was
    assert ids(ctx, "plain") == []  # a service without cache= always searches the store
    # Another query, top_k or filter is another search.
    assert ids(ctx, top_k=2) == [] and ids(ctx, filter={"category": "grinders"}) == []
    assert counts(ctx) == (2, 3, 1)


def test_callers_get_their_own_copy(ctx) -> None:
    result = ctx.get_context("cached", query="coffee grinders", render=False)
    result.documents["doc_text"][0]["text"] = "changed by the caller"
    result.documents["doc_text"].clear()
    again = ctx.get_context("cached", query="coffee grinders", render=False)
    assert len(again.documents["doc_text"]) == 3
    assert "changed by the caller" not in {h["text"] for h in again.documents["doc_text"]}


def test_a_materialization_of_the_view_invalidates(ctx) -> None:
    first = ids(ctx)
    import pyarrow.parquet as pq

    pq.write_table(docs(12), ctx.config.root / "data" / "docs.parquet")
    ctx.materialize(["doc_text"])
    empty_the_table_behind_the_cache(ctx)
    assert first and ids(ctx) == []  # a new generation: searched again
    assert counts(ctx) == (0, 2, 0)


def test_an_apply_invalidates(ctx) -> None:
    first = ids(ctx)
    root: Path = ctx.config.root
    (root / "defs.py").write_text(DEFS.replace("DESCRIPTION", "another description"))
    ctx.apply(ctx.plan(root))
    empty_the_table_behind_the_cache(ctx)
    assert first and ids(ctx) == []


def test_v1_context_takes_the_cache_flag(ctx) -> None:
    body = {"service": "cached", "query": "coffee grinders", "render": False}
    with TestClient(create_app(ctx, auth=False)) as client:
        first = client.post("/v1/context", json=body).json()["documents"]["doc_text"]
        empty_the_table_behind_the_cache(ctx)
        cached = client.post("/v1/context", json=body).json()["documents"]["doc_text"]
        bypassed = client.post("/v1/context", json={**body, "cache": False})
        assert bypassed.status_code == 200, bypassed.text
        assert cached == first and len(first) == 3
        assert bypassed.json()["documents"]["doc_text"] == []
        metrics = client.get("/metrics").text
    assert 'contextkit_serving_cache_search_hits_total{service="cached"} 1' in metrics
    assert 'contextkit_serving_cache_search_bypassed_total{service="cached"} 1' in metrics
