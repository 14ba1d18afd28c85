"""The built-in deterministic model ``contextkit/echo`` (issue 18 item 4): completions end to end
without a key or a network, over the SDK and HTTP (``/v1/context`` plain and streamed,
``/v1/chat/completions`` with the official OpenAI client, plain and streamed)."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from llm_repo import DEFS, build_llm_repo
from ops_fixtures import ServeProcess

from contextkit.prompts.llm import ECHO_MODEL, complete, stream_complete

ECHO_DEFS = DEFS.replace('model="openai/gpt-4o-mini"', f'model="{ECHO_MODEL}"')
# A key variable that is not set: the echo model must not need it (nor any provider's key).
LLM = {"api_key_env": "CONTEXTKIT_TEST_UNSET_LLM_KEY"}
EXPECTED = "[contextkit/echo] 1 message(s), 12 characters. Last user message:\nx=1.5 Q: hi?"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("echo") / "repo"
    ctx = build_llm_repo(root, LLM, defs=ECHO_DEFS)
    yield root, ctx
    ctx.close()


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    root, _ctx = repo
    log = tmp_path_factory.mktemp("echo-log") / "serve.log"
    process = ServeProcess(root, "--no-auth", log_path=log)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_the_echo_model_answers_locally_and_deterministically():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    first = asyncio.run(complete(messages, ECHO_MODEL))
    again = asyncio.run(complete(messages, ECHO_MODEL))
    assert (
        first.text
        == again.text
        == ("[contextkit/echo] 2 message(s), 14 characters. Last user message:\nHello")
    )
    assert (first.model, first.finish_reason, first.attempts) == (ECHO_MODEL, "stop", 1)
    assert (
        first.usage["total_tokens"]
        == first.usage["prompt_tokens"] + first.usage["completion_tokens"]
    )

    async def streamed() -> list[str]:
        return [d async for d in stream_complete(messages, ECHO_MODEL)]

    deltas = asyncio.run(streamed())
    assert len(deltas) > 1 and "".join(deltas) == first.text
    cut = asyncio.run(complete(messages, ECHO_MODEL, params={"max_tokens": 2}))
    assert (cut.text, cut.finish_reason) == ("[contextkit/echo] 2", "length")


def test_sdk_completes_a_context_and_a_chat_with_the_echo_model(repo):
    _root, ctx = repo
    result = ctx.get_context("assistant", {"user_id": 1}, query="hi?", complete=True)
    assert result.completion["model"] == ECHO_MODEL
    assert result.completion["text"] == EXPECTED

    reply = ctx.chat(
        [{"role": "user", "content": "Where is my laptop?"}],
        service="assistant",
        entities={"user_id": 1},
    )
    assert reply.text.endswith("Last user message:\nWhere is my laptop?")


def test_http_context_completes_and_streams_with_the_echo_model(server):
    body = {"service": "assistant", "entities": {"user_id": 1}, "query": "hi?", "complete": True}
    with httpx.Client(base_url=server.base, timeout=60) as http:
        answer = http.post("/v1/context", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["completion"]["text"] == EXPECTED

        with http.stream("POST", "/v1/context", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            events = [
                line for line in response.iter_lines() if line.startswith(("event:", "data:"))
            ]
    kinds = [e.split(": ", 1)[1] for e in events if e.startswith("event:")]
    assert kinds[0] == "context" and kinds[-1] == "done" and kinds.count("delta") > 1
    deltas = [
        json.loads(data.split(": ", 1)[1])["text"]
        for kind, data in zip(events[::2], events[1::2], strict=True)
        if kind == "event: delta"
    ]
    assert "".join(deltas) == EXPECTED


def test_openai_client_chats_with_a_service_on_the_echo_model(server):
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
    chat = {
        "model": "contextkit/assistant",
        "messages": [{"role": "user", "content": "Is the VPN down?"}],
        "extra_body": {"contextkit": {"entities": {"user_id": 1}}},
    }
    reply = client.chat.completions.create(**chat)
    text = reply.choices[0].message.content
    assert text.endswith("Last user message:\nIs the VPN down?")

    chunks = client.chat.completions.create(**chat, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text


def test_the_echo_model_never_imports_litellm():
    import subprocess
    import sys

    code = (
        "import asyncio, sys\n"
        "from contextkit.prompts.llm import complete\n"
        "from contextkit.prompts.tokens import count_tokens\n"
        "asyncio.run(complete('hi', 'contextkit/echo'))\n"
        "assert count_tokens('hello there', 'contextkit/echo') > 0\n"
        "print('litellm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
