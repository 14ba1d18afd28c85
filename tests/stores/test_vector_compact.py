"""A compact copy: when a table's float copy does not fit ``exact_cache_max_bytes`` but its 8-bit
vectors and projected scan do, calibration measures the projected search over that compact
copy (shortlist by the 8-bit scan, ranked by the 8-bit vectors, the best few by their float
vectors, spilled to a file), and serving keeps only the compact copy, within the bound."""

from __future__ import annotations

import numpy as np

from contextkit.stores._vector_plan import COMPACT_RERANKS, compact_bytes
from contextkit.stores.vector import CALIBRATION_TARGET, LanceVectorStore
from tests.stores.test_vector_calibration import DIM, rows, shortlist_by_hand
from tests.stores.test_vector_projected import clustered_low_rank

N = 40_000
BOUND = 1_500_000  # the float copy (40k x 16 x 4 = 2.56 MB) does not fit; the compact one does


def compact_found_by_hand(unit, live, projection, q, shortlist, rerank) -> set[str]:
    """The ids a compact plan answers the unit query ``q`` with, by the documented rule: the
    8-bit shortlist, the ``rerank`` best of it by the vectors rounded per dimension to
    -127..127 (each dimension's largest magnitude on 127), then the top 10 by exact cosine."""
    short = shortlist_by_hand(unit, projection, q, shortlist, bits=8)
    scale = (np.abs(unit).max(axis=0) / 127).astype(np.float32)
    codes = np.rint(unit / scale)
    approximate = codes[short] @ (q * scale)
    best = short[np.argsort(-approximate, kind="stable")[:rerank]]
    top = best[np.argsort(-(unit[best] @ q), kind="stable")[:10]]
    return {live[i] for i in top}


def test_a_compact_plan_serves_within_the_bound_as_calibrated(tmp_path):
    vectors = clustered_low_rank(N, seed=5)
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9, exact_cache_max_bytes=BOUND)
    store.apply_changes("t", [rows(vectors[: N // 2])], dim=DIM, key_columns=["doc"])
    # a second commit and deletions: row offsets in the table are no longer the ids' numbers
    store.apply_changes("t", [rows(vectors[N // 2 :], start=N // 2)], dim=DIM, key_columns=["doc"])
    gone = {f"d{i}#0" for i in range(0, N, 97)}
    store.apply_changes("t", [], delete_ids=sorted(gone), dim=DIM, key_columns=["doc"])
    plan = store.calibrate("t", sample=120)
    assert plan.method == "projected", (plan.reason, plan.candidates)
    assert plan.params["refine_bits"] == 8
    assert plan.params["rerank"] in [m * plan.k for m in COMPACT_RERANKS]
    assert plan.recall >= CALIBRATION_TARGET
    assert "compact copy" in plan.reason
    assert "exact" not in {c["method"] for c in plan.candidates}  # not servable here

    served = LanceVectorStore(tmp_path, exact_cache_max_bytes=BOUND)  # another process
    projection = np.load(tmp_path / "_contextkit_search" / "t.projection.npy")
    keep = np.array([f"d{i}#0" not in gone for i in range(N)])
    live = [f"d{i}#0" for i in range(N) if keep[i]]
    unit = vectors[keep] / np.linalg.norm(vectors[keep], axis=1, keepdims=True)
    found = 0
    queries = clustered_low_rank(40, seed=6)
    for q in queries:
        got = [h["id"] for h in served.search("t", vector=q, top_k=10)]
        q = q / np.linalg.norm(q)
        by_hand = compact_found_by_hand(
            unit, live, projection, q, plan.params["shortlist"], plan.params["rerank"]
        )
        assert set(got) == by_hand
        exact = np.argsort(-(unit @ q), kind="stable")[:10]
        found += len(set(got) & {live[i] for i in exact})
        # the distances are the float vectors' (from the spilled file), not the codes'
        hits = served.search("t", vector=q, top_k=3)
        for hit in hits:
            assert abs(hit["score"] - float(unit[live.index(hit["id"])] @ q)) < 1e-5
    assert found / (10 * len(queries)) >= 0.95

    copy = served._exact["t"]
    assert copy.matrix is None and copy.compact is not None
    # the float vectors' file is held open, already gone from the store's folder
    assert not list(tmp_path.rglob("contextkit-vectors-*"))
    memory = served.memory()
    assert memory["tables"]["t"] <= compact_bytes(len(live), DIM, plan.params["dims"]) <= BOUND

    # filtered queries go to LanceDB (no float vectors in memory): its flat search, no index here
    q = queries[0] / np.linalg.norm(queries[0])
    wanted = [f"d{i}" for i in range(1, 2000, 2) if f"d{i}#0" not in gone]
    got = served.search("t", vector=q, top_k=5, filter={"doc": {"in": wanted}})
    allowed = [i for i in range(len(live)) if live[i].split("#")[0] in set(wanted)]
    best = [live[i] for i in sorted(allowed, key=lambda i: -float(unit[i] @ q))[:5]]
    assert [h["id"] for h in got] == best


def test_a_float_copy_that_fits_is_not_made_compact(tmp_path):
    vectors = clustered_low_rank(N, seed=5)
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    plan = store.calibrate("t", sample=120, methods=("projected",))
    assert plan.method == "projected" and "refine_bits" not in plan.params
    store.search("t", vector=vectors[0], top_k=5)
    assert store._exact["t"].compact is None and store._exact["t"].matrix is not None


def test_a_compact_copy_is_weighed_against_the_ann_by_their_paired_rounds():
    """Where only a compact copy fits, the ANN is served only when it reached the target and
    measured faster by the band; otherwise the compact copy's projected search."""
    choose = LanceVectorStore._choose
    both = {
        "projected": {"method": "projected", "recall": 0.996, "reached": True},
        "ann": {"method": "ann", "recall": 0.997, "reached": True},
    }
    rounds = {"projected": [10.0, 10.2, 9.9], "ann": [8.0, 8.1, 7.9]}  # ANN 0.8x: past the band
    p50 = {m: float(np.median(r)) for m, r in rounds.items()}
    method, reason = choose(both, p50, "IvfHnswSq", 0.995, False, rounds=rounds)
    assert method == "ann" and "compact copy" in reason
    close = {"projected": rounds["projected"], "ann": [9.5, 9.6, 9.4]}  # within the band
    p50 = {m: float(np.median(r)) for m, r in close.items()}
    assert choose(both, p50, "IvfHnswSq", 0.995, False, rounds=close)[0] == "projected"
    missed = {**both, "ann": {**both["ann"], "recall": 0.95, "reached": False}}
    p50 = {m: float(np.median(r)) for m, r in rounds.items()}
    method, _ = choose(missed, p50, "IvfHnswSq", 0.995, False, rounds=rounds)
    assert method == "projected"  # a faster ANN below the target does not win


def test_a_compact_plan_on_a_table_emptied_since_answers_nothing(tmp_path):
    vectors = clustered_low_rank(N, seed=5)
    store = LanceVectorStore(tmp_path, ann_min_rows=10**9, exact_cache_max_bytes=BOUND)
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    plan = store.calibrate("t", sample=120)
    assert plan.method == "projected" and plan.params["refine_bits"] == 8
    every = [f"d{i}#0" for i in range(N)]
    store.apply_changes("t", [], delete_ids=every, dim=DIM, key_columns=["doc"])
    served = LanceVectorStore(tmp_path, exact_cache_max_bytes=BOUND)
    assert served.search("t", vector=vectors[0], top_k=5) == []
