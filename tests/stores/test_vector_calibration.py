"""Calibrated vector search: exact or ANN chosen per table by measurement, ANN query parameters
raised until its top-k agrees with exact search, the plan shared by every process, re-measured
when the table grows, and every table warmed whatever its size."""

from __future__ import annotations

import hashlib

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from contextkit.stores._vector_plan import EXACT_MARGIN
from contextkit.stores._vector_timing import TIMING_ROUNDS, pick
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


def scores_by_hand(unit: np.ndarray, projection: np.ndarray, q: np.ndarray, bits: int):
    """The scores a projected plan shortlists by for the unit query ``q``, by the documented
    rule: at 32 bits the float scores of the projected rows; at 8 bits each direction rounded
    to -63..63 on its own scale, the projected query (those scales folded in) to -127..127 on
    its own, and integer dot products."""
    reduced, projected = unit @ projection, q @ projection
    if bits == 32:
        return reduced @ projected
    scale = (np.abs(reduced).max(axis=0) / 63).astype(np.float32)
    codes = np.rint(reduced / scale).astype(np.int64)
    folded = projected * scale
    return codes @ np.rint(folded * 127 / np.abs(folded).max()).astype(np.int64)


def shortlist_by_hand(
    unit: np.ndarray, projection: np.ndarray, q: np.ndarray, shortlist: int, bits: int
) -> np.ndarray:
    """The rows a projected plan shortlists (:func:`scores_by_hand`); rows tied with the cut
    are all kept (the store keeps either)."""
    scores = scores_by_hand(unit, projection, q, bits)
    return np.flatnonzero(scores >= np.sort(scores)[-shortlist])


def found_by_hand(
    unit: np.ndarray, projection: np.ndarray, q: np.ndarray, shortlist: int, bits: int
) -> set[str]:
    """The ids a projected plan answers the unit query ``q`` with: the top 10 by exact cosine
    over :func:`shortlist_by_hand`."""
    short = shortlist_by_hand(unit, projection, q, shortlist, bits)
    return {f"d{i}#0" for i in short[np.argsort(-(unit[short] @ q), kind="stable")[:10]]}


def low_rank(n: int, seed: int, latent: int = 3) -> np.ndarray:
    """Vectors near a ``latent``-dimensional subspace (real embeddings concentrate on a few
    directions too): the case a projection onto a few directions shortlists well."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).standard_normal((latent, DIM))
    v = rng.standard_normal((n, latent)) @ basis + 0.05 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def kept_kind(builds: list[dict]) -> str:
    """The index kind the decision rule keeps, from the recorded per-round medians: the last
    built (in place) unless another that reached the target beat it by the band."""
    reached = [b for b in builds if b["reached"]] or builds
    rounds = {b["index"]: b["round_p50_ms"] for b in reached}
    return pick(rounds, [b["index"] for b in reversed(reached)]).chosen


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A 3,000-row table whose index was chosen among both HNSW kinds (ann_min_rows lowered
    and 100 calibration rows, so that the test stays small; builds that cannot win are not
    skipped: exact search in memory is far under LanceDB's floor at this size)."""
    folder = tmp_path_factory.mktemp("vectors")
    vectors = clustered(3000, seed=1)
    store = LanceVectorStore(folder, ann_min_rows=1000, exact_search_max_rows=500)
    store.calibration_sample = 100
    store.skip_unwinnable_indexes = False
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    report = store.ensure_indexes("t")
    return folder, vectors, report


@pytest.mark.slow  # builds and calibrates two indexes (~15 s on 2 busy cores)
def test_index_kinds_are_compared_and_the_cheapest_config_at_the_target_is_chosen(indexed):
    folder, vectors, report = indexed
    plan = report.plan
    assert report.calibrated and plan is not None and plan.rows == 3000 and plan.sample >= 95
    # both HNSW kinds were built and timed; the one kept is the table's index now
    builds = {b["index"]: b for b in plan.index_builds}
    assert set(builds) == {"IvfHnswSq", "IvfHnswFlat"}
    assert all(b["build_s"] > 0 and b["p50_ms"] > 0 for b in builds.values())
    assert [b["index"] for b in plan.index_builds if b.get("chosen")] == [plan.index]
    # timed in the same rounds: one exact reference; the kind in place (the last built) kept
    # unless the other beat it by the band in the median round
    assert len({b["reference_p50_ms"] for b in builds.values()}) == 1
    assert plan.index == kept_kind(plan.index_builds)
    assert f"{plan.index.removeprefix('Ivf')}:vector" in report.created
    assert all(b["recall"] >= CALIBRATION_TARGET for b in builds.values() if b["reached"])
    # every configuration measured; the chosen one reached the target and was the cheapest
    measured = {c["method"]: c for c in plan.candidates}
    assert {"exact", "ann"} <= set(measured) and measured["ann"]["index"] == plan.index
    chosen = measured[plan.method]
    assert chosen["reached"] and chosen["recall"] >= CALIBRATION_TARGET
    assert plan.p50_ms == chosen["p50_ms"] and plan.params == chosen["params"]
    timed = [c for c in plan.candidates if "p50_ms" in c and c["method"] != "exact"]
    if plan.method != "exact":  # an approximate config must beat exact by the margin
        assert chosen["vs_exact"] < EXACT_MARGIN  # (paired per-round ratio)
    else:
        assert all(c["vs_exact"] >= EXACT_MARGIN for c in timed)
    assert plan.reason
    # the plan is stored with the tables: another process (store) reads the same one
    other = LanceVectorStore(folder)
    assert other.search_plan("t") == plan
    assert other.tables() == ["t"]  # the plan folder is not mistaken for a table


@pytest.mark.slow  # shares the two-index table above
def test_an_ann_plan_is_followed_with_its_parameters_and_agrees_with_exact(tmp_path, indexed):
    folder, vectors, _ = indexed
    store = LanceVectorStore(folder)
    plan = store.calibrate("t", sample=100, methods=("ann",))
    assert plan.method == "ann" and plan.recall >= CALIBRATION_TARGET and plan.params["ef"]
    served = LanceVectorStore(folder)
    raw = lancedb.connect(str(folder)).open_table("t")
    queries = clustered(100, seed=99)  # not rows of the table
    found = 0
    for q in queries:
        got = [h["id"] for h in served.search("t", vector=q, top_k=10)]
        # what search ran is LanceDB's ANN query with the recorded parameters
        query = raw.search(q).distance_type("cosine").limit(10).select(["id", "_distance"])
        for name, value in plan.params.items():
            query = getattr(query, name)(value)
        assert got == [r["id"] for r in sorted(query.to_list(), key=lambda r: r["_distance"])]
        found += len(set(got) & set(brute_force(vectors, q, 10)))
    assert found / 1000 >= 0.97
    # deeper queries scale ef with the depth asked (LanceDB refuses ef < limit x refine)
    assert len(served.search("t", vector=queries[0], top_k=200)) == 200


def test_a_projected_plan_is_recorded_and_followed(tmp_path):
    vectors = low_rank(3000, seed=11)
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    plan = store.calibrate("t", sample=100, methods=("projected",))
    assert plan.method == "projected" and plan.recall >= CALIBRATION_TARGET
    assert plan.params["dims"] < DIM and plan.params["shortlist"] <= 3000 // 4
    assert plan.p50_ms is not None and plan.exact_p50_ms is not None
    projection = np.load(tmp_path / "_contextkit_search" / "t.projection.npy")
    assert projection.shape == (DIM, plan.params["dims"])
    assert plan.params["bits"] == 8  # ONNX Runtime is installed: the 8-bit scan
    served = LanceVectorStore(tmp_path)  # another process: reads the plan and its projection
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = 0
    for q in low_rank(50, seed=12):
        got = [h["id"] for h in served.search("t", vector=q, top_k=10)]
        q = q / np.linalg.norm(q)
        # by hand: the shortlist by the projection, then exact cosine over it
        assert set(got) == found_by_hand(unit, projection, q, plan.params["shortlist"], bits=8)
        # the scores the store shortlisted by are the integers of the rule, row for row
        cache = served._exact["t"]
        store_scores = cache.scan.scores((q @ cache.projection)[None, :])[0]
        assert np.array_equal(store_scores, scores_by_hand(unit, projection, q, bits=8))
        found += len(set(got) & set(brute_force(vectors, q, 10)))
    assert found / 500 >= 0.95
    assert served._exact["t"].projected_for == plan.calibrated_at
    # a filtered query is answered exactly
    q = low_rank(1, seed=13)[0]
    got = [
        h["id"]
        for h in served.search(
            "t", vector=q, top_k=5, filter={"doc": {"in": [f"d{i}" for i in range(0, 3000, 7)]}}
        )
    ]
    allowed = np.arange(0, 3000, 7)
    sims = unit[allowed] @ (q / np.linalg.norm(q))
    assert got == [f"d{allowed[i]}#0" for i in np.argsort(-sims, kind="stable")[:5]]


def test_the_choice_follows_the_measured_cost():
    choose = LanceVectorStore._choose
    reached = {"exact": {"recall": 1.0, "reached": True},
               "projected": {"recall": 0.995, "reached": True},
               "ann": {"recall": 0.993, "reached": True}}  # fmt: skip
    assert choose(reached, {"exact": 3.0, "projected": 1.0, "ann": 2.0}, "IvfHnswFlat",
                  0.99, True)[0] == "projected"  # fmt: skip
    assert choose(reached, {"exact": 3.0, "projected": 4.0, "ann": 2.0}, "IvfHnswFlat",
                  0.99, True)[0] == "ann"  # fmt: skip
    # within the margin exact search (recall 1) stays
    assert choose(reached, {"exact": 3.0, "ann": 2.8}, "IvfHnswFlat", 0.99, True)[0] == "exact"
    # only configurations that reached the target are timed; none: exact
    assert choose(reached, {"exact": 3.0}, "IvfHnswFlat", 0.99, True)[0] == "exact"
    # too large for the in-memory copy: the ANN, reached or not
    missed = {"ann": {"recall": 0.9, "reached": False}}
    method, reason = choose(missed, {"ann": 9.0}, "IvfHnswSq", 0.99, False)
    assert method == "ann" and "no ANN parameters reached" in reason


def test_an_exact_plan_serves_tables_past_the_old_row_line_exactly(tmp_path):
    vectors = clustered(3000, seed=3)
    store = LanceVectorStore(tmp_path, exact_search_max_rows=1000, ann_min_rows=10**9)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    report = store.ensure_indexes("t")
    assert report.plan.method == "exact" and report.plan.index is None
    assert report.plan.reason.startswith("no ANN index") and report.plan.recall is None
    fresh = LanceVectorStore(tmp_path, exact_search_max_rows=1000)
    fresh.warm("t")  # 3,000 rows > exact_search_max_rows: warmed all the same
    for q in clustered(20, seed=4):
        got = [h["id"] for h in fresh.search("t", vector=q, top_k=10)]
        assert got == brute_force(vectors, q, 10)


def test_growth_recalibrates_and_small_changes_carry_the_plan_on(tmp_path):
    vectors = clustered(1000, seed=5)
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9)
    store.calibration_sample = 60
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    first = store.ensure_indexes("t").plan
    assert first.rows == 1000
    # 2% more rows: the plan is carried on to the new version, not measured again
    store.apply_changes("t", [rows(clustered(20, seed=6), start=1000)], dim=DIM)
    report = store.ensure_indexes("t")
    assert not report.calibrated
    assert report.plan.rows == 1000 and report.plan.version == store.version("t")
    assert report.plan.calibrated_at == first.calibrated_at
    # 20% more: measured again at the new size
    store.apply_changes("t", [rows(clustered(200, seed=7), start=1020)], dim=DIM)
    report = store.ensure_indexes("t")
    assert report.calibrated and report.plan.rows == 1220 and report.plan.index is None
    # growing past ann_min_rows: the index is built and the plan measured again with it
    store.ann_min_rows, store.index_candidates_max_rows = 1300, 0
    store.apply_changes("t", [rows(clustered(130, seed=17), start=1220)], dim=DIM)
    report = store.ensure_indexes("t")
    assert report.created == ["HnswSq:vector", "btree:id"] and report.calibrated
    assert report.plan.rows == 1350 and report.plan.index == "IvfHnswSq"
    assert "ann" in {c["method"] for c in report.plan.candidates}
    assert report.plan.index_builds == []  # one kind built (index_candidates_max_rows 0)
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


def test_index_kinds_are_timed_in_the_same_rounds_and_the_faster_one_kept(tmp_path):
    """Both HNSW kinds are timed with exact search in the same interleaved rounds (each on the
    table version that carries it), so one exact reference serves both and the kind of lower
    p50 among those that reached the target is kept (a tiny table: the choice, not the speed)."""
    vectors = clustered(400, seed=21)
    store = LanceVectorStore(tmp_path, ann_min_rows=300, exact_search_max_rows=100)
    store.calibration_sample = 40
    store.skip_unwinnable_indexes = False
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    report = store.ensure_indexes("t")
    builds = {b["index"]: b for b in report.plan.index_builds}
    assert set(builds) == {"IvfHnswSq", "IvfHnswFlat"}
    # one set of rounds: the same exact reference, each kind timed with the other and exact
    assert len({b["reference_p50_ms"] for b in builds.values()}) == 1
    assert builds["IvfHnswSq"]["timed_with"] == ["IvfHnswFlat", "exact"]
    assert builds["IvfHnswFlat"]["timed_with"] == ["IvfHnswSq", "exact"]
    assert all(len(b["round_p50_ms"]) == TIMING_ROUNDS and b["p50_ms"] > 0 for b in builds.values())
    kept = kept_kind(report.plan.index_builds)
    assert [b["index"] for b in report.plan.index_builds if b.get("chosen")] == [kept]
    assert report.plan.index == kept  # the table's index is the kind kept
    assert f"{kept.removeprefix('Ivf')}:vector" in report.created


def test_the_memory_bound_covers_the_projected_copy(tmp_path):
    """``exact_cache_max_bytes`` bounds the exact copy and the projected one together: at
    calibration only projections that fit are tried (none fits: exact search), and a table
    that grew past the bound with a projected plan is answered exactly from its copy."""
    vectors = low_rank(2000, seed=31)
    exact_bytes = 2000 * DIM * 4
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9, exact_cache_max_bytes=exact_bytes)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    plan = store.calibrate("t", sample=60, methods=("projected",))
    assert plan.method == "exact" and "projected search not tried" in plan.reason
    assert "projected" not in {c["method"] for c in plan.candidates}
    # room for 4 more floats a row: only projections of at most 4 directions are tried
    store.exact_cache_max_bytes = exact_bytes + 2000 * 4 * 4
    plan = store.calibrate("t", sample=60, methods=("projected",))
    assert plan.method == "projected" and 2 <= plan.params["dims"] <= 4
    # a process with a smaller bound: the exact copy fits, the projected one not beside it
    served = LanceVectorStore(tmp_path, exact_cache_max_bytes=exact_bytes + 2000 * 4)
    for q in low_rank(10, seed=32):
        got = [h["id"] for h in served.search("t", vector=q, top_k=10)]
        assert got == brute_force(vectors, q, 10)
    assert served._exact["t"].scan is None  # only the exact copy is kept
