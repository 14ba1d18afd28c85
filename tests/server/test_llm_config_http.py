"""``complete: true`` on a server whose LLM is not configured (issue 12, item 15).

No key used to answer 502 "the provider or the network failed; retry later" after three calls
and ~8 s. Now a missing key is a 503 ``llm_not_configured`` at once, naming the variable to set,
and nothing is sent to any provider. A model the request picks that litellm does not know is the
request's fault: a 400 naming ``model``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from llm_repo import CHAT, CONTEXT, CatchAll, build_llm_repo

UNSET_VAR = "LLM_CONFIG_TEST_KEY_THAT_IS_NOT_SET"


# litellm's types trip a harmless pydantic warning the first time they are built.
pytestmark = pytest.mark.filterwarnings("ignore:Items? .* `ReadOnly` qualifier:UserWarning")


@pytest.fixture(scope="module")
def provider() -> Iterator[CatchAll]:
    """The configured provider: it must not be called while the key is missing."""
    with CatchAll() as server:
        yield server


@contextmanager
def serving(root, llm: dict[str, Any]) -> Iterator[TestClient]:
    from contextkit.server.app import create_app

    ctx = build_llm_repo(root, llm)
    try:
        with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as client:
            yield client
    finally:
        ctx.close()


def assert_not_configured(response, setting: str) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert error["code"] == "llm_not_configured", error
    assert error["details"]["setting"] == setting, error
    assert setting in error["message"] and setting in error["details"]["hint"], error
    assert "retry" not in error["details"]["hint"]
    return error


def test_a_missing_key_is_a_503_naming_the_variable(tmp_path, provider, monkeypatch):
    monkeypatch.delenv(UNSET_VAR, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    provider.requests.clear()
    cases = [
        ({"api_base": provider.url + "/v1", "api_key_env": UNSET_VAR}, UNSET_VAR),  # named var
        ({"api_base": provider.url + "/v1"}, "OPENAI_API_KEY"),  # the provider's usual one
    ]
    for number, (llm, setting) in enumerate(cases):
        with serving(tmp_path / f"repo{number}", {**llm, "retries": 2}) as client:
            error = assert_not_configured(client.post("/v1/context", json=CONTEXT), setting)
            assert error["details"]["attempts"] == 0
            streamed = client.post("/v1/context", json={**CONTEXT, "stream": True})
            assert_not_configured(streamed, setting)
            chat = {**CHAT, "contextkit": {"entities": {"user_id": 1}}}
            error = assert_not_configured(client.post("/v1/chat/completions", json=chat), setting)
            assert error["type"] == "server_error"
            # Rendering alone needs no LLM and still works.
            rendered = client.post("/v1/context", json={**CONTEXT, "complete": False})
            assert rendered.status_code == 200, rendered.text
    assert provider.requests == []


def test_a_model_the_request_picks_must_be_one_litellm_knows(tmp_path, monkeypatch):
    monkeypatch.setenv(UNSET_VAR, "sk-test")
    with serving(tmp_path / "repo", {"api_key_env": UNSET_VAR}) as client:
        for model in ("gpt-4o-minii", "openai/gpt-4o-minii", "nosuchprovider/x"):
            response = client.post("/v1/context", json={**CONTEXT, "model": model})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "bad_request" and error["details"]["field"] == "model"
            assert model in error["message"]
