"""The projected search's shortlist (the rows best by a projection onto a few directions): taken
by a sampled threshold and a partition over the rows that pass it, it holds the same rows as a
full partition, so a calibrated projected plan on a table large enough for that path answers as
it did, and as exact search does at the recall calibration measured."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contextkit.stores import _vector_plan as vector_plan
from contextkit.stores import _vector_query as vector_query
from contextkit.stores._vector_query import (
    SCAN_ROW_BYTES,
    ProjectedScan,
    quantize_queries,
    quantize_rows,
    top_rows,
)
from contextkit.stores.vector import CALIBRATION_TARGET, LanceVectorStore
from tests.stores.test_vector_calibration import DIM, found_by_hand, rows


def clustered_low_rank(n: int, seed: int) -> np.ndarray:
    """Unit vectors in 30 clusters near a 4-dimensional subspace (embeddings concentrate on a
    few directions): a projection onto a few directions shortlists them well."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).standard_normal((4, DIM))
    centres = np.random.default_rng(1).standard_normal((30, 4))
    latent = centres[rng.integers(0, 30, n)] + 0.4 * rng.standard_normal((n, 4))
    v = latent @ basis + 0.05 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n", [1000, 40_000, 200_000])
def test_top_rows_are_the_rows_a_full_partition_keeps(n):
    rng = np.random.default_rng(n)
    scores = rng.standard_normal(n).astype(np.float32)
    for want in (1, 50, min(1600, n // 2), n // 4):
        got = top_rows(scores, want)
        assert len(got) == want
        assert set(got) == set(np.argsort(-scores, kind="stable")[:want])
    # sorted scores: the evenly spaced sample sees few of the best; still the same rows
    ordered = np.sort(scores)
    assert set(top_rows(ordered, 100)) == set(range(n - 100, n))
    assert set(top_rows(ordered[::-1].copy(), 100)) == set(range(100))
    assert len(top_rows(scores, n + 5)) == n


def test_a_projected_plan_past_the_threshold_size_answers_as_calibrated(tmp_path):
    vectors = clustered_low_rank(40_000, seed=5)  # >= 8 x 4,096 rows: the sampled threshold
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    plan = store.calibrate("t", sample=120, methods=("projected",))
    assert plan.method == "projected" and plan.recall >= CALIBRATION_TARGET
    projection = np.load(tmp_path / "_contextkit_search" / "t.projection.npy")
    assert projection.shape == (DIM, plan.params["dims"])
    served = LanceVectorStore(tmp_path)  # another process: the plan and projection from disk
    assert served.search_plan("t") == plan
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = 0
    for q in clustered_low_rank(40, seed=6):
        got = {h["id"] for h in served.search("t", vector=q, top_k=10)}
        q = q / np.linalg.norm(q)
        # by hand: the shortlist by a full sort of the projected scores, then exact cosine
        assert got == found_by_hand(unit, projection, q, plan.params["shortlist"], bits=8)
        exact = np.argsort(-(unit @ q), kind="stable")[:10]
        found += len(got & {f"d{i}#0" for i in exact})
    assert found / 400 >= 0.95
    assert served._exact["t"].projected_for == plan.calibrated_at


def test_the_8_bit_scan_scores_as_integer_arithmetic_says():
    """ONNX Runtime's integer product returns exactly the dot products of the rounded rows and
    query; the rounding stays within half a step of each value."""
    rng = np.random.default_rng(3)
    reduced = rng.standard_normal((5000, 24)).astype(np.float32) * np.linspace(0.1, 2, 24)
    reduced[:, 5] = 0  # a direction with no spread: scale 1, codes 0
    queries = rng.standard_normal((7, 24)).astype(np.float32)
    scan = ProjectedScan(reduced, bits=8)
    assert scan.bits == 8 and scan.nbytes == 5000 * (24 + SCAN_ROW_BYTES)
    scale, codes = quantize_rows(reduced)
    assert codes.dtype == np.int8 and np.abs(codes).max() == 63 and not codes[:, 5].any()
    assert np.all(np.abs(codes * scale - reduced) <= scale / 2 + 1e-6)
    q8 = quantize_queries(queries, scale)
    assert q8.dtype == np.uint8 and q8.min() >= 1 and q8.max() <= 255
    by_hand = (q8.astype(np.int64) - 128) @ codes.astype(np.int64).T
    assert np.array_equal(scan.scores(queries), by_hand)
    # the scores track the float ones (a wrong scale or sign would not): 0.974-0.9999 here
    for got, want in zip(scan.scores(queries), queries @ reduced.T, strict=True):
        assert np.corrcoef(got, want)[0, 1] > 0.95
    with pytest.raises(ValueError, match="8 or 32 bits"):
        ProjectedScan(reduced, bits=16)


def test_the_largest_codes_against_the_largest_query_values_are_not_clipped():
    """Adjacent directions at their largest code against a query at 255 (and 1) in each: a
    kernel adding pairs of products in 16 bits would clip 2 x 255 x 127; at 63 it cannot."""
    reduced = np.ones((64, 8), dtype=np.float32)
    reduced[1::2] = -1
    reduced[:2] *= np.linspace(0.5, 1, 8, dtype=np.float32)
    scan = ProjectedScan(reduced, bits=8)
    queries = np.stack([np.ones(8), -np.ones(8), np.linspace(-1, 1, 8)]).astype(np.float32)
    scale, codes = quantize_rows(reduced)
    assert (np.abs(codes[2:]) == 63).all()
    q8 = quantize_queries(queries, scale)
    assert q8[0].min() == 255 and q8[1].max() == 1
    by_hand = (q8.astype(np.int64) - 128) @ codes.astype(np.int64).T
    assert np.array_equal(scan.scores(queries), by_hand)
    assert scan.scores(queries)[0, 2] == 127 * 63 * 8


def test_calibration_measures_the_scan_it_records(tmp_path, monkeypatch):
    """The shortlist is calibrated on the 8-bit scores the plan says it will be served with."""
    built: list[int] = []

    class Recorded(ProjectedScan):
        def __init__(self, reduced, bits=8):
            super().__init__(reduced, bits)
            built.append(self.bits)

    monkeypatch.setattr(vector_plan, "ProjectedScan", Recorded)
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9)
    store.apply_changes(
        "t", [rows(clustered_low_rank(3000, seed=10))], dim=DIM, key_columns=["doc"]
    )
    plan = store.calibrate("t", sample=60, methods=("projected",))
    assert plan.method == "projected" and plan.params["bits"] == 8
    assert built and set(built) == {8}  # the walk over directions, and the timed path


def test_a_scan_past_the_cache_runs_on_two_threads_with_the_same_scores(monkeypatch):
    rng = np.random.default_rng(4)
    reduced = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    one = ProjectedScan(reduced, bits=8)
    monkeypatch.setattr(vector_query, "SCAN_ONE_THREAD_MAX_BYTES", 3000 * 16 - 1)
    two = ProjectedScan(reduced, bits=8)
    assert (one.threads, two.threads) == (1, 2)
    assert np.array_equal(one.scores(queries), two.scores(queries))


def test_a_plan_from_before_the_8_bit_scan_is_served_with_the_float_scan(tmp_path):
    """Plans written before the 8-bit scan record no ``bits``: their shortlist was calibrated
    on float scores, so they are served with the float scan (32 bits), as calibrated."""
    vectors = clustered_low_rank(3000, seed=8)
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    plan = store.calibrate("t", sample=100, methods=("projected",))
    assert plan.method == "projected" and plan.params["bits"] == 8
    where = tmp_path / "_contextkit_search" / "t.json"
    stored = json.loads(where.read_text())
    del stored["params"]["bits"]
    where.write_text(json.dumps(stored))
    served = LanceVectorStore(tmp_path)
    projection = np.load(tmp_path / "_contextkit_search" / "t.projection.npy")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for q in clustered_low_rank(10, seed=9):
        got = {h["id"] for h in served.search("t", vector=q, top_k=10)}
        q = q / np.linalg.norm(q)
        assert got == found_by_hand(unit, projection, q, plan.params["shortlist"], bits=32)
    assert served._exact["t"].scan.bits == 32
