"""The in-memory copies a vector store searches are bounded for the whole store (the process's
vector store): least recently used out first, a copy in use is not evicted for another table's,
and a table whose copy is not let in is searched by LanceDB (the calibrated ANN when it reached
the target, else flat), with the same results. Configured in contextkit.yaml."""

from __future__ import annotations

import lancedb

import contextkit
from contextkit.stores import _vector_copies
from contextkit.stores.vector import LanceVectorStore
from tests.stores.test_vector_calibration import DIM, brute_force, clustered, rows

COPY = 1000 * DIM * 4  # the vectors of one 1,000-row table


def two_tables(store: LanceVectorStore) -> dict[str, object]:
    data = {"a": clustered(1000, seed=61), "b": clustered(1000, seed=62)}
    for name, vectors in data.items():
        store.apply_changes(name, [rows(vectors)], dim=DIM, key_columns=["doc"])
    return data


def test_the_total_bound_evicts_the_least_recently_used_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(_vector_copies, "COPY_MIN_IDLE_S", 0.0)  # any copy may go at once
    store = LanceVectorStore(tmp_path, exact_cache_total_bytes=COPY + COPY // 2)
    data = two_tables(store)
    q = clustered(1, seed=63)[0]
    for name in ("a", "b", "a"):
        assert [h["id"] for h in store.search(name, vector=q, top_k=10)] == brute_force(
            data[name], q, 10
        )
        # one copy fits: the table searched last holds it
        assert store.memory()["tables"] == {name: COPY}
    assert store.memory()["bytes"] <= store.exact_cache_total_bytes


def test_a_copy_in_use_is_not_evicted_and_the_other_table_is_searched_by_lancedb(tmp_path):
    store = LanceVectorStore(tmp_path, exact_cache_total_bytes=COPY + COPY // 2)
    data = two_tables(store)
    queries = clustered(5, seed=64)
    for q in queries:
        for name in ("a", "b"):  # alternating: b must not throw a out on every query
            got = [h["id"] for h in store.search(name, vector=q, top_k=10)]
            assert got == brute_force(data[name], q, 10)  # LanceDB's flat search for b
    assert store.memory()["tables"] == {"a": COPY}
    # the bound can be changed on a live store: room for both now
    store.exact_cache_total_bytes = 2 * COPY
    store.search("b", vector=queries[0], top_k=10)
    assert store.memory()["tables"] == {"a": COPY, "b": COPY}
    # a table larger than the whole bound is never copied
    small = LanceVectorStore(tmp_path, exact_cache_total_bytes=COPY - 1)
    assert [h["id"] for h in small.search("a", vector=queries[0], top_k=10)] == brute_force(
        data["a"], queries[0], 10
    )
    assert small.memory()["tables"] == {}


def test_without_its_copy_an_in_memory_plan_is_served_by_the_calibrated_ann(tmp_path):
    vectors = clustered(1200, seed=65)
    store = LanceVectorStore(tmp_path, ann_min_rows=1000, index_candidates_max_rows=0)
    store.calibration_sample = 60
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    store.ensure_indexes("t")
    plan = store.calibrate("t", sample=60, methods=("exact",))
    ann = next(c for c in plan.candidates if c["method"] == "ann")
    assert plan.method == "exact" and ann["reached"] and plan.index == "IvfHnswSq"
    served = LanceVectorStore(tmp_path, exact_cache_total_bytes=1200 * DIM * 4 - 1)
    raw = lancedb.connect(str(tmp_path)).open_table("t")
    for q in clustered(10, seed=66):
        got = [h["id"] for h in served.search("t", vector=q, top_k=10)]
        query = raw.search(q).distance_type("cosine").limit(10).select(["id", "_distance"])
        for name, value in ann["params"].items():
            query = getattr(query, name)(value)
        assert got == [r["id"] for r in sorted(query.to_list(), key=lambda r: r["_distance"])]
    assert served.memory()["tables"] == {}


def test_the_bounds_are_set_in_contextkit_yaml(make_repo):
    root = make_repo({"defs.py": "\n"})
    config = (root / "contextkit.yaml").read_text()
    (root / "contextkit.yaml").write_text(
        config + "\nvector_store: {path: .contextkit/vectors, exact_cache_max_bytes: 1000000, "
        "exact_cache_total_bytes: 3000000}\n"
    )
    ctx = contextkit.connect(root)
    assert ctx.vectors.exact_cache_max_bytes == 1_000_000
    assert ctx.vectors.exact_cache_total_bytes == 3_000_000
    assert ctx.vectors.memory()["max_bytes"] == 3_000_000
