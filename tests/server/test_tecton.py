"""Tecton's HTTP clients against contextkit's Tecton-compatible endpoints.

Requests are built the way the open-source clients build them, and responses are read the way
their parsers read them (re-implemented below from tecton-http-client-python and -java):

- the current Python client (``tecton_client/_internal``): camelCase params, ``metadataOptions``
  with names and data types on by default, ``requestOptions`` and ``allowPartialResults`` always
  sent; ``get_features_dict`` turns int64 strings into ints; errors read the body's ``message``.
- the 0.x Python client: snake_case params, only the ``true`` metadata options, int join keys sent
  as strings, ``get-features-batch`` with ``request_data``; its parser splits names on ".", maps
  ``status`` to an enum (one per row in a batch) and reads ``sloInfo``/``batchSloInfo``.
- the Java client: ``effectiveTime`` parsed as ``yyyy-MM-dd'T'HH:mm:ss'Z'``, types from a closed
  enum, batch ``status`` a list and ``effectiveTime`` one string per feature.

Every value is checked against ``ctx.get_features(...)`` for the same entities.
"""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from serverproc import running_server

import contextkit
from contextkit.errors import ContextKitError
from contextkit.server.app import create_app

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(days=2)
END_TEXT = "2024-05-03T00:00:00Z"  # the materialization end, as Tecton writes an effective time

CONFIG = """\
project: tecton_compat
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""

# A fraud-style service over two entities: an int64 key (user_id) and a string key (merchant_id).
DEFS = """\
from contextkit import Aggregate, Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
merchant = Entity(name="merchant", join_keys=["merchant_id"])
transactions = FileSource(name="transactions", path="data/transactions.parquet",
                          timestamp_field="ts")
profiles = FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="ts")

@batch_feature_view(sources=[profiles], entities=[user], mode="sql", tags={"team": "risk"},
                    features=[Attribute("name", description="Display name."), Attribute("age"),
                              Attribute("score"), Attribute("vip"), Attribute("signed_up")])
def user_profile(profiles):
    return f"SELECT user_id, name, age, score, vip, signed_up, ts FROM {profiles}"

@batch_feature_view(sources=[transactions], entities=[user], mode="sql",
                    features=[Aggregate(column="amount", function="sum", time_window="7d",
                                        description="Spend over the last 7 days."),
                              Aggregate(column="amount", function="count", time_window="7d")])
def user_spend(transactions):
    return f"SELECT user_id, amount, ts FROM {transactions}"

@batch_feature_view(sources=[transactions], entities=[merchant], mode="sql",
                    features=[Aggregate(column="amount", function="mean", time_window="7d")])
def merchant_stats(transactions):
    return f"SELECT merchant_id, amount, ts FROM {transactions}"

fraud = ContextService(name="fraud", features=[user_profile, user_spend, merchant_stats])
profile_only = ContextService(name="profile_only", features=[user_profile[["age", "name"]]])
"""

FRAUD_FEATURES = [
    ("user_profile.name", "string"),
    ("user_profile.age", "int64"),
    ("user_profile.score", "float64"),
    ("user_profile.vip", "boolean"),
    ("user_profile.signed_up", "string"),  # a timestamp: Tecton's clients know no timestamp type
    ("user_spend.amount_sum_7d", "float64"),
    ("user_spend.amount_count_7d", "int64"),
    ("merchant_stats.amount_mean_7d", "float64"),
]


def write_repo(root: Path) -> Path:
    ts = pa.timestamp("us", tz="UTC")
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(CONFIG)
    (root / "tecton_compat_defs.py").write_text(textwrap.dedent(DEFS))
    transactions = {
        "user_id": pa.array([1, 1, 2, 3], pa.int64()),
        "merchant_id": ["m1", "m2", "m1", "m1"],
        "amount": [10.0, 5.5, 7.25, 100.0],
        "ts": pa.array([T0 + timedelta(hours=h) for h in (1, 2, 3, 4)], ts),
    }
    pq.write_table(pa.table(transactions), root / "data" / "transactions.parquet")
    profiles = {  # user 3 has transactions but no profile; user 4 has nothing
        "user_id": pa.array([1, 2], pa.int64()),
        "name": ["Ada", "Bo"],
        "age": pa.array([36, 41], pa.int64()),
        "score": [0.5, 0.25],
        "vip": [True, False],
        "signed_up": pa.array([T0 - timedelta(days=30), T0 - timedelta(days=3)], ts),
        "ts": pa.array([T0, T0 + timedelta(hours=5)], ts),
    }
    pq.write_table(pa.table(profiles), root / "data" / "profiles.parquet")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Applied to a materialized live `prod`, an unmaterialized live `staging`, and a `dev`."""
    root = write_repo(tmp_path_factory.mktemp("tecton") / "repo")
    ctx = contextkit.connect(root, "prod")
    try:
        ctx.create_workspace("prod", live=True)
        ctx.create_workspace("staging", live=True)
        ctx.create_workspace("dev")
        for name in ("prod", "staging", "dev"):
            ws = ctx.use(name)
            ws.apply(ws.plan(root))
        ctx.materialize(end=END)
    finally:
        ctx.close()
    return root


@pytest.fixture(scope="module")
def sdk(repo):
    ctx = contextkit.connect(repo, "prod")
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def client(repo):
    ctx = contextkit.connect(repo, "prod")
    with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as test_client:
        yield test_client
    ctx.close()


GET_FEATURES = "/api/v1/feature-service/get-features"
GET_FEATURES_BATCH = "/api/v1/feature-service/get-features-batch"
METADATA = "/api/v1/feature-service/metadata"


# -- the current Python client (tecton_client/_internal), re-implemented ------------------------
def current_client_request(
    service: str,
    join_key_map: dict[str, Any],
    *,
    workspace: str | None = "prod",
    metadata_options: dict[str, bool] | None = None,
    request_context_map: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The body ``TectonClient.get_features`` posts (``build_get_features_request``)."""
    options = {"include_names": True, "include_data_types": True}  # MetadataOptions() defaults
    options.update(metadata_options or {})
    return {
        "params": {
            "workspaceName": workspace,
            "featureServiceName": service,
            "joinKeyMap": join_key_map or {},
            "requestContextMap": request_context_map or {},
            "allowPartialResults": False,
            "metadataOptions": {
                "includeNames": options.get("include_names", False),
                "includeDataTypes": options.get("include_data_types", False),
                "includeEffectiveTimes": options.get("include_effective_times", False),
                "includeSloInfo": options.get("include_slo_info", False),
                "includeServingStatus": options.get("include_serving_status", False),
            },
            "requestOptions": {"readFromCache": True, "writeToCache": True},
        }
    }


def current_client_value(data_type: dict[str, Any], raw: Any) -> Any:
    """``GetFeaturesResponse._get_feature_value``: int64 strings become ints, recursively."""
    kind = data_type.get("type")
    if raw is None:
        return None
    if kind == "int64":
        return int(raw)
    if kind == "array":
        return [current_client_value(data_type["elementType"], v) for v in raw]
    if kind == "map":
        return {
            current_client_value(data_type["keyType"], k): current_client_value(
                data_type["valueType"], v
            )
            for k, v in raw.items()
        }
    if kind == "struct":
        return {
            f["name"]: current_client_value(f["dataType"], v)
            for f, v in zip(data_type["fields"], raw, strict=False)
        }
    return raw


def current_client_features_dict(body: dict[str, Any]) -> dict[str, Any]:
    """``GetFeaturesResponse.from_response(body).get_features_dict()``."""
    metadata = body.get("metadata")
    if metadata is None or metadata.get("features") is None:
        raise ValueError("Metadata is not included in response")
    features = metadata["features"]
    if features[0].get("name") is None or features[0].get("dataType") is None:
        raise ValueError("names and data types are needed")
    return {
        m["name"]: current_client_value(m["dataType"], raw)
        for m, raw in zip(features, body["result"]["features"], strict=False)
    }


def current_client_slo_info(body: dict[str, Any]) -> dict[str, Any] | None:
    """``SLOInfo`` as ``from_response`` builds it (missing fields are None)."""
    raw = body.get("metadata", {}).get("sloInfo")
    if raw is None:
        return None
    fields = (
        "sloEligible",
        "sloServerTimeSeconds",
        "dynamodbResponseSizeBytes",
        "serverTimeSeconds",
        "storeMaxLatency",
        "storeResponseSizeBytes",
    )
    return {f: raw.get(f) for f in fields}


TECTON_HTTP_ERRORS = {  # tecton_client.exceptions: status -> exception class
    400: "BadRequestError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "NotFoundError",
    429: "ResourceExhaustedError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def current_client_error(response: httpx.Response) -> tuple[str, str]:
    """``convert_exception``: the exception class and its message, for an error response."""
    assert response.status_code >= 400, response.text
    name = TECTON_HTTP_ERRORS.get(response.status_code)
    if name is None:
        return "TectonHttpException", f"{response.status_code} {response.reason_phrase}: "
    message = response.json().get("message")
    return name, f"{response.status_code} {response.reason_phrase}: {message}"


# -- the 0.x Python client (tecton_client/requests.py, responses.py), re-implemented ------------
OLD_DEFAULT_OPTIONS = {"include_names", "include_data_types"}
OLD_STATUSES = {"PRESENT", "MISSING_DATA", "UNKNOWN"}  # FeatureStatus
OLD_SLO_REASONS = {
    "UNKNOWN",
    "DYNAMODB_RESPONSE_SIZE_LIMIT_EXCEEDED",
    "REDIS_RESPONSE_SIZE_LIMIT_EXCEEDED",
    "REDIS_LATENCY_LIMIT_EXCEEDED",
}


def old_client_map(values: dict[str, Any]) -> dict[str, Any]:
    """``GetFeaturesRequestData``: int values are sent as their decimal strings."""
    return {k: str(v) if type(v) is int else v for k, v in values.items()}


def old_client_options(options: set[str]) -> dict[str, bool]:
    return {o: True for o in sorted(options | OLD_DEFAULT_OPTIONS)}


def old_client_request(service: str, join_key_map: dict, options: set[str] = frozenset()) -> dict:
    """``GetFeaturesRequest(...).to_json()``."""
    params: dict[str, Any] = {
        "feature_service_name": service,
        "workspace_name": "prod",
        "metadata_options": old_client_options(set(options)),
    }
    if join_key_map:
        params["join_key_map"] = old_client_map(join_key_map)
    return {"params": params}


def old_client_batch_request(service: str, rows: list[dict], options: set[str] = frozenset()):
    """``GetFeaturesMicroBatchRequest(...).to_json()``: falsy maps are left out of each row."""
    return {
        "params": {
            "feature_service_name": service,
            "workspace_name": "prod",
            "metadata_options": old_client_options(set(options)),
            "request_data": [{"join_key_map": old_client_map(row)} for row in rows if row],
        }
    }


def old_client_data_type(data_type: dict[str, Any]):
    """``get_data_type``: the parsed type, as a converter; unknown types are an error."""
    kind = data_type["type"].lower()
    scalars = {"int64": int, "float64": float, "float32": float, "string": str, "boolean": bool}
    if kind in scalars:
        return scalars[kind]
    if kind == "array":
        element = old_client_data_type(data_type["elementType"])
        return lambda raw: [None if v is None else element(v) for v in raw]
    raise AssertionError(f"Received unknown data type {kind} in the response")


def old_client_feature(metadata: dict[str, Any], raw: Any, status: str | None) -> dict[str, Any]:
    """``FeatureValue(...)``: the checks it makes and what it keeps."""
    namespace, name = metadata["name"].split(".")  # exactly one "." or the client raises
    if status is not None:
        assert status in OLD_STATUSES, status
    effective = metadata.get("effectiveTime")
    if effective is not None:
        effective = datetime.fromisoformat(effective.replace("Z", "+00:00"))
    convert = old_client_data_type(metadata["dataType"])
    return {
        "name": f"{namespace}.{name}",
        "value": None if raw is None else convert(raw),
        "status": status,
        "effective_time": effective,
    }


def old_client_slo(raw: dict[str, Any]) -> dict[str, Any]:
    """``SloInformation`` / ``BatchSloInformation``."""
    reasons = raw.get("sloIneligibilityReasons")
    if reasons is not None:
        assert set(reasons) <= OLD_SLO_REASONS, reasons
    return {
        "slo_eligible": raw.get("sloEligible"),
        "server_time_seconds": raw.get("serverTimeSeconds"),
        "slo_server_time_seconds": raw.get("sloServerTimeSeconds"),
        "store_max_latency": raw.get("storeMaxLatency"),
    }


def old_client_response(body: dict[str, Any]) -> dict[str, Any]:
    """``GetFeaturesResponse(http_response)``."""
    metadata = body["metadata"]
    features = {
        m["name"]: old_client_feature(m, raw, m.get("status"))
        for raw, m in zip(body["result"]["features"], metadata["features"], strict=False)
    }
    slo = old_client_slo(metadata["sloInfo"]) if "sloInfo" in metadata else None
    return {"features": features, "slo_info": slo}


def old_client_batch_response(body: dict[str, Any]) -> dict[str, Any]:
    """``GetFeaturesMicroBatchResponse(http_response, micro_batch_size > 1)``."""
    vectors = [r["features"] for r in body["result"]]
    metadata = body["metadata"]
    slo_list = metadata.get("sloInfo")
    rows = [
        {
            "features": {
                m["name"]: old_client_feature(m, raw, m["status"][i] if "status" in m else None)
                for raw, m in zip(vector, metadata["features"], strict=False)
            },
            "slo_info": old_client_slo(slo_list[i]) if slo_list else None,
        }
        for i, vector in enumerate(vectors)
    ]
    batch_slo = old_client_slo(metadata["batchSloInfo"]) if "batchSloInfo" in metadata else None
    return {"rows": rows, "batch_slo_info": batch_slo}


# -- the Java client's model (ai.tecton.client), as constraints ---------------------------------
JAVA_VALUE_TYPES = {"boolean", "int64", "string", "float32", "float64", "array"}  # ValueType
JAVA_EFFECTIVE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")  # yyyy-MM-dd'T'HH:mm:ss'Z'


def assert_java_client_parses(body: dict[str, Any], *, batch: bool) -> None:
    """What Moshi + ``GetFeaturesResponseUtils`` need of the metadata to build FeatureValues."""
    for m in body["metadata"]["features"]:
        assert isinstance(m["name"], str) and len(m["name"].split(".")) == 2, m
        assert m["dataType"]["type"] in JAVA_VALUE_TYPES, m
        if "effectiveTime" in m:
            assert isinstance(m["effectiveTime"], str), m  # one per feature, batch or not
            assert JAVA_EFFECTIVE_TIME.match(m["effectiveTime"]), m
        if "status" in m:
            statuses = m["status"] if batch else [m["status"]]
            assert isinstance(statuses, list) and set(statuses) <= OLD_STATUSES, m
    if batch:
        assert isinstance(body["result"], list)
        assert all(isinstance(r["features"], list) and r["features"] for r in body["result"])


# -- helpers -----------------------------------------------------------------------------------
def sdk_row(sdk, service: str, **keys: Any) -> dict[str, Any]:
    """The SDK's values for one entity, by feature name."""
    result = sdk.get_features(service, {k: [v] for k, v in keys.items()})
    return {name: values[0] for name, values in zip(result.names, result.values, strict=True)}


def sdk_statuses(sdk, service: str, **keys: Any) -> dict[str, str]:
    result = sdk.get_features(service, {k: [v] for k, v in keys.items()})
    return {name: s[0] for name, s in zip(result.names, result.statuses, strict=True)}


def assert_tecton_error(response, status: int, grpc_code: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    body = response.json()
    assert body["code"] == grpc_code, body
    assert body["error"] == body["message"], body
    for word in words:
        assert word in body["message"], body
    return body


# -- get-features --------------------------------------------------------------------------------
def test_the_current_client_gets_the_sdk_values_by_name(client, sdk):
    body = current_client_request("fraud", {"user_id": 1, "merchant_id": "m1"})
    response = client.post(GET_FEATURES, json=body)

    assert response.status_code == 200, response.text
    assert current_client_features_dict(response.json()) == sdk_row(
        sdk, "fraud", user_id=1, merchant_id="m1"
    )
    assert current_client_slo_info(response.json()) is None  # not asked for


def test_features_come_in_the_services_order_with_tecton_types(client):
    body = current_client_request("fraud", {"user_id": "2", "merchant_id": "m2"})
    metadata = client.post(GET_FEATURES, json=body).json()["metadata"]["features"]

    assert [(m["name"], m["dataType"]["type"]) for m in metadata] == FRAUD_FEATURES

    selected = current_client_request("profile_only", {"user_id": "2"})
    response = client.post(GET_FEATURES, json=selected).json()
    assert [m["name"] for m in response["metadata"]["features"]] == [
        "user_profile.age",
        "user_profile.name",
    ]
    assert response["result"]["features"] == ["41", "Bo"]


def test_int64_values_are_sent_as_strings_and_others_as_json_types(client):
    body = current_client_request("fraud", {"user_id": "1", "merchant_id": "m1"})
    raw = dict(
        zip(
            [name for name, _ in FRAUD_FEATURES],
            client.post(GET_FEATURES, json=body).json()["result"]["features"],
            strict=True,
        )
    )

    assert raw["user_profile.age"] == "36"
    assert raw["user_spend.amount_count_7d"] == "2"
    assert raw["user_profile.vip"] is True
    assert raw["user_spend.amount_sum_7d"] == 15.5
    assert raw["user_profile.name"] == "Ada"
    assert raw["user_profile.signed_up"] == "2024-04-01T00:00:00Z"


def test_int64_join_keys_sent_as_strings_or_numbers_give_the_same_answer(client):
    as_string = current_client_request("fraud", {"user_id": "1", "merchant_id": "m1"})
    as_number = current_client_request("fraud", {"user_id": 1, "merchant_id": "m1"})

    first = client.post(GET_FEATURES, json=as_string)
    second = client.post(GET_FEATURES, json=as_number)

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()


def test_the_old_client_with_every_metadata_option(client, sdk):
    options = {
        "include_names",
        "include_data_types",
        "include_effective_times",
        "include_slo_info",
        "include_serving_status",
    }
    body = old_client_request("fraud", {"user_id": 1, "merchant_id": "m1"}, options)
    assert body["params"]["join_key_map"] == {"user_id": "1", "merchant_id": "m1"}

    response = client.post(GET_FEATURES, json=body)
    assert response.status_code == 200, response.text
    parsed = old_client_response(response.json())

    expected = sdk_row(sdk, "fraud", user_id=1, merchant_id="m1")
    assert {n: f["value"] for n, f in parsed["features"].items()} == expected
    assert {f["status"] for f in parsed["features"].values()} == {"PRESENT"}
    assert {f["effective_time"] for f in parsed["features"].values()} == {END}
    slo = parsed["slo_info"]
    assert slo["slo_eligible"] is True
    for field in ("server_time_seconds", "slo_server_time_seconds", "store_max_latency"):
        assert isinstance(slo[field], float) and slo[field] >= 0, slo
    assert_java_client_parses(response.json(), batch=False)


OPTION_FIELDS = [
    # (option, the key it adds to each feature's metadata)
    ("includeNames", "name"),
    ("includeDataTypes", "dataType"),
    ("includeEffectiveTimes", "effectiveTime"),
    ("includeServingStatus", "status"),
]


@pytest.mark.parametrize(("option", "key"), OPTION_FIELDS)
def test_each_metadata_option_adds_only_its_field(client, option, key):
    body = {
        "params": {
            "featureServiceName": "fraud",
            "workspaceName": "prod",
            "joinKeyMap": {"user_id": "1", "merchant_id": "m1"},
            "metadataOptions": {option: True},
        }
    }
    response = client.post(GET_FEATURES, json=body).json()

    assert set(response) == {"result", "metadata"}
    assert set(response["metadata"]) == {"features"}
    assert [set(m) for m in response["metadata"]["features"]] == [{key}] * len(FRAUD_FEATURES)


def test_without_metadata_options_only_the_values_come_back(client):
    join_keys = {"user_id": "1", "merchant_id": "m1"}
    body = {"params": {"featureServiceName": "fraud", "joinKeyMap": join_keys}}

    response = client.post(GET_FEATURES, json=body).json()

    assert list(response) == ["result"]
    assert len(response["result"]["features"]) == len(FRAUD_FEATURES)


def test_slo_info_alone_adds_only_slo_info(client):
    body = current_client_request(
        "fraud",
        {"user_id": "1", "merchant_id": "m1"},
        metadata_options={
            "include_names": False,
            "include_data_types": False,
            "include_slo_info": True,
        },
    )
    response = client.post(GET_FEATURES, json=body).json()

    assert set(response["metadata"]) == {"sloInfo"}
    slo = current_client_slo_info(response)
    assert slo["sloEligible"] is True
    assert slo["serverTimeSeconds"] >= slo["storeMaxLatency"] >= 0
    assert "sloIneligibilityReasons" not in response["metadata"]["sloInfo"]


def test_descriptions_and_tags_come_from_the_definitions(client):
    body = {
        "params": {
            "featureServiceName": "fraud",
            "joinKeyMap": {"user_id": "1", "merchant_id": "m1"},
            "metadataOptions": {
                "includeNames": True,
                "includeFeatureDescriptions": True,
                "includeFeatureTags": True,
            },
        }
    }
    metadata = client.post(GET_FEATURES, json=body).json()["metadata"]["features"]
    by_name = {m["name"]: m for m in metadata}

    assert by_name["user_profile.name"]["description"] == "Display name."
    assert by_name["user_spend.amount_sum_7d"]["description"] == "Spend over the last 7 days."
    assert "description" not in by_name["user_profile.age"]  # none was written
    assert by_name["user_profile.age"]["tags"] == {"team": "risk"}  # the view's tags
    assert "tags" not in by_name["user_spend.amount_sum_7d"]


def test_a_missing_entity_gets_nulls_with_missing_data_status(client, sdk):
    body = current_client_request(
        "fraud",
        {"user_id": "4", "merchant_id": "nowhere"},
        metadata_options={"include_serving_status": True},
    )
    response = client.post(GET_FEATURES, json=body)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"]["features"] == [None] * len(FRAUD_FEATURES)
    assert {m["status"] for m in body["metadata"]["features"]} == {"MISSING_DATA"}
    assert current_client_features_dict(body) == sdk_row(
        sdk, "fraud", user_id=4, merchant_id="nowhere"
    )


def test_an_entity_missing_from_one_view_only(client, sdk):
    body = current_client_request(
        "fraud",
        {"user_id": "3", "merchant_id": "m1"},
        metadata_options={"include_serving_status": True},
    )
    response = client.post(GET_FEATURES, json=body).json()
    statuses = {m["name"]: m["status"] for m in response["metadata"]["features"]}

    expected = {
        n: "PRESENT" if s == "PRESENT" else "MISSING_DATA"
        for n, s in sdk_statuses(sdk, "fraud", user_id=3, merchant_id="m1").items()
    }
    assert statuses == expected
    assert statuses["user_profile.name"] == "MISSING_DATA"  # user 3 has no profile
    assert statuses["user_spend.amount_sum_7d"] == "PRESENT"
    assert current_client_features_dict(response)["user_spend.amount_sum_7d"] == 100.0


def test_a_view_never_materialized_serves_missing_data_and_no_effective_time(client):
    body = current_client_request(
        "fraud",
        {"user_id": "1", "merchant_id": "m1"},
        workspace="staging",
        metadata_options={"include_serving_status": True, "include_effective_times": True},
    )
    response = client.post(GET_FEATURES, json=body)

    assert response.status_code == 200, response.text
    metadata = response.json()["metadata"]["features"]
    assert {m["status"] for m in metadata} == {"MISSING_DATA"}
    assert all("effectiveTime" not in m for m in metadata)


def test_a_service_can_be_named_by_id(client):
    by_name = {"params": {"featureServiceName": "profile_only", "joinKeyMap": {"user_id": "1"}}}
    by_id = {"params": {"featureServiceId": "profile_only", "joinKeyMap": {"user_id": "1"}}}

    assert (
        client.post(GET_FEATURES, json=by_id).json()
        == client.post(GET_FEATURES, json=by_name).json()
    )


def test_the_request_context_is_accepted(client):
    body = current_client_request(
        "profile_only", {"user_id": "1"}, request_context_map={"amount": 500.0}
    )
    assert client.post(GET_FEATURES, json=body).json()["result"]["features"] == ["36", "Ada"]


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("workspace", "service", "words"),
    [
        ("prod", "nope", ["unknown service 'nope'"]),
        ("nowhere", "fraud", ["workspace 'nowhere' does not exist"]),
        ("dev", "fraud", ["dev workspace"]),
    ],
)
def test_unknown_service_or_workspace_is_tectons_not_found(client, workspace, service, words):
    body = current_client_request(service, {"user_id": "1"}, workspace=workspace)
    response = client.post(GET_FEATURES, json=body)

    assert_tecton_error(response, 404, 5, *words)
    kind, message = current_client_error(response)
    assert kind == "NotFoundError"
    assert message.startswith("404 Not Found: ") and words[0] in message


WRONG_KEYS = [
    # (join key map, words in the message)
    ({"user_id": "abc", "merchant_id": "m1"}, ["user_id", "int64"]),
    ({"user_id": 1.5, "merchant_id": "m1"}, ["user_id"]),
    ({"user_id": True, "merchant_id": "m1"}, ["user_id"]),
    ({"user_id": None, "merchant_id": "m1"}, ["user_id"]),
    ({"user_id": [1, 2], "merchant_id": "m1"}, ["user_id"]),
    ({"user_id": "9223372036854775808", "merchant_id": "m1"}, ["user_id"]),
    ({"user_id": "1", "merchant_id": 5}, ["merchant_id", "string"]),
    ({"user_id": "1"}, ["missing required join key", "merchant_id"]),
    ({}, ["missing required join key", "user_id", "merchant_id"]),
    ({"user_id": "1", "merchant_id": "m1", "device": "d"}, ["unknown join key", "device"]),
]


@pytest.mark.parametrize(("join_key_map", "words"), WRONG_KEYS)
def test_wrong_join_keys_are_tectons_bad_request(client, join_key_map, words):
    body = current_client_request("fraud", {})
    body["params"]["joinKeyMap"] = join_key_map
    response = client.post(GET_FEATURES, json=body)

    assert_tecton_error(response, 400, 3, *words)
    assert current_client_error(response)[0] == "BadRequestError"


MALFORMED = [
    # (raw body, words in the message)
    (b"not json", ["not valid JSON"]),
    (b"[]", ["JSON object"]),
    (b'{"params": []}', ["params"]),
    (b'{"params": {"joinKeyMap": {"user_id": "1"}}}', ["featureServiceName"]),
    (b'{"params": {"featureServiceName": "fraud", "featureServiceId": "fraud"}}', ["exactly one"]),
    (b'{"params": {"featureServiceName": 7}}', ["featureServiceName"]),
    (b'{"params": {"featureServiceName": "fraud", "workspaceName": 5}}', ["workspaceName"]),
    (b'{"params": {"featureServiceName": "fraud", "joinKeyMap": []}}', ["joinKeyMap"]),
    (
        b'{"params": {"featureServiceName": "fraud", "joinKeyMap": {}, "requestContextMap": 1}}',
        ["requestContextMap"],
    ),
    (
        b'{"params": {"featureServiceName": "fraud", "metadataOptions": {"includeNames": "yes"}}}',
        ["includeNames"],
    ),
]


@pytest.mark.parametrize(("raw", "words"), MALFORMED)
def test_a_malformed_body_is_a_400_not_a_422(client, raw, words):
    response = client.post(GET_FEATURES, content=raw, headers={"content-type": "application/json"})

    assert_tecton_error(response, 400, 3, *words)


class _Unauthenticated(ContextKitError):
    code = "unauthenticated"
    http_status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="contextkit"'}


class _Forbidden(ContextKitError):
    code = "permission_denied"
    http_status = 403


def test_access_checks_see_the_tecton_key_and_answer_in_tectons_shape(repo):
    seen = []

    def authorize(request, workspace, role):
        seen.append((request.headers.get("authorization"), workspace, role))
        if request.headers.get("authorization") != "Tecton-key good":
            raise _Unauthenticated("invalid 'Tecton-key' authorization header")
        if workspace != "prod":
            raise _Forbidden(f"this key may not read workspace {workspace!r}")

    ctx = contextkit.connect(repo, "prod")
    body = current_client_request("profile_only", {"user_id": "1"})
    try:
        with TestClient(create_app(ctx, auth=authorize)) as test_client:
            good = {"Authorization": "Tecton-key good"}
            ok = test_client.post(GET_FEATURES, json=body, headers=good)
            bad_key = test_client.post(
                GET_FEATURES, json=body, headers={"Authorization": "Tecton-key bad"}
            )
            body["params"]["workspaceName"] = "staging"
            other_workspace = test_client.post(GET_FEATURES, json=body, headers=good)
    finally:
        ctx.close()

    assert ok.status_code == 200, ok.text
    assert_tecton_error(bad_key, 401, 16, "Tecton-key")
    assert bad_key.headers["www-authenticate"] == 'Bearer realm="contextkit"'
    assert current_client_error(bad_key)[0] == "UnauthorizedError"
    assert_tecton_error(other_workspace, 403, 7, "staging")
    assert current_client_error(other_workspace)[0] == "ForbiddenError"
    assert seen == [
        ("Tecton-key good", "prod", "reader"),
        ("Tecton-key bad", "prod", "reader"),
        ("Tecton-key good", "staging", "reader"),
    ]


# -- get-features-batch ---------------------------------------------------------------------------
BATCH_ROWS = [
    {"user_id": 1, "merchant_id": "m1"},
    {"user_id": 4, "merchant_id": "nowhere"},  # missing entirely
    {"user_id": 3, "merchant_id": "m2"},  # no profile; merchant m2 has one transaction
    {"user_id": 1, "merchant_id": "m2"},
]


def test_the_old_client_batch_gets_one_vector_per_row(client, sdk):
    options = {"include_serving_status", "include_effective_times", "include_slo_info"}
    response = client.post(
        GET_FEATURES_BATCH, json=old_client_batch_request("fraud", BATCH_ROWS, options)
    )

    assert response.status_code == 200, response.text
    parsed = old_client_batch_response(response.json())
    assert len(parsed["rows"]) == len(BATCH_ROWS)
    expected = sdk.get_features(
        "fraud",
        {
            "user_id": [r["user_id"] for r in BATCH_ROWS],
            "merchant_id": [r["merchant_id"] for r in BATCH_ROWS],
        },
    )
    for i, row in enumerate(parsed["rows"]):
        values = {name: f["value"] for name, f in row["features"].items()}
        assert values == {n: v[i] for n, v in zip(expected.names, expected.values, strict=True)}
        statuses = {name: f["status"] for name, f in row["features"].items()}
        assert statuses == {
            n: "PRESENT" if s[i] == "PRESENT" else "MISSING_DATA"
            for n, s in zip(expected.names, expected.statuses, strict=True)
        }
        assert {f["effective_time"] for f in row["features"].values()} == {END}
        assert row["slo_info"]["slo_eligible"] is True
    assert parsed["rows"][1]["features"]["user_profile.name"]["status"] == "MISSING_DATA"
    assert parsed["batch_slo_info"]["slo_eligible"] is True
    assert_java_client_parses(response.json(), batch=True)


def test_a_batch_as_the_java_client_sends_it(client, sdk):
    body = {  # key order and shape of the Java client's sample_batch_request.json
        "params": {
            "feature_service_name": "profile_only",
            "metadata_options": {"include_names": True, "include_data_types": True},
            "request_data": [
                {"join_key_map": {"user_id": "2"}, "request_context_map": {"amt": 61.06}},
                {"join_key_map": {"user_id": "1"}, "request_context_map": {"amt": 2.12}},
            ],
            "workspace_name": "prod",
        }
    }
    response = client.post(GET_FEATURES_BATCH, json=body)

    assert response.status_code == 200, response.text
    assert response.json()["result"] == [{"features": ["41", "Bo"]}, {"features": ["36", "Ada"]}]
    names = [m["name"] for m in response.json()["metadata"]["features"]]
    assert names == ["user_profile.age", "user_profile.name"]
    assert sdk_row(sdk, "profile_only", user_id=2) == {
        "user_profile.age": 41,
        "user_profile.name": "Bo",
    }
    assert_java_client_parses(response.json(), batch=True)


def test_a_camel_case_batch_without_options_has_no_metadata(client):
    body = {
        "params": {
            "featureServiceName": "profile_only",
            "workspaceName": "prod",
            "requestData": [{"joinKeyMap": {"user_id": "1"}}, {"joinKeyMap": {"user_id": 9}}],
        }
    }
    response = client.post(GET_FEATURES_BATCH, json=body)

    assert response.json() == {"result": [{"features": ["36", "Ada"]}, {"features": [None, None]}]}


@pytest.mark.parametrize(
    ("request_data", "words"),
    [
        ([], ["requestData", "non-empty"]),
        ("rows", ["requestData"]),
        ([{"join_key_map": {"user_id": "1"}}, 7], ["requestData[1]"]),
        ([{"join_key_map": {"user_id": "1"}}, {"join_key_map": {}}], ["requestData[1]", "user_id"]),
        (
            [{"join_key_map": {"user_id": "1"}}, {"join_key_map": {"user_id": "x"}}],
            ["user_id", "int64"],
        ),
        (
            [
                {"join_key_map": {"user_id": "1", "device": "d"}},
                {"join_key_map": {"user_id": "2"}},
            ],
            ["requestData[1]", "device"],
        ),
    ],
)
def test_a_bad_batch_is_a_400(client, request_data, words):
    body = {"params": {"feature_service_name": "profile_only", "request_data": request_data}}
    response = client.post(GET_FEATURES_BATCH, json=body)

    assert_tecton_error(response, 400, 3, *words)


def test_a_batch_of_an_unknown_service_is_not_found(client):
    body = {"params": {"feature_service_name": "nope", "request_data": [{"join_key_map": {}}]}}

    assert_tecton_error(client.post(GET_FEATURES_BATCH, json=body), 404, 5, "nope")


# -- feature-service/metadata ---------------------------------------------------------------------
def test_service_metadata_as_both_python_clients_read_it(client):
    body = {"params": {"featureServiceName": "fraud", "workspaceName": "prod"}}
    response = client.post(METADATA, json=body)

    assert response.status_code == 200, response.text
    metadata = response.json()
    # The current client keeps these three lists as they are.
    assert metadata["inputJoinKeys"] == [
        {"name": "user_id", "dataType": {"type": "int64"}, "type": "int64"},
        {"name": "merchant_id", "dataType": {"type": "string"}, "type": "string"},
    ]
    assert metadata["inputRequestContextKeys"] == []
    # The 0.x client maps each entry's name to its parsed dataType.
    values = {f["name"]: f["dataType"]["type"] for f in metadata["featureValues"]}
    assert list(values.items()) == FRAUD_FEATURES
    assert metadata["featureServiceType"] in {"DEFAULT", "WILDCARD"}


def test_service_metadata_of_an_unknown_service(client):
    body = {"params": {"feature_service_name": "nope", "workspace_name": "prod"}}

    assert_tecton_error(client.post(METADATA, json=body), 404, 5, "nope")


# -- a real server -------------------------------------------------------------------------------


@pytest.fixture
def live_server(repo, tmp_path):
    """`contextkit serve` with API keys on, and a reader key for prod: ``(base_url, key)``."""
    ctx = contextkit.connect(repo, "prod")
    try:
        key = ctx.access.create_key("tecton-app", workspace="prod", role="reader").key
    finally:
        ctx.close()
    with running_server(
        "--repo", str(repo), "--workspace", "prod", log_path=tmp_path / "server.log"
    ) as server:
        yield server.base, key


def tecton_http_client(key: str) -> httpx.Client:
    """The headers of ``TectonClient``; httpx is the library that client uses."""
    return httpx.Client(
        headers={
            "Authorization": f"Tecton-key {key}",
            "User-Agent": "tecton-http-python-client 1.0",
        }
    )


def test_a_tecton_client_with_a_tecton_key_against_a_real_server(live_server, sdk):
    base, key = live_server
    url = httpx.URL(base).join("/api/v1/").join("feature-service/get-features")
    body = current_client_request(
        "fraud",
        {"user_id": 3, "merchant_id": "m1"},
        metadata_options={"include_serving_status": True, "include_effective_times": True},
    )
    with tecton_http_client(key) as http:
        response = http.post(url, json=body)
        unknown = http.post(url, json=current_client_request("nope", {"user_id": 1}))
        other_workspace = http.post(
            url, json=current_client_request("fraud", {"user_id": 1}, workspace="staging")
        )
    with tecton_http_client("ck_not_a_key") as http:
        bad_key = http.post(url, json=body)
    no_key = httpx.post(url, json=body)

    assert response.status_code == 200, response.text
    assert current_client_features_dict(response.json()) == sdk_row(
        sdk, "fraud", user_id=3, merchant_id="m1"
    )
    metadata = response.json()["metadata"]["features"]
    assert {m["effectiveTime"] for m in metadata} == {END_TEXT}
    assert_java_client_parses(response.json(), batch=False)
    assert current_client_error(unknown)[0] == "NotFoundError"
    # Refused by the middleware before the route runs, still in Tecton's shape.
    for refused in (bad_key, no_key):
        assert_tecton_error(refused, 401, 16)
        kind, message = current_client_error(refused)
        assert kind == "UnauthorizedError" and not message.endswith("None"), message
    assert_tecton_error(other_workspace, 403, 7)
    assert current_client_error(other_workspace)[0] == "ForbiddenError"
