"""Offline retrieval of stream and realtime feature views: the values online served, per event.

The story: a shop pushes page views; a service serves tiled windowed aggregates and the latest
view of each user (stream views) and a budget check computed per request (a realtime view). A data
scientist asks ``get_features_for_events`` for events at the times the service answered: every
value must be what the online path served then, and nothing pushed after an event may leak into it.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.compute.streaming import ingest_records
from contextkit.errors import BadRequestError

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
US = timedelta(microseconds=1)

DEFS = """\
from contextkit import (
    Aggregate, Attribute, Bool, ContextService, Entity, Field, Float64, Int64, PushSource,
    RequestSource, StreamFeatureView, Timestamp, realtime_feature_view,
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
    features=[Attribute("product_id"), Attribute("price"), Attribute("ts")],
    ttl="2h",
)

@realtime_feature_view(
    sources=[RequestSource([Field("budget", Float64)]), recent_views, last_view],
    features=[Attribute("over_budget", Bool), Attribute("spent_share", Float64),
              Attribute("last_seen", Timestamp)],
)
def budget_check(request, recent_views, last_view):
    spent = recent_views["price_sum_1h"] or 0.0
    share = spent / request["budget"] if request["budget"] else None
    return {"over_budget": spent > request["budget"], "spent_share": share,
            "last_seen": last_view["ts"]}

# The service shows two of recent_views' features; budget_check reads others (price_sum_1h).
shopper = ContextService(
    name="shopper",
    features=[
        recent_views[["product_id_count_1h", "product_id_last_3_distinct_1d", "price_mean_1d"]],
        last_view,
        budget_check,
    ],
)
"""


@pytest.fixture
def shop(make_repo):
    root = make_repo({"defs.py": DEFS})
    ctx = contextkit.connect(root, workspace="live")
    ctx.create_workspace("live", live=True)
    ctx.apply(ctx.plan(root))
    return ctx


def record(user: int, product: int, price: float, at: datetime) -> dict:
    return {"user_id": user, "product_id": product, "price": price, "ts": at.isoformat()}


def budget(user: int) -> float:
    return 2.5 * user


def events_at(users: list[int], moments: list[datetime]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [u for u in users for _ in moments],
            "ts": pd.Series([m for _ in users for m in moments], dtype="M8[us, UTC]"),
            "budget": [budget(u) for u in users for _ in moments],
        }
    )


def online_rows(ctx, users: list[int], at: datetime) -> list[dict]:
    """What the online path serves for each user at ``at``: ``{view__feature: value}``."""
    served = ctx.service_reader("shopper").read(
        ctx.online, {"user_id": users}, {"budget": [budget(u) for u in users]}, now=at
    )
    columns = {}
    for name, dtype, values in zip(served.names, served.types, served.values, strict=True):
        if dtype == "timestamp":  # served as ISO strings
            values = [None if v is None else datetime.fromisoformat(v) for v in values]
        columns[name.replace(".", "__")] = values
    return [{n: column[i] for n, column in columns.items()} for i in range(len(users))]


def assert_same(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for name, value in want.items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, rel=1e-12), f"{where}: {name}"
        else:
            assert got[name] == value, f"{where}: {name}: {got[name]!r} != {value!r}"


def test_offline_values_equal_what_online_served_at_each_event_time(shop):
    ctx = shop
    rng = random.Random(11)
    users = [1, 2, 3, 4]
    served: dict[tuple[int, datetime], dict] = {}
    reads: list[datetime] = []
    previous = NOW - timedelta(hours=30)
    # Four rounds: push records timestamped after the previous read (out of order, some late
    # within their round, some on tile and window boundaries), then read online twice.
    for round_ in range(4):
        push_time = NOW + timedelta(minutes=47 * round_)
        span = (push_time - previous) // US
        records = []
        for _ in range(rng.randint(15, 30)):
            at = previous + US * rng.randint(1, span)
            if rng.random() < 0.15:  # right after the previous read: never seen by it
                at = previous + US
            records.append(record(rng.choice(users), rng.randint(1, 6), rng.randint(0, 40) / 4, at))
        rng.shuffle(records)
        i = 0
        while i < len(records):
            size = rng.randint(1, 8)
            ingest_records(ctx, "page_views", records[i : i + size], now=push_time)
            i += size
        for at in (push_time, push_time + timedelta(minutes=rng.randint(1, 25))):
            reads.append(at)
            for user, row in zip(users + [99], online_rows(ctx, users + [99], at), strict=True):
                served[user, at] = row
        previous = reads[-1]

    events = events_at(users + [99], reads)
    order = list(range(len(events))) + [0, 5, 5]  # shuffled, with duplicates
    rng.shuffle(order)
    events = events.iloc[order].reset_index(drop=True)
    result = ctx.get_features_for_events(events, "shopper")
    table = result.to_arrow()
    assert table.column_names[:3] == ["user_id", "ts", "budget"]
    assert table.num_rows == len(events)
    assert table.column("user_id").to_pylist() == events["user_id"].tolist()
    rows = table.to_pylist()
    checked_present = 0
    for i, row in enumerate(rows):
        want = served[row["user_id"], row["ts"]]
        got = {k: v for k, v in row.items() if k not in ("user_id", "ts", "budget")}
        assert_same(got, want, f"row {i} (user {row['user_id']} at {row['ts']})")
        checked_present += want["recent_views__product_id_count_1h"] is not None
    assert checked_present > 10  # most events see data, so the comparison says something
    assert result.sources_used == {
        "recent_views": "ingest_log",
        "last_view": "ingest_log",
        "budget_check": "realtime",
    }


def test_a_record_one_microsecond_after_the_event_is_never_used(shop):
    ctx = shop
    t = NOW - timedelta(minutes=3)
    ingest_records(ctx, "page_views", [record(5, 42, 9.0, t + US)], now=NOW)
    events = events_at([5], [t, t + US])
    rows = ctx.get_features_for_events(events, "shopper").to_arrow().to_pylist()
    before, after = rows
    assert before["recent_views__product_id_count_1h"] is None
    assert before["last_view__product_id"] is None and before["budget_check__last_seen"] is None
    assert before["budget_check__spent_share"] == 0.0  # computed from missing inputs
    assert after["recent_views__product_id_count_1h"] == 1
    assert after["last_view__product_id"] == 42
    assert after["budget_check__last_seen"] == t + US
    assert after["budget_check__spent_share"] == pytest.approx(9.0 / budget(5))


def test_a_realtime_view_alone_computes_its_inputs_without_showing_them(shop, tmp_path):
    ctx = shop
    ingest_records(ctx, "page_views", [record(2, 1, 4.0, NOW - timedelta(minutes=1))], now=NOW)
    events = events_at([2, 3], [NOW]).assign(note=["a", "b"])
    result = ctx.get_features_for_events(events, ["budget_check"])
    frame = result.to_pandas()
    assert frame.columns.tolist() == [
        "user_id",
        "ts",
        "budget",
        "note",
        "budget_check__over_budget",
        "budget_check__spent_share",
        "budget_check__last_seen",
    ]
    assert frame["budget_check__over_budget"].tolist() == [False, False]
    assert frame["budget_check__spent_share"].tolist() == [pytest.approx(4.0 / 5.0), 0.0]
    written = pq.read_table(result.to_parquet(tmp_path / "out" / "rt.parquet"))
    assert written.equals(result.to_arrow())
    batches = list(result.to_batches(batch_size=1))
    assert [b.num_rows for b in batches] == [1, 1]
    assert batches[0].schema.names == frame.columns.tolist()


def test_a_missing_request_context_column_is_refused_with_a_hint(shop):
    events = events_at([1], [NOW]).drop(columns="budget")
    result = shop.get_features_for_events(events, "shopper")
    with pytest.raises(BadRequestError, match="'budget'") as info:
        result.to_pandas()
    assert "budget_check" in info.value.message
    assert info.value.hint and "float64 column 'budget'" in info.value.hint
    # Stream views alone need no request context.
    assert len(shop.get_features_for_events(events, ["recent_views"]).to_pandas()) == 1


def test_request_context_values_of_the_wrong_type_are_refused(shop):
    events = events_at([1], [NOW]).assign(budget=["lots"])
    with pytest.raises(BadRequestError, match="budget_check") as info:
        shop.get_features_for_events(events, "shopper").to_arrow()
    assert info.value.hint


CREDIT = """\
from contextkit import (
    Attribute, Bool, ContextService, Entity, Field, FileSource, Float64, RequestSource,
    batch_feature_view, realtime_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
limits = FileSource(name="limits", path="data/limits.parquet", timestamp_field="ts")

@batch_feature_view(sources=[limits], entities=[user], mode="sql",
                    features=[Attribute("credit_limit")])
def credit(limits):
    return f"SELECT user_id, credit_limit, ts FROM {limits}"

@realtime_feature_view(
    sources=[RequestSource([Field("amount", Float64)]), credit],
    features=[Attribute("allowed", Bool)],
)
def purchase_check(request, credit):
    return {"allowed": credit["credit_limit"] is not None
            and request["amount"] <= credit["credit_limit"]}

checkout = ContextService(name="checkout", features=[purchase_check])
"""


def test_a_realtime_view_over_a_batch_view_reads_its_point_in_time_values(make_repo):
    import pyarrow as pa

    day = timedelta(days=1)
    limits = pa.table(
        {
            "user_id": [1, 1, 2],
            "credit_limit": [10.0, 100.0, 500.0],
            "ts": pa.array(
                [NOW - 4 * day, NOW - 2 * day, NOW - 4 * day], pa.timestamp("us", "UTC")
            ),
        }
    )
    root = make_repo({"defs.py": CREDIT}, data={"limits.parquet": limits})
    ctx = contextkit.connect(root, workspace="live")
    ctx.create_workspace("live", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=NOW)
    events = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 3],
            "ts": pd.Series([NOW - 3 * day, NOW, NOW, NOW], dtype="M8[us, UTC]"),
            "amount": [50.0, 50.0, 50.0, 1.0],
        }
    )
    result = ctx.get_features_for_events(events, "checkout")
    offline = result.to_pandas()["purchase_check__allowed"].tolist()
    assert offline == [False, True, True, False]  # three days ago user 1's limit was 10
    # The input view is computed along (from the sources: the store ends at the events' time).
    assert result.sources_used == {"purchase_check": "realtime", "credit": "source"}
    online = ctx.get_features("checkout", {"user_id": [1, 2, 3]}, {"amount": [50.0, 50.0, 1.0]})
    assert online.values[0] == offline[1:]  # at the materialization end: what online serves
