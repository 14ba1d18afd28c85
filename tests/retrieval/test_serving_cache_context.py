"""Context features in the serving cache: ``POST /v1/context`` of a service declared with
``cache=`` answers the features of the same entity and request context from memory (counted in
``/metrics`` as the entity rows of ``/v1/features`` are); an apply or a materialization
invalidates them; ``"cache": false`` reads the online store and leaves the cache as it was; a
service without ``cache=`` never caches.

What the cache answers is made observable by writing the online store behind its back (no job,
no registry write).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.retrieval.cache import serving_cache
from contextkit.server.app import create_app

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(hours=12)

DEFS = """\
from datetime import timedelta
from contextkit import (Aggregate, Attribute, ContextService, Entity, Field, FileSource, Int64,
                        RequestSource, batch_feature_view, realtime_feature_view)

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="sum", time_window=timedelta(days=7))])
def spend(events):
    return f"SELECT user_id, x, ts FROM {events}"

@realtime_feature_view(sources=[RequestSource([Field("scale", Int64)]), spend],
                       features=[Attribute("scaled", Int64)])
def scaled(request, spend):
    return {"scaled": (spend["x_sum_7d"] or 0) * request["scale"]}

svc = ContextService(name="svc", features=[spend, scaled], cache=timedelta(minutes=10),
                     description="cached")
plain = ContextService(name="plain", features=[spend, scaled])
"""


def events_table(extra: int = 0) -> pa.Table:
    users, xs = [1, 2, 1], [5, 7, 11]
    if extra:
        users.append(1)
        xs.append(extra)
    stamps = [T0 + timedelta(minutes=10 * (i + 1)) for i in range(len(users))]
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "x": pa.array(xs, pa.int64()),
            "ts": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture
def served(make_repo):
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table()})
    sys.modules.pop("defs", None)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=END)
    serving_cache(ctx.runtime).clear()
    with TestClient(create_app(ctx, auth=False)) as client:
        yield ctx, client
    sys.modules.pop("defs", None)
    ctx.close()


def context(client, service: str = "svc", scale: int = 1, **extra) -> tuple[int, int]:
    body = {"service": service, "entities": {"user_id": 1}, "render": False,
            "request_context": {"scale": scale}, **extra}  # fmt: skip
    answer = client.post("/v1/context", json=body)
    assert answer.status_code == 200, answer.text
    features = answer.json()["features"]
    return features["spend"]["values"]["x_sum_7d"], features["scaled"]["values"]["scaled"]


def write_behind(ctx, value: int) -> None:
    """Write user 1's spend straight into the online store."""
    read = ctx.service_reader("svc").reads[0]
    stamp = int((END - timedelta(hours=1)).timestamp() * 1_000_000)
    with ctx.online.transaction() as writer:
        writer.upsert(read.table, [*read.keys, *read.columns], [(1, stamp, value)])


def counters(client) -> tuple[float, float, float]:
    text = client.get("/metrics").text
    found = []
    for name in ("hits", "misses", "bypassed"):
        prefix = f'contextkit_serving_cache_{name}_total{{service="svc"}} '
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        found.append(float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0)
    return tuple(found)


def test_a_second_identical_context_request_is_a_hit(served) -> None:
    ctx, client = served
    assert context(client) == (16, 16) and counters(client) == (0, 1, 0)
    write_behind(ctx, 999)
    assert context(client) == (16, 16) and counters(client) == (1, 1, 0)  # from memory
    # Other request context is another entry: read from the store.
    assert context(client, scale=2) == (999, 1998) and counters(client) == (1, 2, 0)
    # cache: false reads the store and leaves the entry as it was.
    assert context(client, cache=False) == (999, 999) and counters(client) == (1, 2, 1)
    assert context(client) == (16, 16) and counters(client) == (2, 2, 1)
    # A service without cache= never caches (and is never counted).
    assert context(client, "plain") == (999, 999)
    assert "plain" not in serving_cache(ctx.runtime).misses
    # /v1/features of the same service keeps its own entries (its reader reads no request
    # context, so realtime services are not cached there): its answer is the store's.
    body = {"service": "svc", "entities": {"user_id": [1]}, "request_context": {"scale": 1}}
    assert client.post("/v1/features", json=body).json()["results"][1]["values"] == [999]


def test_a_materialization_invalidates(served) -> None:
    ctx, client = served
    assert context(client) == (16, 16)
    pq.write_table(events_table(extra=100), ctx.config.root / "data" / "events.parquet")
    other = contextkit.connect(ctx.config.root, "prod")  # another process's view
    other.materialize(end=END)
    assert context(client) == (116, 116)


def test_an_apply_invalidates(served) -> None:
    ctx, client = served
    assert context(client) == (16, 16)
    write_behind(ctx, 999)
    root: Path = ctx.config.root
    defs = root / "defs.py"
    defs.write_text(defs.read_text().replace('description="cached"', 'description="edited"'))
    sys.modules.pop("defs", None)
    other = contextkit.connect(root, "prod")
    other.apply(other.plan(root))
    assert context(client) == (999, 999)
