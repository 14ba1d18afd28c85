"""Encoders: the packaged local model, hosted models through litellm (against a local stub)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from contextkit.embeddings import (
    Chunker,
    Encoder,
    EncoderConfigError,
    EncoderFailure,
    HashEncoder,
    LiteLLMEncoder,
    SentenceTransformerEncoder,
    build_encoder,
    get_encoder,
    model_configs,
)
from contextkit.embeddings.encoders import TORCH_SPIN_COUNT

# -- the packaged local model --------------------------------------------------------------------


def test_packaged_model_encodes_unit_float32_vectors(minilm):
    texts = ["A cat sits on the mat.", "Stock markets fell sharply today.", "Hello"]
    vectors = minilm.encode(texts)
    assert isinstance(minilm, Encoder)
    assert minilm.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert vectors.shape == (3, 384) and minilm.dimension == 384
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_a_paraphrase_ranks_above_an_unrelated_sentence(minilm):
    query, paraphrase, unrelated = minilm.encode(
        [
            "How do I get my money back for a broken order?",
            "Refunds for damaged items are issued within five days.",
            "The orchestra rehearses every Tuesday evening.",
        ]
    )
    assert query @ paraphrase > query @ unrelated + 0.2


def test_the_model_folder_says_its_dimension_and_token_limit(minilm):
    fresh = SentenceTransformerEncoder()  # reads the folder's config; shares the loaded model
    assert (fresh.dimension, fresh.max_tokens) == (384, 256)
    spans = minilm.token_spans("SKU-QJW-2363 shoes")
    assert spans[0] == (0, 2)  # word pieces: "sk", "##u", "-", ...
    assert spans[-1] == (13, 18)
    # word pieces: water ##proof hiking boots -> windows of 2 tokens, overlapping by 1
    chunker = Chunker.for_encoder(minilm, size=2, overlap=1)
    assert [c.text for c in chunker.split("waterproof hiking boots")] == [
        "waterproof",
        "proof hiking",
        "hiking boots",
    ]


def _openmp_in_a_fresh_process(code: str, **env: str) -> tuple[set[int], str]:
    """Run ``code`` in a new interpreter with each OpenMP runtime printing its settings when it
    loads; returns (the spin counts they printed, what the code printed). (torch has its own
    runtime; scikit-learn, which sentence-transformers imports, another.)"""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    }
    environment.update(OMP_DISPLAY_ENV="verbose", **env)
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    spins = {int(n) for n in re.findall(r"GOMP_SPINCOUNT = '(\d+)'", done.stderr)}
    assert spins, f"no OpenMP runtime printed its settings: {done.stderr[-2000:]}"
    return spins, done.stdout.strip()


def test_torch_loads_with_openmp_threads_spinning_briefly():
    # the model's own load path: torch's idle OpenMP threads spin 10,000 times, not 300,000,
    # before they sleep (the default made one query 5-10x slower on a busy machine), and the
    # variable is gone again once torch has read it, for the process's code and its children
    code = (
        "import os, torch; from contextkit.embeddings import SentenceTransformerEncoder; "
        "v = SentenceTransformerEncoder().encode_query('hello'); "
        "print(v.shape[0], os.environ.get('GOMP_SPINCOUNT'))"
    )
    spins, printed = _openmp_in_a_fresh_process(code.replace("os, torch", "os"))
    assert TORCH_SPIN_COUNT in spins and printed == "384 None"
    # torch imported before contextkit loads a model: its settings are left as they were
    spins, printed = _openmp_in_a_fresh_process(code)
    assert TORCH_SPIN_COUNT not in spins and printed == "384 None"


@pytest.mark.parametrize(
    ("variable", "value", "spin"), [("OMP_WAIT_POLICY", "PASSIVE", 0), ("GOMP_SPINCOUNT", "77", 77)]
)
def test_an_openmp_setting_the_user_made_is_kept(variable, value, spin):
    code = (
        "import os; from contextkit.embeddings.encoders import import_torch; import_torch(); "
        f"import torch; print(os.environ.get('{variable}'))"
    )
    spins, printed = _openmp_in_a_fresh_process(code, **{variable: value})
    assert spin in spins and TORCH_SPIN_COUNT not in spins and printed == value


def test_a_missing_model_folder_is_a_config_error(tmp_path):
    with pytest.raises(EncoderConfigError, match="no sentence-transformers model") as err:
        build_encoder("mine", {"type": "sentence-transformers", "path": str(tmp_path / "nope")})
    assert "never downloads" in err.value.hint


def test_a_relative_model_path_is_resolved_against_the_repo(tmp_path):
    model = tmp_path / "models" / "mini"
    model.mkdir(parents=True)
    (model / "modules.json").write_text("[]")
    encoder = build_encoder("mine", {"path": "models/mini"}, base_dir=tmp_path)
    assert encoder.path == model.resolve()
    assert encoder.name == f"sentence-transformers:{model.resolve()}"


# -- config --------------------------------------------------------------------------------------


def test_minilm_is_always_available():
    assert model_configs(None)["minilm"] == {"type": "sentence-transformers", "path": "default"}
    assert "openai_small" in model_configs({"openai_small": {"type": "litellm", "model": "x"}})
    assert get_encoder("minilm") is get_encoder("minilm", {"other": {"type": "hash"}})
    assert get_encoder("h", {"h": {"type": "hash", "dimension": 4}}).dimension == 4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "onnx"}, "unknown type 'onnx'"),
        ({"type": "litellm", "model": "openai/x", "dimensions": 3}, "unknown option"),
        ({"type": "litellm"}, "needs 'model'"),
        ({"type": "litellm", "model": "openai/x", "batch_size": 0}, "batch_size"),
        ({"type": "hash", "dimension": "8"}, "dimension"),
    ],
)
def test_invalid_model_configs_name_the_problem(config, message):
    with pytest.raises(EncoderConfigError, match=message) as err:
        build_encoder("bad", config)
    assert "model 'bad'" in err.value.message


def test_an_undeclared_model_lists_the_declared_ones():
    with pytest.raises(EncoderConfigError, match="unknown embedding model 'nope'") as err:
        get_encoder("nope", {"openai_small": {"type": "litellm", "model": "openai/x"}})
    assert "minilm" in err.value.hint and "openai_small" in err.value.hint


def test_hash_encoder_is_deterministic():
    a, b = HashEncoder(dimension=16), HashEncoder(dimension=16)
    np.testing.assert_array_equal(a.encode(["x", "y"]), b.encode(["x", "y"]))
    assert a.encode(["x"]).shape == (1, 16) and a.calls == 2 and a.texts_encoded == 3


# -- hosted models through litellm ---------------------------------------------------------------


@pytest.fixture
def hosted(openai_stub, monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", "sk-test")

    def make(**options):
        config = {
            "type": "litellm",
            "model": "openai/stub-embedding",
            "api_base": openai_stub.base_url,
            "api_key_env": "STUB_API_KEY",
            "retry_backoff_s": 0.001,
            **options,
        }
        return build_encoder("hosted", config)

    return make


def test_hosted_model_batches_and_normalizes(openai_stub, hosted):
    encoder = hosted(batch_size=3, dimension=8)
    texts = [f"text {i}" for i in range(7)]
    vectors = encoder.encode(texts)
    calls = openai_stub.requests_to("/v1/embeddings")
    assert [len(r.json["input"]) for r in calls] == [3, 3, 1]
    assert calls[0].headers.get("authorization") == "Bearer sk-test"
    assert vectors.shape == (7, 8) and vectors.dtype == np.float32
    expected = np.array([openai_stub.vector_for(t, 8) for t in texts], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_hosted_dimension_is_probed_when_not_configured(openai_stub, hosted):
    encoder = hosted()
    assert encoder.dimension == openai_stub.dimension
    assert len(openai_stub.requests_to("/v1/embeddings")) == 1


def test_a_configured_dimension_is_checked(hosted):
    with pytest.raises(EncoderFailure, match="shape"):
        hosted(dimension=1536).encode(["a"])


def test_transient_failures_are_retried_with_backoff(openai_stub, hosted):
    openai_stub.fail(500, times=2)
    encoder = hosted(max_retries=3)
    assert encoder.encode(["a"]).shape == (1, 8)
    assert len(openai_stub.requests_to("/v1/embeddings")) == 3


def test_retries_are_bounded(openai_stub, hosted):
    openai_stub.fail(503)
    with pytest.raises(EncoderFailure) as err:
        hosted(max_retries=2).encode(["a"])
    assert err.value.attempts == 3 and err.value.provider_status == 503
    assert len(openai_stub.requests_to("/v1/embeddings")) == 3


def test_auth_errors_are_not_retried(openai_stub, hosted):
    openai_stub.fail(401)
    with pytest.raises(EncoderFailure) as err:
        hosted(max_retries=3).encode(["a"])
    assert err.value.attempts == 1 and err.value.provider_status == 401
    assert "STUB_API_KEY" in err.value.hint


def test_a_missing_api_key_variable_is_named(hosted, monkeypatch):
    monkeypatch.delenv("STUB_API_KEY")
    with pytest.raises(EncoderFailure, match="STUB_API_KEY is not set"):
        hosted(dimension=8).encode(["a"])


def test_backoff_waits_are_bounded():
    waits = []
    encoder = LiteLLMEncoder(
        "openai/x",
        api_base="http://127.0.0.1:9/v1",  # nothing listens there: connection refused
        max_retries=4,
        retry_backoff_s=1.0,
        max_backoff_s=2.0,
        timeout_s=2,
        sleep=waits.append,
    )
    with pytest.raises(EncoderFailure) as err:
        encoder.encode(["a"])
    assert err.value.attempts == 5 and len(waits) == 4
    assert all(0.5 <= w <= 2.0 for w in waits) and waits[-1] <= 2.0
