"""Exact search is served, not an approximate configuration, when the check that skipped the
index builds measured it under LanceDB's per-query floor (recall 1 at a p50 no index query
reaches); the plan says so, and it is the job record's and `contextkit quality`'s."""

from __future__ import annotations

from contextkit.stores.vector import LanceVectorStore
from tests.stores.test_vector_calibration import DIM, brute_force, low_rank, rows

REACHED = {
    "exact": {"recall": 1.0, "reached": True},
    "projected": {"recall": 0.996, "reached": True},
}
FLOOR = {"floor_p50_ms": 3.0, "exact_p50_ms": 2.0, "exact_vs_floor": 0.7}


def test_exact_under_the_floor_is_chosen_over_a_faster_projected_search():
    choose = LanceVectorStore._choose
    p50 = {"exact": 2.0, "projected": 1.0}
    method, reason = choose(REACHED, p50, None, 0.995, True, floor=FLOOR)
    assert method == "exact" and "floor" in reason and "0.70x" in reason
    # exact over the floor, or no floor measured (an older record): the faster one, as before
    assert choose(REACHED, p50, None, 0.995, True, floor={**FLOOR, "exact_vs_floor": 1.2})[0] == (
        "projected"
    )
    assert choose(REACHED, p50, None, 0.995, True, floor=None)[0] == "projected"
    # only approximate methods allowed (benchmarks forcing one): the floor does not apply
    methods = ("projected",)
    assert choose(REACHED, p50, None, 0.995, True, methods, floor=FLOOR)[0] == "projected"


def test_a_small_table_whose_builds_were_skipped_is_served_exactly(tmp_path):
    vectors = low_rank(3000, seed=71)  # a table the projected search shortlists well
    store = LanceVectorStore(tmp_path / "measured", ann_min_rows=1000)
    store.calibration_sample = 100
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    report = store.ensure_indexes("t")
    # the floor check records exact search's time beside the floor's, with the skipped kinds or
    # with the build it allowed (which one depends on this machine's timing)
    floor = report.skipped[0] if report.skipped else report.plan.index_builds[0]["floor_check"]
    assert floor["exact_vs_floor"] > 0 and floor["exact_p50_ms"] > 0 and floor["floor_p50_ms"] > 0

    # the plan made from a floor check that measured exact search under the floor (fixed
    # numbers, not this machine's timing), on a table no index is built for
    store = LanceVectorStore(tmp_path / "rule", ann_min_rows=10**9)
    store.calibration_sample = 100
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    under = [
        {
            "index": "IvfHnswSq",
            "reason": "not built: the in-memory search measured under LanceDB's per-query floor",
            "floor_p50_ms": 3.0,
            "exact_p50_ms": 2.1,
            "exact_vs_floor": 0.7,
        }
    ]
    plan = store.calibrate("t", index_skipped=under)
    assert plan.method == "exact" and plan.reason.startswith("exact search measured 2.10 ms")
    assert "recall 1 under any index query's p50" in plan.reason
    assert any(c["method"] == "projected" and c["reached"] for c in plan.candidates)
    served = LanceVectorStore(tmp_path / "rule")  # another process follows the stored plan
    assert served.search_plan("t") == plan
    for q in low_rank(10, seed=72):
        got = [h["id"] for h in served.search("t", vector=q, top_k=10)]
        assert got == brute_force(vectors, q, 10)
