"""The OpenAI-compatible chat endpoint, as an OpenAI SDK user sees it.

The official ``openai`` package talks to a real ``contextkit serve`` process (auth on, a reader
key as the SDK's ``api_key``) serving the quickstart; the LLM behind litellm is the local OpenAI
stub (the network edge), which records what it was sent. The stub answers ``"echo: <last user
message>"``, so an answer proves which message came last. Then the merging of a rendered prompt
with a conversation, and the request parsing, through the SDK functions of
``contextkit.retrieval.chat``.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import openai
import pytest
from openai_stub import OpenAIStub
from ops_fixtures import ServeProcess
from test_context import a_product, busy_user

import contextkit
from contextkit.errors import BadRequestError, NotFoundError
from contextkit.retrieval.chat import (
    ChatRequestError,
    InvalidChatBody,
    merge_conversation,
    openai_error,
    parse_chat_request,
)
from tests.conftest import DATA_END

WORKSPACE = "prod"
SECRET = "sk-chat-test-secret-0123456789"
MODEL = "contextkit/support_assistant"


@pytest.fixture(scope="module")
def stub():
    with OpenAIStub() as server:
        yield server


@pytest.fixture(scope="module")
def shop(quickstart_data, tmp_path_factory, stub):
    """The quickstart, pointed at the stub LLM, applied and materialized as of DATA_END."""
    root = tmp_path_factory.mktemp("chat") / "shop"
    shutil.copytree(quickstart_data, root, ignore=shutil.ignore_patterns(".contextkit"))
    with (root / "contextkit.yaml").open("a") as config:
        config.write(
            textwrap.dedent(
                f"""\
                llm:
                  api_base: {stub.base_url}
                  api_key_env: CHAT_STUB_LLM_KEY
                  timeout_s: 20
                  retries: 0
                """
            )
        )
    os.environ["CHAT_STUB_LLM_KEY"] = SECRET  # the serve process inherits it
    ctx = contextkit.connect(root, workspace=WORKSPACE)
    ctx.create_workspace(WORKSPACE, live=True)
    ctx.create_workspace("staging", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=DATA_END)
    yield root, ctx
    ctx.close()


@pytest.fixture(scope="module")
def server(shop, tmp_path_factory):
    root, _ctx = shop
    process = ServeProcess(root, log_path=tmp_path_factory.mktemp("chat-log") / "serve.log")
    try:
        process.wait_ready()  # loading the embedding model and litellm
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(shop, server):
    """The official OpenAI client with a reader key for prod; no retries, so a 5xx shows."""
    _root, ctx = shop
    key = ctx.access.create_key("chat-app", workspace=WORKSPACE, role="reader").key
    return openai.OpenAI(base_url=server.base + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture
def customer(shop):
    """A user with recent orders and a question naming a product of the catalogue."""
    root, _ctx = shop
    user, count, _total = busy_user(root)
    product_id, sku, name = a_product(root)
    question = f"I bought the {name} ({sku}). Can I still return it?"
    return {
        "user": user,
        "orders": count,
        "product_id": product_id,
        "sku": sku,
        "name": name,
        "question": question,
    }


def conversation(question: str) -> list[dict]:
    return [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Hello, I have a question about an order."},
        {"role": "assistant", "content": "Of course, what would you like to know?"},
        {"role": "user", "content": question},
    ]


def assert_prompt_around_conversation(sent: list[dict], customer: dict) -> None:
    """What the LLM got: the prompt's system turn (with the retrieved context and the client's
    instruction), then the earlier turns in order, then the question."""
    history = conversation(customer["question"])
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    system = sent[0]["content"]
    assert system.startswith("You are the support assistant of an online shop.")
    assert f"completed orders in the last 30 days: {customer['orders']}" in system
    assert f"[{customer['sku']}] {customer['name']}" in system
    assert system.endswith("\n\nAnswer in one sentence.")  # the client's system message, after
    assert sent[1:3] == history[1:3]
    assert sent[3] == {"role": "user", "content": customer["question"]}


# -- the OpenAI SDK against a real server ----------------------------------------------------------


def test_a_completion_carries_the_retrieved_context_and_the_conversation(client, stub, customer):
    stub.reset()
    reply = client.chat.completions.create(
        model=MODEL,
        messages=conversation(customer["question"]),
        temperature=0,
        max_tokens=60,
        extra_body={"contextkit": {"entities": {"user_id": customer["user"]}}},
    )
    answer = "echo: " + customer["question"]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL and reply.created > 0
    [choice] = reply.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.content == answer
    assert reply.usage.completion_tokens == len(answer.split())  # the provider's counts
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    [call] = stub.requests_to("/v1/chat/completions")
    assert_prompt_around_conversation(call.json["messages"], customer)
    assert call.json["model"] == "gpt-4o-mini"  # the prompt view's LLM (openai/ prefix dropped)
    assert call.json["temperature"] == 0  # the request's, over the prompt view's 0.2
    assert call.json["max_tokens"] == 60
    assert call.headers["authorization"] == f"Bearer {SECRET}"  # the LLM key, not the client's

    extension = reply.model_extra["contextkit"]
    assert extension["service"] == "support_assistant"
    assert extension["prompt"] == "support_prompt"
    assert extension["entities"] == {"user_id": customer["user"]}
    assert extension["documents"]["products"][0].split("#")[0] == str(customer["product_id"])


def test_a_stream_yields_deltas_that_join_to_the_answer(client, stub, customer):
    stub.reset()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=conversation(customer["question"]),
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"contextkit": {"entities": {"user_id": customer["user"]}}},
    )
    chunks = list(stream)
    answer = "echo: " + customer["question"]
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in with_choices]
    assert len([d for d in deltas if d]) > 1  # it did stream, in several pieces
    assert "".join(deltas) == answer
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    usage = chunks[-1].usage  # the last chunk, with include_usage
    assert not chunks[-1].choices and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    [call] = stub.requests_to("/v1/chat/completions")
    assert call.json["stream"] is True
    assert_prompt_around_conversation(call.json["messages"], customer)


def test_models_lists_the_services_that_can_chat(client):
    models = client.models.list()
    assert [m.id for m in models] == [MODEL]  # product_lookup has no prompt view
    [model] = models.data
    assert model.object == "model" and model.owned_by == "contextkit" and model.created > 0


def test_headers_can_name_the_service_and_the_model_then_names_the_llm(client, stub, customer):
    """How a framework with fixed ``default_headers`` and a real model name uses contextkit."""
    headered = client.with_options(
        default_headers={
            "X-Contextkit-Service": "support_assistant",
            "X-Contextkit-Entities": json.dumps({"user_id": customer["user"]}),
        }
    )
    stub.reset()
    reply = headered.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": customer["question"]}]
    )
    assert reply.choices[0].message.content == "echo: " + customer["question"]
    assert reply.model == "gpt-4o"
    [call] = stub.requests_to("/v1/chat/completions")
    assert call.json["model"] == "gpt-4o"
    assert call.json["temperature"] == 0.2  # the prompt view's, as the request sets none
    sent = call.json["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert f"[{customer['sku']}] {customer['name']}" in sent[0]["content"]


def test_errors_are_api_status_errors_with_a_message(client, shop, server, stub, customer):
    _root, ctx = shop
    question = [{"role": "user", "content": "Where is my parcel?"}]
    entities = {"contextkit": {"entities": {"user_id": customer["user"]}}}

    def refused(status: int, **kwargs) -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as info:
            kwargs.setdefault("model", MODEL)
            kwargs.setdefault("messages", question)
            client.chat.completions.create(**kwargs)
        assert info.value.status_code == status, info.value.message
        assert info.value.message.startswith(f"Error code: {status} - ")
        assert "Traceback" not in info.value.response.text
        return info.value

    error = refused(404, model="contextkit/nope", extra_body=entities)
    assert isinstance(error, openai.NotFoundError)
    assert "unknown service 'nope'" in error.message and error.code == "not_found"
    assert error.type == "invalid_request_error"

    error = refused(400)  # no entities
    assert isinstance(error, openai.BadRequestError)
    assert "needs entities (user_id)" in error.message and error.param == "contextkit.entities"

    error = refused(400, model="contextkit/product_lookup", extra_body=entities)
    assert "has no prompt view" in error.message

    tool = {"type": "function", "function": {"name": "refund", "parameters": {}}}
    error = refused(400, tools=[tool], extra_body=entities)
    assert error.param == "tools" and error.code == "unsupported_parameter"
    assert refused(400, n=2, extra_body=entities).param == "n"
    assert refused(422, temperature="hot", extra_body=entities).param == "temperature"

    stub.reset()
    stub.fail(500)
    try:
        error = refused(502, extra_body=entities)
        assert isinstance(error, openai.InternalServerError)
        assert "LLM call to 'openai/gpt-4o-mini' failed" in error.message
        assert error.type == "server_error" and SECRET not in error.response.text
        error = refused(502, stream=True, extra_body=entities)  # before the stream starts
        assert error.code == "llm_provider_error"
    finally:
        stub.reset()

    other = ctx.access.create_key("chat-staging", workspace="staging", role="reader").key
    stranger = openai.OpenAI(base_url=server.base + "/v1", api_key=other, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        stranger.chat.completions.create(model=MODEL, messages=question, extra_body=entities)
    assert info.value.type == "permission_error"
    nobody = openai.OpenAI(base_url=server.base + "/v1", api_key="ck_000000000000_x", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        nobody.models.list()
    assert info.value.code == "unauthenticated" and info.value.type == "authentication_error"


# -- the SDK: chat() in a notebook ----------------------------------------------------------------


def test_sdk_chat_sends_what_it_reports(shop, stub, customer):
    _root, ctx = shop
    stub.reset()
    reply = ctx.chat(
        conversation(customer["question"]),
        service="support_assistant",
        entities={"user_id": customer["user"]},
        request_context={"channel": "email"},
        temperature=0.5,
    )
    assert reply.text == "echo: " + customer["question"] and reply.finish_reason == "stop"
    [call] = stub.requests_to("/v1/chat/completions")
    assert call.json["messages"] == reply.messages
    assert "writes over email" in reply.messages[0]["content"]
    assert call.json["temperature"] == 0.5
    assert (
        reply.context.features["user_order_stats"]["values"]["order_count_30d"]
        == (customer["orders"])
    )
    assert reply.response["choices"][0]["message"]["content"] == reply.text


def test_sdk_chat_refuses_like_the_endpoint(shop):
    _root, ctx = shop
    with pytest.raises(BadRequestError) as info:
        ctx.chat([{"role": "user", "content": "hi"}], service="support_assistant")
    assert info.value.details["field"] == "entities"
    with pytest.raises(NotFoundError):
        ctx.chat([{"role": "user", "content": "hi"}], service="nope", entities={"user_id": 1})


# -- merging a rendered prompt with a conversation ------------------------------------------------


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


CONVERSATION = [
    turn("user", "I ordered boots."),
    turn("assistant", "Which ones?"),
    turn("user", "The Summit 1. Are they waterproof?"),
]


def test_messages_prompt_gets_the_earlier_turns_before_its_final_user_turn():
    prompt = {
        "format": "messages",
        "messages": [
            turn("system", "Facts: tier=pro."),
            turn("user", "Example question"),  # a few-shot pair stays before the history
            turn("assistant", "Example answer"),
            turn("user", "Context: waterproof.\nQuestion: The Summit 1. Are they waterproof?"),
        ],
    }
    merged = merge_conversation(prompt, CONVERSATION)
    assert merged == [
        turn("system", "Facts: tier=pro."),
        turn("user", "Example question"),
        turn("assistant", "Example answer"),
        turn("user", "I ordered boots."),
        turn("assistant", "Which ones?"),
        turn("user", "Context: waterproof.\nQuestion: The Summit 1. Are they waterproof?"),
    ]


def test_text_prompt_becomes_a_system_message_before_the_whole_conversation():
    prompt = {"format": "text", "text": "Facts: tier=pro.", "messages": None}
    assert merge_conversation(prompt, CONVERSATION) == [
        turn("system", "Facts: tier=pro."),
        *CONVERSATION,
    ]


def test_client_instructions_join_the_prompts_first_instruction_turn():
    prompt = {
        "format": "messages",
        "messages": [turn("developer", "Facts."), turn("system", "Be brief."), turn("user", "Q")],
    }
    merged = merge_conversation(
        prompt,
        [
            turn("system", "Answer in French."),
            *CONVERSATION[:2],
            turn("developer", "No emoji."),
            CONVERSATION[2],
        ],
    )
    assert merged[0] == turn("developer", "Facts.\n\nAnswer in French.\n\nNo emoji.")
    assert merged[1] == turn("system", "Be brief.")
    assert merged[2:] == [*CONVERSATION[:2], turn("user", "Q")]


def test_client_instructions_come_first_when_the_prompt_has_none():
    prompt = {"format": "messages", "messages": [turn("user", "Context. Q")]}
    merged = merge_conversation(prompt, [turn("developer", "Answer in French."), *CONVERSATION])
    assert merged == [
        turn("developer", "Answer in French."),
        *CONVERSATION[:2],
        turn("user", "Context. Q"),
    ]


def test_a_prompt_without_a_user_turn_is_followed_by_the_conversation():
    prompt = {"format": "messages", "messages": [turn("system", "Facts.")]}
    assert merge_conversation(prompt, CONVERSATION) == [turn("system", "Facts."), *CONVERSATION]


def test_turns_after_the_last_user_message_stay_last_and_the_prompt_is_not_changed():
    prompt = {"format": "messages", "messages": [turn("system", "Facts."), turn("user", "Q")]}
    before = json.dumps(prompt)
    prefill = turn("assistant", "Yes, the Summit 1")
    merged = merge_conversation(prompt, [turn("system", "Be kind."), *CONVERSATION, prefill])
    assert merged[-2:] == [turn("user", "Q"), prefill]
    assert merged[0] == turn("system", "Facts.\n\nBe kind.")
    assert json.dumps(prompt) == before


# -- parsing a chat request -----------------------------------------------------------------------


def body(**fields) -> dict:
    return {"model": MODEL, "messages": [turn("user", "Where is my parcel?")], **fields}


def test_the_model_name_names_the_service_and_prompt():
    request = parse_chat_request(body(model="contextkit/support_assistant/short_prompt"))
    assert (request.service, request.prompt, request.llm_model) == (
        "support_assistant",
        "short_prompt",
        None,
    )
    assert request.query == "Where is my parcel?"
    for bad in ("contextkit/", "contextkit/a/b/c", "contextkit/a/"):
        with pytest.raises(ChatRequestError) as info:
            parse_chat_request(body(model=bad))
        assert info.value.param == "model"


def test_extension_and_headers_name_the_context_and_the_body_wins():
    headers = {
        "x-contextkit-service": "support_assistant",
        "X-Contextkit-Entities": '{"user_id": 7}',
        "X-Contextkit-Workspace": "staging",
        "X-Contextkit-LLM-Model": "openai/gpt-4.1",
    }
    request = parse_chat_request(
        body(model="my-app", contextkit={"workspace": "prod", "request_context": {"a": 1}}),
        headers,
    )
    assert request.service == "support_assistant" and request.entities == {"user_id": 7}
    assert request.workspace == "prod" and request.request_context == {"a": 1}
    assert request.llm_model == "openai/gpt-4.1"  # explicit, over the model name
    assert parse_chat_request(body(model="gpt-4o"), {}).llm_model == "gpt-4o"
    with pytest.raises(ChatRequestError) as info:
        parse_chat_request(body(), {"X-Contextkit-Entities": "user_id=7"})
    assert info.value.param == "X-Contextkit-Entities"
    with pytest.raises(ChatRequestError, match="names service 'support_assistant'"):
        parse_chat_request(body(contextkit={"service": "other"}))


def test_sampling_parameters_pass_through_and_what_cannot_be_honoured_is_refused():
    request = parse_chat_request(
        body(
            temperature=0.1,
            top_p=0.9,
            max_tokens=5,
            stop=["\n"],
            seed=3,
            user="u-1",
            n=1,
            store=True,
            logprobs=False,
            modalities=["text"],
            response_format={"type": "json_object"},
        )
    )
    assert request.params == {
        "temperature": 0.1,
        "top_p": 0.9,
        "max_tokens": 5,
        "stop": ["\n"],
        "seed": 3,
        "user": "u-1",
        "response_format": {"type": "json_object"},
    }
    refused = {
        "tools": body(tools=[{"type": "function"}]),
        "n": body(n=3),
        "logprobs": body(logprobs=True),
        "modalities": body(modalities=["text", "audio"]),
        "messages[0]": body(messages=[{"role": "tool", "content": "42", "tool_call_id": "c"}]),
        "messages[1].content": body(
            messages=[
                turn("system", "x"),
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            ]
        ),
        "top_k": body(top_k=3),  # not OpenAI's: an extension field belongs in `contextkit`
        "contextkit.topk": body(contextkit={"topk": 3}),
        "messages": body(messages=[turn("system", "Be brief.")]),  # no user message
    }
    for param, bad in refused.items():
        with pytest.raises(ChatRequestError) as info:
            parse_chat_request(bad)
        assert info.value.param == param and info.value.http_status == 400, param


def test_values_of_the_wrong_type_are_422_naming_the_field():
    cases = {
        "model": {"messages": [turn("user", "hi")]},
        "messages": body(messages="hi"),
        "messages[0].content": body(messages=[{"role": "user", "content": 5}]),
        "temperature": body(temperature=True),
        "max_tokens": body(max_tokens=1.5),
        "stream": body(stream="yes"),
        "contextkit.entities": body(contextkit={"entities": [7]}),
    }
    for param, bad in cases.items():
        with pytest.raises(InvalidChatBody) as info:
            parse_chat_request(bad)
        assert info.value.http_status == 422 and info.value.param == param, param
        assert info.value.details["errors"][0]["path"] == f"body.{param}"


def test_text_parts_make_the_query_and_echoed_response_fields_are_dropped():
    request = parse_chat_request(
        body(
            messages=[
                {
                    "role": "assistant",
                    "content": "Hi!",
                    "refusal": None,
                    "annotations": [],
                    "tool_calls": None,
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Where is"},
                        {"type": "text", "text": "my parcel?"},
                    ],
                },
            ]
        )
    )
    assert request.query == "Where is\nmy parcel?"
    assert request.messages[0] == turn("assistant", "Hi!")


def test_openai_error_adds_type_and_param_to_contextkits_body():
    status, error = openai_error(BadRequestError("bad", details={"field": "query"}))
    assert status == 400
    assert error == {
        "error": {
            "code": "bad_request",
            "message": "bad",
            "details": {"field": "query"},
            "type": "invalid_request_error",
            "param": "messages",
        }
    }
    status, error = openai_error(NotFoundError("gone", hint="try another"))
    assert error["error"]["param"] is None and error["error"]["details"]["hint"] == "try another"
