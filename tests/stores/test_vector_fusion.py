"""Hybrid fusion with tunable depth and weights: RRF and the normalised-score blend."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from contextkit.stores.vector import InvalidSearchError, LanceVectorStore

DIM = 4
TEXTS = [
    "red running shoes for trail",
    "blue running jacket",
    "green garden hose",
    "red garden gloves",
    "yellow rain boots",
    "red rain jacket for running",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((len(TEXTS), DIM)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(TEXTS))]
    batch = pa.record_batch(
        {
            "id": pa.array([f"{i}#0" for i in ids]),
            "doc": pa.array(ids),
            "chunk_index": pa.array([0] * len(ids), pa.int32()),
            "char_offset": pa.array([0] * len(ids), pa.int64()),
            "text": pa.array(TEXTS),
            "content_hash": pa.array([hashlib.sha1(t.encode()).hexdigest() for t in TEXTS]),
            "row_hash": pa.array([hashlib.sha1(t.encode()).hexdigest() for t in TEXTS]),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        }
    )
    s = LanceVectorStore(tmp_path_factory.mktemp("fusion"))
    s.apply_changes("t", [batch], dim=DIM, key_columns=["doc"])
    s.ensure_indexes("t")
    return s, vectors


def test_weights_move_hybrid_towards_one_list(store):
    s, vectors = store
    query = vectors[2]  # the vector leg's best is d2 ("green garden hose"), no text match
    text_only = s.search("t", vector=query, text="red running", mode="text", top_k=3)
    vector_only = s.search("t", vector=query, mode="vector", top_k=1)
    assert vector_only[0]["id"] == "d2#0"
    # RRF with the text list weighted 0 ranks as the vector list; with vector 0 as the text list
    as_vector = s.search("t", vector=query, text="red running", mode="hybrid", top_k=1,
                         weights=(1, 0))  # fmt: skip
    as_text = s.search("t", vector=query, text="red running", mode="hybrid", top_k=1,
                       weights=(0, 1))  # fmt: skip
    assert as_vector[0]["id"] == "d2#0"
    assert as_text[0]["id"] == text_only[0]["id"]


def test_blend_scores_are_weighted_normalised_sums(store):
    s, vectors = store
    hits = s.search("t", vector=vectors[0], text="red running", mode="hybrid", top_k=6,
                    fusion="blend", weights=(1.0, 0.5))  # fmt: skip
    for h in hits:
        assert 0.0 <= h["score"] <= 1.5 + 1e-9
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # the best vector hit scores at least its full vector weight (1.0 x normalised 1.0)
    best_vector = s.search("t", vector=vectors[0], mode="vector", top_k=1)[0]["id"]
    assert next(h for h in hits if h["id"] == best_vector)["score"] >= 1.0 - 1e-9


def test_depth_bounds_the_candidates_of_each_list(store):
    s, vectors = store
    shallow = s.search("t", vector=vectors[1], text="garden", mode="hybrid", top_k=1, depth=1)
    assert len(shallow) == 1
    # depth 1: only each list's best can be fused, so the hit is one of the two leaders
    leaders = {
        s.search("t", vector=vectors[1], mode="vector", top_k=1)[0]["id"],
        s.search("t", vector=vectors[1], text="garden", mode="text", top_k=1)[0]["id"],
    }
    assert shallow[0]["id"] in leaders


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fusion": "max"}, "unknown fusion"),
        ({"weights": (1,)}, "two numbers"),
        ({"weights": (0, 0)}, "not both 0"),
        ({"weights": (-1, 1)}, "non-negative"),
        ({"depth": 0}, "depth must be"),
    ],
)
def test_bad_fusion_options_are_refused(store, options, message):
    s, vectors = store
    with pytest.raises(InvalidSearchError, match=message):
        s.search("t", vector=vectors[0], text="red", mode="hybrid", **options)
