"""Pipeline + vector store together, the way the core wires them for an embedding view."""

from __future__ import annotations

import numpy as np
import pytest

from contextkit.embeddings import SYSTEM_COLUMNS, EncoderFailure, build_encoder, plan_encode
from contextkit.stores import vector as vector_store
from contextkit.stores.vector import LanceVectorStore

TABLE = "dev__product_docs"
TOPICS = ["running shoes", "winter jackets", "coffee grinders", "garden hoses", "desk lamps"]


def product_docs(n=20):
    return [
        {
            "doc_id": f"p{i:02d}",
            "body": f"Product {i}: {TOPICS[i % 5]} in size {i}, a customer favourite.",
            "category": TOPICS[i % 5].split()[-1],
            "price": 10.0 + i,
        }
        for i in range(n)
    ]


def materialize(store, docs, encoder, **options):
    with plan_encode(
        docs,
        encoder=encoder,
        key_columns=["doc_id"],
        text_column="body",
        metadata_columns=["category", "price"],
        existing=store.existing_hashes(TABLE),
        fetch_vectors=lambda ids: store.fetch_vectors(TABLE, ids),
        **options,
    ) as plan:
        result = store.apply_changes(
            TABLE, plan.batches(), plan.delete_ids, dim=encoder.dimension, key_columns=["doc_id"]
        )
    return plan, result


def snapshot(store):
    table = store._open(TABLE).to_arrow().sort_by("id")
    return {row["id"]: row for row in table.to_pylist()}


def test_both_leaves_agree_on_the_table_layout():
    assert SYSTEM_COLUMNS == vector_store.SYSTEM_COLUMNS


def test_incremental_materialization_touches_only_what_changed(tmp_path, minilm, count_calls):
    store = LanceVectorStore(tmp_path / "vectors")
    encoder = count_calls(minilm)
    docs = product_docs(20)
    plan, first = materialize(store, docs, encoder)
    assert first.created and first.inserted == 20 and len(encoder.texts) == 20
    store.ensure_indexes(TABLE)
    before = snapshot(store)

    docs = [dict(d) for d in docs[:18]]  # p18 and p19 are deleted at the source
    for i in (0, 7, 11):
        docs[i]["body"] += " Now with free shipping."
    encoder.calls.clear()
    plan, second = materialize(store, docs, encoder)

    assert encoder.texts == [docs[0]["body"], docs[7]["body"], docs[11]["body"]]
    assert len(encoder.calls) == 1
    assert (second.updated, second.inserted, second.deleted) == (3, 0, 2)
    assert plan.delete_ids == ["p18#0", "p19#0"]
    after = snapshot(store)
    assert sorted(after) == sorted(f"p{i:02d}#0" for i in range(18))
    for chunk, row in after.items():
        if chunk in ("p00#0", "p07#0", "p11#0"):
            assert row["content_hash"] != before[chunk]["content_hash"]
            assert row["updated_at"] > before[chunk]["updated_at"]
        else:  # untouched: same hash, same vector, same write time
            assert row == before[chunk]

    # a third run with no change encodes nothing and commits nothing
    encoder.calls.clear()
    plan, third = materialize(store, docs, encoder)
    assert encoder.calls == [] and not third.committed and third.version == second.version


def test_an_encoder_failing_half_way_leaves_the_previous_version_searchable(tmp_path, minilm):
    store = LanceVectorStore(tmp_path / "vectors")
    materialize(store, product_docs(20), minilm)
    version = store.version(TABLE)
    query = minilm.encode(["warm coat for the snow"])[0]
    results = store.search(TABLE, vector=query, top_k=5)
    hybrid = store.search(TABLE, vector=query, text="jackets", mode="hybrid", top_k=5)

    class FailsOnSecondBatch:
        name, dimension, batch_size, normalize = minilm.name, 384, 4, True
        calls = 0

        def encode(self, texts):
            self.calls += 1
            if self.calls == 2:
                raise EncoderFailure("provider went away", model=self.name)
            return minilm.encode(texts)

    changed = [dict(d, body=d["body"] + " Updated.") for d in product_docs(20)]
    with pytest.raises(EncoderFailure, match="provider went away"):
        materialize(store, changed, FailsOnSecondBatch())

    assert store.version(TABLE) == version
    assert store.search(TABLE, vector=query, top_k=5) == results
    assert store.search(TABLE, vector=query, text="jackets", mode="hybrid", top_k=5) == hybrid
    fresh = LanceVectorStore(tmp_path / "vectors", exact_search_max_rows=0)  # LanceDB's own path
    assert [h["id"] for h in fresh.search(TABLE, vector=query, top_k=5)] == [
        h["id"] for h in results
    ]


def test_a_failed_first_materialization_leaves_no_table(tmp_path):
    store = LanceVectorStore(tmp_path / "vectors")
    hashing = build_encoder("fake", {"type": "hash", "dimension": 8, "batch_size": 4})

    class Broken:
        name, dimension, batch_size, normalize = hashing.name, 8, 4, True
        calls = 0

        def encode(self, texts):
            self.calls += 1
            if self.calls == 3:
                raise EncoderFailure("boom")
            return hashing.encode(texts)

    with pytest.raises(EncoderFailure):
        materialize(store, product_docs(20), Broken())
    assert not store.has_table(TABLE) and store.existing_hashes(TABLE) == {}


def test_a_hosted_model_end_to_end(tmp_path, make_openai_stub, monkeypatch):
    stub = make_openai_stub(dimension=32)
    monkeypatch.setenv("EMBED_KEY", "sk-test")
    encoder = build_encoder(
        "hosted",
        {
            "type": "litellm",
            "model": "openai/stub-embedding",
            "api_base": stub.base_url,
            "api_key_env": "EMBED_KEY",
            "dimension": 32,
            "batch_size": 8,
        },
    )
    store = LanceVectorStore(tmp_path / "vectors")
    docs = product_docs(20)
    plan, result = materialize(store, docs, encoder)
    assert result.inserted == 20 and len(stub.requests_to("/v1/embeddings")) == 3
    target = docs[4]["body"]
    query = np.asarray(stub.vector_for(target, 32), dtype=np.float32)
    [hit] = store.search(TABLE, vector=query, top_k=1)
    assert hit["id"] == "p04#0" and hit["score"] == pytest.approx(1.0, abs=1e-5)
    assert hit["key"] == {"doc_id": "p04"} and hit["metadata"]["price"] == 14.0
