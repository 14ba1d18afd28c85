"""Stream and realtime views are listed wherever views are (issue 12, item 12).

``GET /v1/views``, ``/v1/views/{name}``, ``contextkit status`` and ``contextkit quality`` show a
workspace's stream feature views (fresh as of their newest ingested record, expired once nothing
was ingested for their ttl or largest window) and realtime views (computed at request time), next
to its batch views.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.server.app import create_app

CLI = str(Path(sys.executable).parent / "contextkit")

DEFS = """\
from contextkit import (
    Aggregate, Attribute, Bool, ContextService, Entity, Field, FileSource, Float64, Int64,
    PushSource, RequestSource, StreamFeatureView, Timestamp, batch_feature_view,
    realtime_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
page_views = PushSource(
    name="page_views",
    schema=[Field("user_id", Int64), Field("product_id", Int64), Field("price", Float64),
            Field("ts", Timestamp)],
    timestamp_field="ts",
)
recent_views = StreamFeatureView(
    name="recent_views", source=page_views, entities=[user],
    features=[Aggregate("price", "sum", "1h"), Aggregate("product_id", "count", "1h")],
    aggregation_interval="10m",
)
last_view = StreamFeatureView(
    name="last_view", source=page_views, entities=[user],
    features=[Attribute("product_id"), Attribute("price")],
)

@realtime_feature_view(
    sources=[RequestSource([Field("budget", Float64)]), recent_views],
    features=[Attribute("over_budget", Bool)],
)
def budget_check(request, recent_views):
    return {"over_budget": (recent_views["price_sum_1h"] or 0.0) > request["budget"]}

users = FileSource(name="users", path="data/users.parquet", timestamp_field="ts")

@batch_feature_view(sources=[users], entities=[user], features=[Attribute("tier")])
def profile(users):
    return f"SELECT user_id, tier, ts FROM {users}"

shopper = ContextService(name="shopper", features=[recent_views, last_view, budget_check, profile])
"""
KINDS = {
    "budget_check": "realtime_feature_view",
    "last_view": "stream_feature_view",
    "profile": "batch_feature_view",
    "recent_views": "stream_feature_view",
}


@pytest.fixture
def shop(make_repo):
    now = datetime.now(UTC)
    users = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "tier": ["free", "pro"],
            "ts": pa.array([now - timedelta(hours=1)] * 2, pa.timestamp("us", "UTC")),
        }
    )
    root = make_repo({"defs.py": DEFS}, data={"users.parquet": users}, name="shop")
    ctx = contextkit.connect(root, workspace="live")
    ctx.create_workspace("live", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["profile"])
    yield root, ctx
    ctx.close()


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    out = subprocess.run([CLI, *args], cwd=root, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out


def test_the_http_api_lists_and_shows_stream_and_realtime_views(shop):
    _root, ctx = shop
    with TestClient(create_app(ctx, auth=False)) as client:
        views = {v["name"]: v for v in client.get("/v1/views").json()["views"]}
        assert {n: v["kind"] for n, v in views.items()} == KINDS
        assert views["recent_views"]["freshness"]["state"] == "never"  # nothing ingested yet
        assert views["recent_views"]["source"] == "page_views"
        assert views["recent_views"]["last_job"] is None
        assert views["recent_views"]["join_keys"] == [{"name": "user_id", "dtype": "int64"}]
        assert {f["name"] for f in views["recent_views"]["features"]} == {
            "price_sum_1h",
            "product_id_count_1h",
        }
        realtime = views["budget_check"]
        assert realtime["freshness"]["state"] == "request_time" and realtime["alerts"] == []
        assert realtime["inputs"] == ["recent_views"] and realtime["last_job"] is None
        assert "computed at request time" in realtime["freshness"]["reasons"][0]

        ingested = datetime.now(UTC)
        ctx.ingest(
            "page_views",
            [{"user_id": 1, "product_id": 7, "price": 12.5, "ts": ingested.isoformat()}],
        )
        views = {v["name"]: v for v in client.get("/v1/views").json()["views"]}
        for name in ("recent_views", "last_view"):
            fresh = views[name]["freshness"]
            assert fresh["state"] == "fresh" and fresh["last_ingest"] is not None
            last = datetime.fromisoformat(fresh["last_ingest"].replace("Z", "+00:00"))
            assert abs((last - ingested).total_seconds()) < 60

        detail = client.get("/v1/views/recent_views")
        assert detail.status_code == 200, detail.text
        body = detail.json()
        assert body["view"]["kind"] == "stream_feature_view"
        assert body["spec"]["source"] == "page_views"
        assert body["lineage"]["upstream"] == ["push_source:page_views"]
        assert "realtime_feature_view:budget_check" in body["lineage"]["downstream"]
        assert body["job"] is None and body["stats"] is None and body["history"] == []
        realtime = client.get("/v1/views/budget_check")
        assert realtime.status_code == 200, realtime.text
        assert realtime.json()["view"]["freshness"]["state"] == "request_time"
        missing = client.get("/v1/views/nope").json()["error"]["details"]["hint"]
        assert "recent_views" in missing and "budget_check" in missing

        metrics = client.get("/metrics").text
        assert (
            'contextkit_view_freshness_state{workspace="live",view="budget_check",'
            'state="request_time"} 1' in metrics
        )


def test_a_stream_view_expires_when_nothing_was_ingested_for_its_window(shop):
    _root, ctx = shop
    ctx.ingest(
        "page_views",
        [{"user_id": 1, "product_id": 7, "price": 1.0, "ts": datetime.now(UTC).isoformat()}],
    )
    later = datetime.now(UTC).timestamp() + 2 * 3600
    statuses = {s.name: s for s in ctx.monitoring.status(now=later)}
    # The aggregates' largest window is 1h: two hours without a record, every value aged out.
    assert statuses["recent_views"].freshness.state == "expired"
    [alert] = statuses["recent_views"].alerts
    assert alert.kind == "expired" and "no record ingested for 2h" in alert.message
    # Latest values without a ttl never expire.
    assert statuses["last_view"].freshness.state == "fresh"
    assert statuses["last_view"].freshness.data_age_s >= 2 * 3600 - 60


def test_status_and_quality_in_the_cli_show_every_kind(shop):
    root, ctx = shop
    ctx.ingest(
        "page_views",
        [{"user_id": 2, "product_id": 3, "price": 4.0, "ts": datetime.now(UTC).isoformat()}],
    )
    table = cli(root, "status").stdout
    for name in KINDS:
        assert name in table
    assert "stream" in table and "realtime" in table and "at request time" in table
    assert "ingested" in table  # a stream view's newest value is its last ingest
    views = {v["name"]: v for v in json.loads(cli(root, "status", "--json").stdout)["views"]}
    assert {n: v["kind"] for n, v in views.items()} == KINDS
    assert views["last_view"]["freshness"]["state"] == "fresh"
    assert views["budget_check"]["freshness"]["state"] == "request_time"

    stream = cli(root, "quality", "recent_views").stdout
    assert "stream view" in stream and "updated as records are ingested" in stream
    realtime = cli(root, "quality", "budget_check").stdout
    assert "realtime view" in realtime and "computed at request time" in realtime
    data = json.loads(cli(root, "quality", "last_view", "--json").stdout)
    assert data["kind"] == "stream_feature_view" and data["stats"] is None
