"""Context assembly latency: ``POST /v1/context`` (render, no completion) on a real server vs.
the sum of its parts measured raw in the same run; and whether its stages run concurrently.

Builds a repo in a temp dir with SDK objects (``Entity``, ``FileSource``, ``batch_feature_view``,
``EmbeddingView``, ``Search``, ``PromptView``, ``ContextService``), applies it to a live ``prod``
workspace, materializes it and starts ``contextkit serve`` (one uvicorn worker, ``--no-auth``) on
a free port on 127.0.0.1.

**Fast service** (the issue's case): 1 entity, one feature view with 4 features (online store:
SQLite), one top-5 vector search over ``--chunks`` (default 20,000) product descriptions from
the quickstart generator, a text prompt (Jinja) with a 2,000-token budget counted with
``openai/gpt-4o-mini``'s tokenizer (tiktoken o200k). The view's model is contextkit's ``hash``
encoder (``models: {fast: {type: hash, dimension: 384}}``: seeded random unit vectors, ~30 us per
query), so query encoding is a small, known part. Timed per request, in interleaved rounds:

* raw parts, each on its own, in this process, each the plain library doing the work the endpoint
  does: the ``sqlite3`` SELECT of the 4 features that the online store runs; the hash encoding of
  the query; the top-5 search *the store runs for this table*, done with the raw library (read
  from the table's calibrated search plan and the store's settings, see ``bench/_raw_search.py``):
  numpy's exact search over the same normalized vectors (the store's in-memory copy; scores, top
  5, the 5 rows' columns), numpy's projected shortlist + exact rescoring when the plan chose it,
  raw LanceDB's index query with the plan's parameters when it chose the ANN index, and without
  an index LanceDB's flat query;
  the same template rendered by plain ``jinja2`` (``SandboxedEnvironment`` + ``StrictUndefined``)
  from the feature row and the store's top 5 (so both prompts can be compared); the token count
  of the rendered text with plain ``tiktoken``. The raw search's documents are checked against
  the store's (the same 5, in order, on the exact paths). For reference, not in the sums: the
  store layer's calls (``SQLiteOnlineStore.read``, ``LanceVectorStore.search``) and, where the
  store answers exactly, the raw LanceDB query the endpoint does *not* run (an earlier version
  of this script subtracted that one, which made the overhead look 1.1 ms smaller than it is);
* SDK ``ctx.get_context(...)`` in process; HTTP ``POST /v1/context`` (client round trip over a
  keep-alive connection); HTTP ``GET /health`` (the HTTP stack's floor). A second table puts the
  server's own stage timings (``metadata.timings_ms``) next to the raw parts doing each stage's
  work.

**Slow service** (concurrency): ``--slow-views`` feature views of ``--slow-features`` features
each, and two searches whose views use two hosted embedding models (litellm, ``openai/...``)
served by the local OpenAI stub (``tests/openai_stub.py``) with ``stub.delay(--slow-delay-ms)``:
each search waits that long for its query embedding. No sleep is added to contextkit code. The
server's own stage timings (``metadata.timings_ms``) give the features, each search and render;
their sum is what a sequential run would take; ``total`` is what the request took.

    python bench/context.py                    # ~5-10 min on 2 cores (most of it materializing)
    python bench/context.py --requests 300     # quicker

Targets (issue 5): p50 overhead of the endpoint over the raw parts (SQLite + the vector search +
Jinja) under 1.5 ms; total below the sum of the stages when features and search are both slow.
Only 127.0.0.1 is contacted; the server and the stub are stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import (
    REPO_ROOT,
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
from _raw_search import LABELS as SEARCH_LABELS
from _raw_search import raw_search
from online import Server, free_port
from search import QUESTIONS, Http

keep_bench_folder_off_path()

OVERHEAD_TARGET_MS = 1.5
PROMPT_MODEL = "openai/gpt-4o-mini"
STUB_KEY_ENV = "CK_BENCH_STUB_KEY"
FEATURES = ["tier", "country", "credit", "orders_30d"]
TEMPLATE = """\
You are the shopping assistant of an online store. Answer the customer's question using only \
the facts below.

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
SLOW_TEMPLATE = """\
Customer tier {{ features.wide_0.f0 }}.
{% for d in documents.a %}- {{ d.text }}
{% endfor %}{% for d in documents.b %}- {{ d.text }}
{% endfor %}Question: {{ query }}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=20_000, help="chunks the fast search runs over")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=1000, help="timed requests per path")
    p.add_argument("--warmup", type=int, default=100, help="untimed requests per path first")
    # One call per path per round by default: on a shared machine a burst of other work then
    # lands on every path alike. In blocks (5 rounds of 200 calls, or 50 of 20) the raw numpy
    # search measured 0.66x-2.1x the store's search, which runs the same kernel and more (bench/
    # README.md, load 5-11 on 2 cores).
    p.add_argument(
        "--rounds", type=int, help="interleaved rounds the requests span (default: --requests)"
    )
    p.add_argument("--slow-views", type=int, default=60, help="feature views of the slow service")
    p.add_argument("--slow-features", type=int, default=40, help="features per slow view")
    p.add_argument("--slow-docs", type=int, default=2000, help="documents per slow search view")
    p.add_argument("--slow-delay-ms", type=float, default=20.0, help="stub embedding delay")
    p.add_argument("--slow-requests", type=int, default=200, help="timed slow requests")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--server-timeout", type=float, default=300.0)
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repo (path is printed)")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = args.requests
    if args.requests < args.rounds or args.rounds < 1 or args.chunks < 10 or args.users < 10:
        p.error("--rounds >= 1, --requests >= --rounds, --chunks >= 10, --users >= 10")
    return args


# -- the repo -------------------------------------------------------------------------------------
def write_repo(root: Path, args: argparse.Namespace, stub_url: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    n_products = max(args.chunks, 2 * args.slow_docs)
    load_generator().generate(
        root / "gen", users=1, products=n_products, orders=1, articles=1, seed=args.seed
    )
    products = pq.read_table(root / "gen" / "products.parquet")
    shutil.rmtree(root / "gen")
    pq.write_table(products.slice(0, args.chunks), data / "products.parquet")
    pq.write_table(products.slice(0, args.slow_docs), data / "products_a.parquet")
    pq.write_table(products.slice(args.slow_docs, args.slow_docs), data / "products_b.parquet")

    n = args.users
    stamp = pa.array(
        np.full(n, np.datetime64("2026-01-01T00:00:00", "us")), pa.timestamp("us", tz="UTC")
    )
    users = pa.table(
        {
            "user_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "tier": pa.array(rng.choice(["free", "plus", "pro"], n).tolist(), pa.string()),
            "country": pa.array(rng.choice(["DE", "FR", "US", "JP", "BR"], n).tolist()),
            "credit": pa.array(rng.uniform(0, 200, n)),
            "orders_30d": pa.array(rng.integers(0, 30, n, dtype=np.int64)),
            "updated_at": stamp,
        }
    )
    pq.write_table(users, data / "users.parquet")
    wide = {"user_id": users.column("user_id")}
    for j in range(args.slow_features):
        wide[f"f{j}"] = pa.array(rng.uniform(0, 1, n))
    wide["updated_at"] = stamp
    pq.write_table(pa.table(wide), data / "users_wide.parquet")

    (root / "contextkit.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: bench_context
            models:
              fast: {{type: hash, dimension: 384}}
              stub_a: {{type: litellm, model: openai/stub-embedding, api_base: "{stub_url}",
                       dimension: 384, api_key_env: {STUB_KEY_ENV}, batch_size: 256,
                       max_retries: 0}}
              stub_b: {{type: litellm, model: openai/stub-embedding-b, api_base: "{stub_url}",
                       dimension: 384, api_key_env: {STUB_KEY_ENV}, batch_size: 256,
                       max_retries: 0}}
            """
        )
    )
    feats = ", ".join(f'Attribute("{f}")' for f in FEATURES)
    wide_feats = ", ".join(f'Attribute("f{j}")' for j in range(args.slow_features))
    wide_cols = ", ".join(f"f{j}" for j in range(args.slow_features))
    defs = textwrap.dedent(
        f'''\
        from contextkit import (Attribute, ContextService, EmbeddingView, Entity, FileSource,
                                PromptView, Search, batch_feature_view)

        user = Entity(name="user", join_keys=["user_id"])
        product = Entity(name="product", join_keys=["product_id"])
        users = FileSource(name="users", path="data/users.parquet", timestamp_field="updated_at")
        users_wide = FileSource(name="users_wide", path="data/users_wide.parquet",
                                timestamp_field="updated_at")
        products = FileSource(name="products", path="data/products.parquet",
                              timestamp_field="updated_at")
        products_a = FileSource(name="products_a", path="data/products_a.parquet",
                                timestamp_field="updated_at")
        products_b = FileSource(name="products_b", path="data/products_b.parquet",
                                timestamp_field="updated_at")


        @batch_feature_view(sources=[users], entities=[user], mode="sql", features=[{feats}])
        def user_facts(users):
            return f"SELECT user_id, {", ".join(FEATURES)}, updated_at FROM {{users}}"


        product_docs = EmbeddingView(name="product_docs", source=products, entities=[product],
                                     text="description", model="fast",
                                     metadata=["name", "category", "brand", "price", "sku"])
        docs_a = EmbeddingView(name="docs_a", source=products_a, entities=[product],
                               text="description", model="stub_a", metadata=["name"])
        docs_b = EmbeddingView(name="docs_b", source=products_b, entities=[product],
                               text="description", model="stub_b", metadata=["name"])

        answer = PromptView(name="answer", template={TEMPLATE!r}, features=[user_facts],
                            searches=[Search(product_docs, name="products", top_k=5)],
                            max_tokens=2000, model="{PROMPT_MODEL}")
        assistant = ContextService(name="assistant", features=[user_facts], prompts=[answer])
        '''
    )
    wide_views = []
    for i in range(args.slow_views):
        defs += textwrap.dedent(
            f"""

            @batch_feature_view(sources=[users_wide], entities=[user], mode="sql",
                                features=[{wide_feats}])
            def wide_{i}(users_wide):
                return f"SELECT user_id, {wide_cols}, updated_at FROM {{users_wide}}"
            """
        )
        wide_views.append(f"wide_{i}")
    defs += textwrap.dedent(
        f"""

        slow_answer = PromptView(name="slow_answer", template={SLOW_TEMPLATE!r},
                                 features=[wide_0],
                                 searches=[Search(docs_a, name="a", top_k=5),
                                           Search(docs_b, name="b", top_k=5)],
                                 max_tokens=2000, model="{PROMPT_MODEL}")
        assistant_slow = ContextService(name="assistant_slow", features=[{", ".join(wide_views)}],
                                        prompts=[slow_answer])
        """
    )
    (root / "defs.py").write_text(defs)


# -- raw parts ------------------------------------------------------------------------------------
def offline_tiktoken(encoding: str) -> str:
    """Point tiktoken at the BPE files litellm bundles (what contextkit's counter uses), so that
    it never tries to download; refuses if the file is not there."""
    import hashlib
    from importlib import resources

    folder = Path(str(resources.files("litellm").joinpath("litellm_core_utils/tokenizers")))
    url = f"https://openaipublic.blob.core.windows.net/encodings/{encoding}.tiktoken"
    if not (folder / hashlib.sha1(url.encode()).hexdigest()).is_file():
        raise SystemExit(f"error: tiktoken's {encoding} file is not bundled in {folder}")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    return encoding


class RawParts:
    """The endpoint's work, done part by part with the plain libraries."""

    def __init__(self, root: Path, chunks_table: str, top_k: int, store) -> None:
        import sqlite3

        import jinja2
        import jinja2.sandbox
        import lancedb
        import tiktoken  # after offline_tiktoken() below has pointed it at its files

        from contextkit.compute.layout import online_table
        from contextkit.embeddings import HashEncoder
        from contextkit.stores.online import SQLiteOnlineStore

        table = online_table(WORKSPACE, "user_facts")
        self.columns = ["event_timestamp", *FEATURES]
        # The store layer, for reference; the raw part is sqlite3 running the store's SELECT on
        # a connection set up like the store's (WAL, cached statements).
        self.online = SQLiteOnlineStore(root / ".contextkit" / "online.db")
        self.online_table = table
        self.sqlite = sqlite3.connect(
            root / ".contextkit" / "online.db", isolation_level=None, cached_statements=1024
        )
        self.sqlite.execute("PRAGMA journal_mode=WAL")
        names = ", ".join(f'"{c}"' for c in ["user_id", *self.columns])
        self.select_sql = f'SELECT {names} FROM "{table}" WHERE "user_id" = ?'
        self.encoder = HashEncoder(dimension=384, name="hash-384")
        self.tbl = lancedb.connect(str(root / ".contextkit" / "vectors")).open_table(chunks_table)
        self.select = [
            f.name for f in self.tbl.schema if f.name not in ("vector", "content_hash", "row_hash")
        ]
        self.top_k = top_k
        self.path, self.raw_search = raw_search(store, root / ".contextkit" / "vectors",
                                                chunks_table, top_k)  # fmt: skip
        env = jinja2.sandbox.SandboxedEnvironment(
            undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True,
            lstrip_blocks=True,
        )  # fmt: skip
        self.template = env.from_string(TEMPLATE)
        self.tokens = tiktoken.get_encoding(offline_tiktoken("o200k_base"))

    def features(self, user_id: int):
        return self.sqlite.execute(self.select_sql, (user_id,)).fetchall()

    def store_features(self, user_id: int):
        return self.online.read(self.online_table, ["user_id"], self.columns, [(user_id,)])

    def encode(self, query: str):
        return self.encoder.encode([query])[0]

    def search(self, vector) -> list[dict]:
        """The search the store runs for this table, done with the raw library."""
        return self.raw_search(vector)

    def lance(self, vector):
        """Raw LanceDB: its index query when the table has one (the store's ANN parameters:
        cosine, ``limit(k)``, no refine), else its flat scan."""
        return (
            self.tbl.search(vector, vector_column_name="vector")
            .distance_type("cosine")
            .limit(self.top_k)
            .select([*self.select, "_distance"])
            .to_arrow()
        )

    def context_for(self, user_id: int, query: str, hits: list[dict]) -> dict:
        """The template's input (built outside the timed render) from the raw feature row and
        the given hits: the store's, i.e. the top 5 the endpoint also gets, so that the rendered
        prompts can be compared."""
        row = self.features(user_id)[0]
        docs = [{"text": h["text"], "metadata": h["metadata"]} for h in hits]
        return {
            "features": {"user_facts": dict(zip(FEATURES, row[2:], strict=True))},
            "documents": {"products": docs},
            "query": query,
        }

    def render(self, context: dict) -> str:
        return self.template.render(context)

    def count(self, text: str) -> int:
        return len(self.tokens.encode(text))


class Client(Http):
    """The keep-alive client, reconnecting once when the server has closed the idle connection
    (uvicorn does after 5 s, which the other paths' turn in a round can exceed on a busy machine);
    ``reconnects`` counts it (each adds a local TCP connect to one sample)."""

    reconnects = 0

    def call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        import http.client

        try:
            return super().call(method, path, body)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.reconnects += 1
            self.conn.close()
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return super().call(method, path, body)


def check_raw_parts(raw: RawParts, store, mix, vectors, hits) -> str:
    """Check that the raw parts do the store's work: the same feature row, and the store's top 5
    (in order on the exact paths; an ANN index's top 5 is compared by overlap). Says how well
    they agree; raises where an exact path disagrees."""
    for user_id, _query in mix:
        raw_row = raw.features(user_id)[0][1:]
        if tuple(raw_row) != tuple(raw.store_features(user_id)[0]):
            raise RuntimeError(f"raw sqlite3 and the online store disagree for user {user_id}")
    found = [[row["id"] for row in raw.search(v)] for v in vectors]
    wanted = [[hit["id"] for hit in h] for h in hits]
    if raw.path in ("exact", "projected", "flat"):
        if found != wanted:
            raise RuntimeError(f"the raw {raw.path} search does not return the store's top 5")
        return f"all {len(found)} queries (same ids, same order)"
    shared = sum(len(set(f) & set(w)) for f, w in zip(found, wanted, strict=True))
    return f"{shared} of {sum(len(w) for w in wanted)} documents (same ANN index and parameters)"


def run_rounds(paths: dict, rounds: int, per_round: int, warmup: int, cpu_of=None):
    """Interleaved rounds: each path runs ``per_round`` calls per round; ns samples per path."""
    for fn in paths.values():
        for i in range(warmup):
            fn(i)
    samples: dict[str, list[int]] = {k: [] for k in paths}
    cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
    gc.collect()
    gc.freeze()
    clock = time.perf_counter_ns
    try:
        for r in range(rounds):
            for key, fn in paths.items():
                c0 = cpu_of() if cpu_of else 0.0
                bucket = samples[key]
                for i in range(r * per_round, (r + 1) * per_round):
                    t0 = clock()
                    fn(i)
                    bucket.append(clock() - t0)
                if cpu_of:
                    cpu[key] += cpu_of() - c0
    finally:
        gc.unfreeze()
    return samples, cpu


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = console()
    out.print(f"[bold]contextkit bench: context[/]  {machine_line()}")
    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-context-"))
    server: Server | None = None
    stub = None
    try:
        import numpy as np
        import psutil

        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from openai_stub import OpenAIStub

        import contextkit

        stub = OpenAIStub(dimension=384).start()
        os.environ[STUB_KEY_ENV] = "sk-bench-local-stub"
        root = tmp / "repo"
        out.print(f"generating data ({args.chunks:,} products, {args.users:,} users) ...")
        write_repo(root, args, stub.base_url)
        ctx = contextkit.connect(root, workspace=WORKSPACE)
        ctx.create_workspace(WORKSPACE, live=True)
        ctx.apply(ctx.plan(root))
        out.print("materializing (feature views, then embedding views; indexes) ...")
        t0 = time.perf_counter()
        jobs = ctx.materialize()
        chunks = next(j.rows_online for j in jobs if j.view == "product_docs")
        out.print(f"  {len(jobs)} jobs in {time.perf_counter() - t0:.1f}s; {chunks:,} chunks")
        stub.reset()

        port = free_port()
        server = Server(root, port, tmp / "server.log")
        out.print(f"server (pid {server.proc.pid}) starting on 127.0.0.1:{port} ...")
        startup = server.wait_healthy(args.server_timeout)
        out.print(f"  healthy after {startup:.1f}s")
        server_proc = psutil.Process(server.proc.pid)

        def server_cpu() -> float:
            t = server_proc.cpu_times()
            return t.user + t.system

        rng = random.Random(args.seed)
        mix = [(rng.randint(1, args.users), rng.choice(QUESTIONS)) for _ in range(64)]
        from contextkit.stores.vector import LanceVectorStore

        # Built as the server builds its store (contextkit.client: the defaults).
        store = LanceVectorStore(root / ".contextkit" / "vectors")
        store.warm(f"{WORKSPACE}__product_docs")
        raw = RawParts(root, f"{WORKSPACE}__product_docs", 5, store)
        vectors = [raw.encode(q) for _, q in mix]
        hits = [store.search(f"{WORKSPACE}__product_docs", vector=v, top_k=5) for v in vectors]
        agreement = check_raw_parts(raw, store, mix, vectors, hits)
        out.print(
            f"  the store searches this table by its [bold]{raw.path}[/] path; "
            f"the raw search returns the store's top 5 for {agreement}"
        )
        contexts = [raw.context_for(u, q, h) for (u, q), h in zip(mix, hits, strict=True)]
        rendered = [raw.render(c) for c in contexts]
        bodies = [
            json.dumps(
                {"workspace": WORKSPACE, "service": "assistant", "entities": {"user_id": u},
                 "query": q, "render": True, "complete": False}
            ).encode()
            for u, q in mix
        ]  # fmt: skip
        client = Client(port)
        # Check once: the endpoint returns the 4 features, the store's 5 documents, the prompt
        # the raw render gives from the same features and documents.
        body = json.loads(client.call("POST", "/v1/context", bodies[0]))
        got = body["features"]["user_facts"]["values"]
        if sorted(got) != sorted(FEATURES) or len(body["documents"]["products"]) != 5:
            raise RuntimeError(f"unexpected /v1/context answer: {str(body)[:500]}")
        if [d["id"] for d in body["documents"]["products"]] != [h["id"] for h in hits[0]]:
            raise RuntimeError("the endpoint's documents are not the store's top 5")
        same_prompt = body["prompt"]["text"] == rendered[0]
        sdk = ctx.get_context("assistant", {"user_id": mix[0][0]}, query=mix[0][1])
        if sdk.prompt["text"] != body["prompt"]["text"]:
            raise RuntimeError("SDK and HTTP prompts differ")

        n = len(mix)
        stage_ms: dict[str, list[float]] = {}

        def http_context(i):
            payload = client.call("POST", "/v1/context", bodies[i % n])
            if i % 5 == 0:  # keep a sample of the server's own stage timings
                t = json.loads(payload)["metadata"]["timings_ms"]
                for name, value in (("features", t["features"]),
                                    ("search", t["search"]["products"]),
                                    ("retrieve", t["retrieve"]), ("render", t["render"]),
                                    ("total", t["total"])):  # fmt: skip
                    stage_ms.setdefault(name, []).append(value)

        paths = {
            "features": lambda i: raw.features(mix[i % n][0]),
            "encode": lambda i: raw.encode(mix[i % n][1]),
            "search": lambda i: raw.search(vectors[i % n]),
            "render": lambda i: raw.render(contexts[i % n]),
            "tokens": lambda i: raw.count(rendered[i % n]),
            "store_features": lambda i: raw.store_features(mix[i % n][0]),
            "store": lambda i: store.search(
                f"{WORKSPACE}__product_docs", vector=vectors[i % n], top_k=5
            ),
            "sdk": lambda i: ctx.get_context(
                "assistant", {"user_id": mix[i % n][0]}, query=mix[i % n][1]
            ),  # fmt: skip
            "http": http_context,
            "health": lambda i: client.call("GET", "/health"),
        }
        if raw.path != "ann":  # what the endpoint does not run for this table, for reference
            paths["lance"] = lambda i: raw.lance(vectors[i % n])
        per_round = args.requests // args.rounds
        out.print(
            f"timing the fast service: {len(paths)} paths x {per_round * args.rounds} calls in "
            f"{args.rounds} interleaved rounds ..."
        )
        load_before = os.getloadavg()
        samples, cpu = run_rounds(paths, args.rounds, per_round, args.warmup, server_cpu)
        fast = {k: Summary.of_ns(v) for k, v in samples.items()}
        server_ms = {k: cpu[k] * 1e3 / len(samples[k]) for k in ("http", "health")}

        # -- slow service: many feature views, two searches on a slow (stubbed) hosted model --
        slow_bodies = [
            json.dumps(
                {"workspace": WORKSPACE, "service": "assistant_slow",
                 "entities": {"user_id": u}, "query": q}
            ).encode()
            for u, q in mix
        ]  # fmt: skip
        stub.delay(args.slow_delay_ms / 1000, path="/v1/embeddings")
        slow_stages: dict[str, list[float]] = {}
        slow_rt: list[int] = []
        out.print(
            f"timing the slow service: {args.slow_requests} requests "
            f"({args.slow_views} views x {args.slow_features} features, 2 searches, "
            f"embedding delay {args.slow_delay_ms:g} ms) ..."
        )
        for i in range(args.slow_requests + 20):
            t0 = time.perf_counter_ns()
            payload = client.call("POST", "/v1/context", slow_bodies[i % n])
            elapsed = time.perf_counter_ns() - t0
            if i < 20:
                continue
            slow_rt.append(elapsed)
            t = json.loads(payload)["metadata"]["timings_ms"]
            parts = {
                "features": t["features"],
                "search a": t["search"]["a"],
                "search b": t["search"]["b"],
                "render": t["render"],
            }
            parts["sum of stages"] = sum(parts.values())
            parts["retrieve"] = t["retrieve"]
            parts["total"] = t["total"]
            for key, value in parts.items():
                slow_stages.setdefault(key, []).append(value)
        load_after = os.getloadavg()
        client.close()
        if client.reconnects:
            out.print(f"the client reconnected {client.reconnects}x (idle keep-alive closed)")

        report(out, args, fast, server_ms, stage_ms, same_prompt, chunks, raw.path)
        report_slow(out, args, slow_stages, Summary.of_ns(slow_rt))
        out.print(load_line(load_before, load_after, "the timed runs"))
        if args.json:
            dump = {
                "machine": machine_line(),
                "args": {k: v for k, v in vars(args).items() if k != "json"},
                "search_path": raw.path,
                "raw_search_agreement": agreement,
                "fast": {k: s.__dict__ for k, s in fast.items()},
                "server_cpu_ms": server_ms,
                "server_stages_p50": {k: float(np.median(v)) for k, v in stage_ms.items()},
                "slow_stages_p50": {k: float(np.median(v)) for k, v in slow_stages.items()},
                "slow_round_trip": Summary.of_ns(slow_rt).__dict__,
                "loadavg_before": load_before,
                "loadavg_after": load_after,
            }
            args.json.write_text(json.dumps(dump, indent=2))
        return 0
    finally:
        if server is not None:
            server.stop()
        if stub is not None:
            stub.stop()
        if args.keep:
            out.print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def report(out, args, fast, server_ms, stage_ms, same_prompt, chunks, path: str) -> None:
    from rich.table import Table

    parts_issue = fast["features"].p50 + fast["search"].p50 + fast["render"].p50
    parts_all = parts_issue + fast["encode"].p50 + fast["tokens"].p50
    table = Table(
        title=f"/v1/context, 1 entity, 4 features, top-5 vector search over {chunks:,} chunks, "
        f"render, no completion: ms per call, {args.requests:,} calls per row in {args.rounds} "
        f"interleaved rounds after {args.warmup} warm-up",
        title_justify="left",
    )
    for col in ("path", "p50", "p99", "mean", "max", "p50 / raw parts", "p50 - raw parts",
                "server CPU"):  # fmt: skip
        table.add_column(col, justify="left" if col == "path" else "right")
    labels = [
        ("features", "raw part: sqlite3, the store's SELECT of the 4 features"),
        ("search", f"raw part: top 5 by {SEARCH_LABELS[path]}"),
        ("render", "raw part: jinja2 render of the same template"),
        (None, "= sum of raw parts (SQLite + search + Jinja)"),
        ("encode", "raw part: hash-encode the query (the view's model)"),
        ("tokens", "raw part: tiktoken count of the rendered prompt"),
        (None, "= sum of all raw parts"),
        ("store_features", "ref: SQLiteOnlineStore.read (store layer)"),
        ("store", "ref: LanceVectorStore.search (store layer), top 5"),
        ("lance", "ref: raw LanceDB query (its index if any), top 5: NOT run by the endpoint"),
        ("sdk", "SDK ctx.get_context"),
        ("http", "HTTP POST /v1/context"),
        ("health", "HTTP GET /health (stack floor)"),
    ]
    for key, label in labels:
        if key is None:
            value = parts_issue if "SQLite" in label else parts_all
            table.add_row(f"[bold]{label}[/]", fmt_ms(value), "", "", "", "", "", "")
            continue
        if key not in fast:
            continue
        s = fast[key]
        cmp = key in ("sdk", "http")
        table.add_row(
            label, fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.mean), fmt_ms(s.max),
            ratio(s.p50, parts_issue) if cmp else "",
            f"{s.p50 - parts_issue:+.3f}" if cmp else "",
            fmt_ms(server_ms[key]) if key in server_ms else "",
        )  # fmt: skip
    out.print(table)

    # Each stage of the server (its own timings) next to the raw parts doing that stage's work.
    server = {name: median(values) for name, values in stage_ms.items()}
    raw_of = {
        "features": fast["features"].p50,
        "search": fast["encode"].p50 + fast["search"].p50,
        "retrieve": fast["features"].p50 + fast["encode"].p50 + fast["search"].p50,
        "render": fast["render"].p50 + fast["tokens"].p50,
        "total": parts_all,
    }
    raw_label = {
        "features": "sqlite3 SELECT",
        "search": "encode + raw search",
        "retrieve": "the two above, one after the other",
        "render": "jinja2 + tiktoken",
        "total": "all raw parts",
    }
    stages = Table(
        title="The server's own stage timings (metadata.timings_ms, p50 over every 5th HTTP "
        "request above) against the raw parts doing the same work",
        title_justify="left",
    )
    for col in ("stage", "server p50 ms", "raw work", "raw p50 ms", "server - raw"):
        stages.add_column(col, justify="left" if col in ("stage", "raw work") else "right")
    for name in ("features", "search", "retrieve", "render", "total"):
        stages.add_row(
            name, fmt_ms(server[name]), raw_label[name], fmt_ms(raw_of[name]),
            f"{server[name] - raw_of[name]:+.3f}",
        )  # fmt: skip
    stages.add_row(
        "HTTP round trip", fmt_ms(fast["http"].p50), "server total (stack, JSON, client)",
        fmt_ms(server["total"]), f"{fast['http'].p50 - server['total']:+.3f}",
    )  # fmt: skip
    out.print(stages)
    out.print(f"the endpoint's prompt text equals the raw jinja2 render: {same_prompt}")

    targets = Table(title="Target (issue 5)", title_justify="left")
    for col in ("metric", "measured ms", "target ms", "result"):
        targets.add_column(col, justify="left" if col == "metric" else "right")
    over = fast["http"].p50 - parts_issue
    targets.add_row(
        "HTTP p50 - (SQLite + search + Jinja p50s, each done raw)", f"{over:+.3f}",
        f"< {OVERHEAD_TARGET_MS}", verdict(over, OVERHEAD_TARGET_MS),
    )  # fmt: skip
    over_all = fast["http"].p50 - parts_all
    targets.add_row(
        "HTTP p50 - (all raw parts incl. encode + tokens)", f"{over_all:+.3f}",
        f"< {OVERHEAD_TARGET_MS}", verdict(over_all, OVERHEAD_TARGET_MS),
    )  # fmt: skip
    store_parts = (
        parts_all - fast["features"].p50 - fast["search"].p50
        + fast["store_features"].p50 + fast["store"].p50
    )  # fmt: skip
    over_store = fast["http"].p50 - store_parts
    targets.add_row(
        "ref: HTTP p50 - (all parts, the store layer's read and search instead of raw)",
        f"{over_store:+.3f}", "", "",
    )  # fmt: skip
    out.print(targets)


def report_slow(out, args, stages: dict[str, list[float]], round_trip: Summary) -> None:
    from rich.table import Table

    table = Table(
        title=f"Concurrency: service with {args.slow_views} feature views x {args.slow_features} "
        f"features and 2 searches whose query embeddings come from a hosted model (local stub, "
        f"{args.slow_delay_ms:g} ms delay each); the server's stage timings, "
        f"{len(stages['total'])} requests",
        title_justify="left",
    )
    for col in ("stage", "p50 ms", "mean ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, values in stages.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * (len(ordered) - 1)))]
        label = f"[bold]{name}[/]" if name in ("sum of stages", "total") else name
        table.add_row(label, fmt_ms(median(values)), fmt_ms(sum(values) / len(values)),
                      fmt_ms(p99))  # fmt: skip
    table.add_row("HTTP round trip (client)", fmt_ms(round_trip.p50), fmt_ms(round_trip.mean),
                  fmt_ms(round_trip.p99))  # fmt: skip
    out.print(table)
    ratios = [t / s for t, s in zip(stages["total"], stages["sum of stages"], strict=True)]
    below = sum(1 for r in ratios if r < 1)
    total, summed = median(stages["total"]), median(stages["sum of stages"])
    out.print(
        f"total / sum of stages: p50 {median(ratios):.2f}; total < sum in {below} of "
        f"{len(ratios)} requests -> "
        + (
            "[green]met[/]: the stages overlap"
            if total < summed
            else "[bold red]MISSED[/]: no overlap"
        )
    )


if __name__ == "__main__":
    sys.exit(main())
