"""Offline retrieval as a polars DataFrame: ``result.to_polars()`` holds what ``to_arrow()`` and
``to_pandas()`` hold.

The story: a data scientist who works in polars asks for the same training set as a colleague
who works in pandas. Both must see the same columns in the same order, the same rows in input
order, the same nulls and the same values; the dtypes are each library's type for the Arrow type
(nullable integers stay integers, timestamps stay tz-aware UTC, lists stay lists). Checked for a
result computed in SQL (batch views) and for one finished in Python (a realtime view), and for an
empty result.
"""

from __future__ import annotations

import math
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from test_offline_stream_realtime import DEFS as SHOP_DEFS
from test_offline_stream_realtime import NOW, events_at, record

import contextkit
from contextkit.compute.streaming import ingest_records
from contextkit.errors import BadRequestError

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


ACCOUNTS = """\
from datetime import timedelta

from contextkit import (Aggregate, Attribute, ContextService, Entity, FileSource,
                        batch_feature_view)

user = Entity(name="user", join_keys=["user_id"])
accounts = FileSource(name="accounts", path="data/accounts.parquet", timestamp_field="ts")

@batch_feature_view(sources=[accounts], entities=[user], mode="sql", ttl=timedelta(days=5),
                    features=[Attribute("plan"), Attribute("seats"), Attribute("active"),
                              Attribute("renewed_at")])
def account(accounts):
    return f"SELECT user_id, plan, seats, active, renewed_at, ts FROM {accounts}"

@batch_feature_view(sources=[accounts], entities=[user], mode="sql", features=[
    Aggregate(column="x", function="sum", time_window=timedelta(days=2)),
    Aggregate(column="x", function="count", time_window=timedelta(days=2)),
])
def usage(accounts):
    return f"SELECT user_id, x, ts FROM {accounts}"

svc = ContextService(name="svc", features=[account, usage])
"""

# One row per (user, time); nulls in every feature column so that null handling is compared.
ACCOUNT_ROWS = pa.table(
    {
        "user_id": pa.array([1, 1, 2, 3], pa.int64()),
        "plan": pa.array(["free", "pro", None, "plus"]),
        "seats": pa.array([1, 5, 2, None], pa.int64()),
        "active": pa.array([True, False, None, True]),
        "x": pa.array([1.0, 2.5, None, 4.0]),
        "renewed_at": pa.array([day(0), day(1), None, day(2)], pa.timestamp("us", tz="UTC")),
        "ts": pa.array([day(0.5), day(1.5), day(1.5), day(2.5)], pa.timestamp("us", tz="UTC")),
    }
)

UTC_MICROS = pl.Datetime("us", "UTC")


@pytest.fixture
def accounts(make_repo):
    root = make_repo(
        {f"defs_{uuid.uuid4().hex}.py": ACCOUNTS}, data={"accounts.parquet": ACCOUNT_ROWS}
    )
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    yield ctx
    ctx.close()


def account_events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.array([1, 2, 3, 1, None, 4], dtype="Int64"),
            "ts": pd.Series(
                [day(1.6), day(2), day(3), day(10), day(1), day(1)], dtype="datetime64[us, UTC]"
            ),
            "label": pd.array([True, False, True, False, True, None], dtype="boolean"),
            "note": ["a", None, "c", "d", "e", "f"],
        }
    )


def plain(value: Any) -> Any:
    """A pandas cell as the Python value Arrow and polars give (missing values as None)."""
    if isinstance(value, list | tuple) or hasattr(value, "tolist"):
        value = value.tolist() if hasattr(value, "tolist") else list(value)
        return [plain(v) for v in value] if isinstance(value, list) else value
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def assert_same_data(result, expected_polars: dict[str, pl.DataType]) -> pl.DataFrame:
    """to_polars() against to_arrow() and to_pandas(): columns, dtypes, nulls and values."""
    frame = result.to_polars()
    table = result.to_arrow()
    pandas = result.to_pandas()

    assert isinstance(frame, pl.DataFrame)
    assert frame.columns == table.column_names == pandas.columns.tolist()
    assert dict(frame.schema) == expected_polars
    assert frame.height == table.num_rows == len(pandas)
    for name in frame.columns:
        from_polars = frame.get_column(name).to_list()
        assert from_polars == table.column(name).to_pylist(), name
        assert from_polars == [plain(v) for v in pandas[name].tolist()], name
    # polars and pandas agree on what kind of column each one is.
    for name, dtype in frame.schema.items():
        pandas_dtype = pandas[name].dtype
        if dtype == pl.Boolean:
            assert pd.api.types.is_bool_dtype(pandas_dtype), name
        elif dtype.is_integer():
            assert pd.api.types.is_integer_dtype(pandas_dtype), name
        elif dtype.is_float():
            assert pd.api.types.is_float_dtype(pandas_dtype), name
        elif dtype == pl.String:
            assert pd.api.types.is_string_dtype(pandas_dtype), name
        elif isinstance(dtype, pl.Datetime):
            assert isinstance(pandas_dtype, pd.DatetimeTZDtype), name
            assert str(pandas_dtype.tz) == dtype.time_zone == "UTC", name
    return frame


def test_batch_views_in_polars_hold_the_arrow_and_pandas_values_and_types(accounts):
    result = accounts.get_features_for_events(account_events(), "svc")
    frame = assert_same_data(
        result,
        {
            "user_id": pl.Int64,
            "ts": UTC_MICROS,
            "label": pl.Boolean,
            "note": pl.String,
            "account__plan": pl.String,
            "account__seats": pl.Int64,
            "account__active": pl.Boolean,
            "account__renewed_at": UTC_MICROS,
            "usage__x_sum_2d": pl.Float64,
            "usage__x_count_2d": pl.Int64,
        },
    )
    # The values themselves (the point-in-time rules are tested elsewhere; here, that nothing
    # is lost or coerced on the way to polars: nulls stay nulls, integers stay integers).
    assert frame.get_column("account__plan").to_list() == ["pro", None, "plus", None, None, None]
    assert frame.get_column("account__seats").to_list() == [5, 2, None, None, None, None]
    assert frame.get_column("account__active").to_list() == [False, None, True, None, None, None]
    assert frame.get_column("account__renewed_at").to_list() == [
        day(1), None, day(2), None, None, None,
    ]  # fmt: skip
    assert frame.get_column("usage__x_sum_2d").to_list() == [3.5, None, 4.0, None, None, None]
    assert frame.get_column("usage__x_count_2d").to_list() == [2, 0, 1, None, None, None]
    assert frame.get_column("user_id").to_list() == [1, 2, 3, 1, None, 4]
    assert frame.get_column("ts").to_list()[0] == day(1.6)


def test_an_empty_result_in_polars_has_every_column_with_its_type(accounts):
    events = account_events().iloc[:0]
    frame = accounts.get_features_for_events(events, "svc").to_polars()
    assert frame.height == 0
    assert frame.schema["account__seats"] == pl.Int64
    assert frame.schema["account__renewed_at"] == UTC_MICROS
    assert frame.schema["usage__x_sum_2d"] == pl.Float64
    assert frame.columns[-1] == "usage__x_count_2d"


def test_a_realtime_result_in_polars_holds_the_arrow_and_pandas_values_and_types(make_repo):
    root = make_repo({f"defs_{uuid.uuid4().hex}.py": SHOP_DEFS})
    ctx = contextkit.connect(root, workspace="live")
    ctx.create_workspace("live", live=True)
    ctx.apply(ctx.plan(root))
    pushed = [
        record(1, 7, 3.0, NOW - timedelta(minutes=20)),
        record(1, 8, 1.5, NOW - timedelta(minutes=10)),
        record(1, 7, 2.0, NOW - timedelta(minutes=5)),
        record(2, 9, 6.0, NOW - timedelta(minutes=3)),
    ]
    ingest_records(ctx, "page_views", pushed, now=NOW)
    result = ctx.get_features_for_events(events_at([1, 2, 3], [NOW]), "shopper")
    frame = assert_same_data(
        result,
        {
            "user_id": pl.Int64,
            "ts": UTC_MICROS,
            "budget": pl.Float64,
            "recent_views__product_id_count_1h": pl.Int64,
            "recent_views__product_id_last_3_distinct_1d": pl.List(pl.Int64),
            "recent_views__price_mean_1d": pl.Float64,
            "last_view__product_id": pl.Int64,
            "last_view__price": pl.Float64,
            "last_view__ts": UTC_MICROS,
            "budget_check__over_budget": pl.Boolean,
            "budget_check__spent_share": pl.Float64,
            "budget_check__last_seen": UTC_MICROS,
        },
    )
    assert result.sources_used["budget_check"] == "realtime"
    assert frame.get_column("recent_views__product_id_count_1h").to_list() == [3, 1, None]
    distinct = frame.get_column("recent_views__product_id_last_3_distinct_1d").to_list()
    assert sorted(distinct[0]) == [7, 8] and distinct[1] == [9] and distinct[2] is None
    # Computed in Python per row: user 1 spent 6.5 of a budget of 2.5, user 2 6.0 of 5.0.
    assert frame.get_column("budget_check__over_budget").to_list() == [True, True, False]
    assert frame.get_column("budget_check__last_seen").to_list() == [
        NOW - timedelta(minutes=5), NOW - timedelta(minutes=3), None,
    ]  # fmt: skip
    ctx.close()


def test_without_polars_installed_the_error_says_what_to_do(accounts, monkeypatch):
    monkeypatch.setitem(sys.modules, "polars", None)  # makes `import polars` fail
    result = accounts.get_features_for_events(account_events(), "svc")
    with pytest.raises(BadRequestError, match="polars is not installed") as info:
        result.to_polars()
    assert "pip install polars" in info.value.hint
    assert len(result.to_pandas()) == 6  # the other formats still work
