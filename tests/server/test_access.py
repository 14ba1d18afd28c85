"""API keys and workspace roles, as a client and an admin see them.

The role matrix sends one valid request to every endpoint with no key and with keys of every role
for the same workspace, another workspace and all workspaces (``"*"``), and asserts the status.
Every route the app serves, in the OpenAPI schema or not (the web UI's), is either in the matrix
(``ENDPOINTS``) or listed as needing no key (``PUBLIC``): a new route nobody classified, or a
listed one that was renamed or removed, fails the suite. The other stories: revocation (by the
SDK in the server's process and by the CLI in another) takes effect on the next request; keys are
only ever stored hashed; the CLI creates, lists and revokes keys; Tecton's header scheme works;
refusals are logged without the key and leak nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ops_fixtures import FEATURES_BODY, SPEND, build_repo, run_cli

import contextkit
from contextkit.governance.access import hash_key
from contextkit.governance.jobs import JobService
from contextkit.server.app import create_app
from contextkit.stores.registry import ApiKeyRecord


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_repo(tmp_path_factory.mktemp("access") / "repo")


@pytest.fixture(scope="module")
def ctx(repo):
    ctx = contextkit.connect(repo, "prod")
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def client(ctx):
    app = create_app(ctx, auth=True, jobs=JobService(ctx.runtime))  # the control plane's
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keys(ctx) -> dict[tuple[str, str], str]:
    """(role, scope) -> key, for scope in own (prod), other, all ("*")."""
    out = {}
    for role in ("reader", "ingester", "admin"):
        for scope, workspace in (("own", "prod"), ("other", "other"), ("all", "*")):
            name = f"{role}-{scope}"
            out[role, scope] = ctx.access.create_key(name, workspace=workspace, role=role).key
    return out


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the role matrix ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # the route's template, as the app declares it
    role: str  # the role the endpoint needs
    request: Callable[[], dict[str, Any]]  # httpx keyword arguments of a valid request in prod
    all_workspaces: bool = False  # needs a key for "*" (it shows every workspace)
    url: str | None = None  # what is requested, when not the template itself
    any_key: bool = False  # every valid key may use it; what it shows depends on the key (MCP)

    @property
    def target(self) -> str:
        return self.url or self.path


ENDPOINTS = [
    Endpoint("GET", "/v1/services", "reader", lambda: {"params": {"workspace": "prod"}}),
    Endpoint("POST", "/v1/features", "reader", lambda: {"json": {
        **FEATURES_BODY, "workspace": "prod"}}),
    Endpoint("POST", "/api/v1/feature-service/get-features", "reader", lambda: {"json": {
        "params": {"workspace_name": "prod", "feature_service_name": "svc",
                   "join_key_map": {"user_id": "1"}}}}),
    Endpoint("POST", "/api/v1/feature-service/get-features-batch", "reader", lambda: {"json": {
        "params": {"workspace_name": "prod", "feature_service_name": "svc",
                   "request_data": [{"join_key_map": {"user_id": "1"}}]}}}),
    Endpoint("POST", "/api/v1/feature-service/metadata", "reader", lambda: {"json": {
        "params": {"workspace_name": "prod", "feature_service_name": "svc"}}}),
    # The repo has no embedding view: an allowed caller gets 404 (unknown view), after auth.
    Endpoint("POST", "/v1/search", "reader", lambda: {"json": {
        "workspace": "prod", "view": "docs", "query": "hello", "top_k": 1}}),
    Endpoint("POST", "/v1/context", "reader", lambda: {"json": {
        "workspace": "prod", "service": "svc", "entities": {"user_id": [1]}}}),
    Endpoint("GET", "/v1/models", "reader", lambda: {"params": {"workspace": "prod"}}),
    # svc has no prompt view to chat with: an allowed caller gets 404 for an unknown service.
    Endpoint("POST", "/v1/chat/completions", "reader", lambda: {"json": {
        "model": "contextkit/nope", "messages": [{"role": "user", "content": "hi"}],
        "contextkit": {"workspace": "prod"}}}),
    Endpoint("GET", "/v1/views", "reader", lambda: {"params": {"workspace": "prod"}}),
    # The path's template as the name: an allowed caller gets 404 (no view "{name}").
    Endpoint("GET", "/v1/views/{name}", "reader", lambda: {"params": {"workspace": "prod"}}),
    Endpoint("GET", "/v1/jobs", "reader", lambda: {"params": {"workspace": "prod"}}),
    Endpoint("GET", "/v1/alerts", "reader", lambda: {"params": {"workspace": "prod"}}),
    # The control plane's jobs API: an allowed caller gets 404 (no view "nope", no job
    # "{job_id}"), after auth; an unknown job is judged in the workspace the request names.
    Endpoint("POST", "/v1/jobs", "admin", lambda: {"json": {
        "workspace": "prod", "views": ["nope"]}}),
    Endpoint("GET", "/v1/jobs/{job_id}", "reader", lambda: {"params": {"workspace": "prod"}}),
    Endpoint("POST", "/v1/jobs/{job_id}/cancel", "admin", lambda: {
        "params": {"workspace": "prod"}}),
    Endpoint("POST", "/v1/jobs/{job_id}/retry", "admin", lambda: {
        "params": {"workspace": "prod"}}),
    # Apply over HTTP (CI/CD): plan_only, so the matrix writes nothing.
    Endpoint("POST", "/v1/apply", "admin", lambda: {"json": {
        "workspace": "prod", "specs": [], "plan_only": True}}),
    # API keys and the audit log (control plane). An allowed caller creates a reader key of
    # prod; revoking the template's id is a 404 (no such key), after auth in prod.
    Endpoint("GET", "/v1/access/keys", "admin", lambda: {"params": {"workspace": "prod"}}),
    Endpoint("POST", "/v1/access/keys", "admin", lambda: {"json": {
        "workspace": "prod", "name": "matrix-probe", "role": "reader"}}),
    Endpoint("POST", "/v1/access/keys/{key_id}/revoke", "admin", lambda: {
        "params": {"workspace": "prod"}}),
    Endpoint("GET", "/v1/audit", "admin", lambda: {"params": {"workspace": "prod"}}),
    Endpoint("GET", "/metrics", "reader", lambda: {}, all_workspaces=True),
    # The repo has no push source: an allowed caller gets 404 (unknown source), after auth.
    Endpoint("POST", "/v1/ingest", "ingester", lambda: {"json": {
        "workspace": "prod", "source": "clicks", "records": []}}),
    Endpoint("POST", "/ingest", "ingester", lambda: {"json": {
        "workspace_name": "prod", "records": {"clicks": []}}}),
    # The web UI's page content (not in the schema): a workspace's overview needs a reader key.
    Endpoint("GET", "/ui/partial/{path:path}", "reader", lambda: {}, url="/ui/partial/w/prod"),
    Endpoint("GET", "/ui/partial/w/{workspace}/retrieval", "reader", lambda: {},
             url="/ui/partial/w/prod/retrieval"),  # the Retrieval page (server/ui_search.py)
    # OpenAI's embeddings and vector-store search: an allowed caller gets 404 (no such model or
    # embedding view), after auth.
    Endpoint("POST", "/v1/embeddings", "reader", lambda: {"json": {
        "model": "contextkit/nope", "input": "hello", "contextkit": {"workspace": "prod"}}}),
    Endpoint("POST", "/v1/vector_stores/{vector_store_id}/search", "reader", lambda: {"json": {
        "query": "hello", "contextkit": {"workspace": "prod"}}},
        url="/v1/vector_stores/docs/search"),
    # MCP: any valid key connects; it lists what its key may use (tests/server/test_mcp.py). A
    # loopback Host: the endpoint's DNS-rebinding protection refuses TestClient's "testserver".
    Endpoint("POST", "/mcp", "reader", lambda: {"json": {
        "jsonrpc": "2.0", "id": 1, "method": "tools/list"}}, url="http://localhost/mcp",
        any_key=True),
]  # fmt: skip
# (method, route template, URL requested): what answers without a key. The docs and the schema
# describe the API only; the web UI's shell and assets hold no data (a browser loads them before
# it has a key to send). Its content, /ui/partial/..., is in ENDPOINTS.
PUBLIC = [
    ("GET", "/health", "/health"),
    ("GET", "/openapi.json", "/openapi.json"),
    ("GET", "/docs", "/docs"),
    ("GET", "/docs/oauth2-redirect", "/docs/oauth2-redirect"),
    ("GET", "/redoc", "/redoc"),
    ("GET", "/ui", "/ui"),
    ("GET", "/ui/{path:path}", "/ui/w/prod/views"),
    ("GET", "/ui/static/{name}", "/ui/static/ui.js"),
]
CALLERS = [None] + [
    (r, s) for r in ("reader", "ingester", "admin") for s in ("own", "other", "all")
]


def expected_status(endpoint: Endpoint, caller: tuple[str, str] | None, ok: int) -> int:
    if caller is None:
        return 401
    if endpoint.any_key:
        return ok
    role, scope = caller
    in_scope = scope == "all" or (scope == "own" and not endpoint.all_workspaces)
    grants = {
        "reader": {"reader"},
        "ingester": {"ingester"},
        "admin": {"reader", "ingester", "admin"},
    }
    return ok if in_scope and endpoint.role in grants[role] else 403


def served_routes(client) -> set[tuple[str, str]]:
    """(method, route template) of every route the app serves, in the OpenAPI schema or not."""
    try:  # FastAPI >= 0.16x keeps included routers nested; this walks them
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(client.app.routes))
    except ImportError:  # older FastAPI: included routers' routes are copied into app.routes
        routes = list(client.app.routes)
    found = set()
    for route in routes:
        methods = getattr(route, "methods", None)
        if not methods:  # a mount or a websocket: it must be classified too
            found.add(("*", route.path))
            continue
        # Starlette answers HEAD wherever it answers GET; the GET row covers both.
        found |= {(m, route.path) for m in methods if not (m == "HEAD" and "GET" in methods)}
    return found


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_role_matrix(client, keys, endpoint):
    assert (endpoint.method, endpoint.path) in served_routes(client), (
        f"{endpoint.method} {endpoint.path} is in ENDPOINTS but not served: renamed or removed? "
        f"update ENDPOINTS in {__file__}"
    )
    # What an allowed caller gets is what an admin of every workspace gets: a success, or an
    # error of the route itself (404 for the unknown view of /v1/search), never 401/403/5xx.
    ok = client.request(
        endpoint.method, endpoint.target, headers=bearer(keys["admin", "all"]),
        **endpoint.request(),
    ).status_code  # fmt: skip
    assert ok < 300 or ok == 404, f"the matrix's request to {endpoint.target} is not valid ({ok})"

    got, want = {}, {}
    for caller in CALLERS:
        headers = bearer(keys[caller]) if caller else {}
        response = client.request(
            endpoint.method, endpoint.target, headers=headers, **endpoint.request()
        )
        got[caller] = response.status_code
        want[caller] = expected_status(endpoint, caller, ok)
        if response.status_code in (401, 403):
            error = response.json().get("error")
            if isinstance(error, dict):  # contextkit's shape (Tecton's paths answer in theirs)
                code = "unauthenticated" if response.status_code == 401 else "permission_denied"
                assert error["code"] == code
            # No key, and no name of another workspace, in a refusal.
            for key in keys.values():
                assert key not in response.text
            assert "other" not in response.text or endpoint.path == "/metrics"
    assert got == want


def test_every_served_route_is_in_the_matrix_or_public(client):
    """A new route must be added to ENDPOINTS (or to PUBLIC, when it needs no key); a listed
    route the app no longer serves must be renamed or removed there."""
    served = served_routes(client)
    in_matrix = {(e.method, e.path) for e in ENDPOINTS}
    public = {(method, path) for method, path, _url in PUBLIC}
    assert not in_matrix & public, "a route is both in ENDPOINTS and PUBLIC"
    unclassified = served - in_matrix - public
    assert not unclassified, f"add these to ENDPOINTS (or PUBLIC) in {__file__}: {unclassified}"
    stale = (in_matrix | public) - served
    assert not stale, f"not served any more; update {__file__}: {sorted(stale)}"
    # The walk above sees at least what the schema documents (it also sees what it hides).
    documented = client.get("/openapi.json").json()["paths"]
    assert {(m.upper(), p) for p, ops in documented.items() for m in ops} <= served


@pytest.mark.parametrize(("method", "path", "url"), PUBLIC, ids=[p for _m, p, _u in PUBLIC])
def test_public_routes_need_no_key(client, method, path, url):
    assert client.request(method, url).status_code == 200


def test_an_unknown_path_is_401_without_a_key_and_404_with_one(client, keys):
    assert client.get("/v1/nope").status_code == 401
    assert client.get("/v1/nope", headers=bearer(keys["reader", "own"])).status_code == 404


# -- keys: schemes, validity, revocation -----------------------------------------------------------
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "Tecton-key", "tecton-key"])
def test_bearer_and_tecton_key_schemes_are_accepted(client, keys, scheme):
    response = client.post(
        "/v1/features",
        json=FEATURES_BODY,
        headers={"Authorization": f"{scheme} {keys['reader', 'own']}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][1]["values"] == SPEND


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "Bearer ck_nothex_abc", "Bearer x y"],
)
def test_malformed_or_unknown_keys_get_401(client, header):
    response = client.post("/v1/features", json=FEATURES_BODY, headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthenticated"


def test_a_key_with_a_wrong_secret_is_refused(client, keys):
    key = keys["reader", "own"]
    tampered = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    response = client.post("/v1/features", json=FEATURES_BODY, headers=bearer(tampered))
    assert response.status_code == 401


def test_a_key_for_one_workspace_gets_403_on_an_unknown_one_too(client, keys):
    """403, not 404: a key cannot probe which workspaces exist."""
    response = client.post(
        "/v1/features",
        json={**FEATURES_BODY, "workspace": "does_not_exist"},
        headers=bearer(keys["admin", "own"]),
    )
    assert response.status_code == 403
    assert "prod" not in response.text  # the key's own workspace is not named either


def test_a_refusal_does_not_name_the_servers_default_workspace(client, keys):
    """A key for `other` asking without naming a workspace is refused for the server's default
    (`prod`), and the refusal does not tell it that name."""
    response = client.post(
        "/v1/features", json=FEATURES_BODY, headers=bearer(keys["reader", "other"])
    )
    assert response.status_code == 403
    assert "prod" not in response.text
    assert "default workspace" in response.json()["error"]["message"]


def test_revoking_through_the_sdk_takes_effect_on_the_next_request(ctx, client):
    new = ctx.access.create_key("short-lived", workspace="prod", role="reader")
    assert (
        client.post("/v1/features", json=FEATURES_BODY, headers=bearer(new.key)).status_code == 200
    )

    ctx.access.revoke(new.record.id)

    response = client.post("/v1/features", json=FEATURES_BODY, headers=bearer(new.key))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "the API key has been revoked"


def test_revoking_with_the_cli_from_another_process_takes_effect_on_the_next_request(
    ctx, client, repo
):
    new = ctx.access.create_key("cli-revoked", workspace="prod", role="reader")
    assert (
        client.post("/v1/features", json=FEATURES_BODY, headers=bearer(new.key)).status_code == 200
    )

    result = run_cli("access", "revoke", new.record.id, "--repo", str(repo), cwd=repo)
    assert result.returncode == 0, result.stderr

    assert (
        client.post("/v1/features", json=FEATURES_BODY, headers=bearer(new.key)).status_code == 401
    )


def test_an_expired_key_is_refused(ctx, client):
    key = "ck_0123456789ab_expiredsecretexpiredsecretexpiredsecret00"
    ctx.registry.insert_api_key(
        ApiKeyRecord(
            id="0123456789ab", key_hash=hash_key(key), principal="old", kind="service",
            workspace="prod", role="reader", description="", created_at=time.time() - 100,
            expires_at=time.time() - 1, revoked_at=None,
        )
    )  # fmt: skip
    response = client.post("/v1/features", json=FEATURES_BODY, headers=bearer(key))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "the API key has expired"


def test_deleting_a_workspace_revokes_its_keys(tmp_path):
    root = build_repo(tmp_path / "repo", workspaces=("prod", "temp"))
    ctx = contextkit.connect(root, "prod")
    temp_key = ctx.access.create_key("app", workspace="temp", role="reader")
    ctx.delete_workspace("temp")
    ctx.create_workspace("temp", live=True)  # same name again: the old key must not work
    with TestClient(create_app(ctx, auth=True)) as client:
        response = client.get("/v1/services?workspace=temp", headers=bearer(temp_key.key))
    assert response.status_code == 401
    ctx.close()


# -- storage and logs ------------------------------------------------------------------------------
def test_keys_are_stored_hashed_never_in_plain(tmp_path):
    root = build_repo(tmp_path / "repo", workspaces=("prod",))
    ctx = contextkit.connect(root, "prod")
    created = [ctx.access.create_key(f"app{i}", workspace="prod", role="reader") for i in range(3)]
    ctx.close()

    files = list((root / ".contextkit").glob("registry.db*"))  # the db and its WAL, if any
    stored = b"".join(f.read_bytes() for f in files)
    for new in created:
        secret = new.key.split("_", 2)[2]
        assert new.key.encode() not in stored
        assert secret.encode() not in stored
        assert hash_key(new.key).encode() in stored  # what is stored instead
        assert new.record.id.encode() in stored


def test_refusals_are_logged_without_the_key(client, keys, caplog):
    reader = keys["reader", "own"]
    with caplog.at_level(logging.WARNING, logger="contextkit.auth"):
        client.post("/v1/features", json=FEATURES_BODY, headers=bearer(reader[:-2] + "zz"))
        client.post("/v1/features", json=FEATURES_BODY)
        client.post(
            "/v1/features", json={**FEATURES_BODY, "workspace": "other"}, headers=bearer(reader)
        )
    refusals = [r for r in caplog.records if r.name == "contextkit.auth"]
    assert [r.fields["reason"] for r in refusals] == ["invalid", "missing", "forbidden"]
    key_id = reader.split("_")[1]
    assert refusals[0].fields["key_id"] == key_id  # the public id helps; the secret never appears
    assert refusals[2].fields["key_id"] == key_id
    for record in refusals:
        text = record.getMessage() + repr(record.fields)
        assert reader not in text and reader[:-2] not in text
        assert record.fields["path"] == "/v1/features" and record.fields["request_id"]


# -- without auth ----------------------------------------------------------------------------------
def test_auth_false_serves_everyone(ctx):
    with TestClient(create_app(ctx, auth=False)) as client:
        assert (
            client.post("/v1/features", json=FEATURES_BODY).json()["results"][1]["values"] == SPEND
        )
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/services?workspace=other").status_code == 200


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_creates_lists_and_revokes_keys(repo, ctx, client):
    created = run_cli(
        "access", "create-key", "--name", "billing", "--workspace", "prod", "--role", "reader",
        "--kind", "service", "--description", "billing app", "--expires-in", "30d",
        "--repo", str(repo), cwd=repo,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()  # stdout is the key alone, for KEY=$(contextkit access ...)
    assert key.startswith("ck_") and "\n" not in key
    key_id = key.split("_")[1]
    assert f"Created key {key_id}" in created.stderr and "shown only now" in created.stderr
    assert client.post("/v1/features", json=FEATURES_BODY, headers=bearer(key)).status_code == 200

    listed = run_cli("access", "list", "--workspace", "prod", "--repo", str(repo), cwd=repo)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if key_id in line)
    assert "billing" in row and "reader" in row and "active" in row and "billing app" in row
    assert key not in listed.stdout and key.split("_", 2)[2] not in listed.stdout

    revoked = run_cli("access", "revoke", "--name", "billing", "--repo", str(repo), cwd=repo)
    assert revoked.returncode == 0, revoked.stderr
    assert f"Revoked key {key_id}" in revoked.stdout
    assert client.post("/v1/features", json=FEATURES_BODY, headers=bearer(key)).status_code == 401

    active = run_cli("access", "list", "--repo", str(repo), cwd=repo)
    assert key_id not in active.stdout
    everything = run_cli("access", "list", "--all", "--repo", str(repo), cwd=repo)
    assert "revoked" in next(line for line in everything.stdout.splitlines() if key_id in line)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x", "--workspace", "nope"], "workspace 'nope' does not exist"),
        (["--name", "x", "--workspace", "prod", "--role", "root"], "unknown role 'root'"),
        (["--name", "x", "--workspace", "prod", "--kind", "robot"], "unknown principal kind"),
        (["--name", "9lives", "--workspace", "prod"], "principal name '9lives' is not valid"),
        (["--name", "x", "--workspace", "prod", "--expires-in", "soon"], "is not a duration"),
    ],
)
def test_cli_create_key_mistakes_fail_cleanly(repo, args, message):
    result = run_cli("access", "create-key", *args, "--repo", str(repo), cwd=repo)
    assert result.returncode == 1, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout.strip() == ""  # no key was printed


def test_cli_revoke_needs_exactly_one_of_id_and_name(repo):
    neither = run_cli("access", "revoke", "--repo", str(repo), cwd=repo)
    unknown = run_cli("access", "revoke", "ffffffffffff", "--repo", str(repo), cwd=repo)
    assert neither.returncode == 1 and "give a key id or --name" in neither.stderr
    assert unknown.returncode == 1 and "no API key with id 'ffffffffffff'" in unknown.stderr
