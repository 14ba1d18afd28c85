"""What ingest reports: records (not errors) rejected, a dry run that counts what a real request
would accept, and a 403 that names the missing role when a reader key tries to ingest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.compute.streaming import ingest_records, log_arrow
from contextkit.errors import IngestError
from contextkit.server.app import create_app

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

DEFS = """\
from contextkit import Attribute, Entity, Field, Float64, Int64, PushSource, StreamFeatureView
from contextkit import ContextService, Timestamp

user = Entity(name="user", join_keys=["user_id"])
clicks = PushSource(
    name="clicks",
    schema=[Field("user_id", Int64), Field("product_id", Int64), Field("price", Float64),
            Field("ts", Timestamp)],
    timestamp_field="ts",
)
last_click = StreamFeatureView(
    name="last_click", source=clicks, entities=[user], features=[Attribute("product_id")]
)
shopper = ContextService(name="shopper", features=[last_click])
"""


@pytest.fixture
def shop(make_repo):
    root = make_repo({"ingest_defs.py": DEFS})
    ctx = contextkit.connect(root, workspace="live")
    ctx.create_workspace("live", live=True)
    ctx.apply(ctx.plan(root))
    yield ctx
    ctx.close()


def click(i: int) -> dict:
    ts = NOW - timedelta(minutes=i)
    return {"user_id": i % 3, "product_id": i, "price": 1.5, "ts": ts.isoformat()}


def logged(ctx) -> int:
    return log_arrow(ctx, "live", ctx.specs().push_sources["clicks"]).num_rows


def test_a_record_with_four_problems_counts_as_one_rejected_record(shop):
    with pytest.raises(IngestError) as info:
        ingest_records(shop, "clicks", [{}], now=NOW)

    assert info.value.message.startswith("1 of 1 record(s) do not fit push source 'clicks'")
    assert "4 problems" in info.value.message
    assert info.value.details["rejected"] == 1
    assert {e["field"] for e in info.value.details["errors"]} == {
        "user_id",
        "product_id",
        "price",
        "ts",
    }

    partial = ingest_records(shop, "clicks", [{}, click(1), {"user_id": 1}], partial=True, now=NOW)
    body = partial.to_response()
    assert body["accepted"] == 1 and body["rejected"] == 2 and len(body["errors"]) == 7


def test_a_dry_run_counts_duplicates_as_a_real_request_would(shop):
    batch = [{"record": click(i), "idempotency_key": f"k{i}"} for i in range(10)]
    first_dry = ingest_records(shop, "clicks", batch + [batch[0]], dry_run=True, now=NOW)
    assert first_dry.accepted == 10 and first_dry.duplicates == [10]
    assert logged(shop) == 0, "a dry run writes nothing"

    real = ingest_records(shop, "clicks", batch, now=NOW)
    assert real.accepted == 10

    dry = ingest_records(shop, "clicks", batch + [click(20)], dry_run=True, now=NOW)
    again = ingest_records(shop, "clicks", batch + [click(20)], now=NOW)
    assert (
        (dry.accepted, dry.duplicates) == (again.accepted, again.duplicates) == (1, list(range(10)))
    )
    assert logged(shop) == 11


@pytest.mark.parametrize("named", [True, False], ids=["workspace named", "default workspace"])
def test_a_reader_key_on_ingest_is_told_which_role_it_lacks(shop, named):
    reader = shop.access.create_key("dashboard", workspace="live", role="reader").key
    body = {"source": "clicks", "records": [click(1)], **({"workspace": "live"} if named else {})}
    with TestClient(create_app(shop, auth=True)) as client:
        response = client.post(
            "/v1/ingest", json=body, headers={"Authorization": f"Bearer {reader}"}
        )
        tecton = client.post(
            "/ingest",
            json={"records": {"clicks": [{"record": click(1)}]}},
            headers={"Authorization": f"Bearer {reader}"},
        )

    assert response.status_code == 403
    error = response.json()["error"]
    hint = error["details"]["hint"]
    assert "role reader" in error["message"] and "ingest into" in error["message"]
    assert "role ingester" in hint and "--role ingester" in hint
    assert "name the workspace" not in hint
    assert ("live" in response.text) == named, "the default workspace is never named"
    assert tecton.status_code == 403
    assert "role reader" in tecton.json()["requestError"]["errorMessage"]
    assert logged(shop) == 0
