"""The OpenAI stub itself: what other tests (hosted embeddings, LLM calls) can rely on."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import pytest
from openai_stub import OpenAIStub


def test_models_endpoint_lists_the_configured_models(make_openai_stub):
    stub = make_openai_stub(models=("m1", "m2"))

    body = httpx.get(f"{stub.base_url}/models").json()

    assert [m["id"] for m in body["data"]] == ["m1", "m2"]


def test_embeddings_are_deterministic_unit_vectors_of_the_configured_dimension(make_openai_stub):
    stub = make_openai_stub(dimension=16)

    body = httpx.post(
        f"{stub.base_url}/embeddings", json={"model": "stub-embedding", "input": ["a", "b", "a"]}
    ).json()

    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(len(v) == 16 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert vectors[0] == OpenAIStub.vector_for("a", 16)


def test_embeddings_accept_a_single_string_dimensions_and_base64(openai_stub):
    body = httpx.post(
        f"{openai_stub.base_url}/embeddings",
        json={"input": "hello", "dimensions": 4, "encoding_format": "base64"},
    ).json()

    packed = base64.b64decode(body["data"][0]["embedding"])
    vector = list(struct.unpack("<4f", packed))
    assert vector == pytest.approx(OpenAIStub.vector_for("hello", 4), abs=1e-6)


def test_chat_stream_is_sse_ending_with_done(openai_stub):
    with httpx.stream(
        "POST",
        f"{openai_stub.base_url}/chat/completions",
        json={
            "model": "stub-model",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "two words"}],
        },
    ) as response:
        lines = [line for line in response.iter_lines() if line]

    assert response.headers["content-type"] == "text/event-stream"
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: two words"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_failure_modes_apply_for_the_given_number_of_requests_and_paths(openai_stub):
    openai_stub.fail(500, times=1, path="/v1/embeddings")
    openai_stub.fail(401, times=1)

    first = httpx.post(f"{openai_stub.base_url}/embeddings", json={"input": "x"})
    second = httpx.post(f"{openai_stub.base_url}/embeddings", json={"input": "x"})
    third = httpx.post(f"{openai_stub.base_url}/embeddings", json={"input": "x"})

    assert [first.status_code, second.status_code, third.status_code] == [500, 401, 200]
    assert first.json()["error"]["type"] == "server_error"
    assert len(openai_stub.requests_to("/v1/embeddings")) == 3
    openai_stub.reset()
    assert openai_stub.requests == []


def test_delay_slows_answers_down(openai_stub):
    openai_stub.delay(2)

    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{openai_stub.base_url}/models", timeout=0.2)


def test_litellm_hosted_embeddings_work_against_the_stub(arun, make_openai_stub):
    """The path a hosted embedding encoder takes: litellm.aembedding with api_base."""
    from contextkit.prompts._litellm import load_litellm

    litellm = load_litellm()
    stub = make_openai_stub(dimension=12)

    response = arun(
        litellm.aembedding(
            model="openai/stub-embedding",
            input=["red shoes", "blue shirt"],
            api_base=stub.base_url,
            api_key="test",
        )
    )

    vectors = [item["embedding"] for item in response.data]
    assert vectors[0] == pytest.approx(OpenAIStub.vector_for("red shoes", 12), abs=1e-6)
    assert len(vectors[1]) == 12
    assert stub.requests_to("/v1/embeddings")[0].json["input"] == ["red shoes", "blue shirt"]
