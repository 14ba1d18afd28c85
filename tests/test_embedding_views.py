"""Embedding views through the SDK and HTTP: plan/apply, incremental materialization, atomicity,
search (vector, text, hybrid, filters) and the hosted-model path, on real repos in tmp_path.

Most stories use a hosted model served by the local OpenAI stub (the network edge): its vectors
are known exactly (``OpenAIStub.vector_for``) and every call the encoder makes is recorded. The
meaning stories use the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from openai_stub import OpenAIStub, make_openai_stub, openai_stub  # noqa: F401  (fixtures)

import contextkit
from contextkit.errors import ContextKitError, ValidationErrors
from contextkit.server.app import create_app

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DIM = 8
TOPICS = ["running shoes", "winter jackets", "coffee grinders", "garden hoses", "desk lamps"]

DEFS = """\
from contextkit import ContextService, EmbeddingView, Entity, FileSource, Search

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")

doc_text = EmbeddingView(
    name="doc_text",
    source=docs,
    entities=[doc],
    text="body",
    model="stub",
    metadata=["category", "price"],
)

search_docs = ContextService(name="search_docs", searches=[Search(doc_text, top_k=3)])
"""


def config(stub_url: str, dim: int = DIM) -> str:
    return textwrap.dedent(
        f"""\
        project: embed
        models:
          stub:
            type: litellm
            model: openai/stub-embedding
            api_base: {stub_url}
            dimension: {dim}
            api_key_env: STUB_OPENAI_KEY
            batch_size: 4
            max_retries: 0
        """
    )


def docs_table(n: int = 20, changed: dict[int, str] | None = None, drop=()) -> pa.Table:
    rows = [
        {
            "doc_id": f"d{i:02d}",
            "body": (changed or {}).get(i, f"Doc {i} about {TOPICS[i % 5]}, size {i}."),
            "category": TOPICS[i % 5].split()[-1],
            "price": 10.0 + i,
            "updated_at": T0 + timedelta(hours=i),
        }
        for i in range(n)
        if i not in drop
    ]
    return pa.Table.from_pylist(
        rows,
        pa.schema(
            [
                ("doc_id", pa.string()),
                ("body", pa.string()),
                ("category", pa.string()),
                ("price", pa.float64()),
                ("updated_at", pa.timestamp("us", tz="UTC")),
            ]
        ),
    )


def write_repo(root: Path, stub_url: str, defs: str = DEFS, table: pa.Table | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "contextkit.yaml").write_text(config(stub_url))
    (root / "defs.py").write_text(defs)
    (root / "data").mkdir(exist_ok=True)
    pq.write_table(table if table is not None else docs_table(), root / "data" / "docs.parquet")
    return root


def applied(root: Path) -> contextkit.Context:
    ctx = contextkit.connect(root, workspace="prod")
    if "prod" not in {w.name for w in ctx.list_workspaces()}:
        ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return ctx


def embedding_calls(stub: OpenAIStub) -> list[list[str]]:
    return [r.json["input"] for r in stub.requests_to("/v1/embeddings")]


def ids(documents) -> list[str]:
    return [hit["id"] for hit in documents]


@pytest.fixture(autouse=True)
def stub_key(monkeypatch):
    """Hosted models read their key from the environment variable the config names."""
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")


@pytest.fixture
def repo(tmp_path, openai_stub):  # noqa: F811
    return write_repo(tmp_path / "repo", openai_stub.base_url), openai_stub


# -- materialization ------------------------------------------------------------------------------


def test_a_rematerialization_encodes_exactly_the_changed_documents(repo):
    root, stub = repo
    ctx = applied(root)
    [job] = ctx.materialize(["doc_text"])
    assert (job.rows_offline, job.rows_online) == (20, 20)
    assert sorted(t for call in embedding_calls(stub) for t in call) == sorted(
        docs_table().column("body").to_pylist()
    )

    # 3 texts change, 2 documents disappear at the source, one price changes.
    changed = {0: "Doc 0 now about kayaks.", 7: "Doc 7 now about tents.", 11: "Doc 11: lamps."}
    table = docs_table(changed=changed, drop=(18, 19))
    prices = table.column("price").to_pylist()
    prices[5] = 99.0
    table = table.set_column(3, "price", pa.array(prices))
    pq.write_table(table, root / "data" / "docs.parquet")
    stub.reset()
    [job] = ctx.materialize(["doc_text"])

    assert sorted(t for call in embedding_calls(stub) for t in call) == sorted(changed.values())
    assert (job.details["changed"], job.details["deleted"], job.details["refreshed"]) == (3, 2, 1)
    assert job.rows_online == 18
    rows = {r["id"]: r for r in ctx.vectors._open("prod__doc_text").to_arrow().to_pylist()}
    assert sorted(rows) == [f"d{i:02d}#0" for i in range(18)]
    assert rows["d05#0"]["price"] == 99.0 and rows["d00#0"]["text"] == changed[0]

    stub.reset()
    [job] = ctx.materialize(["doc_text"])
    assert embedding_calls(stub) == [] and job.details["unchanged"] == 18


def test_an_encoder_failing_half_way_leaves_the_previous_version_searchable(repo):
    root, stub = repo
    ctx = applied(root)
    ctx.materialize(["doc_text"])
    query = OpenAIStub.vector_for("Doc 3 about garden hoses, size 3.", DIM)
    before = ctx.search("doc_text", vector=query, top_k=5)
    version = ctx.vectors.version("prod__doc_text")

    changed = {i: f"Rewritten document number {i}." for i in range(20)}
    pq.write_table(docs_table(changed=changed), root / "data" / "docs.parquet")
    stub.reset()
    stub.fail(500, after=2, path="/v1/embeddings")  # two batches of 4 go through, then errors
    with pytest.raises(ContextKitError) as info:
        ctx.materialize(["doc_text"])
    assert info.value.http_status == 502 and "hint" in info.value.to_dict()["error"]["details"]
    assert len(embedding_calls(stub)) == 3

    assert ctx.vectors.version("prod__doc_text") == version
    after = ctx.search("doc_text", vector=query, top_k=5)
    assert after.hits == before.hits
    job = ctx.jobs("doc_text")[0]
    assert job.status == "failed" and "EncoderFailure" in job.error

    stub.reset()
    [job] = ctx.materialize(["doc_text"])
    assert job.status == "succeeded" and job.details["changed"] == 20


def test_hosted_model_search_ranks_by_exact_cosine_similarity_and_filters(repo):
    root, _stub = repo
    ctx = applied(root)
    ctx.materialize(["doc_text"])
    table = docs_table()
    bodies = table.column("body").to_pylist()
    matrix = np.array([OpenAIStub.vector_for(b, DIM) for b in bodies])
    query_text = "something about coffee"
    query = np.array(OpenAIStub.vector_for(query_text, DIM))
    scores = matrix @ query
    expected = [f"d{i:02d}#0" for i in np.argsort(-scores)[:5]]

    got = ctx.search("doc_text", query_text, top_k=5)
    assert ids(got) == expected
    assert [h["score"] for h in got] == pytest.approx(sorted(scores, reverse=True)[:5], abs=1e-5)
    assert got[0]["key"] == {"doc_id": expected[0][:3]}

    cheap = ctx.search("doc_text", query_text, top_k=20, filter={"price": {"lt": 15}})
    assert sorted(ids(cheap)) == [f"d{i:02d}#0" for i in range(5)]
    lamps = ctx.search("doc_text", query_text, top_k=20, filter={"category": "lamps"})
    assert {h["metadata"]["category"] for h in lamps} == {"lamps"} and len(lamps) == 4


def test_a_model_of_another_dimension_rebuilds_the_table_whole(repo, make_openai_stub):  # noqa: F811
    root, _stub = repo
    ctx = applied(root)
    ctx.materialize(["doc_text"])
    wide = make_openai_stub(dimension=16)
    (root / "contextkit.yaml").write_text(config(wide.base_url, dim=16))
    ctx = contextkit.connect(root, workspace="prod")
    plan = ctx.plan(root)
    [change] = plan.changes
    assert change.rematerialize and {f.path for f in change.fields} >= {"dimension"}
    ctx.apply(plan)
    [job] = ctx.materialize(["doc_text"])
    assert job.details["full"] and job.details["new"] == 20
    assert ctx.vectors.dimension("prod__doc_text") == 16
    assert len(ctx.search("doc_text", "coffee", top_k=3)) == 3


def test_deleting_the_view_drops_its_vectors(repo):
    root, _stub = repo
    ctx = applied(root)
    ctx.materialize(["doc_text"])
    assert ctx.vectors.has_table("prod__doc_text")
    (root / "defs.py").write_text(DEFS.split("doc_text = ")[0])
    ctx.apply(ctx.plan(root))
    assert not ctx.vectors.has_table("prod__doc_text")


def test_metadata_only_changes_do_not_ask_for_materialization(repo):
    root, _stub = repo
    ctx = applied(root)
    (root / "defs.py").write_text(DEFS.replace('text="body",', 'text="body", description="x",'))
    [change] = ctx.plan(root).changes
    assert change.action == "update" and not change.rematerialize
    (root / "defs.py").write_text(DEFS.replace('metadata=["category", "price"]', "metadata=[]"))
    [change] = ctx.plan(root).changes
    assert change.rematerialize


# -- validation -----------------------------------------------------------------------------------

BAD_VIEWS = {
    "unknown text column": ('text="body"', 'text="bdy"', "text column 'bdy' is not in"),
    "text not a string": ('text="body"', 'text="price"', "has type float64, not string"),
    "unknown metadata": ('["category", "price"]', '["category", "colour"]', "'colour' is not in"),
    "reserved metadata": ('["category", "price"]', '["vector"]', "clashes with a key"),
    "unknown model": ('model="stub"', 'model="nope"', "unknown embedding model 'nope'"),
    "unknown entity": ("entities=[doc]", 'entities=["page"]', "unknown entity 'page'"),
    "unknown source": ("source=docs", 'source="dox"', "unknown source 'dox'"),
    "chunk bigger than the model allows": (
        'model="stub"',
        'model="minilm", chunking={"by": "tokens", "size": 1000}',
        "don't fit",
    ),
    "search over an unknown view": (
        "Search(doc_text, top_k=3)",
        'Search("nowhere")',
        "unknown embedding view 'nowhere'",
    ),
    "search with a bad filter": (
        "Search(doc_text, top_k=3)",
        'Search(doc_text, filter={"colour": "red"})',
        "unknown filter column 'colour'",
    ),
}


@pytest.mark.parametrize("case", BAD_VIEWS, ids=list(BAD_VIEWS))
def test_bad_embedding_views_fail_plan_with_file_line_and_hint(repo, case):
    root, _stub = repo
    old, new, message = BAD_VIEWS[case]
    assert old in DEFS
    (root / "defs.py").write_text(DEFS.replace(old, new))
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    with pytest.raises(ValidationErrors) as info:
        ctx.plan(root)
    [error] = [e for e in info.value.errors if message in e.message]
    assert error.location and error.location.startswith("defs.py:")
    assert error.hint
    assert ctx.specs().embedding_views == {}  # nothing was applied


# -- HTTP -----------------------------------------------------------------------------------------


def test_v1_search_answers_like_the_sdk_and_refuses_bad_input_with_4xx(repo):
    root, _stub = repo
    ctx = applied(root)
    ctx.materialize(["doc_text"])
    with TestClient(create_app(ctx, auth=False)) as client:
        body = {"view": "doc_text", "query": "garden", "top_k": 4, "filter": {"price": {"gte": 12}}}
        response = client.post("/v1/search", json=body)
        assert response.status_code == 200
        sdk = ctx.search("doc_text", "garden", top_k=4, filter={"price": {"gte": 12}})
        assert [h["id"] for h in response.json()["results"]] == ids(sdk)
        assert response.json()["results"][0]["score"] == pytest.approx(sdk[0]["score"])

        text = client.post(
            "/v1/search", json={"view": "doc_text", "query": "coffee", "mode": "text"}
        )
        assert text.status_code == 200
        assert {h["metadata"]["category"] for h in text.json()["results"]} == {"grinders"}

        bad = {
            "unknown view": ({"view": "nope", "query": "x"}, 404, "not_found"),
            "wrong dimension": ({"view": "doc_text", "vector": [0.1] * 3}, 400, "invalid_search"),
            "top_k 0": ({"view": "doc_text", "query": "x", "top_k": 0}, 400, "invalid_search"),
            "top_k huge": ({"view": "doc_text", "query": "x", "top_k": 10**6}, 400, None),
            "top_k string": ({"view": "doc_text", "query": "x", "top_k": "3"}, 422, None),
            "unknown mode": ({"view": "doc_text", "query": "x", "mode": "fuzzy"}, 400, None),
            "no query": ({"view": "doc_text"}, 400, "bad_request"),
            "unknown column": (
                {"view": "doc_text", "query": "x", "filter": {"colour": "red"}},
                400,
                "invalid_filter",
            ),
            "injected column": (
                {"view": "doc_text", "query": "x", "filter": {"price > 0 OR 1=1 --": 1}},
                400,
                "invalid_filter",
            ),
            "wrong value type": (
                {"view": "doc_text", "query": "x", "filter": {"price": "cheap"}},
                400,
                "invalid_filter",
            ),
            "unknown operator": (
                {"view": "doc_text", "query": "x", "filter": {"price": {"like": "%"}}},
                400,
                "invalid_filter",
            ),
        }
        for name, (body, status, code) in bad.items():
            response = client.post("/v1/search", json=body)
            assert response.status_code == status, name
            error = response.json()["error"]
            assert error["message"] and "Traceback" not in response.text, name
            if code:
                assert error["code"] == code, name

        # A quote in a value is data, never SQL: it matches nothing and breaks nothing.
        for value in ("lamps' OR '1'='1", 'lamps" OR 1=1 --', "lamps'); DROP TABLE x; --"):
            body = {"view": "doc_text", "query": "x", "filter": {"category": value}}
            response = client.post("/v1/search", json=body)
            assert response.status_code == 200 and response.json()["results"] == []
        assert ctx.vectors.count_rows("prod__doc_text") == 20


# -- meaning, with the packaged model --------------------------------------------------------------

MEANING_DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource

product = Entity(name="product", join_keys=["sku"])
catalog = FileSource(name="catalog", path="data/catalog.parquet")

catalog_docs = EmbeddingView(name="catalog_docs", source=catalog, entities=[product], text="text")
"""

CATALOG = {
    "kw": "Replacement part SKU-QJW-2363 for the model 4 blender jar lid.",
    "meaning": "Waterproof leather boots with a grippy sole, made for muddy hiking paths.",
    "other1": "A stainless steel kettle that boils water in three minutes.",
    "other2": "Cotton bed sheets, queen size, in five colours.",
    "other3": "A wireless mouse with a rechargeable battery.",
}


def test_hybrid_search_finds_both_the_keyword_match_and_the_meaning_match(tmp_path):
    root = tmp_path / "meaning"
    root.mkdir()
    (root / "contextkit.yaml").write_text("project: meaning\n")
    (root / "defs.py").write_text(MEANING_DEFS)
    (root / "data").mkdir()
    pq.write_table(
        pa.table({"sku": list(CATALOG), "text": list(CATALOG.values())}),
        root / "data" / "catalog.parquet",
    )
    ctx = applied(root)
    ctx.materialize()
    text = "SKU-QJW-2363 footwear for wet mountain trails"
    by_vector = {h["key"]["sku"] for h in ctx.search("catalog_docs", text, top_k=2)}
    by_text = {h["key"]["sku"] for h in ctx.search("catalog_docs", text, top_k=2, mode="text")}
    hybrid = {h["key"]["sku"] for h in ctx.search("catalog_docs", text, top_k=2, mode="hybrid")}
    assert "meaning" in by_vector and "kw" not in by_vector
    assert by_text == {"kw"}
    assert hybrid == {"kw", "meaning"}
