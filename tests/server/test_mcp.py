"""MCP for agents, as an agent host sees it: the official ``mcp`` client against the quickstart.

Over Streamable HTTP against a real ``contextkit serve`` process (auth on), and over stdio
against ``contextkit mcp``: initialize, list tools/prompts/resources, call every generated tool
(and check its answer against the HTTP API's), get a prompt, read resources; keys without access,
reader vs admin vs ingester scopes, a workspace a key may not see; bad arguments are tool errors
and the session lives on; the transport's limits (body size, DNS rebinding); a legacy (2025)
client; a list-changed event after an apply. The ingest tool (off by default) over stdio and over
Streamable HTTP (``serve --mcp-ingest``), on a small push-source repo.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from ops_fixtures import ServeProcess
from serverproc import CLI
from test_context import a_product, busy_user

import contextkit
from tests.conftest import DATA_END

QUICKSTART_TOOLS = {
    "get_context_support_assistant",
    "get_features_support_assistant",
    "get_context_product_lookup",
    "get_features_product_lookup",
    "search_product_docs",
    "search_help_articles",
}
WAIT_S = 300  # a loaded machine: generous limits, never timed asserts


@pytest.fixture(scope="module")
def shop(quickstart_data, tmp_path_factory):
    """The quickstart applied to live workspaces prod (materialized) and staging (applied only),
    with keys: a reader and an ingester of prod, a reader of staging, an admin of all."""
    root = tmp_path_factory.mktemp("mcp") / "shop"
    shutil.copytree(quickstart_data, root, ignore=shutil.ignore_patterns(".contextkit"))
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.create_workspace("staging", live=True)
    ctx.apply(ctx.plan(root))
    staging = ctx.use("staging")
    staging.apply(staging.plan(root))
    ctx.materialize(end=DATA_END)
    keys = {
        name: ctx.access.create_key(name, workspace=ws, role=role).key
        for name, ws, role in [
            ("reader", "prod", "reader"),
            ("ingester", "prod", "ingester"),
            ("staging-reader", "staging", "reader"),
            ("admin", "*", "admin"),
        ]
    }
    yield root, ctx, keys
    ctx.close()


@pytest.fixture(scope="module")
def server(shop, tmp_path_factory):
    root, _ctx, _keys = shop
    log = tmp_path_factory.mktemp("mcp-log") / "serve.log"
    process = ServeProcess(root, "--mcp-allowed-host", "mcp.example", log_path=log)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@asynccontextmanager
async def over_http(base: str, key: str | None, mode: str = "auto") -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=WAIT_S))
    transport = streamable_http_client(base + "/mcp", http_client=http)
    async with http, Client(transport, mode=mode) as c:
        yield c


def over_stdio(root: Path, *args: str) -> Client:
    command = ["mcp", "--repo", str(root), "--workspace", "prod", *args]
    return Client(StdioServerParameters(command=CLI, args=command), read_timeout_seconds=WAIT_S)


def run(body) -> Any:
    return anyio.run(body)


def post(base: str, path: str, body: dict, key: str) -> dict:
    response = httpx.post(
        base + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=WAIT_S
    )
    return response.json()


def tool_names(listing) -> set[str]:
    return {t.name for t in listing.tools}


def question(root: Path) -> tuple[int, str]:
    user, _count, _total = busy_user(root)
    _product_id, sku, name = a_product(root)
    return user, f"I bought the {name} ({sku}). Can I still return it?"


def valid_arguments(root: Path) -> dict[str, dict[str, Any]]:
    """A valid call of every tool the quickstart generates."""
    user, query = question(root)
    product_id, _sku, _name = a_product(root)
    return {
        "get_context_support_assistant": {
            "entities": {"user_id": user},
            "query": query,
            "request_context": {"channel": "email"},
        },
        "get_features_support_assistant": {"entities": {"user_id": [user, 999_999]}},
        "get_context_product_lookup": {"entities": {"product_id": product_id}},
        "get_features_product_lookup": {"entities": {"product_id": product_id}},
        "search_product_docs": {
            "query": "waterproof hiking boots",
            "top_k": 3,
            "mode": "hybrid",
            "filter": {"category": "shoes", "price": {"lt": 500}},
        },
        "search_help_articles": {"query": "how do I return an item", "top_k": 2},
    }


def leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in leaves(e)]
    return [group]


def error_of(result) -> dict[str, Any]:
    assert result.is_error, result
    return result.structured_content["error"]


# -- over Streamable HTTP --------------------------------------------------------------------------


def test_initialize_then_list_the_generated_tools_prompts_and_resources(server, shop):
    _root, _ctx, keys = shop

    async def body():
        async with over_http(server.base, keys["reader"]) as c:
            assert c.server_info.name == "contextkit"
            assert c.protocol_version == "2026-07-28"  # stateless: no session to stick to
            return await c.list_tools(), await c.list_prompts(), await c.list_resources()

    tools, prompts, resources = run(body)
    assert tool_names(tools) == QUICKSTART_TOOLS
    by_name = {t.name: t for t in tools.tools}
    for tool in tools.tools:
        assert tool.description and tool.annotations.read_only_hint is True
    context = by_name["get_context_support_assistant"]
    assert context.description.startswith("What a support assistant should know")
    assert "user_order_stats" in context.description and "support_prompt" in context.description
    schema = context.input_schema
    assert schema["required"] == ["entities", "query"]
    assert schema["properties"]["entities"]["properties"]["user_id"]["type"] == "integer"
    assert "shopper" in schema["properties"]["entities"]["properties"]["user_id"]["description"]
    channel = schema["properties"]["request_context"]["properties"]["channel"]
    assert channel == {"type": "string", "default": "chat"}
    search = by_name["search_product_docs"].input_schema["properties"]
    assert search["top_k"]["maximum"] == 50  # the server's bound, not the store's 1000
    assert search["mode"]["enum"] == ["vector", "text", "hybrid"]
    assert set(search["filter"]["properties"]) == {
        "product_id", "name", "category", "brand", "price", "sku"
    }  # fmt: skip
    assert search["filter"]["properties"]["price"]["anyOf"][0] == {"type": "number"}
    features = by_name["get_features_product_lookup"].description
    assert "price (float64)" in features and "Catalog attributes" in features

    [prompt] = prompts.prompts
    assert prompt.name == "support_prompt"
    assert [(a.name, a.required) for a in prompt.arguments] == [
        ("user_id", True), ("query", True), ("channel", False)
    ]  # fmt: skip
    uris = {r.uri for r in resources.resources}
    assert {
        "contextkit://prod/freshness",
        "contextkit://prod/views/user_profile",
        "contextkit://prod/views/user_profile/lineage",
        "contextkit://prod/views/product_docs",
        "contextkit://prod/services/support_assistant",
        "contextkit://prod/prompts/support_prompt",
    } <= uris
    assert not any(u.startswith("contextkit://staging/") for u in uris)


def test_every_generated_tool_answers_as_the_http_api_does(server, shop):
    root, _ctx, keys = shop
    arguments = valid_arguments(root)

    async def body():
        async with over_http(server.base, keys["reader"]) as c:
            listed = tool_names(await c.list_tools())
            return listed, {name: await c.call_tool(name, args) for name, args in arguments.items()}

    listed, results = run(body)
    assert set(results) == listed, "every generated tool is called"
    for name, result in results.items():
        assert not result.is_error, (name, result.content)
        assert result.content[0].type == "text" and result.content[0].text

    reader = keys["reader"]
    args = arguments["get_context_support_assistant"]
    http = post(server.base, "/v1/context", {"service": "support_assistant", **args}, reader)
    got = results["get_context_support_assistant"].structured_content
    for view, block in http["features"].items():
        assert got["features"][view]["values"] == block["values"]
        assert got["features"][view]["event_timestamp"] == block["event_timestamp"]
    assert {s: [d["id"] for d in docs] for s, docs in got["documents"].items()} == {
        s: [d["id"] for d in docs] for s, docs in http["documents"].items()
    }
    assert got["prompt"]["messages"] == http["prompt"]["messages"]
    assert "over email" in got["prompt"]["messages"][0]["content"]  # the request field
    text = results["get_context_support_assistant"].content[0].text
    orders = http["features"]["user_order_stats"]["values"]["order_count_30d"]
    assert f"- order_count_30d: {orders}" in text and "## Documents: products" in text

    args = arguments["get_features_support_assistant"]
    http = post(server.base, "/v1/features", {"service": "support_assistant", **args}, reader)
    got = results["get_features_support_assistant"].structured_content
    assert [row["user_id"] for row in got["rows"]] == args["entities"]["user_id"]
    columns = http["metadata"]["feature_names"]
    for i, row in enumerate(got["rows"]):
        assert [row[c] for c in columns] == [r["values"][i] for r in http["results"]]
    assert set(got["statuses"][1].values()) == {"MISSING"}  # an unknown user: nulls, no error

    for view in ("product_docs", "help_articles"):
        name = f"search_{view}"
        args = arguments[name]
        http = post(server.base, "/v1/search", {"view": view, **args}, reader)
        got = results[name].structured_content
        assert [h["id"] for h in got["results"]] == [h["id"] for h in http["results"]]
        assert len(got["results"]) == args["top_k"]
    for hit in results["search_product_docs"].structured_content["results"]:
        assert hit["metadata"]["category"] == "shoes" and hit["metadata"]["price"] < 500


def test_a_prompt_view_is_a_prompt_rendered_with_fresh_features_and_documents(server, shop):
    root, _ctx, keys = shop
    user, query = question(root)
    count = busy_user(root)[1]

    async def body():
        async with over_http(server.base, keys["reader"]) as c:
            return await c.get_prompt("support_prompt", {"user_id": str(user), "query": query})

    result = run(body)
    system, asked = result.messages
    assert system.role == "user" and asked.role == "user"  # MCP has no system turn
    assert result.meta["contextkit"]["roles"] == ["system", "user"]
    assert system.content.text.startswith("You are the support assistant of an online shop.")
    assert f"completed orders in the last 30 days: {count}" in system.content.text
    assert "over chat" in system.content.text  # the request field's default
    assert asked.content.text == query


def test_resources_describe_views_services_lineage_and_freshness(server, shop):
    _root, _ctx, keys = shop

    async def body():
        async with over_http(server.base, keys["reader"]) as c:
            return {
                uri: json.loads((await c.read_resource(uri)).contents[0].text)
                for uri in [
                    "contextkit://prod/views/user_profile",
                    "contextkit://prod/views/product_docs/lineage",
                    "contextkit://prod/services/support_assistant",
                    "contextkit://prod/prompts/support_prompt",
                    "contextkit://prod/freshness",
                ]
            }

    read = run(body)
    view = read["contextkit://prod/views/user_profile"]
    assert view["spec"]["name"] == "user_profile"
    assert view["lineage"]["upstream"] == ["file_source:users"]
    assert view["view"]["freshness"]["state"]
    lineage = read["contextkit://prod/views/product_docs/lineage"]
    assert lineage["view"] == "product_docs" and "file_source:products" in lineage["upstream"]
    service = read["contextkit://prod/services/support_assistant"]
    assert service["spec"]["prompts"] == ["support_prompt"]
    assert service["join_keys"] == {"user_id": "int64"}
    assert read["contextkit://prod/prompts/support_prompt"]["spec"]["format"] == "messages"
    freshness = {v["name"]: v for v in read["contextkit://prod/freshness"]["views"]}
    assert {"user_profile", "user_order_stats", "product_docs"} <= set(freshness)
    assert all(v["last_job"]["status"] == "succeeded" for v in freshness.values())


def test_a_key_sees_only_its_workspaces_and_roles(server, shop):
    _root, _ctx, keys = shop

    async def listing(key: str):
        async with over_http(server.base, key) as c:
            return tool_names(await c.list_tools()), await c.list_prompts()

    async def call_as(key: str, name: str):
        async with over_http(server.base, key) as c:
            try:
                return await c.call_tool(name, {"query": "boots"})
            except MCPError as exc:
                return exc

    admin_tools, _ = run(lambda: listing(keys["admin"]))
    staged = {f"staging__{name}" for name in QUICKSTART_TOOLS}
    assert admin_tools == QUICKSTART_TOOLS | staged  # another workspace: prefixed names
    staging_tools, staging_prompts = run(lambda: listing(keys["staging-reader"]))
    assert staging_tools == staged
    assert [p.name for p in staging_prompts.prompts] == ["staging__support_prompt"]
    # An ingester may not read, and the ingest tools are off unless the server enables them.
    assert run(lambda: listing(keys["ingester"]))[0] == set()

    refused = run(lambda: call_as(keys["reader"], "staging__search_product_docs"))
    assert isinstance(refused, MCPError)  # the reader of prod calls a staging tool
    # The answer to a tool that does not exist: nothing tells that the workspace does.
    assert refused.error.data["code"] == "not_found"
    assert refused.error.data["message"] == "unknown tool 'staging__search_product_docs'"
    assert "workspace" not in str(refused.error.data)
    allowed = run(lambda: call_as(keys["staging-reader"], "staging__search_product_docs"))
    assert not isinstance(allowed, MCPError)  # its own reader finds it: the tool runs, and
    warming = error_of(allowed)  # says staging's product_docs is applied, not built yet
    assert warming["code"] == "view_warming" and "'product_docs'" in warming["message"]


@pytest.mark.parametrize("key", [None, "ck_0123456789ab_not-a-real-secret"])
def test_a_missing_or_wrong_key_is_refused_before_any_mcp(server, key):
    async def body():
        async with over_http(server.base, key) as c:
            await c.list_tools()

    with pytest.raises(BaseExceptionGroup) as failed:
        run(body)
    assert any(isinstance(e, MCPError) for e in leaves(failed.value))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(
        server.base + "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={**headers, "Accept": "application/json, text/event-stream"},
        timeout=WAIT_S,
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_bad_arguments_are_tool_errors_with_the_http_codes_and_the_session_lives_on(server, shop):
    root, _ctx, keys = shop
    user, query = question(root)

    async def body():
        async with over_http(server.base, keys["reader"]) as c:
            got = {
                "wrong type": await c.call_tool(
                    "get_context_support_assistant", {"entities": {"user_id": "x"}, "query": query}
                ),
                "missing": await c.call_tool("search_product_docs", {}),
                "top_k": await c.call_tool("search_product_docs", {"query": "a", "top_k": 51}),
                "filter": await c.call_tool(
                    "search_product_docs", {"query": "a", "filter": {"colour": "red"}}
                ),
                "blank query": await c.call_tool(
                    "get_context_support_assistant", {"entities": {"user_id": user}, "query": " "}
                ),
            }
            got["after"] = await c.call_tool("search_help_articles", {"query": "refund"})
            try:
                await c.get_prompt("support_prompt", {"user_id": "seven", "query": "hi"})
            except MCPError as exc:
                got["prompt"] = exc
            return got

    got = run(body)
    for case in ("wrong type", "missing", "top_k", "filter"):
        error = error_of(got[case])
        assert error["code"] == "invalid_request" and error["status"] == 422, case
        assert error["details"]["errors"][0]["path"].startswith("arguments"), case
    assert "entities.user_id" in error_of(got["wrong type"])["message"]
    assert "51 is greater than the maximum of 50" in error_of(got["top_k"])["message"]
    # A request the core refuses: the same code, message and hint as the HTTP API's 400.
    http = httpx.post(
        server.base + "/v1/context",
        json={"service": "support_assistant", "entities": {"user_id": user}, "query": " "},
        headers={"Authorization": f"Bearer {keys['reader']}"},
        timeout=WAIT_S,
    )
    assert http.status_code == 400
    blank = error_of(got["blank query"])
    assert {k: blank[k] for k in ("code", "message", "details")} == http.json()["error"]
    assert got["blank query"].content[0].text.startswith("bad_request: ")
    assert "\nhint: " in got["blank query"].content[0].text
    assert not got["after"].is_error
    assert got["prompt"].error.data["code"] == "bad_request"
    assert "user_id" in got["prompt"].error.message


def test_limits_and_dns_rebinding_protection_apply_to_mcp(server, shop):
    _root, _ctx, keys = shop
    headers = {
        "Authorization": f"Bearer {keys['reader']}",
        "Accept": "application/json, text/event-stream",
    }
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}  # a 2025 client's, answered statelessly
    with httpx.Client(base_url=server.base, headers=headers, timeout=WAIT_S) as http:
        assert http.post("/mcp", json=ping).status_code == 200
        evil = http.post("/mcp", json=ping, headers={"Host": "evil.example"})
        assert evil.status_code == 421  # a page on another site rebinding its name to us
        allowed = http.post("/mcp", json=ping, headers={"Host": "mcp.example"})
        assert allowed.status_code == 200  # --mcp-allowed-host mcp.example
        huge = http.post("/mcp", content=b"{" + b" " * (2 * 1024 * 1024) + b"}")
        assert huge.status_code == 413
        assert huge.json()["error"]["code"] == "payload_too_large"
        assert http.get("/mcp").status_code == 405  # stateless: no standalone GET stream


def test_a_2025_client_is_served_statelessly(server, shop):
    root, _ctx, keys = shop
    args = valid_arguments(root)["get_features_product_lookup"]

    async def body():
        async with over_http(server.base, keys["reader"], mode="legacy") as c:
            assert c.protocol_version != "2026-07-28"
            listed = tool_names(await c.list_tools())
            return listed, await c.call_tool("get_features_product_lookup", args)

    listed, result = run(body)
    assert listed == QUICKSTART_TOOLS
    assert (
        not result.is_error
        and result.structured_content["rows"][0]["product_id"] == (args["entities"]["product_id"])
    )


# -- over stdio ------------------------------------------------------------------------------------


def test_stdio_serves_the_repo_to_a_local_agent_host(shop):
    root, _ctx, keys = shop
    arguments = valid_arguments(root)
    user, query = question(root)

    async def body():
        async with over_stdio(root) as everything:
            tools = tool_names(await everything.list_tools())
            results = {n: await everything.call_tool(n, a) for n, a in arguments.items()}
            asked = {"user_id": str(user), "query": query}
            prompt = await everything.get_prompt("support_prompt", asked)
            resource = await everything.read_resource("contextkit://prod/services/product_lookup")
        async with over_stdio(root, "--key", keys["staging-reader"]) as scoped:
            scoped_tools = tool_names(await scoped.list_tools())
        return tools, results, prompt, resource, scoped_tools

    tools, results, prompt, resource, scoped_tools = run(body)
    staged = {f"staging__{name}" for name in QUICKSTART_TOOLS}
    assert tools == QUICKSTART_TOOLS | staged  # no key: every live workspace
    assert scoped_tools == staged
    for name, result in results.items():
        assert not result.is_error, (name, result.content)
    hits = results["search_product_docs"].structured_content["results"]
    assert len(hits) == 3 and all(h["metadata"]["category"] == "shoes" for h in hits)
    assert prompt.messages[-1].content.text == query
    assert json.loads(resource.contents[0].text)["spec"]["name"] == "product_lookup"


def test_contextkit_mcp_refuses_a_bad_key_before_serving(shop):
    root, _ctx, _keys = shop
    done = subprocess.run(
        [CLI, "mcp", "--repo", str(root), "--workspace", "prod", "--key", "ck_0123456789ab_nope"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=WAIT_S,
    )
    assert done.returncode == 1
    assert "the API key is not valid" in done.stderr and done.stdout == ""


PUSH_DEFS = """\
from contextkit import Attribute, ContextService, Entity, Field, Int64, PushSource, Timestamp
from contextkit import StreamFeatureView

user = Entity(name="user", join_keys=["user_id"], description="A shopper.")
clicks = PushSource(
    name="clicks",
    schema=[Field("user_id", Int64), Field("product_id", Int64), Field("ts", Timestamp)],
    timestamp_field="ts",
    description="Product page views, pushed by the web app.",
)
last_click = StreamFeatureView(
    name="last_click", source=clicks, entities=[user], features=[Attribute("product_id")]
)
shopper = ContextService(name="shopper", features=[last_click], description="Recent clicks.")
"""


def push_repo(make_repo) -> tuple[Path, str, str]:
    """PUSH_DEFS applied to a live ``prod``: (root, an ingester key, a reader key)."""
    root = make_repo({"defs.py": PUSH_DEFS})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ingester = ctx.access.create_key("pipeline", workspace="prod", role="ingester").key
    reader = ctx.access.create_key("app", workspace="prod", role="reader").key
    ctx.close()
    return root, ingester, reader


def two_clicks(user: int, products: tuple[int, int]) -> list[dict[str, Any]]:
    """Two clicks of ``user`` a minute apart, the second on ``products[1]``."""
    now = datetime.now(UTC)
    return [
        {"user_id": user, "product_id": product, "ts": (now - timedelta(minutes=2 - i)).isoformat()}
        for i, product in enumerate(products)
    ]


def test_ingest_is_a_tool_only_when_enabled_and_only_for_ingester_keys(make_repo):
    root, ingester, reader = push_repo(make_repo)
    records = two_clicks(user=7, products=(41, 42))

    async def body():
        async with over_stdio(root, "--key", ingester) as off:
            ingest_off = tool_names(await off.list_tools())
        async with over_stdio(root, "--key", ingester, "--ingest") as pipeline:
            listing = await pipeline.list_tools()
            bad = await pipeline.call_tool("ingest_clicks", {"records": [{"user_id": 7}]})
            ingested = await pipeline.call_tool("ingest_clicks", {"records": records})
        async with over_stdio(root, "--key", reader, "--ingest") as app:
            read = tool_names(await app.list_tools())
            features = await app.call_tool("get_features_shopper", {"entities": {"user_id": 7}})
        return ingest_off, listing, bad, ingested, read, features

    ingest_off, listing, bad, ingested, read, features = run(body)
    assert ingest_off == set()  # an ingester reads nothing, and ingest is off by default
    [tool] = listing.tools
    assert tool.name == "ingest_clicks" and tool.annotations.read_only_hint is False
    assert tool.description.startswith("Product page views, pushed by the web app.")
    record = tool.input_schema["properties"]["records"]["items"]
    assert record["required"] == ["user_id", "product_id", "ts"]
    assert error_of(bad)["code"] == "invalid_request"
    assert not ingested.is_error and ingested.structured_content["accepted"] == 2
    assert read == {"get_context_shopper", "get_features_shopper"}  # no ingest tool
    [row] = features.structured_content["rows"]
    assert row["last_click.product_id"] == 42


def test_the_ingest_tool_over_streamable_http_writes_what_any_reader_then_reads(
    make_repo, tmp_path
):
    """``serve --mcp-ingest``: an ingester key pushes records with the tool over HTTP; a reader
    key sees no ingest tool and reads the pushed values through get_features."""
    root, ingester, reader = push_repo(make_repo)
    records = two_clicks(user=8, products=(51, 52))
    process = ServeProcess(root, "--mcp-ingest", log_path=tmp_path / "serve.log")
    try:
        process.wait_ready()

        async def body():
            async with over_http(process.base, ingester) as pipeline:
                listing = tool_names(await pipeline.list_tools())
                bad = await pipeline.call_tool("ingest_clicks", {"records": [{"user_id": 8}]})
                ingested = await pipeline.call_tool("ingest_clicks", {"records": records})
            async with over_http(process.base, reader) as app:
                read = tool_names(await app.list_tools())
                try:  # not one of its tools: a protocol error naming the tool
                    refused = await app.call_tool("ingest_clicks", {"records": records})
                except MCPError as exc:
                    refused = exc
                features = await app.call_tool("get_features_shopper", {"entities": {"user_id": 8}})
            return listing, bad, ingested, read, refused, features

        listing, bad, ingested, read, refused, features = run(body)
    finally:
        process.stop()
    assert listing == {"ingest_clicks"}  # an ingester key lists only what it may call
    assert error_of(bad)["code"] == "invalid_request"
    assert not ingested.is_error and ingested.structured_content["accepted"] == 2
    assert read == {"get_context_shopper", "get_features_shopper"}
    assert isinstance(refused, MCPError) and "ingest_clicks" in str(refused)  # not for readers
    [row] = features.structured_content["rows"]
    assert row["last_click.product_id"] == 52


def test_a_2025_client_over_stdio_gets_its_list_changed_notifications(make_repo):
    """An older (2025) client has no subscriptions/listen: over stdio it gets the
    ``notifications/tools/list_changed`` of its era on its connection after an apply."""
    root = make_repo({"defs.py": PUSH_DEFS})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    changed = anyio.Event()
    methods: list[str] = []

    async def on_message(message) -> None:
        method = getattr(message, "method", None)
        if method is not None:
            methods.append(method)
            if method == "notifications/tools/list_changed":
                changed.set()

    def apply_a_new_service() -> None:
        (root / "more.py").write_text(
            "from contextkit import ContextService\nfrom defs import last_click\n"
            "again = ContextService(name='again', features=[last_click])\n"
        )
        ctx.apply(ctx.plan(root))

    async def body():
        server = StdioServerParameters(
            command=CLI, args=["mcp", "--repo", str(root), "--workspace", "prod"]
        )
        async with Client(
            server, mode="legacy", message_handler=on_message, read_timeout_seconds=WAIT_S
        ) as c:
            assert c.protocol_version != "2026-07-28"
            before = tool_names(await c.list_tools())
            await anyio.to_thread.run_sync(apply_a_new_service)
            with anyio.fail_after(WAIT_S):
                await changed.wait()
            return before, tool_names(await c.list_tools())

    try:
        before, after = run(body)
    finally:
        ctx.close()
    assert "get_context_again" not in before
    assert {"get_context_again", "get_features_again"} <= after
    assert "notifications/tools/list_changed" in methods


# -- list-changed (last: it changes the staging workspace) -----------------------------------------

EXTRA_SERVICE = """\
from features import user_profile
from contextkit import ContextService

profile_only = ContextService(
    name="profile_only", features=[user_profile], description="Just the user's profile."
)
"""


def test_an_apply_sends_list_changed_and_the_new_tool_is_listed(server, shop):
    root, ctx, keys = shop
    staging = ctx.use("staging")

    def apply_a_new_service() -> None:
        (root / "extra_service.py").write_text(textwrap.dedent(EXTRA_SERVICE))
        staging.apply(staging.plan(root))

    async def body():
        async with over_http(server.base, keys["admin"]) as c:
            async with c.listen(tools_list_changed=True, prompts_list_changed=True) as events:
                assert events.honored.tools_list_changed
                await anyio.to_thread.run_sync(apply_a_new_service)
                with anyio.fail_after(WAIT_S):
                    async for event in events:
                        if type(event).__name__ == "ToolsListChanged":
                            break
            return tool_names(await c.list_tools())

    try:
        tools = run(body)
    finally:
        (root / "extra_service.py").unlink(missing_ok=True)
    assert {"staging__get_context_profile_only", "staging__get_features_profile_only"} <= tools
    assert "get_context_profile_only" not in tools  # prod did not change
