"""End to end, as a user does it: the CLI on a fresh repo, then a real uvicorn server.

init -> plan -> apply -> materialize -> serve, and the served values must equal the same
aggregates computed independently in plain DuckDB SQL from the raw source file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import duckdb
import pytest
from serverproc import running_server

CLI = str(Path(sys.executable).parent / "contextkit")
END = "2030-01-01T00:00:00+00:00"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, env=env)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def served_repo(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    repo = tmp_path / "shop"
    init = run("init", str(repo), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    # The scaffold's sample data is dated up to "now". Shift it to end an hour before END and
    # materialize as of END, so the expected values below use exactly the same window end.
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"COPY (SELECT * REPLACE (ts + (TIMESTAMP '{END[:19]}' - (SELECT max(ts) FROM "
        f"read_csv('{repo}/data/orders.csv')) - INTERVAL 1 HOUR) AS ts) "
        f"FROM read_csv('{repo}/data/orders.csv')) TO '{repo}/data/orders2.csv' (HEADER)"
    )
    os.replace(repo / "data/orders2.csv", repo / "data/orders.csv")

    plan = run("plan", cwd=repo)
    assert plan.returncode == 0, plan.stderr
    assert "+ create batch_feature_view user_spend" in plan.stdout
    applied = run("apply", "--yes", cwd=repo)
    assert applied.returncode == 0, applied.stderr
    assert "version 1" in applied.stdout
    again = run("apply", "--yes", cwd=repo)
    assert "No changes" in again.stdout
    mat = run("materialize", "--end", END, cwd=repo)
    assert mat.returncode == 0, mat.stderr
    assert "ok user_spend" in mat.stdout
    jobs = run("jobs", cwd=repo)
    assert "succeeded" in jobs.stdout

    with running_server("--no-auth", cwd=repo, log_path=tmp_path / "serve.log") as server:
        yield repo, server.base


def expected_from_source(repo: Path, users: list[int]) -> dict[int, tuple]:
    """sum/count over 7 days and mean over 30 days of completed orders, in plain DuckDB SQL."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rows = con.execute(
        f"""
        SELECT user_id,
               sum(amount) FILTER (WHERE ts > e - INTERVAL 7 DAY),
               count(amount) FILTER (WHERE ts > e - INTERVAL 7 DAY),
               avg(amount) FILTER (WHERE ts > e - INTERVAL 30 DAY)
        FROM read_csv('{repo}/data/orders.csv'), (SELECT TIMESTAMP '{END[:19]}' AS e)
        WHERE status = 'completed' AND ts <= e AND ts > e - INTERVAL 30 DAY
        GROUP BY user_id
        """
    ).fetchall()
    return {r[0]: r[1:] for r in rows if r[0] in users}


def test_cli_to_served_features_match_plain_sql(served_repo):
    repo, base = served_repo
    users = list(range(1, 21)) + [9999]
    status, body = post(
        base + "/v1/features",
        {"workspace": "prod", "service": "shop_assistant", "entities": {"user_id": users}},
    )
    assert status == 200, body
    names = body["metadata"]["feature_names"]
    assert names == [
        "user_id",
        "user_spend.amount_sum_7d",
        "user_spend.amount_count_7d",
        "user_spend.amount_mean_30d",
    ]
    assert body["metadata"]["types"] == ["int64", "float64", "int64", "float64"]
    columns = {n: r["values"] for n, r in zip(names, body["results"], strict=True)}
    assert columns["user_id"] == users
    expected = expected_from_source(repo, users)
    assert len(expected) >= 10  # the sample data gives most users recent orders
    for i, user in enumerate(users):
        if user not in expected:
            assert columns["user_spend.amount_sum_7d"][i] is None
            assert body["results"][1]["statuses"][i] == "MISSING"
            continue
        total, count, mean = expected[user]
        assert columns["user_spend.amount_count_7d"][i] == count
        assert columns["user_spend.amount_sum_7d"][i] == pytest.approx(total)
        assert columns["user_spend.amount_mean_30d"][i] == pytest.approx(mean)
        assert body["results"][1]["statuses"][i] == "PRESENT"
        assert body["results"][1]["event_timestamps"][i].endswith("Z")


def test_served_errors_are_json(served_repo):
    _repo, base = served_repo
    status, body = post(base + "/v1/features", {"service": "nope", "entities": {"user_id": [1]}})
    assert status == 404
    assert body["error"]["code"] == "not_found"
    assert "shop_assistant" in body["error"]["details"]["hint"]
    with urllib.request.urlopen(base + "/v1/services") as r:
        services = json.loads(r.read())
    assert [s["name"] for s in services["services"]] == ["shop_assistant"]
