"""Push sources, stream feature views and realtime feature views: ingest, online tiles, reads.

Stories on a real repo in tmp_path: records pushed through the SDK and over HTTP are served by the
next read; bad records are refused by index and nothing is written; tiled aggregates equal a
brute-force computation over random event streams (out of order, late, in random batches); the
offline computation from the log equals the online value; acknowledged records survive a SIGKILL.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverproc import ServerProcess

import contextkit
from contextkit.compute.streaming import (
    IngestError,
    ingest_records,
    log_arrow,
    stream_offline_sql,
    tile_of,
)
from contextkit.errors import BadRequestError, ContextKitError, NotFoundError, ValidationErrors
from contextkit.framework.transformations import connect_duckdb
from contextkit.server.app import create_app

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
US = 1_000_000

DEFS = """\
from datetime import timedelta
from contextkit import (
    Aggregate, Attribute, ContextService, Entity, Field, Float64, Int64, PromptView, PushSource,
    RequestSource, StreamFeatureView, Timestamp, Bool, realtime_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
page_views = PushSource(
    name="page_views",
    schema=[Field("user_id", Int64), Field("product_id", Int64), Field("price", Float64),
            Field("ts", Timestamp)],
    timestamp_field="ts",
)

recent_views = StreamFeatureView(
    name="recent_views",
    source=page_views,
    entities=[user],
    features=[
        Aggregate("product_id", "count", "1h"),
        Aggregate("price", "sum", "1h"),
        Aggregate("price", "mean", "1d"),
        Aggregate("price", "min", "1d"),
        Aggregate("price", "max", "1d"),
        Aggregate("product_id", "last", "1d"),
        Aggregate("product_id", "count_distinct", "1d"),
        Aggregate("product_id", "last_distinct", "1d", n=3),
        Aggregate(None, "count", "1d"),
    ],
    aggregation_interval="10m",
)

last_view = StreamFeatureView(
    name="last_view",
    source=page_views,
    entities=[user],
    features=[Attribute("product_id"), Attribute("price")],
)

@realtime_feature_view(
    sources=[RequestSource([Field("budget", Float64)]), recent_views],
    features=[Attribute("over_budget", Bool), Attribute("spent_share", Float64)],
)
def budget_check(request, recent_views):
    spent = recent_views["price_sum_1h"] or 0.0
    share = spent / request["budget"] if request["budget"] else None
    return {"over_budget": spent > request["budget"], "spent_share": share}

shopper = ContextService(name="shopper", features=[recent_views, last_view, budget_check])

nudge = PromptView(
    name="nudge",
    template="Viewed {{ features.recent_views.product_id_count_1h }} products in the last hour.",
    features=[recent_views],
)
assistant = ContextService(name="assistant", features=[recent_views], prompts=[nudge])
"""


@pytest.fixture
def shop(make_repo):
    root = make_repo({"defs.py": DEFS})
    ctx = contextkit.connect(root, workspace="live")
    ctx.create_workspace("live", live=True)
    ctx.apply(ctx.plan(root))
    return root, ctx


def view_(product: int, minutes_ago: float, user: int = 7, price: float = 10.0) -> dict:
    ts = NOW - timedelta(minutes=minutes_ago)
    return {"user_id": user, "product_id": product, "price": price, "ts": ts.isoformat()}


def features(result) -> dict:
    return {name: values[0] for name, values in zip(result.names, result.values, strict=True)}


# -- ingest then read ----------------------------------------------------------------------------


def test_pushed_records_are_served_by_the_next_read(shop):
    _root, ctx = shop
    records = [view_(1, 50, price=4.0), view_(2, 30, price=6.0), view_(1, 5, price=20.0)]
    result = ingest_records(ctx, "page_views", records, now=NOW)
    assert result.accepted == 3 and set(result.views_updated) == {"recent_views", "last_view"}
    reader = ctx.service_reader("shopper")
    got = features(reader.read(ctx.online, {"user_id": [7]}, {"budget": 25.0}, now=NOW))
    assert got["recent_views.product_id_count_1h"] == 3
    assert got["recent_views.price_sum_1h"] == pytest.approx(30.0)
    assert got["recent_views.price_mean_1d"] == pytest.approx(10.0)
    assert (got["recent_views.price_min_1d"], got["recent_views.price_max_1d"]) == (4.0, 20.0)
    assert got["recent_views.product_id_last_1d"] == 1  # the latest by event time
    assert got["recent_views.product_id_count_distinct_1d"] == 2
    assert got["recent_views.product_id_last_3_distinct_1d"] == [1, 2]
    assert got["recent_views.row_count_1d"] == 3
    assert (got["last_view.product_id"], got["last_view.price"]) == (1, 20.0)
    assert got["budget_check.over_budget"] is True
    assert got["budget_check.spent_share"] == pytest.approx(30.0 / 25.0)

    table = reader.read(ctx.online, {"user_id": [7]}, {"budget": 25.0}, now=NOW).to_arrow()
    assert table.column("recent_views.product_id_last_3_distinct_1d").to_pylist() == [[1, 2]]
    assert str(table.schema.field("recent_views.product_id_last_3_distinct_1d").type) == (
        "list<item: int64>"
    )

    missing = features(reader.read(ctx.online, {"user_id": [8]}, {"budget": 5.0}, now=NOW))
    assert missing["recent_views.product_id_count_1h"] is None
    assert missing["budget_check.over_budget"] is False  # computed from missing inputs


def test_ingest_over_http_then_features_and_context_see_it(shop):
    _root, ctx = shop
    with TestClient(create_app(ctx, auth=False)) as client:
        now = datetime.now(UTC)
        records = [
            {
                "user_id": 3,
                "product_id": 9,
                "price": 2.5,
                "ts": (now - timedelta(minutes=2)).isoformat(),
            }
        ]
        response = client.post(
            "/v1/ingest", json={"workspace": "live", "source": "page_views", "records": records}
        )
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1
        body = {
            "service": "shopper",
            "entities": {"user_id": [3]},
            "request_context": {"budget": 1.0},
        }
        features_ = client.post("/v1/features", json=body).json()
        names = features_["metadata"]["feature_names"]
        values = {n: r["values"][0] for n, r in zip(names, features_["results"], strict=True)}
        assert values["recent_views.product_id_count_1h"] == 1
        assert values["last_view.product_id"] == 9 and values["budget_check.over_budget"] is True

        context = client.post(
            "/v1/context", json={"service": "assistant", "entities": {"user_id": 3}}
        )
        assert context.status_code == 200, context.text
        assert context.json()["prompt"]["text"] == "Viewed 1 products in the last hour."

        # Tecton's Ingest API shape, on both paths.
        tecton = {
            "workspace_name": "live",
            "dry_run": False,
            "records": {"page_views": [{"record": {**records[0], "product_id": 10}}]},
        }
        response = client.post("/ingest", json=tecton)
        assert response.status_code == 200, response.text
        metrics = response.json()["ingestMetrics"]
        assert metrics["dataSourceIngestMetrics"][0]["offlineRecordIngestCount"] == "1"
        assert client.post("/v1/ingest", json=tecton).status_code == 200
        features_ = client.post("/v1/features", json=body).json()
        values = {n: r["values"][0] for n, r in zip(names, features_["results"], strict=True)}
        assert values["recent_views.product_id_count_1h"] == 3

        bad = {**tecton, "records": {"page_views": [{"record": {"user_id": "x"}}]}}
        response = client.post("/ingest", json=bad)
        assert response.status_code == 400
        assert response.json()["recordErrors"] and response.json()["requestError"]["errorMessage"]


# -- bad input -----------------------------------------------------------------------------------


def test_one_bad_record_rejects_the_batch_and_says_which_and_why(shop):
    _root, ctx = shop
    records = [
        view_(1, 10),
        {"user_id": 7, "product_id": "twelve", "price": 1.0, "ts": NOW.isoformat()},
        {"user_id": 7, "price": 1.0, "ts": NOW.isoformat()},
        {**view_(1, 1), "colour": "red"},
        {**view_(1, 1), "ts": (NOW + timedelta(hours=2)).isoformat()},
        {**view_(1, 1), "user_id": None},
        {**view_(1, 1), "ts": "yesterday"},
        "not an object",
        {**view_(1, 1), "price": True},
    ]
    with pytest.raises(IngestError) as info:
        ingest_records(ctx, "page_views", records, now=NOW)
    errors = info.value.details["errors"]
    by_index = {(e["index"], e["field"]) for e in errors}
    assert by_index >= {
        (1, "product_id"),
        (2, "product_id"),
        (3, "colour"),
        (4, "ts"),
        (5, "user_id"),
        (6, "ts"),
        (7, None),
        (8, "price"),
    }
    assert 0 not in {e["index"] for e in errors}
    assert info.value.hint and "partial" in info.value.hint
    reader = ctx.service_reader("shopper")
    empty = reader.read(ctx.online, {"user_id": [7]}, {"budget": 1.0}, now=NOW)
    assert features(empty)["recent_views.product_id_count_1h"] is None  # nothing was written
    assert log_arrow(ctx, "live", ctx.specs().push_sources["page_views"]).num_rows == 0

    partial = ingest_records(ctx, "page_views", records, partial=True, now=NOW)
    assert partial.accepted == 1 and len(partial.errors) == len(errors)
    dry = ingest_records(ctx, "page_views", [view_(2, 1)], dry_run=True, now=NOW)
    assert dry.accepted == 1
    assert log_arrow(ctx, "live", ctx.specs().push_sources["page_views"]).num_rows == 1


def test_idempotency_keys_skip_duplicates_within_and_across_requests(shop):
    _root, ctx = shop
    once = [
        {"record": view_(1, 5), "idempotency_key": "a"},
        {"record": view_(2, 4), "idempotency_key": "b"},
    ]
    first = ingest_records(ctx, "page_views", once + [once[0]], now=NOW)
    assert first.accepted == 2 and first.duplicates == [2]
    again = ingest_records(ctx, "page_views", once, now=NOW)
    assert again.accepted == 0 and again.duplicates == [0, 1]
    got = features(
        ctx.service_reader("shopper").read(ctx.online, {"user_id": [7]}, {"budget": 1.0}, now=NOW)
    )
    assert got["recent_views.product_id_count_1h"] == 2


def test_unknown_sources_oversized_batches_and_dev_workspaces_are_refused(shop):
    root, ctx = shop
    with pytest.raises(NotFoundError, match="unknown push source"):
        ctx.ingest("nope", [view_(1, 1)])
    with pytest.raises(ContextKitError) as info:
        ctx.ingest("page_views", [view_(1, 1)] * (ctx.config.ingest.max_records + 1))
    assert info.value.http_status == 413
    dev = ctx.use("dev")
    ctx.create_workspace("dev")
    dev.apply(dev.plan(root))
    with pytest.raises(ContextKitError, match="dev workspace"):
        dev.ingest("page_views", [view_(1, 1)])
    with pytest.raises(BadRequestError, match="missing request_context field 'budget'"):
        ctx.get_features("shopper", {"user_id": [7]})


BAD_DEFS = {
    "window not a multiple": (
        'Aggregate("product_id", "count", "1h")',
        'Aggregate("product_id", "count", "65m")',
        "not a multiple",
    ),
    "unknown column": (
        'Aggregate("price", "sum", "1h")',
        'Aggregate("cost", "sum", "1h")',
        "does not have",
    ),
    "not numeric": ('Aggregate("price", "mean", "1d")', 'Aggregate("ts", "mean", "1d")', "numeric"),
    "a file source": (
        "source=page_views,\n    entities=[user],\n    features=[Attribute",
        'source="nowhere",\n    entities=[user],\n    features=[Attribute',
        "unknown push source",
    ),
    "realtime view that raises": ('spent / request["budget"]', "spent / 0", "ZeroDivisionError"),
    "realtime wrong type": (
        '"over_budget": spent > request["budget"]',
        '"over_budget": "yes"',
        "declared bool",
    ),
}


@pytest.mark.parametrize("case", BAD_DEFS, ids=list(BAD_DEFS))
def test_bad_stream_and_realtime_views_fail_plan(make_repo, case):
    old, new, message = BAD_DEFS[case]
    assert old in DEFS, old
    root = make_repo({"defs.py": DEFS.replace(old, new)})
    ctx = contextkit.connect(root, workspace="live")
    ctx.create_workspace("live", live=True)
    with pytest.raises(ValidationErrors) as info:
        ctx.plan(root)
    assert any(message in e.message and e.location for e in info.value.errors), info.value


# -- tiles against a brute force -----------------------------------------------------------------

WINDOWS = {"product_id_count_1h": 3600, "price_sum_1h": 3600}


def same(got: dict, expected: dict) -> bool:
    """Equal, with floats compared to 1e-9 (a mean is a division; sums of quarters are exact)."""
    if got.keys() != expected.keys():
        return False
    for key, want in expected.items():
        have = got[key]
        if isinstance(want, float) and isinstance(have, float):
            if abs(have - want) > 1e-9 * max(1.0, abs(want)):
                return False
        elif have != want:
            return False
    return True


def brute_force(events: list[dict], t: datetime, interval_s: int = 600) -> dict:
    """The documented semantics, row by row: the tiles of each window ending with t's tile,
    events at or before t; last by (time, arrival); distinct newest first."""
    t_us = int(t.timestamp() * US)
    current = tile_of(t_us, interval_s)
    out = {}

    def window(seconds: int) -> list[tuple[int, dict]]:
        low = current - seconds * US + interval_s * US
        return [(i, e) for i, e in enumerate(events) if low <= e["_us"] <= t_us]

    hour, day = window(3600), window(86400)
    if not day:
        return None
    prices = [e["price"] for _, e in day]
    out["product_id_count_1h"] = len(hour)
    out["price_sum_1h"] = sum(e["price"] for _, e in hour) if hour else None
    out["price_mean_1d"] = sum(prices) / len(prices)
    out["price_min_1d"], out["price_max_1d"] = min(prices), max(prices)
    out["product_id_last_1d"] = max(day, key=lambda ie: (ie[1]["_us"], ie[0]))[1]["product_id"]
    out["product_id_count_distinct_1d"] = len({e["product_id"] for _, e in day})
    newest: dict[int, tuple] = {}
    for i, e in day:
        newest[e["product_id"]] = max(newest.get(e["product_id"], (-1, -1)), (e["_us"], i))
    out["product_id_last_3_distinct_1d"] = [
        p for p, _ in sorted(newest.items(), key=lambda kv: kv[1], reverse=True)
    ][:3]
    out["row_count_1d"] = len(day)
    return out


events_strategy = st.lists(
    st.fixed_dictionaries(
        {
            # From 30 hours ago (older than every window: late events) to now.
            "seconds_ago": st.one_of(
                st.integers(0, 30 * 3600),
                st.sampled_from([0, 1, 599, 600, 601, 3599, 3600, 3601, 86399, 86400, 86401]),
            ),
            "product_id": st.integers(1, 6),
            "price": st.integers(0, 40).map(lambda k: k / 4),
        }
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=events_strategy,
    splits=st.lists(st.integers(1, 10), min_size=1, max_size=6),
    read_offset=st.integers(0, 1200),
)
def test_online_tiles_and_offline_log_equal_a_brute_force(shop, events, splits, read_offset):
    _root, ctx = shop
    ctx.online.drop_table("live__recent_views__tiles")
    ctx.online.drop_table("live__page_views__log")
    t = NOW + timedelta(seconds=read_offset)
    records = []
    for e in events:
        ts = NOW - timedelta(seconds=e["seconds_ago"])
        records.append(
            {"user_id": 7, "product_id": e["product_id"], "price": e["price"], "ts": ts.isoformat()}
        )
    # Out of order already (random times); ingest in random batch sizes, the clock at NOW.
    i, k = 0, 0
    while i < len(records):
        size = splits[k % len(splits)]
        ingest_records(ctx, "page_views", records[i : i + size], now=NOW)
        i, k = i + size, k + 1
    arrived = [
        {**e, "_us": int((NOW - timedelta(seconds=e["seconds_ago"])).timestamp() * US)}
        for e in events
    ]
    expected = brute_force(arrived, t)
    view = ctx.specs().stream_views["recent_views"]
    reader = ctx.service_reader("shopper")
    got = features(reader.read(ctx.online, {"user_id": [7]}, {"budget": 1.0}, now=t))
    online = {
        name.split(".", 1)[1]: v for name, v in got.items() if name.startswith("recent_views.")
    }
    if expected is None:
        assert all(v is None for v in online.values()), online
    else:
        assert same(online, expected), (online, expected)

    # Offline, from the log, as of the same time: equal.
    con = connect_duckdb()
    con.register("__log", log_arrow(ctx, "live", ctx.specs().push_sources["page_views"]))
    con.execute(
        "CREATE TEMP TABLE __events AS "
        "SELECT 0 AS __row, 7::BIGINT AS user_id, ?::TIMESTAMPTZ AS __ts",
        [t],
    )
    row = con.execute(stream_offline_sql(view, "__events", "__log", "__row")).fetchall()[0]
    names = [d[0] for d in con.description]
    offline = dict(zip(names[2:], row[2:], strict=True))
    offline = {k: (list(v) if isinstance(v, list) else v) for k, v in offline.items()}
    if expected is None:
        assert all(v is None for v in offline.values()), offline
    else:
        assert same(offline, expected), (offline, expected)
    con.close()


# -- durability ----------------------------------------------------------------------------------


def start_server(root: Path) -> ServerProcess:
    return ServerProcess("--no-auth", "--workspace", "live", cwd=root).wait_ready()


def test_every_acknowledged_record_survives_a_sigkill(shop):
    root, ctx = shop
    server = start_server(root)
    base = server.base
    acked: list[int] = []
    stop = threading.Event()

    def push() -> None:
        n = 0
        while not stop.is_set():
            batch = [
                {
                    "record": {
                        "user_id": n + j,
                        "product_id": 1,
                        "price": 1.0,
                        "ts": datetime.now(UTC).isoformat(),
                    },
                    "idempotency_key": f"k{n + j}",
                }
                for j in range(20)
            ]
            body = json.dumps({"source": "page_views", "records": batch}).encode()
            request = urllib.request.Request(
                f"{base}/v1/ingest",
                data=body,
                headers={"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    if response.status == 200:
                        acked.extend(range(n, n + 20))
            except (OSError, urllib.error.URLError):
                return  # the server is gone
            n += 20

    thread = threading.Thread(target=push)
    thread.start()
    deadline = time.time() + 60
    while len(acked) < 200 and time.time() < deadline and thread.is_alive():
        time.sleep(0.02)
    server.kill()
    stop.set()
    thread.join(timeout=10)
    assert len(acked) >= 200

    server = start_server(root)
    try:
        stored = log_arrow(ctx, "live", ctx.specs().push_sources["page_views"])
        users = set(stored.column("user_id").to_pylist())
        assert set(acked) <= users
        body = {
            "service": "shopper",
            "entities": {"user_id": acked[-5:]},
            "request_context": {"budget": 1.0},
        }
        request = urllib.request.Request(
            f"{server.base}/v1/features",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            served = json.loads(response.read())
        names = served["metadata"]["feature_names"]
        counts = served["results"][names.index("recent_views.product_id_count_1h")]["values"]
        assert counts == [1] * 5
    finally:
        server.stop()


# -- push-based embedding updates ----------------------------------------------------------------

TICKETS = """\
from contextkit import EmbeddingView, Entity, Field, Int64, PushSource, String, Timestamp

ticket = Entity(name="ticket", join_keys=["ticket_id"])
tickets = PushSource(
    name="tickets",
    schema=[Field("ticket_id", Int64), Field("body", String), Field("team", String),
            Field("ts", Timestamp)],
    timestamp_field="ts",
)
ticket_docs = EmbeddingView(
    name="ticket_docs", source=tickets, entities=[ticket], text="body", model="fast",
    metadata=["team"],
)
"""


def test_pushed_documents_become_searchable_without_a_batch_job(tmp_path):
    root = tmp_path / "tickets"
    root.mkdir()
    (root / "contextkit.yaml").write_text(
        "project: tickets\nmodels:\n  fast: {type: hash, dimension: 16}\n"
    )
    (root / "defs.py").write_text(TICKETS)
    ctx = contextkit.connect(root, workspace="live")
    ctx.create_workspace("live", live=True)
    ctx.apply(ctx.plan(root))
    now = datetime.now(UTC)

    def ticket(i: int, body: str, minutes: int = 1) -> dict:
        ts = (now - timedelta(minutes=minutes)).isoformat()
        return {"ticket_id": i, "body": body, "team": "billing" if i % 2 else "shipping", "ts": ts}

    bodies = {1: "refund not received", 2: "parcel arrived damaged", 3: "invoice is wrong"}
    ctx.ingest("tickets", [ticket(i, b) for i, b in bodies.items()])
    assert ctx.wait_for_embeddings(timeout=30)
    for i, body in bodies.items():
        [hit] = ctx.search("ticket_docs", body, top_k=1)
        assert hit["key"] == {"ticket_id": i} and hit["score"] == pytest.approx(1.0, abs=1e-5)
    assert ctx.vectors.count_rows("live__ticket_docs") == 3

    # A newer version of ticket 2 replaces its document; an older one does not.
    ctx.ingest("tickets", [ticket(2, "parcel lost in transit", minutes=0)])
    assert ctx.wait_for_embeddings(timeout=30)
    ctx.ingest("tickets", [ticket(2, "an old draft", minutes=30)])  # late, in its own batch
    assert ctx.wait_for_embeddings(timeout=30)
    [hit] = ctx.search("ticket_docs", "parcel lost in transit", top_k=1)
    assert hit["key"] == {"ticket_id": 2} and hit["text"] == "parcel lost in transit"
    assert ctx.vectors.count_rows("live__ticket_docs") == 3
    # A batch materialization over the log agrees: nothing left to encode.
    [job] = ctx.materialize(["ticket_docs"])
    assert job.details["texts_encoded"] == 0 and job.rows_online == 3


def test_tectons_request_context_map_feeds_realtime_views(shop):
    _root, ctx = shop
    ts = datetime.now(UTC) - timedelta(minutes=1)
    ctx.ingest("page_views", [{"user_id": 5, "product_id": 1, "price": 30.0, "ts": ts.isoformat()}])
    with TestClient(create_app(ctx, auth=False)) as client:
        body = {
            "params": {
                "workspaceName": "live",
                "featureServiceName": "shopper",
                "joinKeyMap": {"user_id": "5"},
                "requestContextMap": {"budget": 20.0, "unused": 1},
                "metadataOptions": {"includeNames": True},
            }
        }
        response = client.post("/api/v1/feature-service/get-features", json=body)
        assert response.status_code == 200, response.text
        names = [f["name"] for f in response.json()["metadata"]["features"]]
        values = dict(zip(names, response.json()["result"]["features"], strict=True))
        assert values["budget_check.over_budget"] is True
        body["params"]["requestContextMap"] = {}
        response = client.post("/api/v1/feature-service/get-features", json=body)
        assert response.status_code == 400 and "budget" in response.json()["message"]


def test_the_log_is_flushed_to_parquet_without_losing_or_doubling_a_record(shop):
    import pyarrow.parquet as pq

    _root, ctx = shop
    source = ctx.specs().push_sources["page_views"]
    first = [{"record": view_(i, 5), "idempotency_key": f"f{i}"} for i in range(5)]
    ingest_records(ctx, "page_views", first, now=NOW)
    assert ctx.flush_ingest_logs() == {"page_views": 5}
    [file] = ctx.offline.files("live__page_views__log")
    assert pq.read_table(file).num_rows == 5
    assert log_arrow(ctx, "live", source).num_rows == 5  # Parquet + SQLite, each row once

    ingest_records(ctx, "page_views", [view_(9, 1)], now=NOW)
    again = ingest_records(ctx, "page_views", first, now=NOW)  # keys are still known
    assert again.accepted == 0 and again.duplicates == [0, 1, 2, 3, 4]
    assert log_arrow(ctx, "live", source).column("product_id").to_pylist() == [0, 1, 2, 3, 4, 9]
    ctx.materialize()  # flushes too
    assert len(ctx.offline.files("live__page_views__log")) == 2
    assert ctx.flush_ingest_logs() == {"page_views": 0}
    assert log_arrow(ctx, "live", source).num_rows == 6
