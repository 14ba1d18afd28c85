"""Every JSON route documents its body and its answer with a schema (its pydantic models).

Walks the OpenAPI document of the whole app (the control plane's jobs routes included): a POST
that reads a JSON body must document that body's schema, and every route's 200/201/202 JSON
answer must document a schema, not only an example. Routes that do not answer JSON (the UI's
HTML, ``/metrics`` text, ``/mcp``) are listed here by name; a POST that acts on a resource named
in its path (``/v1/jobs/{job_id}/cancel``) takes no body.
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


def _action(path: str) -> bool:
    """An action on a resource named in the path (``/v1/jobs/{job_id}/cancel``): a POST that
    takes no body."""
    parts = path.rstrip("/").split("/")
    return len(parts) >= 2 and parts[-2].startswith("{")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = build_repo(tmp_path_factory.mktemp("openapi") / "repo", workspaces=("prod",))
    ctx = contextkit.connect(repo, "prod")
    app = create_app(ctx, auth=False, jobs=JobService(ctx.runtime))
    with TestClient(app) as client:
        yield client
    ctx.close()


@pytest.fixture(scope="module")
def openapi(served):
    return served.get("/openapi.json").json()


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
        if method == "post" and not _action(path):
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


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/v1/search", None), ("/v1/vector_stores/{vector_store_id}/search", "server_error")],
)
def test_both_searches_document_their_503_view_warming_with_retry_after(openapi, path, kind):
    answer = openapi["paths"][path]["post"]["responses"]["503"]
    assert answer["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    content = answer["content"]["application/json"]
    assert content["schema"] == {"$ref": "#/components/schemas/Error"}
    error = content["example"]["error"]
    assert error["code"] == "view_warming"
    assert error.get("type") == kind  # OpenAI's route answers in its error shape


TECTON = "/api/v1/feature-service"
EVERY_OPTION = {
    "includeNames": True,
    "includeDataTypes": True,
    "includeEffectiveTimes": True,
    "includeSloInfo": True,
    "includeServingStatus": True,
    "includeFeatureDescriptions": True,
    "includeFeatureTags": True,
}


def test_answers_written_by_hand_fit_their_declared_models(served):
    """The feature-serving routes write their answers with orjson (measured faster), so FastAPI
    does not check them against their response models: this does, on real answers."""
    from contextkit.server.features import FeaturesResponse
    from contextkit.server.tecton import (
        GetFeaturesBatchResponse,
        GetFeaturesResponse,
        ServiceMetadataResponse,
    )

    answers = {
        FeaturesResponse: served.post(
            "/v1/features", json={"service": "svc", "entities": {"user_id": [1, 2, 999]}}
        ),
        GetFeaturesResponse: served.post(
            f"{TECTON}/get-features",
            json={
                "params": {
                    "featureServiceName": "svc",
                    "joinKeyMap": {"user_id": "1"},
                    "metadataOptions": EVERY_OPTION,
                }
            },
        ),
        GetFeaturesBatchResponse: served.post(
            f"{TECTON}/get-features-batch",
            json={
                "params": {
                    "feature_service_name": "svc",
                    "request_data": [
                        {"join_key_map": {"user_id": "1"}},
                        {"joinKeyMap": {"user_id": "9"}},
                    ],
                    "metadata_options": EVERY_OPTION,
                }
            },
        ),
        ServiceMetadataResponse: served.post(
            f"{TECTON}/metadata", json={"params": {"featureServiceName": "svc"}}
        ),
    }
    for model, response in answers.items():
        assert response.status_code == 200, response.text
        parsed = model.model_validate_json(response.content)
        # Nothing the model does not declare was dropped on the way (a stricter check than
        # the schema's, which allows extra keys).
        assert parsed.model_dump(mode="json", exclude_unset=True) == response.json(), model
    assert answers[GetFeaturesBatchResponse].json()["metadata"]["features"][0]["status"] == [
        "PRESENT",
        "MISSING_DATA",
    ]
