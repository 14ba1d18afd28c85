"""The ONNX Runtime backend: the packaged model exported once per session into a temp cache,
its vectors against torch's, the cache reused, and the repo-config options that select it."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from contextkit.embeddings import (
    Chunker,
    Encoder,
    EncoderConfigError,
    OnnxEncoder,
    build_encoder,
    encode_query,
    export_onnx,
    onnx_export,
    packaged_model_path,
)
from contextkit.embeddings.onnx_encoder import length_buckets

pytest.importorskip("onnxruntime")  # the optional ONNX backend (the package imports it lazily)
onnx = pytest.importorskip("onnx")  # to read the exported graphs

TEXTS = [
    "A cat sits on the mat.",
    "Stock markets fell sharply today after the central bank raised interest rates again.",
    "How do I get my money back for a broken order?",
    "waterproof hiking boots with a rubber sole",
    "List information about the files in the current directory, sorted alphabetically unless "
    "another order is asked for; with -l, print permissions, owner, size and modification time.",
]

# Product descriptions like the quickstart's generator writes (examples/quickstart).
PRODUCTS = [
    "The Brightpan Atlas 2 Cast Iron Skillet is an ergonomic cast iron skillet from the Brightpan "
    "kitchen range, built for meal prep on Sundays. You also get precise temperature control. It "
    "is a great choice for brewing morning coffee as well as searing steaks. Product code: "
    "SKU-LRU-4853. Key features include a PFOA-free non-stick coating, oven-safe construction up "
    "to 260 degrees Celsius, and dishwasher-safe parts. Made from enamelled cast iron, it cleans "
    "up in seconds.",
    "The Northpeak Crest 6 Running Shoes is a cushioned running shoes from the Northpeak shoes "
    "range, built for rainy commutes. Key features include a waterproof, breathable membrane that "
    "keeps feet dry in rain and puddles, a grippy rubber outsole with deep lugs for loose terrain, "
    "and a cushioned midsole that absorbs impact on hard pavement. Product code: SKU-OUB-6468. It "
    "is a great choice for hiking muddy trails as well as casual weekends.",
    "The Rootwell Pioneer 8 Watering Can is an ergonomic watering can from the Rootwell garden "
    "range, built for growing vegetables. You also get an automatic dusk-to-dawn sensor. Made from "
    "recycled HDPE plastic, it is easy on the hands and back. Key features include hardened steel "
    "blades that cut cleanly, a long-life lithium battery, and a self-watering reservoir.",
    "The Atlas Editions Apex 6 Gardening Guide is an award-winning gardening guide from the Atlas "
    "Editions books range, built for book club discussions. Designed with students and readers in "
    "mind, it rewards a second read. Made from acid-free paper, it is easy to read in short "
    "sessions. Key features include QR codes linking to bonus online material and full-colour "
    "photographs on every spread. Product code: SKU-PCU-8462.",
]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """A cache dir holding the packaged model's fp32 and int8 exports (exported once, ~20 s)."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    export_onnx(packaged_model_path(), quantize="int8", cache_dir=cache)  # exports fp32 first
    return cache


@pytest.fixture(scope="session")
def onnx_fp32(onnx_cache):
    return OnnxEncoder(cache_dir=onnx_cache)


@pytest.fixture(scope="session")
def onnx_int8(onnx_cache):
    return OnnxEncoder(cache_dir=onnx_cache, quantize="int8")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# -- vectors ---------------------------------------------------------------------------------------


def test_fp32_vectors_match_torch_in_a_padded_batch(minilm, onnx_fp32):
    expected = minilm.encode(TEXTS)
    vectors = onnx_fp32.encode(TEXTS)  # texts of different lengths: one padded batch
    assert isinstance(onnx_fp32, Encoder)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, expected).min() >= 0.999
    assert onnx_fp32.encode([]).shape == (0, 384)


def test_int8_vectors_stay_close_to_torch(minilm, onnx_int8):
    assert not onnx_int8.optimize and not onnx_int8.artifact.optimized  # the plain graph
    expected = minilm.encode(TEXTS)
    assert cosines(onnx_int8.encode(TEXTS), expected).min() >= 0.99
    one = np.stack([onnx_int8.encode_query(t) for t in TEXTS])
    assert cosines(one, expected).min() >= 0.99


def test_batches_are_returned_in_input_order_whatever_the_batch_size(onnx_fp32, onnx_cache):
    small_batches = OnnxEncoder(cache_dir=onnx_cache, batch_size=2)
    texts = [TEXTS[i % len(TEXTS)] + f" ({i})" for i in range(7)]
    np.testing.assert_allclose(small_batches.encode(texts), onnx_fp32.encode(texts), atol=1e-5)


def test_length_buckets_restore_the_callers_order(onnx_fp32):
    """Texts of very different lengths run in several length buckets; each vector comes back
    at its text's place, equal to the text encoded alone (float32 does not depend on padding)."""
    texts = [TEXTS[4] * (1 + i % 3) if i % 2 else TEXTS[i % 4] for i in range(9)]
    lengths = [len(e.ids) for e in onnx_fp32._loaded().tokenizer.encode_batch(texts)]
    assert len(length_buckets(lengths, onnx_fp32.batch_size)) >= 3
    alone = np.stack([onnx_fp32.encode([t])[0] for t in texts])
    np.testing.assert_allclose(onnx_fp32.encode(texts), alone, atol=1e-5)


def test_length_buckets_bound_padding_rows_and_tokens():
    lengths = [5, 200, 7, 6, 190, 120, 5, 118, 6, 250] * 3
    buckets = length_buckets(lengths, max_rows=4)
    rows = np.concatenate(buckets)
    assert sorted(rows.tolist()) == list(range(len(lengths)))  # every row once
    assert [lengths[r] for r in rows] == sorted(lengths, reverse=True)  # longest first
    for bucket in buckets:
        sizes = [lengths[r] for r in bucket]
        padding = len(sizes) * max(sizes) - sum(sizes)
        assert len(sizes) <= 4 and padding <= max(sum(sizes) / 8, 8)
    assert length_buckets([], max_rows=4) == []


def test_text_longer_than_the_model_window_is_truncated_like_torch(minilm, onnx_fp32):
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 80)  # ~720 tokens
    assert cosines(onnx_fp32.encode([long_text]), minilm.encode([long_text]))[0] >= 0.999
    assert len(onnx_fp32.token_spans(long_text)) == len(minilm.token_spans(long_text)) > 256


def test_token_spans_and_limits_are_the_models(minilm, onnx_fp32):
    text = "SKU-QJW-2363 waterproof shoes"
    assert onnx_fp32.token_spans(text) == minilm.token_spans(text)
    assert (onnx_fp32.dimension, onnx_fp32.max_tokens) == (384, 256)
    chunker = Chunker.for_encoder(onnx_fp32, size=2, overlap=1)
    assert [c.text for c in chunker.split("waterproof hiking boots")] == [
        "waterproof",
        "proof hiking",
        "hiking boots",
    ]


def test_the_name_is_the_models_and_the_variant_says_the_backend(minilm, onnx_fp32, onnx_int8):
    assert onnx_fp32.name == onnx_int8.name == minilm.name
    assert (minilm.variant, onnx_fp32.variant, onnx_int8.variant) == (
        "torch",
        "onnx-fp32",
        "onnx-int8",
    )
    assert len({minilm.cache_identity, onnx_fp32.cache_identity, onnx_int8.cache_identity}) == 3


# -- the single-query path and its cache ---------------------------------------------------------


def test_encode_query_matches_encode_and_a_repeat_hits_the_cache(onnx_cache):
    encoder = OnnxEncoder(cache_dir=onnx_cache, query_cache_size=8)
    first = encoder.encode_query("red running shoes")
    again = encode_query(encoder, "red running shoes")
    assert again is first
    assert (encoder.query_cache.hits, encoder.query_cache.misses) == (1, 1)
    assert first.shape == (384,) and first.dtype == np.float32
    assert cosines(first[None], encoder.encode(["red running shoes"]))[0] >= 0.9999
    with pytest.raises(ValueError):
        first[0] = 1.0  # cached vectors are shared: read-only


# -- the export cache ----------------------------------------------------------------------------


def test_a_second_load_reuses_the_export(onnx_cache, monkeypatch):
    def no_export(*_args, **_kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "_export_float32", no_export)
    monkeypatch.setattr(onnx_export, "_optimize_graph", no_export)
    monkeypatch.setattr(onnx_export, "_quantize_int8", no_export)
    for quantize in (None, "int8"):
        artifact = export_onnx(packaged_model_path(), quantize=quantize, cache_dir=onnx_cache)
        assert artifact.created is False and artifact.model_file.is_file()
        assert artifact.quantize == quantize and artifact.dimension == 384
    fresh = OnnxEncoder(cache_dir=onnx_cache, quantize="int8")
    assert fresh.encode(["still works"]).shape == (1, 384)
    folders = sorted(p.name for p in onnx_cache.iterdir())
    assert len(folders) == 2 and not [f for f in folders if f.startswith(".")]  # no temp left


def test_the_int8_export_records_what_stays_float(onnx_cache):
    """Every projection is int8; only the outlier channels' small side paths stay float32."""
    int8 = export_onnx(packaged_model_path(), quantize="int8", cache_dir=onnx_cache)
    fp32 = export_onnx(packaged_model_path(), cache_dir=onnx_cache)
    meta = json.loads((int8.folder / "meta.json").read_text())
    assert meta["optimized"] is False and meta["recipe"] == onnx_export._INT8_RECIPE
    outliers = meta["outlier_channels"]
    # MiniLM's peaks on [CLS] sit in a few channels of its first layers' feed-forward inputs.
    assert outliers and all(
        1 <= len(c) <= onnx_export._MAX_OUTLIER_CHANNELS for c in outliers.values()
    )
    side = [f"{name}/outliers/MatMul_{end}" for name in outliers for end in ("in", "out")]
    assert sorted(meta["float_nodes"]) == sorted(side)
    graph = onnx.load(str(int8.model_file)).graph
    float_products = {n.name for n in graph.node if n.op_type == "MatMul"}
    # Float32 MatMuls left: attention's two products per layer (activations on both sides,
    # which dynamic quantization leaves alone) and the side paths; no feed-forward projection.
    assert float_products - set(side) == {
        n for n in float_products if n.endswith(("/self/MatMul", "/self/MatMul_1"))
    }
    assert len(float_products - set(side)) == 12
    assert int8.model_file.stat().st_size < fp32.model_file.stat().st_size / 3  # 23 vs 90 MB


def test_int8_vectors_of_product_descriptions_stay_close_to_torch(minilm, onnx_int8):
    """The quickstart's kind of text (130-190 tokens, batches of close lengths), where all
    projections in int8 gain the most: within a cosine of 0.99 of torch, batched and alone."""
    expected = minilm.encode(PRODUCTS)
    batched = onnx_int8.encode(PRODUCTS * 8)  # several buckets of close lengths
    assert cosines(batched[: len(PRODUCTS)], expected).min() >= 0.99
    assert cosines(batched[-len(PRODUCTS) :], expected).min() >= 0.99
    alone = np.stack([onnx_int8.encode([t])[0] for t in PRODUCTS])
    assert cosines(alone, expected).min() >= 0.99


def test_a_new_int8_recipe_requantizes_from_the_cached_export(onnx_cache, tmp_path, monkeypatch):
    """An int8 entry of an older recipe is not reused; the new one is built from the float32
    export already in the cache (no second export), and the float32 entry stays."""
    for folder in onnx_cache.iterdir():  # the session's exports, hard-linked
        shutil.copytree(folder, tmp_path / folder.name, copy_function=os.link)
    before = export_onnx(packaged_model_path(), quantize="int8", cache_dir=tmp_path)

    def no_export(*_args, **_kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "_export_float32", no_export)
    monkeypatch.setattr(onnx_export, "_INT8_RECIPE", onnx_export._INT8_RECIPE + 1)
    after = export_onnx(packaged_model_path(), quantize="int8", cache_dir=tmp_path)
    assert after.created and after.folder != before.folder and before.folder.is_dir()
    meta = json.loads((after.folder / "meta.json").read_text())
    assert meta["recipe"] == onnx_export._INT8_RECIPE


@pytest.mark.slow
def test_the_optimized_int8_variant_is_fused_stays_close_to_torch_and_is_reused(
    minilm, onnx_cache, tmp_path, monkeypatch
):
    """``optimize: true``: the optimizer's fused graph (cached as its own entry next to the
    export), quantized; built once (~10 s), then reused without optimizing or quantizing."""
    for folder in onnx_cache.iterdir():  # the session's exports, hard-linked: no second export
        shutil.copytree(folder, tmp_path / folder.name, copy_function=os.link)
    encoder = OnnxEncoder(cache_dir=tmp_path, quantize="int8", optimize=True)
    assert encoder.variant == "onnx-int8-opt"
    assert cosines(encoder.encode(TEXTS), minilm.encode(TEXTS)).min() >= 0.99
    meta = json.loads((encoder.artifact.folder / "meta.json").read_text())
    assert meta["optimized"] is True and meta["fused"]["Attention"] == 6  # one per layer
    # The fused GELU (BiasGelu) is split like the plain one: only the side paths stay float32.
    assert meta["outlier_channels"] and len(meta["float_nodes"]) == 2 * len(
        meta["outlier_channels"]
    )
    variants = sorted(p.name.split("-", 1)[1].rsplit("-", 1)[0] for p in tmp_path.iterdir())
    assert variants == ["fp32", "fp32-opt", "int8", "int8-opt"]  # each step cached once

    def no_build(*_args, **_kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(onnx_export, "_optimize_graph", no_build)
    monkeypatch.setattr(onnx_export, "_quantize_int8", no_build)
    again = OnnxEncoder(cache_dir=tmp_path, quantize="int8", optimize=True)
    assert again.artifact.created is False and again.artifact.optimized
    fused = export_onnx(packaged_model_path(), optimize=True, cache_dir=tmp_path)
    assert fused.created is False and fused.folder.name.split("-")[-2] == "opt"


def test_the_cache_key_follows_the_model_files_and_the_options(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "modules.json").write_text("[]")
    folder = onnx_export.cached_variant_folder(model, cache_dir=tmp_path / "cache")
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("my-model-fp32-")
    assert folder == onnx_export.cached_variant_folder(model, cache_dir=tmp_path / "cache")
    int8 = onnx_export.cached_variant_folder(model, quantize="int8", cache_dir=tmp_path / "cache")
    assert int8 != folder and int8.name.startswith("my-model-int8-")
    (model / "config.json").write_text("{}")  # the model folder changed: a new entry
    assert onnx_export.cached_variant_folder(model, cache_dir=tmp_path / "cache") != folder


def test_a_concurrent_export_that_finishes_first_wins(tmp_path, monkeypatch):
    """Two processes export the same variant: the second rename finds the folder published
    and keeps it; its own temp folder is removed, nothing is half-written."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "modules.json").write_text("[]")
    cache = tmp_path / "cache"
    final = onnx_export.cached_variant_folder(model, cache_dir=cache)

    def write_variant(folder, marker):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_text(marker)
        (folder / "meta.json").write_text(json.dumps({"dimension": 4, "max_tokens": 8}))

    def racing_export(_model_path, out):
        write_variant(final, "first")  # the other process publishes while we export
        (out / "model.onnx").write_text("second")
        (out / "meta.json").write_text(json.dumps({"dimension": 4, "max_tokens": 8}))

    monkeypatch.setattr(onnx_export, "_export_float32", racing_export)
    artifact = export_onnx(model, cache_dir=cache)
    assert artifact.folder == final and artifact.model_file.read_text() == "first"
    assert [p.name for p in cache.iterdir()] == [final.name]


def _damaged_int8_cache(onnx_cache, dest, monkeypatch, damage):
    """A copy of the session cache (hard links: model files are never written in place) whose
    int8 model file ``damage(bytes)`` replaced. Rebuilding it re-publishes the good file instead
    of quantizing again (seconds), counted in the returned list."""
    for folder in onnx_cache.iterdir():
        shutil.copytree(folder, dest / folder.name, copy_function=os.link)
    folder = onnx_export.cached_variant_folder(
        packaged_model_path(), quantize="int8", cache_dir=dest
    )
    good = dest / "good-int8"
    shutil.copytree(folder, good, copy_function=os.link)
    model = folder / "model.onnx"
    damaged = damage(model.read_bytes())
    model.unlink()
    model.write_bytes(damaged)
    rebuilt = []

    def requantize(_source, out):
        rebuilt.append(out)
        for name in ("model.onnx", "tokenizer.json", "meta.json"):
            os.link(good / name, out / name)

    monkeypatch.setattr(onnx_export, "_quantize_int8", requantize)
    return folder, rebuilt


def test_a_cut_short_model_file_is_rebuilt_with_a_warning(
    onnx_cache, tmp_path, monkeypatch, caplog
):
    folder, rebuilt = _damaged_int8_cache(
        onnx_cache, tmp_path, monkeypatch, lambda whole: whole[: len(whole) // 2]
    )
    with caplog.at_level(logging.WARNING, logger="contextkit.embeddings"):
        artifact = export_onnx(packaged_model_path(), quantize="int8", cache_dir=tmp_path)
    assert artifact.created is True and len(rebuilt) == 1 and artifact.folder == folder
    assert f"the cached ONNX model at {folder} is damaged" in caplog.text
    assert "rebuilding it" in caplog.text and "bytes" in caplog.text
    assert export_onnx(packaged_model_path(), quantize="int8", cache_dir=tmp_path).created is False


def test_a_model_file_onnx_runtime_refuses_is_rebuilt_once(
    minilm, onnx_cache, tmp_path, monkeypatch, caplog
):
    folder, rebuilt = _damaged_int8_cache(
        onnx_cache,
        tmp_path,
        monkeypatch,
        lambda whole: b"\0" * len(whole),  # size fits
    )
    encoder = OnnxEncoder(cache_dir=tmp_path, quantize="int8")
    with caplog.at_level(logging.WARNING, logger="contextkit.embeddings"):
        vectors = encoder.encode(TEXTS[:2])
    assert cosines(vectors, minilm.encode(TEXTS[:2])).min() >= 0.99
    assert encoder.artifact.created is True and len(rebuilt) == 1
    assert caplog.text.count("is damaged") == 1 and "could not load" in caplog.text


def test_an_unreadable_cache_entry_is_rebuilt(tmp_path, monkeypatch, caplog):
    model = tmp_path / "m"
    model.mkdir()
    (model / "modules.json").write_text("[]")
    folder = onnx_export.cached_variant_folder(model, cache_dir=tmp_path)
    folder.mkdir()
    (folder / "meta.json").write_text("{not json")

    def stub_export(_model_path, out):
        (out / "model.onnx").write_text("graph")
        (out / "meta.json").write_text(json.dumps({"dimension": 4, "max_tokens": 8}))

    monkeypatch.setattr(onnx_export, "_export_float32", stub_export)
    with caplog.at_level(logging.WARNING, logger="contextkit.embeddings"):
        artifact = export_onnx(model, cache_dir=tmp_path)
    assert artifact.created is True and artifact.model_file.read_text() == "graph"
    assert "meta.json is unreadable" in caplog.text and str(folder) in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- repo config ---------------------------------------------------------------------------------


def test_backend_onnx_in_a_model_config_builds_an_onnx_encoder_without_exporting(tmp_path):
    config = {"type": "sentence-transformers", "path": "default", "backend": "onnx"}
    encoder = build_encoder(
        "fast", {**config, "quantize": "int8", "cache_dir": "cache"}, base_dir=tmp_path
    )
    assert isinstance(encoder, OnnxEncoder) and encoder.quantize == "int8"
    assert encoder.cache_dir == tmp_path / "cache" and encoder.dimension == 384
    assert not (tmp_path / "cache").exists()  # building validates only; export is on first use
    assert type(build_encoder("plain", {"type": "sentence-transformers"})).__name__ == (
        "SentenceTransformerEncoder"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "int8"}, "need backend: onnx"),
        ({"backend": "tensorrt"}, "unknown backend 'tensorrt'"),
        ({"backend": "onnx", "quantize": "int4"}, "unknown quantize option 'int4'"),
        ({"optimize": False}, "need backend: onnx"),
        ({"backend": "onnx", "optimize": "yes"}, "optimize must be true or false"),
        ({"backend": "onnx", "threads": 0}, "threads must be a positive integer"),
        ({"backend": "onnx", "device": "cuda"}, "runs on CPU"),
        ({"backend": "onnx", "query_cache_size": -1}, "query_cache_size"),
    ],
)
def test_invalid_backend_options_name_the_problem(options, message):
    with pytest.raises(EncoderConfigError, match=message) as err:
        build_encoder("bad", {"type": "sentence-transformers", **options})
    assert "model 'bad'" in err.value.message
