"""LLM configuration errors: no key, a rejected key, an unknown model or provider (issue 12, 15).

They used to be retried like a network failure (3 calls, ~8 s) and answered 502 "retry later".
Now each is an :class:`LLMNotConfiguredError` (503 ``llm_not_configured``) raised at once, with
``setting`` naming what to fix, and ``check_model`` tells ``plan`` which model names litellm knows,
offline.
"""

from __future__ import annotations

import pytest

from contextkit.prompts import (
    GENERATION_PARAMS,
    LLMAuthError,
    LLMBadRequestError,
    LLMNotConfiguredError,
    LLMParamError,
    check_generation_params,
    check_model,
    complete,
    stream_complete,
)

MODEL = "openai/gpt-4o-mini"

pytestmark = pytest.mark.filterwarnings("ignore:Items? .* `ReadOnly` qualifier:UserWarning")


def drain(stream):
    async def run():
        return [delta async for delta in stream]

    return run()


@pytest.fixture
def no_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_a_missing_key_is_a_configuration_error_before_any_call(arun, openai_stub, no_openai_key):
    for call in (
        complete("hi", MODEL, api_base=openai_stub.base_url, retries=2),
        drain(stream_complete("hi", MODEL, api_base=openai_stub.base_url, retries=2)),
    ):
        with pytest.raises(LLMAuthError) as caught:
            arun(call)
        error = caught.value
        assert isinstance(error, LLMNotConfiguredError)
        assert (error.http_status, error.code) == (503, "llm_not_configured")
        assert error.setting == "OPENAI_API_KEY" and error.attempts == 0
        assert "OPENAI_API_KEY" in error.message and "llm.api_key_env" in error.hint
        assert "retry" not in error.hint
    assert openai_stub.requests == []  # nothing was sent, nothing retried


def test_a_missing_key_without_a_network_is_still_named(arun, no_openai_key, no_network):
    with pytest.raises(LLMNotConfiguredError) as caught:
        arun(complete("hi", MODEL, retries=2, backoff=5))
    assert caught.value.setting == "OPENAI_API_KEY" and caught.value.attempts == 0


def test_a_rejected_key_is_not_retried(arun, openai_stub):
    openai_stub.fail(401)
    with pytest.raises(LLMAuthError) as caught:
        arun(complete("hi", MODEL, api_base=openai_stub.base_url, api_key="bad", retries=2))
    assert len(openai_stub.requests_to("/v1/chat/completions")) == 1
    assert caught.value.http_status == 503 and caught.value.setting == "OPENAI_API_KEY"


def test_a_model_without_a_provider_is_not_retried(arun, openai_stub):
    with pytest.raises(LLMNotConfiguredError) as caught:
        arun(complete("hi", "stub-model", api_base=openai_stub.base_url, api_key="k", retries=2))
    assert caught.value.setting == "model" and caught.value.attempts == 1
    assert "LLM Provider NOT provided" in caught.value.message
    assert openai_stub.requests == []


def test_a_model_the_provider_does_not_have_is_not_retried(arun, openai_stub):
    openai_stub.fail(404, message="The model `gpt-9` does not exist or you do not have access.")
    with pytest.raises(LLMNotConfiguredError) as caught:
        arun(complete("hi", "openai/gpt-9", api_base=openai_stub.base_url, api_key="k", retries=2))
    assert caught.value.setting == "model" and caught.value.http_status == 503
    assert len(openai_stub.requests_to("/v1/chat/completions")) == 1


def test_a_refused_parameter_stays_a_bad_request(arun, openai_stub):
    openai_stub.fail(400, message="Unsupported value: 'temperature' does not support 0.2.")
    with pytest.raises(LLMBadRequestError) as caught:
        arun(complete("hi", MODEL, api_base=openai_stub.base_url, api_key="k", retries=2))
    assert not isinstance(caught.value, LLMNotConfiguredError)
    assert caught.value.http_status == 502


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4o-mini",  # the quickstart's
        "gpt-4o-mini",
        "anthropic/claude-sonnet-4-20250514",  # litellm knows it by an alias of its list
        "ollama/llama3.2:3b",  # a local catalogue: any name
        "azure/my-deployment",  # deployments are the operator's names
    ],
)
def test_models_litellm_knows_pass(model, no_network):
    check_model(model)


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("openai/gpt-4o-minii", ["litellm knows no model", "did you mean 'openai/gpt-4o-mini'"]),
        ("gpt-4o-minii", ["no provider"]),
        ("nosuchprovider/model", ["no provider"]),
        ("openai/text-embedding-3-small", ["embedding model", "not a chat model"]),
    ],
)
def test_unknown_models_are_refused_with_a_hint(model, words, no_network):
    with pytest.raises(LLMNotConfiguredError) as caught:
        check_model(model)
    text = caught.value.message + " " + (caught.value.hint or "")
    assert caught.value.setting == "model"
    for word in words:
        assert word in text, text


def test_declared_models_and_an_api_base_widen_what_passes(no_network):
    check_model("openai/ft:gpt-4o-mini:acme::x1", declared=["openai/ft:gpt-4o-mini:acme::x1"])
    check_model("openai/stub-model", api_base="http://127.0.0.1:9/v1")  # the server decides
    with pytest.raises(LLMNotConfiguredError):
        check_model("openai/stub-model")
    with pytest.raises(LLMNotConfiguredError, match="no provider"):
        check_model("stub-model", api_base="http://127.0.0.1:9/v1")  # litellm still needs one


def test_generation_params_are_one_allow_list():
    assert {"temperature", "top_p", "max_tokens", "stop", "seed"} <= GENERATION_PARAMS
    assert not GENERATION_PARAMS & {"base_url", "api_base", "api_key", "extra_headers", "n"}
    assert check_generation_params({"temperature": 0, "seed": None}) == {"temperature": 0}
    with pytest.raises(LLMParamError) as caught:
        check_generation_params({"temperature": 0, "api_key": "x"}, where="params")
    assert caught.value.param == "api_key" and caught.value.http_status == 400
    assert caught.value.details["allowed"] == sorted(GENERATION_PARAMS)
    with pytest.raises(LLMParamError, match="must be a number"):
        check_generation_params({"temperature": float("nan")})
    with pytest.raises(LLMParamError, match="must be an integer"):
        check_generation_params({"seed": True})


def test_the_docs_list_exactly_the_allowed_parameters():
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "prompts.md").read_text()
    section = docs.split("### Generation parameters", 1)[1].split("\n\n", 3)
    table = next(part for part in section if part.lstrip().startswith("| parameter"))
    rows = table.splitlines()[2:]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert documented == GENERATION_PARAMS


def test_a_timeout_that_is_not_positive_is_a_configuration_error(arun, openai_stub):
    with pytest.raises(LLMNotConfiguredError) as caught:
        arun(complete("hi", MODEL, api_base=openai_stub.base_url, api_key="k", timeout=0))
    assert caught.value.setting == "llm.timeout_s" and caught.value.http_status == 503
    assert openai_stub.requests == []
