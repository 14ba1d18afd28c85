"""Bad input at the two front doors: the `contextkit` command line and the HTTP API.

The CLI stories run the real console script in a subprocess: a mistake must print one `error:`
line and a `hint:`, exit non-zero, and never show a traceback. The HTTP stories post bad requests
to the app of a materialized repo: each gets a 4xx and a body shaped
``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.errors import RegistryError
from tests.conftest import forget_modules_under

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(days=2)

CONFIG = """\
project: bad_input
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""

# Two entities, two views and two services: `svc` needs user_id, `basket` user_id and product_id.
DEFS = """\
from datetime import timedelta
from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
product = Entity(name="product", join_keys=["product_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="sum", time_window=timedelta(days=7))])
def user_spend(events):
    return f"SELECT user_id, x, ts FROM {events}"

@batch_feature_view(sources=[events], entities=[product], mode="sql",
                    features=[Aggregate(column="x", function="count", time_window="7d")])
def product_sales(events):
    return f"SELECT product_id, x, ts FROM {events}"

svc = ContextService(name="svc", features=[user_spend])
basket = ContextService(name="basket", features=[user_spend, product_sales])
"""


def events_table() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 2, 3, 1], pa.int64()),
            "product_id": pa.array([10, 10, 20, 30], pa.int64()),
            "x": pa.array([5, 7, 11, 13], pa.int64()),
            "ts": pa.array(
                [T0 + timedelta(hours=h) for h in (1, 2, 3, 4)], pa.timestamp("us", tz="UTC")
            ),
        }
    )


def write_repo(root: Path, defs: str = DEFS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "contextkit.yaml").write_text(CONFIG)
    (root / "defs.py").write_text(textwrap.dedent(defs))
    (root / "data").mkdir(exist_ok=True)
    pq.write_table(events_table(), root / "data" / "events.parquet")
    return root


def forget_repo_modules(base: Path) -> None:
    """Drop cached repo modules under ``base`` (works around the same-file-name loader bug that
    test_aggregates_oracle.py documents)."""
    forget_modules_under(base)


@pytest.fixture(autouse=True)
def _fresh_repo_modules(tmp_path_factory):
    forget_repo_modules(tmp_path_factory.getbasetemp())
    yield
    forget_repo_modules(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def served_repo(tmp_path_factory) -> Path:
    """A repo applied to a live `prod` (materialized) and a `dev` workspace."""
    forget_repo_modules(tmp_path_factory.getbasetemp())
    root = write_repo(tmp_path_factory.mktemp("served") / "repo")
    ctx = contextkit.connect(root, "prod")
    try:
        ctx.create_workspace("prod", live=True)
        ctx.create_workspace("dev")
        ctx.apply(ctx.plan(root))
        dev = ctx.use("dev")
        dev.apply(dev.plan(root))
        ctx.materialize(end=END)
    finally:
        ctx.close()
    return root


# -- the command line ---------------------------------------------------------------------------
CONTEXTKIT = Path(sys.executable).parent / "contextkit"


def run_cli(cwd: Path, *args: str, wide: bool = True) -> subprocess.CompletedProcess:
    """Run the installed `contextkit` script in ``cwd``, as a user's shell (or CI) would."""
    assert CONTEXTKIT.exists() or shutil.which("contextkit"), "console script not installed"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("COLUMNS", "LINES", "CONTEXTKIT_DEBUG", "FORCE_COLOR")
    }
    env["NO_COLOR"] = "1"
    if wide:  # no wrapping, so assertions see whole lines
        env["COLUMNS"] = "400"
    exe = str(CONTEXTKIT) if CONTEXTKIT.exists() else shutil.which("contextkit")
    return subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def assert_clean_failure(result: subprocess.CompletedProcess, exit_code: int, *words: str) -> str:
    """A failed command: the given exit code, one `error:` line, a hint, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output
    assert "Traceback" not in output and "internal error" not in output, output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert any(ln.strip().startswith("hint:") for ln in result.stderr.splitlines()), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def test_plan_on_a_broken_repo_prints_the_problem_and_a_hint(tmp_path):
    root = write_repo(tmp_path / "repo", DEFS.replace("SELECT user_id, x", "SELECT user_id, amout"))
    ctx = contextkit.connect(root)
    ctx.create_workspace("prod", live=True)
    ctx.close()

    result = run_cli(root, "plan")  # the only workspace is used

    stderr = assert_clean_failure(result, 2, "1 problem(s) in the repo", "Binder Error")
    # At the query's line naming the column, inside the view's function.
    line = next(i for i, ln in enumerate(DEFS.splitlines()) if "SELECT user_id, x" in ln)
    problem = [ln for ln in stderr.splitlines() if ln.strip().startswith("- ")]
    assert len(problem) == 1 and problem[0].strip().startswith(f"- defs.py:{line + 1}:"), stderr


def test_an_unknown_workspace_is_named_with_how_to_create_it(served_repo):
    result = run_cli(served_repo, "plan", "--workspace", "staging")

    assert_clean_failure(
        result, 1, "workspace 'staging' does not exist", "contextkit workspace create staging"
    )


def test_materialize_refuses_a_dev_workspace(served_repo):
    result = run_cli(served_repo, "materialize", "--workspace", "dev")

    assert_clean_failure(result, 1, "'dev' is a dev workspace", "--live")


def test_materialize_an_unknown_view_lists_the_applied_ones(served_repo):
    result = run_cli(served_repo, "materialize", "user_spnd", "--workspace", "prod")

    stderr = assert_clean_failure(result, 1, "unknown view(s): user_spnd")
    assert "product_sales, user_spend" in stderr


def test_materialize_with_a_start_that_is_not_a_date(served_repo):
    result = run_cli(served_repo, "materialize", "--workspace", "prod", "--start", "last tuesday")

    assert_clean_failure(result, 1, "--start 'last tuesday' is not an ISO 8601 time", "2024-05-01")


def test_an_error_stays_on_one_line_when_stderr_is_a_pipe(served_repo):
    result = run_cli(served_repo, "materialize", "--workspace", "dev", wide=False)

    assert result.returncode == 1
    error = next(ln for ln in result.stderr.splitlines() if ln.startswith("error:"))
    assert error.endswith("it validates and plans but does not materialize"), result.stderr


def test_a_registry_written_by_a_newer_contextkit_is_refused(tmp_path):
    root = write_repo(tmp_path / "repo")
    ctx = contextkit.connect(root)
    ctx.create_workspace("prod", live=True)
    ctx.close()
    registry = root / ".contextkit" / "registry.db"
    con = sqlite3.connect(registry)
    with con:
        con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.close()

    for command in (["workspace", "list"], ["plan"]):
        result = run_cli(root, *command)
        assert_clean_failure(result, 2, "written by a newer contextkit", "schema 999", "upgrade")
    with pytest.raises(RegistryError, match="newer contextkit"):
        contextkit.connect(root)

    con = sqlite3.connect(registry)  # refused, not "migrated" down
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("999",)
    con.close()


def test_a_registry_path_that_is_not_sqlite_is_refused_and_left_alone(tmp_path):
    root = write_repo(tmp_path / "repo")
    registry = root / ".contextkit" / "registry.db"
    registry.parent.mkdir()
    garbage = bytes(range(256)) * 16
    registry.write_bytes(garbage)

    result = run_cli(root, "workspace", "list")

    assert_clean_failure(result, 2, "is not a contextkit registry", "registry:")
    with pytest.raises(RegistryError, match="not a contextkit registry"):
        contextkit.connect(root)
    assert registry.read_bytes() == garbage


def test_a_registry_with_a_damaged_schema_version_is_refused_clearly(tmp_path):
    root = write_repo(tmp_path / "repo")
    contextkit.connect(root).close()
    con = sqlite3.connect(root / ".contextkit" / "registry.db")
    with con:
        con.execute("UPDATE meta SET value = 'v2' WHERE key = 'schema_version'")
    con.close()

    with pytest.raises(RegistryError):
        contextkit.connect(root)


# -- the HTTP API -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(served_repo):
    from fastapi.testclient import TestClient

    from contextkit.server.app import create_app

    ctx = contextkit.connect(served_repo, "prod")
    with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as test_client:
        yield test_client
    ctx.close()


def assert_error_body(response, status: int, code: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and isinstance(error["details"], dict), error
    for word in words:
        assert word in error["message"], error
    return error


def test_int64_keys_sent_as_decimal_strings_are_accepted(client):
    as_strings = client.post(
        "/v1/features", json={"service": "svc", "entities": {"user_id": ["1", 2, "3", "4"]}}
    )
    as_ints = client.post(
        "/v1/features", json={"service": "svc", "entities": {"user_id": [1, 2, 3, 4]}}
    )

    assert as_strings.status_code == 200, as_strings.text
    assert as_strings.json() == as_ints.json()
    keys, spend = as_strings.json()["results"]
    assert keys["values"] == [1, 2, 3, 4]
    assert spend["values"] == [18, 7, 11, None]  # user 1 spent 5 + 13; user 4 is unknown
    assert spend["statuses"] == ["PRESENT", "PRESENT", "PRESENT", "MISSING"]


BAD_REQUESTS = [
    # (story, request body, status, error code, words in the message)
    ("unknown service", {"service": "nope", "entities": {"user_id": [1]}},
     404, "not_found", ["unknown service 'nope'"]),
    ("unknown workspace", {"workspace": "staging", "service": "svc", "entities": {"user_id": [1]}},
     404, "not_found", ["workspace 'staging' does not exist"]),
    ("dev workspace", {"workspace": "dev", "service": "svc", "entities": {"user_id": [1]}},
     409, "workspace_error", ["dev workspace"]),
    ("string for an int64 key", {"service": "svc", "entities": {"user_id": [1, "one"]}},
     400, "bad_request", ["'user_id' must be int64", "'one'"]),
    ("float for an int64 key", {"service": "svc", "entities": {"user_id": [1.5]}},
     400, "bad_request", ["must be int64"]),
    ("bool for an int64 key", {"service": "svc", "entities": {"user_id": [True]}},
     400, "bad_request", ["must be int64"]),
    ("no entities", {"service": "svc", "entities": {}},
     400, "bad_request", ["entities must map each join key"]),
    ("empty list of keys", {"service": "svc", "entities": {"user_id": []}},
     400, "bad_request", ["'user_id' has an empty list"]),
    ("missing join key", {"service": "basket", "entities": {"user_id": [1]}},
     400, "bad_request", ["missing join key 'product_id'"]),
    ("unknown extra join key", {"service": "svc", "entities": {"user_id": [1], "account": [1]}},
     400, "bad_request", ["unknown join key(s) 'account'"]),
    ("lists of different lengths",
     {"service": "basket", "entities": {"user_id": [1, 2], "product_id": [10]}},
     400, "bad_request", ["different lengths"]),
    ("body not an object", [{"service": "svc"}], 422, "invalid_request", ["JSON object"]),
    ("no service", {"entities": {"user_id": [1]}}, 422, "invalid_request", ["`service`"]),
    ("entities not an object", {"service": "svc", "entities": [1, 2]},
     422, "invalid_request", ["`entities`"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_a_bad_feature_request_gets_a_clear_json_error(client, body, status, code, words):
    response = client.post("/v1/features", json=body)

    assert_error_body(response, status, code, *words)


@pytest.mark.parametrize(
    "raw", [b'{"service": "svc", "entities": {"user_id": [1]', b"", b"service=svc"]
)
def test_malformed_json_gets_a_422(client, raw):
    response = client.post(
        "/v1/features", content=raw, headers={"content-type": "application/json"}
    )

    assert_error_body(response, 422, "invalid_request", "not valid JSON")


def test_an_error_body_carries_the_hint_in_its_details(client):
    response = client.post("/v1/features", json={"service": "basket", "entities": {"user_id": [1]}})

    error = assert_error_body(response, 400, "bad_request")
    assert error["details"]["hint"] == "service 'basket' needs: user_id, product_id"
    assert error["details"]["join_key"] == "product_id"


def test_listing_services_of_an_unknown_workspace(client):
    response = client.get("/v1/services", params={"workspace": "staging"})

    assert_error_body(response, 404, "not_found", "staging")


@pytest.mark.parametrize("key", ["--1", "\u00b2", 2**63, "99999999999999999999"])
def test_a_malformed_or_out_of_range_int64_key_is_a_400(client, key):
    response = client.post("/v1/features", json={"service": "svc", "entities": {"user_id": [key]}})

    assert_error_body(response, 400, "bad_request", "user_id")


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/v1/features", 405), ("POST", "/v1/feature", 404)]
)
def test_routing_errors_have_the_error_shape_too(client, method, path, status):
    response = client.request(method, path, json={"service": "svc", "entities": {"user_id": [1]}})

    assert_error_body(response, status, "not_found" if status == 404 else "method_not_allowed")
