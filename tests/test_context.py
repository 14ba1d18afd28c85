"""Prompt views and ``POST /v1/context``: the quickstart's support assistant, end to end.

A real uvicorn process serves the quickstart (small generated data); the LLM behind litellm is the
local OpenAI stub (the network edge). Feature values are checked against plain DuckDB over the raw
files, documents against the product a question names, prompts against both.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pytest
from openai_stub import OpenAIStub
from serverproc import running_server

import contextkit
from contextkit.errors import BadRequestError, ContextKitError, ValidationErrors
from tests.conftest import DATA_END

WORKSPACE = "prod"
SECRET = "sk-test-secret-0123456789"


def post(url: str, body: dict) -> tuple[int, dict | str, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read().decode()
            kind = response.headers.get("content-type", "")
            return response.status, (json.loads(raw) if "json" in kind else raw), raw
    except urllib.error.HTTPError as err:
        raw = err.read().decode()
        return err.code, json.loads(raw), raw


@pytest.fixture(scope="module")
def stub():
    with OpenAIStub() as server:
        yield server


@pytest.fixture(scope="module")
def shop(quickstart_data, tmp_path_factory, stub):
    """The quickstart copied, pointed at the stub LLM, applied and materialized as of DATA_END."""
    root = tmp_path_factory.mktemp("context") / "shop"
    shutil.copytree(quickstart_data, root, ignore=shutil.ignore_patterns(".contextkit"))
    with (root / "contextkit.yaml").open("a") as config:
        config.write(
            textwrap.dedent(
                f"""\
                llm:
                  api_base: {stub.base_url}
                  api_key_env: STUB_LLM_KEY
                  timeout_s: 5
                  retries: 0
                """
            )
        )
    os.environ["STUB_LLM_KEY"] = SECRET
    ctx = contextkit.connect(root, workspace=WORKSPACE)
    ctx.create_workspace(WORKSPACE, live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=DATA_END)
    return root, ctx


@pytest.fixture(scope="module")
def server(shop, tmp_path_factory):
    root, _ctx = shop
    log = tmp_path_factory.mktemp("context-log") / "serve.log"
    with running_server(
        "--no-auth",
        "--workspace",
        WORKSPACE,
        cwd=root,
        env={"STUB_LLM_KEY": SECRET},
        log_path=log,
    ) as process:
        yield process.base, process.proc


def raw_sql(query: str) -> list[tuple]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(query).fetchall()


def busy_user(root: Path) -> tuple[int, int, float]:
    """A user with completed orders in the 30 days before DATA_END: (id, count, sum)."""
    end = DATA_END.isoformat()
    [row] = raw_sql(
        f"""
        SELECT user_id, count(*), sum(amount) FROM read_parquet('{root}/data/orders.parquet')
        WHERE status = 'completed' AND ts <= TIMESTAMPTZ '{end}'
          AND ts > TIMESTAMPTZ '{end}' - INTERVAL 30 DAY
        GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1
        """
    )
    return row


def a_product(root: Path) -> tuple[int, str, str]:
    rows = raw_sql(
        f"SELECT product_id, sku, name FROM read_parquet('{root}/data/products.parquet') "
        "ORDER BY product_id"
    )
    return rows[len(rows) // 3]


# -- end to end over HTTP ------------------------------------------------------------------------


def test_context_returns_the_right_features_documents_and_a_prompt_with_both(shop, server):
    root, _ctx = shop
    base, _process = server
    user, count, total = busy_user(root)
    product_id, sku, name = a_product(root)
    question = f"I bought the {name} ({sku}). Can I still return it?"
    status, body, _raw = post(
        base + "/v1/context",
        {"service": "support_assistant", "entities": {"user_id": user}, "query": question},
    )
    assert status == 200, body
    stats = body["features"]["user_order_stats"]
    assert stats["values"]["order_count_30d"] == count
    assert stats["values"]["amount_sum_30d"] == pytest.approx(total)
    assert stats["status"] == "PRESENT" and stats["freshness_s"] > 0
    assert body["features"]["user_profile"]["values"]["tier"] in ("free", "plus", "pro")

    products = body["documents"]["products"]
    assert products[0]["key"] == {"product_id": product_id}
    assert products[0]["metadata"]["sku"] == sku
    assert len(body["documents"]["articles"]) == 3

    prompt = body["prompt"]
    assert prompt["format"] == "messages" and prompt["text"] is None
    system, user_turn = prompt["messages"]
    assert system["role"] == "system" and user_turn == {"role": "user", "content": question}
    assert f"completed orders in the last 30 days: {count}" in system["content"]
    assert f"[{sku}] {name}" in system["content"]
    assert "writes over chat" in system["content"]  # the request field's default
    assert prompt["tokens"] <= prompt["max_tokens"] == 1200
    assert prompt["tokenizer"].startswith("tiktoken")
    timings = body["metadata"]["timings_ms"]
    assert set(timings["search"]) == {"products", "articles"} and timings["total"] > 0
    assert body["completion"] is None


def test_context_can_complete_and_stream_through_litellm(shop, server, stub):
    root, _ctx = shop
    base, _process = server
    user = busy_user(root)[0]
    body = {
        "service": "support_assistant",
        "entities": {"user_id": user},
        "query": "where is my parcel",
        "complete": True,
    }
    stub.reset()
    status, answer, _raw = post(base + "/v1/context", body)
    assert status == 200, answer
    assert answer["completion"]["text"] == "echo: where is my parcel"
    assert answer["completion"]["model"].endswith("gpt-4o-mini")
    [call] = stub.requests_to("/v1/chat/completions")
    assert call.json["messages"] == answer["prompt"]["messages"]
    assert call.json["temperature"] == 0.2  # the prompt view's params
    assert call.headers.get("authorization") == f"Bearer {SECRET}"

    status, events, raw = post(base + "/v1/context", {**body, "stream": True})
    assert status == 200
    parsed = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("data: ", 1)[1]))
        for block in raw.strip().split("\n\n")
    ]
    kinds = [kind for kind, _ in parsed]
    assert kinds[0] == "context" and kinds[-1] == "done" and set(kinds[1:-1]) == {"delta"}
    assert "".join(data["text"] for kind, data in parsed if kind == "delta") == (
        "echo: where is my parcel"
    )
    assert parsed[0][1]["prompt"]["messages"][1]["content"] == "where is my parcel"


def test_provider_failures_are_502_and_504_without_secrets(shop, server, stub):
    root, _ctx = shop
    base, process = server
    body = {
        "service": "support_assistant",
        "entities": {"user_id": busy_user(root)[0]},
        "query": "hello",
        "complete": True,
    }
    stub.reset()
    stub.fail(500)
    status, error, raw = post(base + "/v1/context", body)
    assert status == 502 and error["error"]["code"].startswith("llm")
    stub.reset()
    stub.fail(401)
    status, error, raw = post(base + "/v1/context", body)
    assert status == 503 and error["error"]["code"] == "llm_not_configured"  # a rejected key
    assert SECRET not in raw and "Traceback" not in raw
    stub.reset()
    stub.fail(500)
    status, error, raw = post(base + "/v1/context", {**body, "stream": True})
    assert status == 502, raw
    stub.reset()
    stub.delay(8.0)
    status, error, raw = post(base + "/v1/context", body)
    assert status == 504 and error["error"]["code"] == "llm_timeout"
    stub.reset()
    status, _answer, _raw = post(base + "/v1/context", body)
    assert status == 200  # the server is fine afterwards
    assert process.poll() is None


def test_bad_context_requests_are_4xx_naming_the_field(shop, server):
    root, _ctx = shop
    base, _process = server
    good = {
        "service": "support_assistant",
        "entities": {"user_id": busy_user(root)[0]},
        "query": "hello",
    }
    cases = {
        "unknown service": ({**good, "service": "nope"}, 404, None),
        "unknown prompt": ({**good, "prompt": "nope"}, 404, None),
        "no entities": ({**good, "entities": None}, 400, "entities"),
        "two entities": ({**good, "entities": {"user_id": [1, 2]}}, 400, "entities"),
        "wrong key type": ({**good, "entities": {"user_id": "abc"}}, 400, None),
        "no query": ({**good, "query": None}, 400, "query"),
        "unknown request field": (
            {**good, "request_context": {"chanel": "email"}},
            400,
            "request_context.chanel",
        ),
        "wrong request type": (
            {**good, "request_context": {"channel": 3}},
            400,
            "request_context.channel",
        ),
        "top_k out of range": ({**good, "top_k": 0}, 400, "top_k"),
        "bad filter": ({**good, "filter": {"colour": "red"}}, 400, None),
        "unknown search": ({**good, "searches": {"shoes": {"top_k": 1}}}, 400, "searches"),
        "render not a bool": ({**good, "render": "yes"}, 422, None),
        "query not a string": ({**good, "query": 12}, 422, None),
    }
    for name, (body, status, field) in cases.items():
        got, error, raw = post(base + "/v1/context", body)
        assert got == status, (name, error)
        assert error["error"]["message"] and "Traceback" not in raw, name
        if field:
            assert error["error"]["details"]["field"] == field, name


# -- the SDK -------------------------------------------------------------------------------------


def test_sdk_get_context_matches_and_a_tiny_budget_drops_the_worst_documents(shop):
    root, ctx = shop
    user = busy_user(root)[0]
    full = ctx.get_context(
        "support_assistant", {"user_id": user}, query="return policy for shoes", top_k=5
    )
    assert full.prompt["dropped"] == [] and not full.prompt["truncated"]
    assert [len(v) for v in full.documents.values()] == [5, 5]

    plan = ctx.context_plan("support_assistant")
    tight = plan.prompt.model_copy(update={"max_tokens": full.prompt["tokens"] - 150})
    small = plan.__class__(**{**plan.__dict__, "prompt": tight})
    from contextkit.retrieval.assemble import assemble, parse_request

    request = parse_request(
        small,
        entities={"user_id": user},
        query="return policy for shoes",
        request_context=None,
        top_k=5,
        filter=None,
        searches=None,
        render=True,
        complete=False,
        model=None,
        params=None,
    )
    result = assemble(ctx.runtime, small, request)
    dropped = result.prompt["dropped"]
    assert dropped and result.prompt["tokens"] <= tight.max_tokens
    # The worst-ranked go first: the last of each search before anyone's first.
    ranks = {hit["id"]: rank for hits in full.documents.values() for rank, hit in enumerate(hits)}
    assert [ranks[d] for d in dropped] == sorted((ranks[d] for d in dropped), reverse=True)
    kept = {h["id"] for hits in result.documents.values() for h in hits}
    assert not kept & set(dropped)
    assert all(ranks[k] <= min(ranks[d] for d in dropped) for k in kept)


def test_render_false_returns_features_and_documents_only(shop):
    root, ctx = shop
    result = ctx.get_context(
        "support_assistant", {"user_id": busy_user(root)[0]}, query="hi", render=False
    )
    assert result.prompt is None and result.documents["products"]


def test_sdk_bad_request_raises_with_a_hint(shop):
    _root, ctx = shop
    with pytest.raises(BadRequestError) as info:
        ctx.get_context("support_assistant", {"user_id": 1})
    assert info.value.details["field"] == "query" and info.value.hint


# -- prompt validation and the sandbox ------------------------------------------------------------

PROMPT_REPO = """\
from contextkit import (
    Aggregate, ContextService, Entity, FileSource, PromptView, RequestField, batch_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")

@batch_feature_view(sources=[orders], entities=[user], mode="sql",
                    features=[Aggregate(column="amount", function="sum", time_window="7d")])
def spend(orders):
    return f"SELECT user_id, amount, ts FROM {orders}"

note = PromptView(
    name="note",
    template=\"\"\"
Hello {{ request.name }}.
You spent {{ features.spend.amount_sum_7d }} this week.
\"\"\",
    features=[spend],
    request_context=[RequestField("name")],
)

svc = ContextService(name="svc", features=[spend], prompts=[note])
"""


@pytest.fixture
def prompt_repo(make_repo):
    import pyarrow as pa

    orders = pa.table(
        {
            "user_id": pa.array([1, 1, 2], pa.int64()),
            "amount": pa.array([5.0, 7.0, 11.0]),
            "ts": pa.array(
                [DATA_END.replace(hour=h) for h in (1, 2, 3)], pa.timestamp("us", tz="UTC")
            ),
        }
    )

    def make(defs: str = PROMPT_REPO):
        root = make_repo({"defs.py": defs}, data={"orders.parquet": orders})
        ctx = contextkit.connect(root, workspace="dev")
        if not ctx.list_workspaces():
            ctx.create_workspace("dev", live=True)
        return root, ctx

    return make


def line_of(root: Path, text: str) -> int:
    lines = (root / "defs.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if text in line)


BAD_TEMPLATES = {
    "unknown feature": (
        "features.spend.amount_sum_7d",
        "features.spend.amount_sum_30d",
        "unknown feature 'amount_sum_30d' of view 'spend'",
    ),
    "unknown view": ("features.spend.amount_sum_7d", "features.orders.x", "unknown feature view"),
    "undeclared request field": ("request.name", "request.nickname", "unknown request field"),
    "reaching into internals": ("request.name", "request.__class__", "unknown request field"),
    "unknown variable": ("request.name", "secrets.key", "unknown variable 'secrets'"),
}


@pytest.mark.parametrize("case", BAD_TEMPLATES, ids=list(BAD_TEMPLATES))
def test_a_template_using_what_the_prompt_does_not_declare_fails_plan_at_its_line(
    prompt_repo, case
):
    old, new, message = BAD_TEMPLATES[case]
    root, ctx = prompt_repo(PROMPT_REPO.replace(old, new))
    with pytest.raises(ValidationErrors) as info:
        ctx.plan(root)
    [error] = [e for e in info.value.errors if message in e.message]
    anchor = new.split(".")[0] + "." + new.split(".")[1]
    assert error.location == f"defs.py:{line_of(root, anchor)}", error.location
    assert error.hint


def test_a_template_syntax_error_fails_plan_with_its_line(prompt_repo):
    root, ctx = prompt_repo(
        PROMPT_REPO.replace("Hello {{ request.name }}.", "Hello {{ request.name")
    )
    with pytest.raises(ValidationErrors) as info:
        ctx.plan(root)
    [error] = info.value.errors
    assert "prompt 'note'" in error.message and "defs.py:" in error.location


SSTI = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ request|attr('__class__') }}",
    "{{ namespace.__init__.__globals__ }}",
    "{% set x = ''.__class__ %}{{ x.mro() }}",
]


@pytest.mark.parametrize("payload", SSTI)
def test_template_injection_payloads_fail_at_plan_or_render_never_run(prompt_repo, payload):
    defs = PROMPT_REPO.replace("Hello {{ request.name }}.", "Hello {{ request.name }}. " + payload)
    root, ctx = prompt_repo(defs)
    try:
        ctx.apply(ctx.plan(root))
    except ValidationErrors:
        return  # refused at plan time
    ctx.materialize()
    with pytest.raises(ContextKitError) as info:
        ctx.get_context("svc", {"user_id": 1}, request_context={"name": "Ann"})
    assert info.value.http_status == 400
    assert info.value.code == "prompt_security_error" and "unsafe" in info.value.message


def test_a_template_file_edit_shows_in_plan_and_errors_point_into_the_file(prompt_repo):
    inline = PROMPT_REPO[PROMPT_REPO.index('template="""') : PROMPT_REPO.index('""",') + 4]
    defs = PROMPT_REPO.replace(inline, 'template_file="prompts/note.jinja",')
    assert "template_file" in defs
    root, ctx = prompt_repo(defs)
    (root / "prompts").mkdir()
    (root / "prompts" / "note.jinja").write_text("Hi {{ request.name }}.\n{{ features.spend.x }}\n")
    with pytest.raises(ValidationErrors) as info:
        ctx.plan(root)
    assert info.value.errors[0].location == "prompts/note.jinja:2"
    (root / "prompts" / "note.jinja").write_text("Hi {{ request.name }}.\n")
    ctx.apply(ctx.plan(root))
    (root / "prompts" / "note.jinja").write_text("Hello {{ request.name }}!\n")
    [change] = ctx.plan(root).changes
    assert change.name == "note" and any(f.path == "template" for f in change.fields)
    ctx.apply(ctx.plan(root))
    ctx.materialize()
    result = ctx.get_context("svc", {"user_id": 1}, request_context={"name": "Ann"})
    assert result.prompt["text"].strip() == "Hello Ann!"


def test_a_value_missing_at_render_time_is_a_clear_error(prompt_repo):
    defs = PROMPT_REPO.replace(
        "You spent {{ features.spend.amount_sum_7d }} this week.",
        "You spent {{ features.spend.amount_sum_7d | round(1) }} this week.",
    )
    root, ctx = prompt_repo(defs)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=DATA_END.replace(hour=12))
    ok = ctx.get_context("svc", {"user_id": 1}, request_context={"name": "Ann"})
    assert "You spent 12.0 this week." in ok.prompt["text"]
    # User 3 has no orders: the aggregate is null and round() of None fails, at its line.
    with pytest.raises(ContextKitError) as info:
        ctx.get_context("svc", {"user_id": 3}, request_context={"name": "Bo"})
    assert info.value.http_status == 400 and info.value.details.get("prompt") == "note"
