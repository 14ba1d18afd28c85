"""`contextkit quality`'s search-plan lines: the chosen configuration, its recall and p50, every
configuration calibration measured and the index kinds compared."""

from __future__ import annotations

from contextkit.governance.quality_report import quality_tables

PLAN = {
    "method": "projected", "rows": 20000, "version": 6, "k": 10, "sample": 400, "target": 0.99,
    "recall": 0.993, "params": {"dims": 128, "shortlist": 400}, "index": "IvfHnswFlat",
    "p50_ms": 1.498, "exact_p50_ms": 3.835, "ann_p50_ms": 10.282,
    "calibrated_at": "2026-12-07T07:30:00+00:00", "reason": "projected reached recall 0.993",
    "candidates": [
        {"method": "exact", "params": {}, "recall": 1.0, "reached": True, "p50_ms": 3.835},
        {"method": "projected", "params": {"dims": 128, "shortlist": 400}, "recall": 0.993,
         "reached": True, "p50_ms": 1.498},
        {"method": "ann", "index": "IvfHnswFlat", "params": {"ef": 1024}, "recall": 0.97,
         "reached": False},
    ],
    "index_builds": [
        {"index": "IvfHnswSq", "build_s": 24.78, "p50_ms": 10.277},
        {"index": "IvfHnswFlat", "build_s": 50.54, "p50_ms": 16.02, "chosen": True},
    ],
}  # fmt: skip


def test_the_search_plan_lines_name_the_chosen_config_and_every_candidate():
    quality = {"view": "docs", "job": "j1", "stats": {"rows": 20000, "columns": {}}, "search": PLAN}
    lines = [x for x in quality_tables(quality) if isinstance(x, str)]
    plan = next(x for x in lines if x.startswith("vector search: projected"))
    assert "parameters dims 128, shortlist 400" in plan and "exact 0.993" in plan
    assert "p50 1.498 ms (exact 3.835 ms, ANN 10.28 ms)" in plan
    measured = next(x for x in lines if "configurations measured" in x)
    assert "projected (dims 128, shortlist 400): recall 0.993, p50 1.498 ms" in measured
    assert "ann (ef 1024): recall 0.970, p50 not timed (target not reached)" in measured
    builds = next(x for x in lines if "index kinds compared" in x)
    assert "IvfHnswSq built in 24.8 s" in builds and "IvfHnswFlat built in 50.5 s" in builds
    assert builds.endswith("(kept)")
