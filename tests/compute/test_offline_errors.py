"""``get_features_for_events`` when a file is missing or unreadable: a ContextKitError that names
the file, never DuckDB's own exception with the SQL it ran.

- events given as a Parquet path that matches nothing, or a file that is not Parquet: a
  ``BadRequestError`` naming the path;
- offline store files deleted by hand: a ``store_error`` (503 over HTTP) naming the view, with a
  hint to re-materialize, never a silent gap or a DuckDB ``IOException``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest

import contextkit
from contextkit.errors import BadRequestError, StoreUnavailableError

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(days=2)

DEFS = """\
from datetime import timedelta
from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="sum", time_window=timedelta(days=7))])
def user_spend(events):
    return f"SELECT user_id, x, ts FROM {events}"

svc = ContextService(name="svc", features=[user_spend])
"""


@pytest.fixture
def ctx(make_repo):
    data = pa.table(
        {
            "user_id": pa.array([1, 2, 1], pa.int64()),
            "x": pa.array([5, 7, 13], pa.int64()),
            "ts": pa.array(
                [T0 + timedelta(hours=h) for h in (1, 2, 3)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": data})
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=END)
    yield ctx
    ctx.close()


def labelled_events() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "ts": pa.array([END - timedelta(hours=1)] * 2, pa.timestamp("us", tz="UTC")),
        }
    )


def test_events_from_a_missing_parquet_file_are_a_bad_request_naming_it(ctx, tmp_path):
    missing = tmp_path / "missing.parquet"
    with pytest.raises(BadRequestError) as info:
        ctx.get_features_for_events(missing, "svc").to_pandas()
    assert str(missing) in info.value.message
    assert "LINE 1" not in info.value.message and "read_parquet" not in info.value.message
    assert not isinstance(info.value.__cause__, duckdb.Error)

    with pytest.raises(BadRequestError, match="no events file matches 'missing.parquet'"):
        ctx.get_features_for_events("missing.parquet", "svc").to_arrow()


def test_events_in_a_file_that_is_not_parquet_are_a_bad_request_naming_it(ctx, tmp_path):
    broken = tmp_path / "events.parquet"
    broken.write_bytes(b"user_id,ts\n1,2024-05-01\n")
    with pytest.raises(BadRequestError) as info:
        ctx.get_features_for_events(broken, "svc").to_pandas()
    assert f"cannot read the events in {str(broken)!r} as Parquet" in info.value.message
    assert "LINE 1" not in info.value.message


def test_offline_files_deleted_by_hand_are_a_store_error_naming_the_view(ctx):
    # Served from the offline store while its files are there.
    served = ctx.get_features_for_events(labelled_events(), "svc")
    assert served.to_pandas()["user_spend__x_sum_7d"].tolist() == [18, 7]
    assert served.sources_used == {"user_spend": "offline_store"}

    files = sorted((ctx.config.root / ".contextkit" / "offline").rglob("*.parquet"))
    assert files
    for file in files:
        file.unlink()
    for from_source in (None, False):
        with pytest.raises(StoreUnavailableError) as info:
            ctx.get_features_for_events(
                labelled_events(), "svc", from_source=from_source
            ).to_pandas()
        error = info.value
        assert error.code == "store_error" and error.http_status == 503
        assert "offline file(s) of view 'user_spend' are gone" in error.message
        assert "contextkit materialize user_spend --full" in error.hint

    # The hint's other way out: compute from the sources.
    computed = ctx.get_features_for_events(labelled_events(), "svc", from_source=True)
    assert computed.to_pandas()["user_spend__x_sum_7d"].tolist() == [18, 7]
