"""ensure_indexes builds only the index kinds that can win: none when the table's in-memory
search answers under LanceDB's per-query floor, the second HNSW kind only when the first came
close; what was skipped and why is recorded in the plan (the job record) and in `contextkit
quality`, and not measured again until the table grew."""

from __future__ import annotations

import numpy as np

from contextkit.governance.quality_report import quality_tables
from contextkit.stores.vector import LanceVectorStore
from tests.stores.test_vector_calibration import DIM, brute_force, clustered, rows


def test_no_index_is_built_when_memory_search_is_under_lancedbs_floor(tmp_path):
    vectors = clustered(2000, seed=41)
    store = LanceVectorStore(tmp_path, ann_min_rows=1000)
    store.calibration_sample = 60
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    report = store.ensure_indexes("t")
    # numpy over 2,000 x 16 takes a fraction of LanceDB's fixed cost per query: no HNSW build
    assert report.created == ["fts:text", "btree:id"]
    assert [s["index"] for s in report.skipped] == ["IvfHnswSq", "IvfHnswFlat"]
    plan = report.plan
    assert plan.index is None and plan.index_builds == [] and plan.method in ("exact", "projected")
    assert plan.index_skipped == report.skipped
    skip = plan.index_skipped[0]
    assert skip["best"] in ("exact", "projected") and skip["vs_floor"] < 1
    assert skip["best_p50_ms"] < skip["floor_p50_ms"]
    assert "LanceDB's per-query floor" in skip["reason"] and "not built" in plan.reason
    # searches are exact (or calibrated), from memory
    for q in clustered(10, seed=42):
        got = [h["id"] for h in store.search("t", vector=q, top_k=10)]
        assert len(set(got) & set(brute_force(vectors, q, 10))) >= 9
    # the quality report says what was skipped and why
    lines = [
        x for x in quality_tables({"view": "docs", "job": "j", "stats": {"rows": 2000,
                                    "columns": {}}, "search": plan.as_dict()})
        if isinstance(x, str)
    ]  # fmt: skip
    skipped = next(x for x in lines if "index kinds skipped" in x)
    assert "IvfHnswSq" in skipped and "IvfHnswFlat" in skipped and "floor" in skipped

    # a few more rows (< 10%): the skip holds, nothing measured or built again
    store.apply_changes("t", [rows(clustered(50, seed=43), start=2000)], dim=DIM)
    again = store.ensure_indexes("t")
    assert again.created == [] and again.skipped == report.skipped and not again.calibrated
    assert again.plan.calibrated_at == plan.calibrated_at
    # grown by more than 10%: measured again (the floor too)
    store.apply_changes("t", [rows(clustered(400, seed=44), start=2050)], dim=DIM)
    grown = store.ensure_indexes("t")
    assert grown.calibrated and grown.plan.rows == 2450
    assert grown.skipped and grown.skipped != report.skipped  # new timings
    # a store that may not skip builds them (and the plan forgets the skip)
    store.skip_unwinnable_indexes = False
    store.apply_changes("t", [rows(clustered(300, seed=45), start=2450)], dim=DIM)
    built = store.ensure_indexes("t")
    assert {"HnswSq:vector", "HnswFlat:vector"} & set(built.created)
    assert built.plan.index is not None and built.plan.index_skipped == []


def test_the_second_kind_is_built_only_when_the_first_came_close(tmp_path, monkeypatch):
    """With the floor taken out of the way (as if LanceDB answered instantly), the first kind
    is built, and measured far behind exact search over 1,500 x 16 in memory: the second kind
    is not built, and the plan says so with the ratio it read."""
    monkeypatch.setattr(
        LanceVectorStore, "_floor_path", staticmethod(lambda handle, probe: lambda q: None)
    )
    vectors = clustered(1500, seed=51)
    store = LanceVectorStore(tmp_path, ann_min_rows=1000)
    store.calibration_sample = 60
    store.apply_changes("t", [rows(vectors)], dim=DIM, key_columns=["doc"])
    report = store.ensure_indexes("t")
    assert "HnswSq:vector" in report.created and "HnswFlat:vector" not in report.created
    plan = report.plan
    assert plan.index == "IvfHnswSq"
    [build] = plan.index_builds
    assert build["index"] == "IvfHnswSq" and build["chosen"] and build["p50_ms"] > 0
    assert build["floor_check"]["vs_floor"] >= 1  # measured first, and no reason to skip
    [skip] = plan.index_skipped
    assert skip["index"] == "IvfHnswFlat" and skip["first"] == "IvfHnswSq"
    assert skip["vs_best"] >= 1.35 and "within 1.5x of each other" in skip["reason"]
    # the ANN walk made while choosing is the plan's ANN candidate (not walked twice)
    ann = next(c for c in plan.candidates if c["method"] == "ann")
    assert ann["params"] == build["params"] and ann["recall"] == build["recall"]
    assert np.isfinite(plan.p50_ms)
