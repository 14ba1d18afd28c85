"""Every JSON route documents its body and its answer with a schema (its pydantic models).

Walks the OpenAPI document of the whole app (the control plane's jobs routes included): a POST
that reads a JSON body must document that body's schema, and every route's 200/201/202 JSON
answer must document a schema, not only an example. Routes that do not answer JSON (the UI's
HTML, ``/metrics`` text, ``/mcp``) are listed here by name.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from ops_fixtures import build_repo

import contextkit
from contextkit.governance.jobs import JobService
from contextkit.server.app import create_app

# Routes whose answer is not a JSON document.
NOT_JSON = {"/metrics", "/ui", "/mcp"}
# POST routes that take no body (the job id is in the path).
NO_BODY = {"/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/retry"}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory):
    repo = build_repo(tmp_path_factory.mktemp("openapi") / "repo", workspaces=("prod",))
    ctx = contextkit.connect(repo, "prod")
    app = create_app(ctx, auth=True, jobs=JobService(ctx.runtime))
    with TestClient(app) as client:
        yield client.get("/openapi.json").json()
    ctx.close()


def _json_routes(openapi):
    for path, operations in openapi["paths"].items():
        if path in NOT_JSON or path.startswith(("/ui/", "/static")):
            continue
        for method, operation in operations.items():
            yield path, method, operation


def _resolves(openapi, schema):
    """A schema that says something: a $ref to a component that exists, or a typed schema."""
    ref = schema.get("$ref")
    if ref is not None:
        return ref.rsplit("/", 1)[-1] in openapi["components"]["schemas"]
    return bool(schema.get("type") or schema.get("anyOf") or schema.get("oneOf"))


def test_every_json_route_documents_body_and_answer_schemas(openapi):
    missing = []
    routes = list(_json_routes(openapi))
    assert len(routes) >= 15  # features, search, context, ingest, tecton, chat, jobs, ...
    for path, method, operation in routes:
        if method == "post" and path not in NO_BODY:
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None or not _resolves(openapi, body.get("schema", {})):
                missing.append(f"{method.upper()} {path}: request body schema")
        answers = [
            response.get("content", {}).get("application/json", {})
            for status, response in operation["responses"].items()
            if status in ("200", "201", "202")
        ]
        if not answers or not all(_resolves(openapi, a.get("schema", {})) for a in answers):
            missing.append(f"{method.upper()} {path}: response schema")
    assert missing == []


def test_the_search_body_schema_is_the_model_the_route_parses_with(openapi):
    """One source: the documented body is the model's schema (what the parser checks)."""
    from contextkit.server.search import SearchRequest

    body = openapi["paths"]["/v1/search"]["post"]["requestBody"]["content"]["application/json"]
    documented = body["schema"]
    if "$ref" in documented:
        documented = openapi["components"]["schemas"][documented["$ref"].rsplit("/", 1)[-1]]
    assert set(documented["properties"]) == set(SearchRequest.model_fields)
    assert documented["required"] == ["view"]
