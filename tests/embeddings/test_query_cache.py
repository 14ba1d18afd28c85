"""The query-embedding LRU cache and the single-query path of the torch and hash encoders."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from contextkit.embeddings import EncoderConfigError, HashEncoder, QueryCache, encode_query


def vector(value: float) -> np.ndarray:
    return np.full(3, value, dtype=np.float32)


def test_least_recently_used_entries_are_evicted_first():
    cache = QueryCache(max_entries=2)
    cache.put("m", "a", vector(1))
    cache.put("m", "b", vector(2))
    assert cache.get("m", "a") is not None  # "a" is now the most recently used
    cache.put("m", "c", vector(3))
    assert cache.get("m", "b") is None and len(cache) == 2
    assert cache.get("m", "a")[0] == 1 and cache.get("m", "c")[0] == 3


def test_entries_are_keyed_by_model_and_text():
    cache = QueryCache()
    cache.put("model-a", "shoes", vector(1))
    assert cache.get("model-b", "shoes") is None
    assert cache.get("model-a", "shoes")[0] == 1
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_hit_returns_the_stored_read_only_copy():
    cache = QueryCache()
    original = vector(1)
    stored = cache.get_or_compute("m", "q", lambda _text: original)
    original[0] = 9  # the caller's array is not the cached one
    hit = cache.get_or_compute("m", "q", lambda _text: pytest.fail("computed again"))
    assert hit is stored and hit[0] == 1 and hit.dtype == np.float32
    with pytest.raises(ValueError):
        hit[0] = 2


def test_size_zero_turns_the_cache_off():
    cache = QueryCache(max_entries=0)
    calls = []
    for _ in range(2):
        cache.get_or_compute("m", "q", lambda text: calls.append(text) or vector(1))
    assert calls == ["q", "q"] and len(cache) == 0


@pytest.mark.parametrize("size", [-1, 1.5, True, "10"])
def test_a_bad_size_is_a_config_error(size):
    with pytest.raises(EncoderConfigError, match="query_cache_size"):
        QueryCache(size)


def test_threads_sharing_a_cache_never_exceed_its_bound():
    cache = QueryCache(max_entries=50)

    def fill(worker: int) -> None:
        for i in range(500):
            cache.get_or_compute("m", f"{worker}-{i % 80}", lambda _t: vector(worker))

    threads = [threading.Thread(target=fill, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50 and cache.hits + cache.misses == 2000


def test_encode_query_falls_back_to_encode_for_encoders_without_a_fast_path():
    encoder = HashEncoder(dimension=8)
    single = encode_query(encoder, "red shoes")
    np.testing.assert_array_equal(single, encoder.encode(["red shoes"])[0])
    assert single.shape == (8,)


def test_the_torch_single_query_path_matches_encode_and_caches(minilm):
    texts = ["red running shoes", "How do I get my money back for a broken order?"]
    singles = np.stack([minilm.encode_query(t) for t in texts])
    batch = minilm.encode(texts)
    np.testing.assert_allclose(np.sum(singles * batch, axis=1), 1.0, atol=1e-4)
    hits = minilm.query_cache.hits
    assert encode_query(minilm, texts[0]) is minilm.encode_query(texts[0])
    assert minilm.query_cache.hits == hits + 2
