"""LLM completions through litellm against the local OpenAI stub: answers, streams, failures."""

from __future__ import annotations

import time

import pytest

from contextkit.prompts import (
    ChatTemplate,
    CompletionResult,
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMParamError,
    LLMProviderError,
    LLMRateLimitError,
    LLMTimeoutError,
    complete,
    stream_complete,
)

MODEL = "openai/stub-model"

# litellm's stream types trip a harmless pydantic warning the first time they are built.
pytestmark = pytest.mark.filterwarnings("ignore:Item .* `ReadOnly` qualifier:UserWarning")


@pytest.fixture
def llm(openai_stub):
    """Keyword arguments that point complete()/stream_complete() at the stub, with fast retries."""
    return {"api_base": openai_stub.base_url, "api_key": "test", "backoff": 0.01}


def collect(stream):
    async def run():
        return [delta async for delta in stream]

    return run()


def test_complete_returns_the_answer_usage_and_timing(arun, openai_stub, llm):
    messages = ChatTemplate(
        [("system", "You help {{ user }}."), ("user", "{{ query }}")]
    ).render_messages({"user": "Ada", "query": "Where is my refund?"})

    result = arun(complete(messages, MODEL, params={"temperature": 0, "max_tokens": 50}, **llm))

    assert isinstance(result, CompletionResult)
    assert result.text == "echo: Where is my refund?"
    assert result.model.endswith("stub-model")
    assert result.finish_reason == "stop"
    assert result.usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert result.latency_ms > 0 and result.attempts == 1
    sent = openai_stub.requests_to("/v1/chat/completions")[-1]
    assert sent.json["messages"] == messages
    assert sent.json["temperature"] == 0 and sent.json["max_tokens"] == 50
    assert sent.headers["authorization"] == "Bearer test"


def test_a_plain_string_is_sent_as_one_user_message(arun, openai_stub, llm):
    result = arun(complete("hello stub", MODEL, **llm))

    assert result.text == "echo: hello stub"
    assert openai_stub.requests[-1].json["messages"] == [{"role": "user", "content": "hello stub"}]


def test_stream_yields_text_deltas(arun, openai_stub, llm):
    deltas = arun(collect(stream_complete("stream these words", MODEL, **llm)))

    assert "".join(deltas) == "echo: stream these words"
    assert len(deltas) == 4
    assert openai_stub.requests[-1].json["stream"] is True


def test_provider_500_is_retried_a_bounded_number_of_times(arun, openai_stub, llm):
    openai_stub.fail(500)

    with pytest.raises(LLMProviderError) as caught:
        arun(complete("hi", MODEL, retries=2, **llm))

    assert len(openai_stub.requests_to("/v1/chat/completions")) == 3
    error = caught.value
    assert error.http_status == 502 and error.code == "llm_provider_error"
    assert error.provider_status == 500 and error.attempts == 3
    assert "500" in error.message and "3 attempts" in error.message


def test_a_transient_500_is_recovered_by_a_retry(arun, openai_stub, llm):
    openai_stub.fail(503, times=1)

    result = arun(complete("second time lucky", MODEL, **llm))

    assert result.text == "echo: second time lucky"
    assert result.attempts == 2


def test_stream_retries_before_the_first_chunk(arun, openai_stub, llm):
    openai_stub.fail(502, times=1)

    deltas = arun(collect(stream_complete("retry me", MODEL, **llm)))

    assert "".join(deltas) == "echo: retry me"
    assert len(openai_stub.requests_to("/v1/chat/completions")) == 2


def test_slow_provider_raises_timeout_after_retries(arun, openai_stub, llm):
    openai_stub.delay(5)
    started = time.perf_counter()

    with pytest.raises(LLMTimeoutError) as caught:
        arun(complete("hi", MODEL, timeout=0.3, retries=1, **llm))

    assert time.perf_counter() - started < 3
    assert caught.value.http_status == 504 and caught.value.attempts == 2
    assert len(openai_stub.requests_to("/v1/chat/completions")) == 2


def test_slow_stream_raises_timeout(arun, openai_stub, llm):
    openai_stub.delay(5)

    with pytest.raises(LLMTimeoutError):
        arun(collect(stream_complete("hi", MODEL, timeout=0.3, retries=0, **llm)))


def test_401_is_an_auth_error_naming_the_key_variable_and_not_retried(arun, openai_stub, llm):
    openai_stub.fail(401)

    with pytest.raises(LLMAuthError) as caught:
        arun(complete("hi", MODEL, **llm))

    assert len(openai_stub.requests_to("/v1/chat/completions")) == 1
    assert caught.value.http_status == 503 and caught.value.provider_status == 401
    assert caught.value.code == "llm_not_configured"
    assert "OPENAI_API_KEY" in caught.value.hint


def test_wrong_api_key_is_an_auth_error(arun, make_openai_stub):
    stub = make_openai_stub(api_key="right-key")

    with pytest.raises(LLMAuthError):
        arun(complete("hi", MODEL, api_base=stub.base_url, api_key="wrong-key"))


def test_429_is_retried_then_reported_as_rate_limited(arun, openai_stub, llm):
    openai_stub.fail(429)

    with pytest.raises(LLMRateLimitError) as caught:
        arun(complete("hi", MODEL, retries=1, **llm))

    assert caught.value.http_status == 503 and caught.value.attempts == 2


def test_400_is_a_bad_request_and_not_retried(arun, openai_stub, llm):
    openai_stub.fail(400, message="Unknown parameter: 'frobnicate'.")

    with pytest.raises(LLMBadRequestError) as caught:
        arun(complete("hi", MODEL, **llm))

    assert len(openai_stub.requests_to("/v1/chat/completions")) == 1
    assert "frobnicate" in caught.value.message


def test_unreachable_provider_is_a_provider_error(arun):
    from openai_stub import free_port

    with pytest.raises(LLMError) as caught:
        arun(
            complete(
                "hi",
                MODEL,
                api_base=f"http://127.0.0.1:{free_port()}/v1",
                api_key="test",
                retries=1,
                backoff=0.01,
                timeout=5,
            )
        )

    assert isinstance(caught.value, LLMProviderError | LLMTimeoutError)
    assert caught.value.attempts == 2


def test_params_outside_the_allow_list_are_rejected_when_called(arun):
    with pytest.raises(LLMParamError, match="params.model is not an allowed"):
        arun(complete("hi", MODEL, params={"model": "other"}))
