"""bench/_raw_search.py: the benchmarks' "same search, done with numpy or LanceDB alone" finds
the path the store runs for a table (its calibrated plan and settings) and returns the store's
top k, so that a benchmark's "overhead over raw" compares like with like."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from contextkit.stores.vector import LanceVectorStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _raw_search import raw_search  # noqa: E402

DIM = 16


def low_rank(n: int, seed: int) -> np.ndarray:
    """Unit vectors near a 3-dimensional subspace: a projected shortlist finds their top k."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).standard_normal((3, DIM))
    v = rng.standard_normal((n, 3)) @ basis + 0.05 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write(store: LanceVectorStore, vectors: np.ndarray) -> None:
    ids = [f"d{i}" for i in range(len(vectors))]
    batch = pa.record_batch(
        {
            "id": pa.array([f"{i}#0" for i in ids]),
            "doc": pa.array(ids),
            "chunk_index": pa.array([0] * len(ids), pa.int32()),
            "char_offset": pa.array([0] * len(ids), pa.int64()),
            "text": pa.array([f"passage {i}" for i in ids]),
            "price": pa.array(np.arange(len(ids), dtype=np.float64)),
            "content_hash": pa.array([hashlib.sha1(i.encode()).hexdigest() for i in ids]),
            "row_hash": pa.array([hashlib.sha1(i.encode()).hexdigest() for i in ids]),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        }
    )
    store.apply_changes("t", [batch], dim=DIM, key_columns=["doc"])


def assert_same_as_store(store: LanceVectorStore, folder: Path, path: str, k: int = 10) -> None:
    found, search = raw_search(store, folder, "t", k)
    assert found == path
    for q in low_rank(30, seed=42):  # not rows of the table
        hits = store.search("t", vector=q, top_k=k)
        rows = search(q)
        assert [r["id"] for r in rows] == [h["id"] for h in hits]
        assert [1.0 - r["_distance"] for r in rows] == pytest.approx([h["score"] for h in hits])
        assert rows[0]["price"] == hits[0]["metadata"]["price"]  # the rows' columns come along


def test_exact_without_a_plan_then_flat_past_the_row_limit(tmp_path):
    write(LanceVectorStore(tmp_path), low_rank(600, seed=1))
    assert_same_as_store(LanceVectorStore(tmp_path), tmp_path, "exact")
    # no plan, more rows than the store keeps in memory: LanceDB's flat scan (no index)
    assert_same_as_store(LanceVectorStore(tmp_path, exact_search_max_rows=500), tmp_path, "flat")


def test_the_calibrated_plan_decides_projected_or_exact(tmp_path):
    store = LanceVectorStore(tmp_path)
    write(store, low_rank(2000, seed=2))
    plan = store.calibrate("t", sample=60, methods=("projected",))
    assert plan.method == "projected" and plan.params["bits"] == 8
    served = LanceVectorStore(tmp_path)
    assert_same_as_store(served, tmp_path, "projected")
    # the raw baseline scans in 8 bits too, with the store's scores (not a float scan that
    # happens to shortlist the same rows)
    _, search = raw_search(served, tmp_path, "t", 10)
    cache = served._exact["t"]
    assert search.scan is not None and cache.scan is not None and cache.scan.bits == 8
    for q in low_rank(5, seed=43):
        projected = (q / np.linalg.norm(q)) @ cache.projection
        assert np.array_equal(search.scan(projected), cache.scan.scores(projected[None, :])[0])
    # an exact plan keeps a table past exact_search_max_rows in memory
    store.calibrate("t", sample=60, methods=())
    assert_same_as_store(LanceVectorStore(tmp_path, exact_search_max_rows=500), tmp_path, "exact")
