"""Calibrated vector search: exact or ANN chosen per table by measurement, ANN query parameters
raised until its top-k agrees with exact search, the plan shared by every process, re-measured
when the table grows, and every table warmed whatever its size."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from contextkit.stores.vector import CALIBRATION_TARGET, LanceVectorStore, SearchPlan

DIM = 16


def clustered(n: int, seed: int) -> np.ndarray:
    """Vectors near 60 centres (embeddings have cluster structure; random ones have none)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, DIM))
    v = centres[rng.integers(0, 60, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def rows(vectors: np.ndarray, start: int = 0) -> pa.RecordBatch:
    n = len(vectors)
    ids = [f"d{i}" for i in range(start, start + n)]
    return pa.record_batch(
        {
            "id": pa.array([f"{i}#0" for i in ids]),
            "doc": pa.array(ids),
            "chunk_index": pa.array([0] * n, pa.int32()),
            "char_offset": pa.array([0] * n, pa.int64()),
            "text": pa.array([f"passage {i}" for i in ids]),
            "content_hash": pa.array([hashlib.sha1(i.encode()).hexdigest() for i in ids]),
            "row_hash": pa.array([hashlib.sha1(i.encode()).hexdigest() for i in ids]),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        }
    )


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    sims = vectors @ (query / np.linalg.norm(query))
    return [f"d{i}#0" for i in np.argsort(-sims, kind="stable")[:k]]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A 4,000-row table with an HNSW index (ann_min_rows lowered so the test stays small)."""
    folder = tmp_path_factory.mktemp("vectors")
    vectors = clustered(4000, seed=1)
    store = LanceVectorStore(folder, ann_min_rows=1000, exact_search_max_rows=500)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    report = store.ensure_indexes("t")
    return folder, vectors, report


def test_index_build_calibrates_the_ann_to_the_target_recall(indexed):
    folder, vectors, report = indexed
    assert "HnswSq:vector" in report.created
    plan = report.plan
    assert report.calibrated and plan is not None
    assert plan.index == "IvfHnswSq" and plan.rows == 4000 and plan.sample >= 195
    assert plan.recall >= CALIBRATION_TARGET
    assert "ef" in plan.params and plan.params["ef"] >= 16
    assert plan.method in ("exact", "ann") and plan.reason
    assert plan.exact_p50_ms is not None and plan.ann_p50_ms is not None
    # the plan is stored with the tables: another process (store) reads the same one
    other = LanceVectorStore(folder)
    assert other.search_plan("t") == plan
    assert other.tables() == ["t"]  # the plan folder is not mistaken for a table


def test_an_ann_plan_is_followed_with_its_parameters_and_agrees_with_exact(tmp_path, indexed):
    folder, vectors, _ = indexed
    # A memory bound too small for the in-memory copy: the ANN must serve, at >= target recall.
    store = LanceVectorStore(folder, exact_cache_max_bytes=1000)
    plan = store.calibrate("t")
    assert plan.method == "ann" and plan.recall >= CALIBRATION_TARGET
    served = LanceVectorStore(folder, exact_cache_max_bytes=1000)
    queries = clustered(100, seed=99)  # not rows of the table
    found = 0
    for q in queries:
        got = [h["id"] for h in served.search("t", vector=q, top_k=10)]
        found += len(set(got) & set(brute_force(vectors, q, 10)))
    assert found / 1000 >= 0.97
    # deeper queries scale ef with the depth asked (LanceDB refuses ef < limit x refine)
    assert len(served.search("t", vector=queries[0], top_k=200)) == 200


def test_an_exact_plan_serves_tables_past_the_old_row_line_exactly(tmp_path):
    vectors = clustered(3000, seed=3)
    store = LanceVectorStore(tmp_path, exact_search_max_rows=1000, ann_min_rows=10**9)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    report = store.ensure_indexes("t")
    assert report.plan.method == "exact" and report.plan.index is None
    assert report.plan.reason == "no ANN index" and report.plan.recall is None
    fresh = LanceVectorStore(tmp_path, exact_search_max_rows=1000)
    fresh.warm("t")  # 3,000 rows > exact_search_max_rows: warmed all the same
    for q in clustered(20, seed=4):
        got = [h["id"] for h in fresh.search("t", vector=q, top_k=10)]
        assert got == brute_force(vectors, q, 10)


def test_growth_recalibrates_and_small_changes_carry_the_plan_on(tmp_path):
    vectors = clustered(3000, seed=5)
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    first = store.ensure_indexes("t").plan
    assert first.rows == 3000
    # 2% more rows: the plan is carried on to the new version, not measured again
    store.apply_changes("t", [rows(clustered(60, seed=6), start=3000)], dim=DIM)
    report = store.ensure_indexes("t")
    assert not report.calibrated
    assert report.plan.rows == 3000 and report.plan.version == store.version("t")
    assert report.plan.calibrated_at == first.calibrated_at
    # 20% more: measured again at the new size
    store.apply_changes("t", [rows(clustered(600, seed=7), start=3060)], dim=DIM)
    report = store.ensure_indexes("t")
    assert report.calibrated and report.plan.rows == 3660
    # dropping the table drops its plan; a new table of that name starts uncalibrated
    store.drop_table("t")
    store.apply_changes("t", [rows(clustered(50, seed=8))], dim=DIM, key_columns=["doc"])
    assert store.search_plan("t") is None


def test_a_plan_round_trips_and_an_unreadable_one_means_uncalibrated(tmp_path):
    store = LanceVectorStore(tmp_path)
    store.apply_changes("t", [rows(clustered(100, seed=9))], dim=DIM, key_columns=["doc"])
    plan = store.calibrate("t")
    assert SearchPlan.from_dict(plan.as_dict()) == plan
    (tmp_path / "_contextkit_search" / "t.json").write_text("{not json")
    assert LanceVectorStore(tmp_path).search_plan("t") is None
    # and searching still works (as before calibration)
    assert len(LanceVectorStore(tmp_path).search("t", vector=np.ones(DIM), top_k=5)) == 5
