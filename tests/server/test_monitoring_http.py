"""Monitoring over HTTP: /v1/views, /v1/views/{name}, /v1/jobs, /v1/alerts and the quality and
freshness gauges of /metrics (read with prometheus_client's parser), on a small served repo with
two materializations, one of which fails an expectation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import contextkit
from contextkit.server.app import create_app

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DEFS = """
from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], features=[Attribute("x"), Attribute("tier")],
                    expect_between={"x": (0, 100)}, max_staleness="1h")
def profile(events):
    return f"SELECT user_id, x, tier, ts FROM {events}"

svc = ContextService(name="svc", features=[profile])
"""


def events(xs: list[float], tiers: list[str | None]) -> pa.Table:
    n = len(xs)
    return pa.table(
        {
            "user_id": pa.array(range(n), pa.int64()),
            "x": pa.array(xs, pa.float64()),
            "tier": pa.array(tiers, pa.string()),
            "ts": pa.array(
                [T0 - timedelta(minutes=i) for i in range(n)], pa.timestamp("us", "UTC")
            ),
        }
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring-http") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text("project: http\n")
    (root / "defs.py").write_text(DEFS)
    pq.write_table(
        events([10.0, 20.0, 30.0, 40.0], ["a", "b", "a", None]), root / "data/events.parquet"
    )
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    [first] = ctx.materialize(end=T0)
    pq.write_table(
        events([10.0, 20.0, 300.0, 40.0], ["a", "a", "a", "b"]), root / "data/events.parquet"
    )
    [second] = ctx.materialize(end=T0)
    with TestClient(create_app(ctx, auth=False)) as client:
        yield client, first, second
    ctx.close()


def test_views_list_each_view_with_its_state(served):
    client, first, second = served
    body = client.get("/v1/views").json()
    [view] = body["views"]
    assert body["workspace"] == "prod" and view["name"] == "profile"
    assert view["features"] == [
        {"name": "x", "dtype": "float64"},
        {"name": "tier", "dtype": "string"},
    ]
    assert view["join_keys"] == [{"name": "user_id", "dtype": "int64"}]
    assert view["last_job"]["id"] == second.job_id and view["last_job"]["status"] == "warning"
    assert view["rows"] == 4 and view["max_drift"] > 0
    assert view["expectations"]["between"] == {"x": [0.0, 100.0]}
    assert view["freshness"]["state"] == "stale"  # the data is from 2024; max_staleness 1h
    kinds = {(a["source"], a["kind"]) for a in view["alerts"]}
    assert ("expectation", "between") in kinds and ("freshness", "stale") in kinds


def test_a_view_has_its_spec_lineage_statistics_and_history(served):
    client, first, second = served
    body = client.get("/v1/views/profile", params={"runs": "5"}).json()
    assert body["spec"]["sql"].startswith("SELECT user_id")
    assert body["lineage"]["upstream"] == ["file_source:events"]
    assert body["lineage"]["downstream"] == ["context_service:svc"]
    assert body["job"] == second.job_id
    x = body["stats"]["columns"]["x"]
    assert (x["min"], x["max"], x["outside"]) == (10.0, 300.0, 1)
    assert body["stats"]["columns"]["tier"]["drift"]["reference_job"] == first.job_id
    assert [h["job_id"] for h in body["history"]] == [second.job_id, first.job_id]
    assert body["history"][1]["null_rates"]["tier"] == 0.25
    missing = client.get("/v1/views/nope")
    assert missing.status_code == 404 and "profile" in missing.json()["error"]["details"]["hint"]
    assert client.get("/v1/views/profile", params={"runs": "0"}).status_code == 400


def test_jobs_filter_by_status_and_view(served):
    client, first, second = served
    jobs = client.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in jobs] == [second.job_id, first.job_id]
    assert jobs[0]["status"] == "warning" and "outside [0, 100]" in jobs[0]["error"]
    warnings = client.get("/v1/jobs", params={"status": "warning", "view": "profile"}).json()
    assert [j["id"] for j in warnings["jobs"]] == [second.job_id]
    assert client.get("/v1/jobs", params={"status": "succeeded"}).json()["jobs"] == [
        client.get("/v1/jobs").json()["jobs"][1]
    ]
    bad = client.get("/v1/jobs", params={"status": "great"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "status"
    assert client.get("/v1/jobs", params={"limit": "x"}).status_code == 400


def test_alerts_errors_first_with_counts(served):
    client, _first, second = served
    body = client.get("/v1/alerts").json()
    kinds = [(a["source"], a["kind"], a["subject"]) for a in body["alerts"]]
    assert ("expectation", "between", "x") in kinds and ("freshness", "stale", "") in kinds
    between = next(a for a in body["alerts"] if a["kind"] == "between")
    assert between["job_id"] == second.job_id and between["resolved_at"] is None
    assert "1 of 4 values outside [0, 100]" in between["message"]
    assert body["counts"] == {"warning": len(body["alerts"])}


def test_metrics_expose_freshness_quality_drift_and_alerts(served):
    client, _first, _second = served
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    view = (("view", "profile"), ("workspace", "prod"))
    assert samples["contextkit_view_rows"][view] == 4
    assert samples["contextkit_view_data_age_seconds"][view] > 86400
    state = samples["contextkit_view_freshness_state"]
    assert state[(("state", "stale"), *view)] == 1 and state[(("state", "fresh"), *view)] == 0
    tier = (("feature", "tier"), *view)
    assert samples["contextkit_feature_null_rate"][tier] == 0
    assert samples["contextkit_feature_drift_psi"][tier] > 0
    alerts = samples["contextkit_view_alerts"]
    assert alerts[(("severity", "warning"), *view)] == 2
    assert alerts[(("severity", "error"), *view)] == 0
