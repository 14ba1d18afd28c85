"""What ``get_features`` answers, whatever shape the entity keys come in, on both online stores.

The service reader works out its read once per reader (which columns, which conversions) and
checks the common key values inline; these tests pin what a user sees: the same answer for a
list, a tuple, a numpy array, a pandas Series, a scalar and int64 keys sent as strings; bools
as bools, event times as ISO 8601 with ``Z`` (no fraction on a whole second), missing rows as
nulls with status MISSING; the same answer from SQLite and from a real ``redis-server``, in
process and over ``POST /v1/features``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.errors import BadRequestError
from contextkit.server.app import create_app
from contextkit.stores.redis_online import RedisOnlineStore

pytest_plugins = ["backends"]

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=10)

DEFS = """
from datetime import timedelta
from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[
    Attribute("x"), Attribute("paid"), Attribute("seen"), Attribute("tier"),
])
def profile(events):
    return f"SELECT user_id, x, paid, seen, tier, ts FROM {events}"

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[Attribute("x")])
def latest(events):
    return f"SELECT user_id, x, ts FROM {events}"

svc = ContextService(name="svc", features=[profile, latest[["x"]]])
"""


def events_table() -> pa.Table:
    # user 1: an event on a whole second; user 2: with microseconds; user 3: nulls
    stamps = [T0, T0 + timedelta(hours=1, microseconds=250), T0 + timedelta(hours=2)]
    return pa.table(
        {
            "user_id": pa.array([1, 2, 3], pa.int64()),
            "x": pa.array([1.5, 2.5, None], pa.float64()),
            "paid": pa.array([True, False, None], pa.bool_()),
            "seen": pa.array(
                [T0 - timedelta(days=1), T0 - timedelta(seconds=1, microseconds=7), None],
                pa.timestamp("us", tz="UTC"),
            ),
            "tier": pa.array(["gold", "free", None], pa.string()),
            "ts": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture(params=["sqlite", "redis"])
def shop(request, make_repo):
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table()})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        ctx.runtime.online.close()
        ctx.runtime.online = RedisOnlineStore(server.url, prefix=f"ck-test:{uuid.uuid4().hex[:8]}")
    ctx.materialize(end=NOW)
    yield ctx
    ctx.runtime.online.close()


EXPECTED = {
    "metadata": {
        "workspace": "prod",
        "service": "svc",
        "feature_names": [
            "user_id", "profile.x", "profile.paid", "profile.seen", "profile.tier", "latest.x",
        ],
        "types": ["int64", "float64", "bool", "timestamp", "string", "float64"],
    },
    "results": [
        {"values": [1, 2, 3, 9], "statuses": ["PRESENT"] * 4, "event_timestamps": [None] * 4},
        *(
            {
                "values": values,
                "statuses": ["PRESENT", "PRESENT", "PRESENT", "MISSING"],
                "event_timestamps": [
                    "2024-01-01T00:00:00Z",
                    "2024-01-01T01:00:00.000250Z",
                    "2024-01-01T02:00:00Z",
                    None,
                ],
            }
            for values in (
                [1.5, 2.5, None, None],
                [True, False, None, None],
                ["2023-12-31T00:00:00Z", "2023-12-31T23:59:58.999993Z", None, None],
                ["gold", "free", None, None],
                [1.5, 2.5, None, None],
            )
        ),
    ],
}  # fmt: skip


def test_every_shape_of_keys_gets_the_same_answer(shop):
    answers = [
        shop.get_features("svc", {"user_id": keys}).to_response()
        for keys in (
            [1, 2, 3, 9],
            (1, 2, 3, 9),
            np.array([1, 2, 3, 9], dtype=np.int64),
            pd.Series([1, 2, 3, 9]),
            ["1", "0002", "3", "9"],  # Tecton's wire format sends int64 keys as strings
            [np.int64(1), 2, np.int32(3), 9],
        )
    ]
    assert all(answer == EXPECTED for answer in answers)
    one = shop.get_features("svc", {"user_id": 2}).to_response()
    assert [column["values"] for column in one["results"]] == [
        [2], [2.5], [False], ["2023-12-31T23:59:58.999993Z"], ["free"], [2.5],
    ]  # fmt: skip


def test_the_http_answer_is_the_same_on_both_stores(shop):
    client = TestClient(create_app(shop, auth=False))
    answer = client.post(
        "/v1/features", json={"service": "svc", "entities": {"user_id": [1, 2, 3, 9]}}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == EXPECTED


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ([1, True], "must be int64, got True"),
        ([1, 2**63], "out of the int64 range"),
        ([1, 2.0], "must be int64, got 2.0"),
        ([], "empty list of values"),
    ],
)
def test_a_bad_key_among_good_ones_is_named(shop, keys, words):
    with pytest.raises(BadRequestError, match=words):
        shop.get_features("svc", {"user_id": keys})
