"""MCP ``get_context`` vs the same ``POST /v1/context`` over HTTP: p50/p99, the ratio and the
time MCP adds (issue 17; target: < 1 ms added at p50).

Builds a repo in a temp dir: 1,000 users with 4 features (SQLite online store), 2,000 product
descriptions from the quickstart generator in an embedding view encoded with contextkit's
``hash`` model (seeded unit vectors: query encoding is ~30 us, so the search and the protocol
are what is timed), a text prompt view (Jinja, 1,500-token budget counted with
``openai/gpt-4o-mini``'s tokenizer) reading the features and a top-5 vector search, and a context
service. Applies it to a live ``prod`` workspace, materializes it and starts ``contextkit serve``
(one uvicorn worker, **auth on**: every request carries a reader key) on a free port on
127.0.0.1.

Three paths ask for the same context (user and question drawn per request, the same sequence
for every path), interleaved request by request so that they share the machine's load:

* **HTTP**: ``POST /v1/context`` with ``httpx2`` (the HTTP client the MCP SDK uses) over one
  keep-alive connection;
* **MCP (SDK)**: the official ``mcp`` client's ``call_tool("get_context_assistant", ...)`` over
  Streamable HTTP (2026-07-28, stateless): what an agent host pays, client SDK included;
* **MCP (raw)**: the same ``tools/call`` JSON-RPC request posted with ``httpx2`` and parsed with
  ``json``: the server's side of MCP without the client SDK's work.

The MCP answers are checked against the HTTP one (same features, same documents, same prompt)
before timing. The server's and this client's CPU time per request are printed beside the wall
times: unlike wall times, they hardly move with other processes' load.

    python bench/mcp_latency.py                      # ~2-4 min on 2 cores
    python bench/mcp_latency.py --requests 300       # quicker

Only 127.0.0.1 is contacted; the server is stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from _common import (
    WORKSPACE,
    Summary,
    console,
    fmt_ms,
    keep_bench_folder_off_path,
    load_generator,
    load_line,
    machine_line,
    ratio,
    verdict,
)
from online import CpuMeter, contextkit_script, free_port
from search import QUESTIONS

keep_bench_folder_off_path()

ADDED_TARGET_MS = 1.0
SERVICE, TOOL = "assistant", "get_context_assistant"
PROTOCOL = "2026-07-28"
TEMPLATE = """\
You are the shopping assistant of an online store. Answer using only the facts below.

About the customer: tier {{ features.user_facts.tier }}, \
country {{ features.user_facts.country }}, \
store credit {{ features.user_facts.credit | round(2) }}, \
{{ features.user_facts.orders_30d }} orders in the last 30 days.

Products that may match the question:
{% for d in documents.products %}
- [{{ d.metadata.sku }}] {{ d.metadata.name }} ({{ d.metadata.price }}): {{ d.text }}
{% endfor %}

Question: {{ query }}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--docs", type=int, default=2000, help="product descriptions searched")
    p.add_argument("--requests", type=int, default=1000, help="timed requests per path")
    p.add_argument("--warmup", type=int, default=100, help="untimed requests per path first")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--server-timeout", type=float, default=300.0)
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repo (path is printed)")
    args = p.parse_args(argv)
    if args.requests < 10 or args.users < 10 or args.docs < 10:
        p.error("--requests, --users and --docs must be at least 10")
    return args


# -- the repo -------------------------------------------------------------------------------------
def write_repo(root: Path, args: argparse.Namespace) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "data"
    data.mkdir(parents=True)
    load_generator().generate(
        root / "gen", users=1, products=args.docs, orders=1, articles=1, seed=args.seed
    )
    shutil.move(root / "gen" / "products.parquet", data / "products.parquet")
    shutil.rmtree(root / "gen")
    rng = np.random.default_rng(args.seed)
    n = args.users
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
                "tier": pa.array(rng.choice(["free", "plus", "pro"], n).tolist()),
                "country": pa.array(rng.choice(["DE", "FR", "US", "JP", "BR"], n).tolist()),
                "credit": pa.array(rng.uniform(0, 200, n)),
                "orders_30d": pa.array(rng.integers(0, 30, n, dtype=np.int64)),
                "updated_at": pa.array(
                    np.full(n, np.datetime64("2026-01-01T00:00:00", "us")),
                    pa.timestamp("us", tz="UTC"),
                ),
            }
        ),
        data / "users.parquet",
    )
    (root / "contextkit.yaml").write_text(
        "project: bench_mcp\nmodels:\n  fast: {type: hash, dimension: 384}\n"
    )
    (root / "templates").mkdir()
    (root / "templates" / "prompt.jinja").write_text(TEMPLATE)
    (root / "defs.py").write_text(
        textwrap.dedent(
            f'''\
            from contextkit import (Attribute, ContextService, EmbeddingView, Entity, FileSource,
                                    PromptView, Search, TemplateFile, batch_feature_view)

            user = Entity(name="user", join_keys=["user_id"], description="A shopper.")
            product = Entity(name="product", join_keys=["product_id"])
            users = FileSource(name="users", path="data/users.parquet",
                               timestamp_field="updated_at")
            products = FileSource(name="products", path="data/products.parquet")

            @batch_feature_view(sources=[users], entities=[user], mode="sql",
                                features=[Attribute("tier"), Attribute("country"),
                                          Attribute("credit"), Attribute("orders_30d")],
                                timestamp_field="updated_at")
            def user_facts(users):
                """Tier, country, store credit and recent orders of a shopper."""
                return f"SELECT * FROM {{users}}"

            product_docs = EmbeddingView(
                name="product_docs", source=products, entities=[product], text="description",
                model="fast", metadata=["name", "sku", "price"],
                description="Product descriptions.",
            )
            prompt = PromptView(
                name="shopping_prompt", template=TemplateFile("templates/prompt.jinja"),
                features=[user_facts], searches=[Search(product_docs, name="products", top_k=5)],
                max_tokens=1500, model="openai/gpt-4o-mini",
                description="The shopper's facts and matching products, then the question.",
            )
            {SERVICE} = ContextService(
                name="{SERVICE}", features=[user_facts], prompts=[prompt],
                description="What a shopping assistant needs to answer one shopper.",
            )
            '''
        )
    )


def build(root: Path, args: argparse.Namespace) -> str:
    """Write, apply and materialize the repo; returns a reader key of ``prod``."""
    import contextkit

    write_repo(root, args)
    ctx = contextkit.connect(root, workspace=WORKSPACE)
    ctx.create_workspace(WORKSPACE, live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize()
    key = ctx.access.create_key("bench", workspace=WORKSPACE, role="reader").key
    ctx.close()
    return key


class Server:
    """``contextkit serve`` (auth on) in its own process group; ``stop()`` is idempotent."""

    def __init__(self, repo: Path, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [contextkit_script(), "serve", "--repo", str(repo), "--workspace", WORKSPACE,
                   "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float) -> float:
        import httpx

        began = time.perf_counter()
        while time.perf_counter() - began < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"error: the server exited; log: {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(
            f"error: the server was not ready in {timeout:.0f} s; log: {self.log_path}"
        )

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if not self._log.closed:
            self._log.close()


# -- the three paths ------------------------------------------------------------------------------
def requests_for(args: argparse.Namespace, count: int) -> list[tuple[int, str]]:
    rng = random.Random(args.seed)
    return [(rng.randint(1, args.users), rng.choice(QUESTIONS)) for _ in range(count)]


def mcp_envelope(call_id: int, user: int, query: str) -> tuple[dict, dict]:
    """A 2026-07-28 ``tools/call`` request as the SDK sends it: (headers, body)."""
    headers = {"MCP-Protocol-Version": PROTOCOL, "Mcp-Method": "tools/call", "Mcp-Name": TOOL}
    body = {
        "jsonrpc": "2.0",
        "id": call_id,
        "method": "tools/call",
        "params": {
            "name": TOOL,
            "arguments": {"entities": {"user_id": user}, "query": query},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": PROTOCOL,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    return headers, body


async def measure(port: int, key: str, args: argparse.Namespace, meter: CpuMeter) -> dict:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    timeout = httpx2.Timeout(60)
    async with (
        httpx2.AsyncClient(base_url=base, headers=auth, timeout=timeout) as http,
        httpx2.AsyncClient(base_url=base, headers=auth, timeout=timeout) as raw,
        httpx2.AsyncClient(headers=auth, timeout=timeout) as sdk_http,
        Client(streamable_http_client(base + "/mcp", http_client=sdk_http)) as sdk,
    ):
        listed = {t.name for t in (await sdk.list_tools()).tools}
        if TOOL not in listed:
            raise SystemExit(f"error: {TOOL} is not listed: {sorted(listed)}")
        calls = 0

        async def via_http(user: int, query: str) -> dict:
            body = {"service": SERVICE, "entities": {"user_id": user}, "query": query}
            response = await http.post("/v1/context", json=body)
            if response.status_code != 200:
                raise SystemExit(f"error: /v1/context answered {response.status_code}")
            return response.json()

        async def via_sdk(user: int, query: str) -> dict:
            args = {"entities": {"user_id": user}, "query": query}
            result = await sdk.call_tool(TOOL, args)
            if result.is_error:
                raise SystemExit(f"error: {TOOL} failed: {result.content[0].text}")
            return result.structured_content

        async def via_raw(user: int, query: str) -> dict:
            nonlocal calls
            calls += 1
            headers, body = mcp_envelope(calls, user, query)
            response = await raw.post("/mcp", json=body, headers=headers)
            answer = json.loads(response.content)
            if response.status_code != 200 or "error" in answer or answer["result"]["isError"]:
                raise SystemExit(f"error: raw tools/call failed: {response.text[:500]}")
            return answer["result"]["structuredContent"]

        paths = {"HTTP /v1/context": via_http, "MCP (SDK client)": via_sdk, "MCP (raw)": via_raw}
        # The same context on every path before timing anything.
        user, query = requests_for(args, 1)[0]
        answers = {name: await call(user, query) for name, call in paths.items()}
        reference = answers["HTTP /v1/context"]
        for name, got in answers.items():
            same = (
                {v: b["values"] for v, b in got["features"].items()}
                == {v: b["values"] for v, b in reference["features"].items()}
                and [d["id"] for d in got["documents"]["products"]]
                == [d["id"] for d in reference["documents"]["products"]]
                and got["prompt"]["text"] == reference["prompt"]["text"]
            )
            if not same:
                raise SystemExit(f"error: {name} answers differently from /v1/context")

        for user, query in requests_for(args, args.warmup):
            for call in paths.values():
                await call(user, query)

        samples: dict[str, list[int]] = {name: [] for name in paths}
        order = list(paths)
        clock = time.perf_counter_ns
        for user, query in requests_for(args, args.requests):
            order = order[1:] + order[:1]  # rotate: no path always runs first
            for name in order:
                began = clock()
                await paths[name](user, query)
                samples[name].append(clock() - began)
        # CPU per request, path by path (wall times above are interleaved).
        for name, call in paths.items():
            batch = requests_for(args, min(300, args.requests))
            with meter.measure(name, len(batch)):
                for user, query in batch:
                    await call(user, query)
        return {name: Summary.of_ns(s) for name, s in samples.items()}


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = console()
    out.print(f"[bold]bench/mcp_latency.py[/]: {machine_line()}")
    work = Path(tempfile.mkdtemp(prefix="contextkit-bench-mcp-"))
    server = None
    try:
        began = time.perf_counter()
        key = build(work / "repo", args)
        out.print(f"repo built, applied and materialized in {time.perf_counter() - began:.1f} s")
        port = free_port()
        server = Server(work / "repo", port, work / "serve.log")
        out.print(f"server ready in {server.wait_ready(args.server_timeout):.1f} s (port {port})")
        meter = CpuMeter(server.proc.pid)
        load_before = os.getloadavg()
        results = asyncio.run(measure(port, key, args, meter))
        load_after = os.getloadavg()
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            out.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    from rich.table import Table

    http = results["HTTP /v1/context"]
    table = Table(title=f"get_context, {args.requests} requests per path (ms)")
    for column in ("path", "p50", "p99", "mean", "p50 added", "p50 ratio", "p99 ratio",
                   "server CPU/req", "client CPU/req"):  # fmt: skip
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, s in results.items():
        added = s.p50 - http.p50
        table.add_row(
            name,
            fmt_ms(s.p50),
            fmt_ms(s.p99),
            fmt_ms(s.mean),
            "" if s is http else f"{added:+.3f}",
            "" if s is http else ratio(s.p50, http.p50),
            "" if s is http else ratio(s.p99, http.p99),
            fmt_ms(meter.server_ms[name]),
            fmt_ms(meter.client_ms[name]),
        )
    out.print(table)
    for name in ("MCP (SDK client)", "MCP (raw)"):
        added = results[name].p50 - http.p50
        out.print(
            f"{name}: {added:+.3f} ms at p50 over /v1/context (target < {ADDED_TARGET_MS} ms): "
            + verdict(added, ADDED_TARGET_MS)
        )
    out.print(load_line(load_before, load_after, "the timed requests"))
    if args.json:
        payload = {
            "machine": machine_line(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": {
                name: {
                    **vars(s),
                    "server_cpu_ms": meter.server_ms[name],
                    "client_cpu_ms": meter.client_ms[name],
                }
                for name, s in results.items()
            },
            "load": [load_before[0], load_after[0]],
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
