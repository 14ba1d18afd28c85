"""The operations surface as an operator sees it: /metrics, request ids, JSON access logs, body
and rate limits, OpenAPI docs, and ``contextkit serve`` (auth on by default, ``--no-auth``,
``--workers``) as a real process.

``/metrics`` is read with ``prometheus_client``'s own text parser, so the format is checked by an
independent implementation of the exposition format.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ops_fixtures import END, FEATURES_BODY, SPEND, ServeProcess, build_repo
from prometheus_client.parser import text_string_to_metric_families

import contextkit
from contextkit.errors import ContextKitError
from contextkit.server.app import create_app
from contextkit.server.ops import OpsConfig


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_repo(tmp_path_factory.mktemp("ops") / "repo")


@pytest.fixture(scope="module")
def ctx(repo):
    ctx = contextkit.connect(repo, "prod")
    yield ctx
    ctx.close()


def scrape(client, **kwargs) -> dict[str, dict[tuple, float]]:
    """``/metrics`` parsed: sample name -> {sorted label items: value}."""
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def labels(**kw: str) -> tuple:
    return tuple(sorted(kw.items()))


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_count_requests_per_endpoint_status_and_service(ctx):
    with TestClient(create_app(ctx, auth=False)) as client:
        for _ in range(3):
            assert client.post("/v1/features", json=FEATURES_BODY).status_code == 200
        client.post("/v1/features", json={"service": "nope", "entities": {"user_id": [1]}})
        client.get("/health")
        samples = scrape(client)

    total = samples["contextkit_http_requests_total"]
    features_ok = labels(
        method="POST", endpoint="/v1/features", status="200", workspace="prod", service="svc"
    )
    assert total[features_ok] == 3
    # An unknown service is counted, but its name does not become a label value.
    unknown = labels(
        method="POST", endpoint="/v1/features", status="404", workspace="prod", service=""
    )
    assert total[unknown] == 1
    health = labels(method="GET", endpoint="/health", status="200", workspace="", service="")
    assert total[health] == 1

    latency = labels(method="POST", endpoint="/v1/features", workspace="prod", service="svc")
    assert samples["contextkit_http_request_duration_seconds_count"][latency] == 3
    assert samples["contextkit_http_request_duration_seconds_sum"][latency] > 0
    buckets = {
        dict(k)["le"]: v
        for k, v in samples["contextkit_http_request_duration_seconds_bucket"].items()
        if dict(k)["endpoint"] == "/v1/features" and dict(k)["service"] == "svc"
    }
    values = [buckets[b] for b in sorted(buckets, key=float)]
    assert values == sorted(values) and values[-1] == 3  # cumulative, +Inf = count


def test_metrics_report_materialization_outcomes_and_freshness(tmp_path):
    root = build_repo(tmp_path / "repo", workspaces=("prod",))
    ctx = contextkit.connect(root, "prod")
    (root / "data" / "events.parquet").write_bytes(b"not parquet any more")
    with pytest.raises(ContextKitError):
        ctx.materialize(end=END, full=True)

    with TestClient(create_app(ctx, auth=False)) as client:
        samples = scrape(client)
    ctx.close()

    jobs = samples["contextkit_materialization_jobs"]
    assert jobs[labels(workspace="prod", view="user_spend", status="succeeded")] == 1
    assert jobs[labels(workspace="prod", view="user_spend", status="failed")] == 1
    view = labels(workspace="prod", view="user_spend")
    # The data was materialized up to END (2024-05-03): its age is the time since then.
    freshness = samples["contextkit_feature_freshness_seconds"][view]
    last_success = samples["contextkit_materialization_last_success_timestamp_seconds"][view]
    assert freshness >= last_success - END.timestamp() - 60
    assert samples["contextkit_materialization_last_duration_seconds"][view] > 0


def test_metrics_need_a_key_for_every_workspace_when_auth_is_on(ctx):
    reader = ctx.access.create_key("prom-prod", workspace="prod", role="reader").key
    scraper = ctx.access.create_key("prometheus", workspace="*", role="reader").key
    with TestClient(create_app(ctx, auth=True)) as client:
        assert client.get("/metrics").status_code == 401
        assert (
            client.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        )
        client.post("/v1/features", json=FEATURES_BODY)  # refused: no key
        samples = scrape(client, headers={"Authorization": f"Bearer {scraper}"})
    failures = samples["contextkit_auth_failures_total"]
    assert failures[labels(reason="missing")] == 2 and failures[labels(reason="forbidden")] == 1
    refused = labels(method="POST", endpoint="/v1/features", status="401", workspace="", service="")
    assert samples["contextkit_http_requests_total"][refused] == 1


def test_a_new_gauge_is_one_collector_call(ctx):
    app = create_app(ctx, auth=False)
    app.state.contextkit.metrics.collector(
        "contextkit_test_rows", "Rows per view.", "gauge", ("view",), lambda: [(('a"b',), 7)]
    )
    with TestClient(app) as client:
        samples = scrape(client)
    assert samples["contextkit_test_rows"] == {labels(view='a"b'): 7}  # escaped and parsed back


# -- request ids and limits ------------------------------------------------------------------------
def test_request_ids_are_echoed_or_made(ctx):
    with TestClient(create_app(ctx, auth=False)) as client:
        mine = client.get("/health", headers={"X-Request-ID": "trace-42.a:b"})
        made = client.get("/health")
        junk = client.get("/health", headers={"X-Request-ID": "x" * 200})
        error = client.post("/v1/features", json={"service": 1}, headers={"X-Request-ID": "e1"})
    assert mine.headers["x-request-id"] == "trace-42.a:b"
    assert len(made.headers["x-request-id"]) == 16
    assert junk.headers["x-request-id"] != "x" * 200 and len(junk.headers["x-request-id"]) == 16
    assert error.status_code == 422 and error.headers["x-request-id"] == "e1"


def test_a_body_over_the_limit_gets_413(ctx):
    app = create_app(ctx, auth=False, config=OpsConfig(max_body_bytes=1000))
    padding = {"user_id": [1] * 600}  # ~1.8 KB of JSON
    with TestClient(app) as client:
        declared = client.post("/v1/features", json={"service": "svc", "entities": padding})
        # No Content-Length (chunked upload): counted while it is read.
        chunked = client.post(
            "/v1/features",
            content=(part for part in [b'{"service": "svc", "entities": ', b"x" * 2000, b"}"]),
        )
        small = client.post("/v1/features", json=FEATURES_BODY)
    for response in (declared, chunked):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "payload_too_large"
        assert response.json()["error"]["details"]["max_body_bytes"] == 1000
    assert small.status_code == 200


def test_each_key_has_its_own_rate_limit_with_retry_after(ctx):
    # 0.01 requests/s after a burst of 2: the third request within a minute is refused.
    app = create_app(ctx, auth=True, config=OpsConfig(rate_limit=0.01, rate_burst=2))
    first = ctx.access.create_key("busy", workspace="prod", role="reader").key
    second = ctx.access.create_key("calm", workspace="prod", role="reader").key
    with TestClient(app) as client:
        statuses = [
            client.post(
                "/v1/features", json=FEATURES_BODY, headers={"Authorization": f"Bearer {first}"}
            )
            for _ in range(3)
        ]
        other = client.post(
            "/v1/features", json=FEATURES_BODY, headers={"Authorization": f"Bearer {second}"}
        )
        health = [client.get("/health").status_code for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    refused = statuses[2]
    assert 1 <= int(refused.headers["retry-after"]) <= 100
    assert refused.json()["error"]["code"] == "rate_limited"
    assert other.status_code == 200  # another key is not slowed down
    assert health == [200] * 5  # /health is never limited


def test_rate_limiting_is_off_by_default(ctx):
    with TestClient(create_app(ctx, auth=False)) as client:
        assert {client.get("/v1/services").status_code for _ in range(50)} == {200}


# -- OpenAPI ---------------------------------------------------------------------------------------
def test_openapi_documents_keys_errors_and_examples(ctx):
    with TestClient(create_app(ctx, auth=True)) as client:
        docs = client.get("/docs")
        schema = client.get("/openapi.json").json()
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "tectonKey"}
    assert schema["paths"]["/health"]["get"]["security"] == []
    missing = []
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            if path != "/health":
                assert op["security"] == [{"bearer": []}, {"tectonKey": []}], where
                assert {"401", "403", "429"} <= set(op["responses"]), where
            if "requestBody" in op:
                body = next(iter(op["requestBody"]["content"].values()))
                if "example" not in body and "examples" not in body.get("schema", {}):
                    missing.append(f"{where}: request example")
            ok = next(iter(op["responses"]["200"].get("content", {}).values()), {})
            if "example" not in ok and "examples" not in ok:
                missing.append(f"{where}: 200 response example (common.ok_example)")
    assert not missing, "/docs lacks examples:\n" + "\n".join(missing)


# -- contextkit serve, as a real process -----------------------------------------------------------
def request(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """(status, headers) of a real HTTP request; a 200 from /v1/features must hold SPEND."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            payload = json.loads(response.read())
            if url.endswith("/v1/features"):
                assert payload["results"][1]["values"] == SPEND
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}


def test_serve_requires_keys_by_default_and_logs_json(repo, ctx, tmp_path):
    key = ctx.access.create_key("served", workspace="prod", role="reader").key
    server = ServeProcess(repo, log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        no_key, _ = request(server.base + "/v1/features", FEATURES_BODY)
        ok, headers = request(
            server.base + "/v1/features",
            FEATURES_BODY,
            {"Authorization": f"Bearer {key}", "X-Request-ID": "req-1"},
        )
    finally:
        server.stop()
    log = server.log()
    assert no_key == 401 and ok == 200 and headers["x-request-id"] == "req-1"
    assert "AUTHENTICATION IS OFF" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "request"]
    served = next(line for line in access if line["request_id"] == "req-1")
    assert served["status"] == 200 and served["endpoint"] == "/v1/features"
    assert served["principal"] == "served" and served["service"] == "svc"
    refused = [line for line in lines if line.get("event") == "auth_refused"]
    assert [line["reason"] for line in refused] == ["missing"]
    assert key not in log and key.split("_", 2)[2] not in log


def test_serve_no_auth_warns_loudly(repo, tmp_path):
    server = ServeProcess(repo, "--no-auth", "--no-access-log", log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        status, _ = request(server.base + "/v1/features", FEATURES_BODY)
    finally:
        server.stop()
    assert status == 200
    assert "WARNING: AUTHENTICATION IS OFF (--no-auth)" in server.log()
    assert '"event":"request"' not in server.log()


def test_serve_with_two_workers_serves_with_auth(repo, ctx, tmp_path):
    key = ctx.access.create_key("workers", workspace="prod", role="reader").key
    server = ServeProcess(repo, "--workers", "2", log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        results = [
            request(
                server.base + "/v1/features", FEATURES_BODY, {"Authorization": f"Bearer {key}"}
            )[0]
            for _ in range(6)
        ]
        no_key, _ = request(server.base + "/v1/features", FEATURES_BODY)
    finally:
        server.stop()
    assert results == [200] * 6 and no_key == 401
    log = server.log()
    assert log.count("Started server process") == 2, log
