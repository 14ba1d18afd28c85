"""Choosing the backends by configuration, and one deployment on shared engines (issue 14).

- ``contextkit.yaml`` and the ``CONTEXTKIT_*`` variables select a PostgreSQL registry, a Redis
  online store and S3 offline/vector stores; passwords never show (``describe_stores``, errors).
- The same quickstart flow (apply, materialize, features, search, context) gives the same answers
  embedded (SQLite, local folders) and on PostgreSQL + Redis + S3 (slow: the quickstart twice,
  each encoding its documents with MiniLM).
- Bad stores (unreachable, wrong password, missing bucket, read-only role) are one clear error
  naming the store with its password masked, and change nothing.
- Two real ``contextkit serve`` processes on the same PostgreSQL + Redis + S3 (slow): identical
  answers, ingest taken by either node (one shared log) served by both, an apply seen by both
  without a restart, 503 ``store_error`` while Redis or PostgreSQL
  is gone and recovery by themselves once it is back.

Real servers (tests/backends.py): redis-server, PostgreSQL 15, moto's S3 server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from serverproc import ServerProcess

import contextkit
from contextkit.config import apply_env_overrides, load_config
from contextkit.errors import ConfigError, ContextKitError, StoreUnavailableError
from contextkit.stores.offline import ParquetOfflineStore
from contextkit.stores.online import SQLiteOnlineStore
from contextkit.stores.postgres_registry import PostgresRegistry
from contextkit.stores.redis_online import RedisOnlineStore
from contextkit.stores.registry import SQLiteRegistry
from tests.backends import free_port
from tests.conftest import DATA_END

WORKSPACE = "prod"
CLI = str(Path(sys.executable).parent / "contextkit")
PASSWORD = "hunter2-" + uuid.uuid4().hex[:6]


# -- configuration -------------------------------------------------------------------------------


def write_config(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "contextkit.yaml").write_text("project: shop\n" + text)
    return root


def test_store_urls_select_the_backends_and_paths_stay_the_default(tmp_path, monkeypatch):
    for name in ("REGISTRY", "ONLINE_STORE", "OFFLINE_STORE", "VECTOR_STORE"):
        monkeypatch.delenv(f"CONTEXTKIT_{name}", raising=False)
    embedded = load_config(write_config(tmp_path / "a", ""))
    assert not embedded.registry_is_postgres and embedded.online_store.type == "sqlite"
    assert embedded.offline_location == str(tmp_path / "a" / ".contextkit/offline")

    config = load_config(
        write_config(
            tmp_path / "b",
            f"registry: postgresql://ck:{PASSWORD}@db:5432/ck\n"
            f"online_store: rediss://:{PASSWORD}@cache:6380/1\n"
            "offline_store: s3://bucket/ck/offline\n"
            "vector_store: {type: lancedb, path: s3://bucket/ck/vectors}\n",
        )
    )
    assert config.registry_is_postgres
    assert config.online_store.type == "redis" and config.redis_prefix == "contextkit:shop"
    assert config.offline_location == "s3://bucket/ck/offline"
    assert config.vector_location == "s3://bucket/ck/vectors"
    shown = json.dumps(config.describe_stores())
    assert PASSWORD not in shown and "ck:***@db:5432" in shown and ":***@cache:6380" in shown

    prefixed = load_config(
        write_config(tmp_path / "c", "online_store: {url: 'redis://cache:6379/0', prefix: ck:x}\n")
    )
    assert prefixed.online_store.type == "redis" and prefixed.redis_prefix == "ck:x"


def test_environment_variables_override_the_file_and_keep_its_other_settings(tmp_path):
    raw = {
        "project": "shop",
        "online_store": {"type": "redis", "url": "redis://old:6379/0", "prefix": "ck:keep"},
        "offline_store": {"type": "parquet", "path": ".contextkit/offline"},
    }
    env = {
        "CONTEXTKIT_REGISTRY": "postgresql://ck@db/ck",
        "CONTEXTKIT_ONLINE_STORE": "redis://new:6379/2",
        "CONTEXTKIT_OFFLINE_STORE": "s3://b/offline",
        "CONTEXTKIT_VECTOR_STORE": "s3://b/vectors",
    }
    out = apply_env_overrides(raw, env)
    assert out["registry"] == "postgresql://ck@db/ck"
    assert out["online_store"] == {
        "type": "redis",
        "url": "redis://new:6379/2",
        "prefix": "ck:keep",
    }
    assert out["offline_store"] == {"type": "parquet", "path": "s3://b/offline"}
    assert out["vector_store"] == "s3://b/vectors"
    back_to_sqlite = apply_env_overrides(raw, {"CONTEXTKIT_ONLINE_STORE": "/var/ck/online.db"})
    assert back_to_sqlite["online_store"] == {"type": "sqlite", "path": "/var/ck/online.db"}


def test_a_store_url_of_the_wrong_kind_is_a_config_error_without_its_password(tmp_path):
    cases = {
        f"registry: mysql://ck:{PASSWORD}@db/ck\n": "registry mysql://ck:***@db/ck",
        f"online_store: memcached://u:{PASSWORD}@c:1/0\n": "online_store",
        f"offline_store: gs://u:{PASSWORD}@bucket/x\n": "offline_store",
        "online_store: {type: redis}\n": "needs url",
    }
    for i, (text, named) in enumerate(cases.items()):
        with pytest.raises(ConfigError) as err:
            load_config(write_config(tmp_path / str(i), text))
        assert named in err.value.message and PASSWORD not in err.value.message


# -- the quickstart flow, embedded and on PostgreSQL + Redis + S3 ------------------------------


def backend_config(postgres_server, redis_server, s3_server, *, prefix: str | None = None) -> str:
    bucket = s3_server.create_bucket()
    database = postgres_server.create_database()
    prefix = prefix or f"ck-test:{uuid.uuid4().hex[:8]}"
    return (
        f"registry: {database}\n"
        f"online_store: {{url: '{redis_server.url}', prefix: '{prefix}'}}\n"
        f"offline_store: s3://{bucket}/ck/offline\n"
        f"vector_store: s3://{bucket}/ck/vectors\n"
    )


def copy_quickstart(quickstart_data: Path, root: Path, stores: str) -> Path:
    """The quickstart repo (small generated data) with ``stores`` as its store settings."""
    shutil.copytree(quickstart_data, root, ignore=shutil.ignore_patterns(".contextkit"))
    (root / "contextkit.yaml").write_text(
        f"project: quickstart\n{stores}exclude:\n  - generate_data.py\n"
    )
    return root


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server.env()


def run_flow(root: Path) -> dict:
    """Apply, materialize, then read features, search and context: what every backend answers."""
    ctx = contextkit.connect(root, workspace=WORKSPACE)
    try:
        ctx.create_workspace(WORKSPACE, live=True)
        ctx.apply(ctx.plan(root))
        jobs = ctx.materialize(end=DATA_END)
        users = list(range(1, 30)) + [10_000_000]
        features = ctx.get_features("support_assistant", entities={"user_id": users}).to_dict()
        hits = ctx.search("product_docs", "wireless headphones with long battery", top_k=5)
        context = ctx.get_context(
            "support_assistant", entities={"user_id": 7}, query="how do I return a blender?"
        )
        return {
            "stores": ctx.config.describe_stores(),
            "jobs": sorted((j.view, j.status, j.rows_offline, j.rows_online) for j in jobs),
            "features": features,
            "search": [(h["id"], round(h["score"], 5)) for h in hits],
            "context": _comparable(context),
        }
    finally:
        ctx.close()


def _comparable(context) -> dict:
    features = {
        view: {"values": got["values"], "status": got["status"]}
        for view, got in context.features.items()
    }
    documents = {
        name: [(d["id"], round(d["score"], 5)) for d in docs]
        for name, docs in context.documents.items()
    }
    prompt = {k: v for k, v in (context.prompt or {}).items() if "ms" not in k}
    return {"features": features, "documents": documents, "prompt": prompt}


@pytest.mark.slow  # 37 s on a quiet CI machine, 90 s under load: runs in `make test-slow`
def test_the_quickstart_flow_answers_the_same_embedded_and_on_postgres_redis_s3(
    quickstart_data, tmp_path, postgres_server, redis_server, s3_server, s3_env
):
    embedded = run_flow(copy_quickstart(quickstart_data, tmp_path / "embedded", ""))
    stores = backend_config(postgres_server, redis_server, s3_server)
    on_servers = run_flow(copy_quickstart(quickstart_data, tmp_path / "servers", stores))

    assert on_servers["stores"]["registry"].startswith("postgresql://")
    assert on_servers["stores"]["offline_store"].startswith("s3://")
    assert redis_server.password not in json.dumps(on_servers["stores"])
    for part in ("jobs", "features", "search", "context"):
        assert on_servers[part] == embedded[part], part
    assert embedded["features"]["user_order_stats.order_count_30d"][-1] is None
    assert embedded["search"] and embedded["context"]["documents"]


def test_runtime_opens_the_configured_stores(
    tmp_path, postgres_server, redis_server, s3_server, s3_env
):
    root = write_config(tmp_path / "r", backend_config(postgres_server, redis_server, s3_server))
    ctx = contextkit.connect(root)
    try:
        assert isinstance(ctx.registry, PostgresRegistry)
        assert isinstance(ctx.online, RedisOnlineStore)
        assert isinstance(ctx.offline, ParquetOfflineStore) and ctx.offline.url.startswith("s3://")
        assert ctx.vectors.uri.startswith("s3://") and ctx.runtime.has_vectors
        assert redis_server.password not in repr(ctx.online)
    finally:
        ctx.close()
    local = contextkit.connect(write_config(tmp_path / "l", ""))
    try:
        assert isinstance(local.registry, SQLiteRegistry)
        assert isinstance(local.online, SQLiteOnlineStore)
        assert not local.runtime.has_vectors
    finally:
        local.close()


# -- bad stores: one clear error, the password masked, nothing changed --------------------------


def test_an_unreachable_postgres_registry_is_one_error_naming_it_masked(tmp_path):
    url = f"postgresql://ck:{PASSWORD}@127.0.0.1:{free_port()}/ck"
    root = write_config(tmp_path / "r", f"registry: {url}\n")
    with pytest.raises(StoreUnavailableError) as err:
        contextkit.connect(root)
    message = err.value.message + (err.value.hint or "")
    assert err.value.http_status == 503 and err.value.code == "store_error"
    assert "127.0.0.1" in message and "***" in message and PASSWORD not in message

    done = subprocess.run(
        [CLI, "workspace", "list"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "127.0.0.1" in done.stderr and PASSWORD not in done.stderr


def test_a_wrong_redis_password_is_a_503_naming_the_masked_url(
    make_repo, redis_server, monkeypatch
):
    wrong = redis_server.url.replace(redis_server.password, PASSWORD)
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table()})
    monkeypatch.setenv("CONTEXTKIT_ONLINE_STORE", wrong)
    ctx = contextkit.connect(root, WORKSPACE)
    try:
        ctx.create_workspace(WORKSPACE, live=True)
        ctx.apply(ctx.plan(root))
        with pytest.raises(ContextKitError) as err:
            ctx.materialize(end=DATA_END)
        assert err.value.http_status == 503 and err.value.code == "store_error"
        text = err.value.message + (err.value.hint or "")
        assert f"127.0.0.1:{redis_server.port}" in text and PASSWORD not in text
    finally:
        ctx.close()


def test_a_missing_bucket_is_a_503_naming_it(make_repo, s3_server, s3_env, monkeypatch):
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table()})
    monkeypatch.setenv("CONTEXTKIT_OFFLINE_STORE", "s3://no-such-bucket-ck/offline")
    ctx = contextkit.connect(root, WORKSPACE)
    try:
        ctx.create_workspace(WORKSPACE, live=True)
        ctx.apply(ctx.plan(root))
        with pytest.raises(ContextKitError) as err:
            ctx.materialize(end=DATA_END)
        assert err.value.http_status == 503 and "no-such-bucket-ck" in err.value.message
        assert s3_server.secret_key not in err.value.message + (err.value.hint or "")
    finally:
        ctx.close()


def test_apply_with_a_read_only_role_is_refused_and_changes_nothing(make_repo, postgres_server):
    url = postgres_server.create_database()
    owner = PostgresRegistry(url)
    owner.create_workspace(WORKSPACE, live=True)
    version = owner.get_workspace(WORKSPACE).version
    database = url.rsplit("/", 1)[1]
    reader = "ro_" + uuid.uuid4().hex[:8]
    with owner._db.connection("granting") as con:  # a role that may read, never write
        con.execute(f"CREATE ROLE {reader} LOGIN")
        con.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {reader}')
        con.execute(f"GRANT USAGE ON SCHEMA public TO {reader}")
        con.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}")
    owner.close()

    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table()})
    ro_url = url.replace(f"{postgres_server.user}@", f"{reader}@")
    (root / "contextkit.yaml").write_text(f"project: test\nregistry: {ro_url}\n")
    ctx = contextkit.connect(root, WORKSPACE)
    try:
        with pytest.raises(ContextKitError) as err:
            ctx.apply(ctx.plan(root))
        assert err.value.http_status in (403, 503) and reader in err.value.message
        assert ctx.registry.list_objects(WORKSPACE) == []
        assert ctx.registry.get_workspace(WORKSPACE).version == version
    finally:
        ctx.close()


def test_a_registry_of_a_newer_schema_is_refused_naming_it_and_left_as_it_is(
    tmp_path, postgres_server
):
    from contextkit.errors import RegistryError

    url = postgres_server.create_database()
    registry = PostgresRegistry(url)
    with registry._db.connection("writing a newer version") as con:
        con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    registry.close()
    root = write_config(tmp_path / "r", f"registry: {url}\n")
    with pytest.raises(RegistryError) as err:
        contextkit.connect(root)
    assert "999" in err.value.message or "newer" in err.value.message
    assert err.value.hint
    import psycopg

    with psycopg.connect(url) as con:
        [(version,)] = con.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    assert version == "999"


DEFS = """
from datetime import timedelta
from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[Attribute("x")])
def latest(events):
    return f"SELECT user_id, x, ts FROM {events}"

svc = ContextService(name="svc", features=[latest])
"""


def events_table(scale: float = 1.0):
    import pyarrow as pa

    n = 20
    return pa.table(
        {
            "user_id": pa.array(range(n), pa.int64()),
            "x": pa.array([i * scale for i in range(n)], pa.float64()),
            "ts": pa.array([DATA_END - timedelta(days=1)] * n, pa.timestamp("us", tz="UTC")),
        }
    )


# -- two serving nodes, one deployment (slow: two real servers) ---------------------------------


def call(base: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


FEATURES = {"service": "svc", "entities": {"user_id": [1, 5, 19, 99]}}


def values(base: str) -> tuple[int, object]:
    """The status and the feature values a node serves for FEATURES (no timings)."""
    status, body = call(base, "/v1/features", FEATURES)
    if status != 200:
        return status, body["error"]
    return status, [(r["values"], r.get("statuses")) for r in body["results"]]


def wait_for(condition, what: str, timeout: float = 120.0) -> float:
    """Poll ``condition()`` until true; the seconds it took (fails after ``timeout``)."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - began


SECOND_SERVICE = """
svc2 = ContextService(name="svc2", features=[latest])
"""

STREAM = """
from contextkit import Aggregate, Field, Float64, Int64, PushSource, StreamFeatureView, Timestamp

clicks = PushSource(
    name="clicks",
    schema=[Field("user_id", Int64), Field("price", Float64), Field("ts", Timestamp)],
    timestamp_field="ts",
)
click_stats = StreamFeatureView(
    name="click_stats", source=clicks, entities=[user], aggregation_interval="1h",
    features=[Aggregate("price", "count", "1d"), Aggregate("price", "sum", "1d")],
)
clicks_svc = ContextService(name="clicks_svc", features=[click_stats])
"""


def ingest(base: str, records: list[dict]) -> tuple[int, dict]:
    return call(
        base, "/v1/ingest", {"workspace": WORKSPACE, "source": "clicks", "records": records}
    )


def clicks(base: str) -> list:
    status, body = call(
        base, "/v1/features", {"service": "clicks_svc", "entities": {"user_id": [1]}}
    )
    assert status == 200, body
    return [r["values"] for r in body["results"]]


@pytest.mark.slow
def test_two_nodes_serve_one_deployment_and_ride_out_store_outages(
    make_repo, postgres_server, redis_factory, s3_server, s3_env
):
    redis = redis_factory(password="node-" + uuid.uuid4().hex[:8])
    root = make_repo({"defs.py": DEFS + STREAM}, data={"events.parquet": events_table()})
    bucket = s3_server.create_bucket()
    (root / "contextkit.yaml").write_text(
        "project: nodes\n"
        f"registry: {postgres_server.create_database()}\n"
        f"online_store: {redis.url}\n"
        f"offline_store: s3://{bucket}/offline\n"
        f"vector_store: s3://{bucket}/vectors\n"
    )
    ctx = contextkit.connect(root, WORKSPACE)
    ctx.create_workspace(WORKSPACE, live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=DATA_END)

    args = ("--no-auth", "--workspace", WORKSPACE)
    nodes = [ServerProcess(*args, cwd=root, env=s3_env) for _ in range(2)]
    try:
        bases = [node.wait_ready().base for node in nodes]
        first = [values(base) for base in bases]
        assert first[0] == first[1] and first[0][0] == 200
        served = first[0][1]
        assert served[-1][0] == [1.0, 5.0, 19.0, None]  # latest.x; user 99 has none
        assert served[-1][1] == ["PRESENT", "PRESENT", "PRESENT", "MISSING"]

        # Ingest to either node: the durable log is shared (in PostgreSQL), so both nodes serve
        # every record, and a retry sent to the other node is a duplicate.
        now = datetime.now(UTC)
        moments = [(now - timedelta(minutes=i)).isoformat() for i in range(2)]
        batch = [
            {"record": {"user_id": 1, "price": price, "ts": moments[i]}, "idempotency_key": f"k{i}"}
            for i, price in enumerate([2.0, 3.0])
        ]
        status, body = ingest(bases[0], batch)
        assert status == 200 and body["accepted"] == 2, body
        third = {"user_id": 1, "price": 4.0, "ts": now.isoformat()}
        status, body = ingest(bases[1], [*batch, third])
        assert status == 200 and body["accepted"] == 1 and body["duplicates"] == [0, 1], body
        assert [clicks(base) for base in bases] == [[[1], [3], [9.0]]] * 2  # user_id, count, sum

        # An apply made elsewhere is served by every node, without a restart.
        with (root / "defs.py").open("a") as defs:
            defs.write(SECOND_SERVICE)
        ctx.apply(ctx.plan(root))
        for base in bases:
            took = wait_for(
                lambda base=base: "svc2" in json.dumps(call(base, "/v1/services")[1]),
                "the new service on every node",
            )
            print(f"apply seen by {base} after {took:.3f} s")

        # Redis gone: a 503 store_error on every node, never MISSING values; back by itself.
        redis.kill()
        for base in bases:
            status, error = values(base)
            assert status == 503 and error["code"] == "store_error", error
            assert redis.password not in json.dumps(error) and "***" in error["message"]
        redis.restart()  # empty: no persistence
        for base in bases:
            wait_for(lambda base=base: values(base)[0] == 200, "serving again after Redis")
        ctx.materialize(end=DATA_END, full=True)  # refill the empty Redis
        assert [values(base) for base in bases] == first

        # PostgreSQL gone: a 503 store_error, then back by itself.
        postgres_server.stop()
        try:
            for base in bases:
                status, error = values(base)
                assert status == 503 and error["code"] == "store_error", error
        finally:
            postgres_server.start()
        for base in bases:
            wait_for(lambda base=base: values(base) == first[0], "serving again after Postgres")
        for node in nodes:  # the outages were logged, the password never
            log = node.log()
            assert "store_error" in log or "503" in log
            assert redis.password not in log
    finally:
        for node in nodes:
            node.stop()
        ctx.close()


# -- sources and offline reads on S3 --------------------------------------------------------------


def test_an_s3_file_source_materializes_and_offline_reads_come_from_s3(
    make_repo, s3_server, s3_env, monkeypatch
):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    bucket = s3_server.create_bucket()
    s3 = fs.S3FileSystem(
        endpoint_override=s3_server.endpoint,
        scheme="http",
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        region=s3_server.region,
    )
    pq.write_table(events_table(scale=2.0), f"{bucket}/raw/events.parquet", filesystem=s3)
    defs = DEFS.replace('path="data/events.parquet"', f'path="s3://{bucket}/raw/events.parquet"')
    root = make_repo({"defs.py": defs})
    monkeypatch.setenv("CONTEXTKIT_OFFLINE_STORE", f"s3://{bucket}/offline")
    ctx = contextkit.connect(root, WORKSPACE)
    try:
        ctx.create_workspace(WORKSPACE, live=True)
        ctx.apply(ctx.plan(root))  # validation reads the source's schema from S3
        [job] = ctx.materialize(end=DATA_END)
        assert job.status == "succeeded" and job.rows_offline == 20
        online = ctx.get_features("svc", entities={"user_id": [3, 7]}).to_dict()
        assert online["latest.x"] == [6.0, 14.0]
        assert not (root / ".contextkit" / "offline").exists()  # the offline store is S3

        events = pa.table(
            {
                "user_id": pa.array([3, 7], pa.int64()),
                "ts": pa.array([DATA_END, DATA_END], pa.timestamp("us", tz="UTC")),
            }
        )
        for from_source in (False, True):  # the offline store on S3, then the S3 source
            got = ctx.get_features_for_events(events, "svc", from_source=from_source).to_arrow()
            assert got.column("latest__x").to_pylist() == [6.0, 14.0], from_source
    finally:
        ctx.close()
