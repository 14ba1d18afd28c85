"""Server groups: ``ServerGroup(name, services=[...])`` in a repo, checked at plan, and
``contextkit serve --server-group NAME`` processes that answer only for their group's services
(the rest answer 404 naming the group that serves them), with the group on ``/metrics``. The
serving cache's counters and bypass flags are read through the same real servers."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import contextkit
from contextkit.errors import ValidationErrors
from tests.serverproc import CLI, ServerProcess

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(hours=12)

DEFS = """\
from datetime import timedelta
from contextkit import (Aggregate, ContextService, Entity, FileSource, ServerGroup,
                        batch_feature_view)

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="sum", time_window=timedelta(days=7))])
def spend(events):
    return f"SELECT user_id, x, ts FROM {events}"

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="count", time_window="1d")])
def counts(events):
    return f"SELECT user_id, x, ts FROM {events}"

checkout = ContextService(name="checkout", features=[spend], cache=timedelta(minutes=5))
support = ContextService(name="support", features=[counts])
loose = ContextService(name="loose", features=[counts])

payments = ServerGroup(name="payments", services=[checkout])
helpdesk = ServerGroup(name="helpdesk", services=["support"])
"""


def events_table() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 2, 1], pa.int64()),
            "x": pa.array([5, 7, 11], pa.int64()),
            "ts": pa.array(
                [T0 + timedelta(hours=h) for h in (1, 2, 3)], pa.timestamp("us", tz="UTC")
            ),
        }
    )


@pytest.fixture(autouse=True)
def _fresh_repo_modules(fresh_repo_modules):
    """Every repo here has a ``defs.py`` (see ``fresh_repo_modules``)."""


def line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def plan_errors(make_repo, defs: str) -> str:
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    with pytest.raises(ValidationErrors) as info:
        ctx.plan(root)
    return str(info.value)


def test_a_service_in_two_groups_is_a_plan_error_at_the_second_group(make_repo) -> None:
    defs = DEFS.replace('services=["support"]', 'services=["support", checkout]')
    text = plan_errors(make_repo, defs)
    assert f"defs.py:{line_of(defs, 'helpdesk =')}" in text
    assert "service 'checkout' is already in server group 'payments'" in text
    assert f"defs.py:{line_of(defs, 'payments =')}" in text  # where the other group is


def test_a_group_naming_an_unknown_service_is_a_plan_error(make_repo) -> None:
    defs = DEFS.replace('services=["support"]', 'services=["suport"]')
    text = plan_errors(make_repo, defs)
    assert f"defs.py:{line_of(defs, 'helpdesk =')}" in text
    assert "unknown service 'suport'" in text
    assert "checkout, loose, support" in text  # the hint lists what exists


def post(base: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(base: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base + path, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("groups") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        "project: groups\nregistry: .contextkit/registry.db\n"
        "online_store: {type: sqlite, path: .contextkit/online.db}\n"
        "offline_store: {type: parquet, path: .contextkit/offline}\n"
    )
    (root / "defs.py").write_text(DEFS)
    import pyarrow.parquet as pq

    pq.write_table(events_table(), root / "data" / "events.parquet")
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=END)
    ctx.close()
    return root


def test_two_serve_processes_answer_only_for_their_groups(deployed: Path) -> None:
    common = ("--no-auth", "--workspace", "prod")
    payments = ServerProcess(*common, "--server-group", "payments", cwd=deployed)
    helpdesk = ServerProcess(*common, "--server-group", "helpdesk", cwd=deployed)
    try:
        payments.wait_ready()
        helpdesk.wait_ready()
        one = {"entities": {"user_id": [1]}}
        status, body = post(payments.base, "/v1/features", {"service": "checkout", **one})
        assert status == 200 and body["results"][1]["values"] == [16]
        status, body = post(helpdesk.base, "/v1/features", {"service": "support", **one})
        assert status == 200 and body["metadata"]["service"] == "support"

        status, body = post(payments.base, "/v1/features", {"service": "support", **one})
        assert status == 404
        assert body["error"]["code"] == "not_found"
        assert "'support' is not served by server group 'payments'" in body["error"]["message"]
        assert "--server-group helpdesk" in json.dumps(body)  # the hint names its group
        status, body = post(helpdesk.base, "/v1/features", {"service": "checkout", **one})
        assert status == 404 and "--server-group payments" in json.dumps(body)
        status, body = post(helpdesk.base, "/v1/features", {"service": "loose", **one})
        assert status == 404 and "in no server group" in json.dumps(body)

        # The Tecton API is held to the same groups.
        tecton = {"params": {"featureServiceName": "support", "joinKeyMap": {"user_id": "1"}}}
        status, _ = post(payments.base, "/api/v1/feature-service/get-features", tecton)
        assert status == 404
        status, _ = post(helpdesk.base, "/api/v1/feature-service/get-features", tecton)
        assert status == 200

        # /v1/services lists the group's services only; /metrics names the group.
        status, text = get(payments.base, "/v1/services")
        assert [s["name"] for s in json.loads(text)["services"]] == ["checkout"]
        _, text = get(payments.base, "/metrics")
        assert metric(text, "contextkit_server_group_info", 'server_group="payments"') == 1
        _, text = get(helpdesk.base, "/metrics")
        assert metric(text, "contextkit_server_group_info", 'server_group="helpdesk"') == 1
    finally:
        payments.stop()
        helpdesk.stop()


def test_cache_counters_and_bypass_flags_over_http(deployed: Path) -> None:
    server = ServerProcess("--no-auth", "--workspace", "prod", cwd=deployed)
    try:
        server.wait_ready()
        body = {"service": "checkout", "entities": {"user_id": [1, 2]}}
        first = post(server.base, "/v1/features", body)
        second = post(server.base, "/v1/features", body)
        bypassed = post(server.base, "/v1/features", {**body, "cache": False})
        assert first == second == bypassed and first[0] == 200
        status, problem = post(server.base, "/v1/features", {**body, "cache": "no"})
        assert status == 422 and problem["error"]["details"]["errors"][0]["path"] == "body.cache"
        tecton = {
            "params": {
                "featureServiceName": "checkout",
                "joinKeyMap": {"user_id": "1"},
                "requestOptions": {"readFromCache": False},
            }
        }
        status, _ = post(server.base, "/api/v1/feature-service/get-features", tecton)
        assert status == 200
        tecton["params"]["requestOptions"] = {"readFromCache": "yes"}
        status, _ = post(server.base, "/api/v1/feature-service/get-features", tecton)
        assert status == 400
        _, text = get(server.base, "/metrics")
        checkout = 'service="checkout"'
        assert metric(text, "contextkit_serving_cache_misses_total", checkout) == 2
        assert metric(text, "contextkit_serving_cache_hits_total", checkout) == 2
        assert metric(text, "contextkit_serving_cache_bypassed_total", checkout) == 3
        assert metric(text, "contextkit_serving_cache_entries", "") is None  # no labels: bare
        # Users 1 and 2 from /v1/features, and user "1" as the Tecton client sent it (keys are
        # cached as sent: the string and the integer are two entries with the same values).
        assert "contextkit_serving_cache_entries 3" in text.splitlines()
    finally:
        server.stop()


def test_an_unknown_server_group_fails_at_start(deployed: Path) -> None:
    result = subprocess.run(
        [CLI, "serve", "--no-auth", "--workspace", "prod", "--server-group", "nope", "--port", "0"],
        cwd=deployed,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1"},
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "unknown server group 'nope'" in output and "helpdesk, payments" in output


def test_the_ui_shows_groups_their_services_and_the_cache(deployed: Path) -> None:
    from fastapi.testclient import TestClient

    from contextkit.server.app import create_app

    ctx = contextkit.connect(deployed, "prod")
    try:
        with TestClient(create_app(ctx, auth=False)) as client:
            overview = client.get("/ui/partial/w/prod").text
            service = client.get("/ui/partial/w/prod/services/checkout").text
    finally:
        ctx.close()
    table = overview.split('class="grid compact server-groups"', 1)[1].split("</table>", 1)[0]
    rows = [row for row in table.split("<tr>")[2:]]
    assert "helpdesk" in rows[0] and ">support</a>" in rows[0]
    assert "payments" in rows[1] and ">checkout</a>" in rows[1]
    assert 'Served by server group <strong class="server-group">payments</strong>' in service
    assert "serving cache 300 s" in service
