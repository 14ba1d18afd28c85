"""The serving cache (retrieval/cache.py) through the facade, on a real repo and real stores.

What the cache answers is made observable by writing the online store behind its back: a value
written there directly is seen only by a read that bypasses the cache, or after something
invalidated it (an apply, a materialization).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.errors import ValidationErrors
from contextkit.retrieval.cache import MAX_ENTRIES_ENV, serving_cache

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(hours=12)

DEFS = """\
from datetime import timedelta
from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="sum", time_window=timedelta(days=7))])
def spend(events):
    return f"SELECT user_id, x, ts FROM {events}"

svc = ContextService(name="svc", features=[spend], cache=timedelta(minutes=10),
                     description="cached")
plain = ContextService(name="plain", features=[spend])
"""


def events_table(extra: int = 0) -> pa.Table:
    users = [1, 2, 1] + list(range(3, 13))
    xs = [5, 7, 11] + [1] * 10
    if extra:
        users.append(1)
        xs.append(extra)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "x": pa.array(xs, pa.int64()),
            "ts": pa.array(
                [T0 + timedelta(minutes=10 * (i + 1)) for i in range(len(users))],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )


@pytest.fixture(autouse=True)
def _fresh_repo_modules(fresh_repo_modules):
    """Every repo here has a ``defs.py`` (see ``fresh_repo_modules``)."""


@pytest.fixture
def repo(make_repo) -> Path:
    return make_repo({"defs.py": DEFS}, data={"events.parquet": events_table()})


def deploy(root: Path) -> contextkit.Context:
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=END)
    return ctx


def sum_of(ctx: contextkit.Context, user: int, *, service: str = "svc", cache: bool = True):
    result = ctx.get_features(service, {"user_id": [user]}, cache=cache)
    return result.values[0][0]


def write_behind(ctx: contextkit.Context, user: int, value: int) -> None:
    """Write ``user``'s spend straight into the online store (no job, no registry write)."""
    read = ctx.service_reader("svc").reads[0]
    stamp = int((END - timedelta(hours=1)).timestamp() * 1_000_000)
    with ctx.online.transaction() as writer:
        writer.upsert(read.table, [*read.keys, *read.columns], [(user, stamp, value)])


def test_a_hit_answers_from_memory_and_cache_false_reads_the_store(repo: Path) -> None:
    ctx = deploy(repo)
    cache = serving_cache(ctx.runtime)
    assert sum_of(ctx, 1) == 16  # a miss: read from the store, then kept
    write_behind(ctx, 1, 999)
    assert sum_of(ctx, 1) == 16  # a hit: the store is not read
    assert sum_of(ctx, 1, cache=False) == 999  # bypassed: the store's value
    assert sum_of(ctx, 1) == 16  # bypassing left the cached entry as it was
    assert sum_of(ctx, 1, service="plain") == 999  # a service without cache= is never cached
    assert (cache.hits["svc"], cache.misses["svc"], cache.bypassed["svc"]) == (2, 1, 1)
    assert "plain" not in cache.misses


def test_an_apply_invalidates(repo: Path) -> None:
    ctx = deploy(repo)
    assert sum_of(ctx, 1) == 16
    write_behind(ctx, 1, 999)
    assert sum_of(ctx, 1) == 16
    # A metadata-only edit: nothing to materialize, but a new workspace version.
    defs = repo / "defs.py"
    defs.write_text(defs.read_text().replace('description="cached"', 'description="edited"'))
    sys.modules.pop("defs", None)
    other = contextkit.connect(repo, "prod")  # another process's view of the registry
    other.apply(other.plan(repo))
    assert sum_of(ctx, 1) == 999


def test_a_materialization_invalidates(repo: Path) -> None:
    ctx = deploy(repo)
    assert sum_of(ctx, 1) == 16
    assert sum_of(ctx, 2) == 7
    pq.write_table(events_table(extra=100), repo / "data" / "events.parquet")
    other = contextkit.connect(repo, "prod")
    other.materialize(end=END)
    assert sum_of(ctx, 1) == 116
    assert sum_of(ctx, 2) == 7


def test_the_cache_holds_at_most_its_entry_limit(repo: Path, monkeypatch) -> None:
    monkeypatch.setenv(MAX_ENTRIES_ENV, "4")
    ctx = deploy(repo)
    cache = serving_cache(ctx.runtime)
    users = list(range(1, 13))
    first = ctx.get_features("svc", {"user_id": users})
    assert len(cache) == 4 and cache.evictions == 8
    again = ctx.get_features("svc", {"user_id": users})
    assert again.to_dict() == first.to_dict()  # evicted rows are read again, same values
    assert len(cache) == 4
    # The 4 most recently used (users 9-12) were hits the second time, the rest misses.
    assert cache.hits["svc"] == 4


def test_a_batch_mixes_hits_and_misses_in_request_order(repo: Path) -> None:
    ctx = deploy(repo)
    expected = ctx.get_features("svc", {"user_id": [2, 1, 99, 2]}, cache=False).to_response()
    ctx.get_features("svc", {"user_id": [1]})
    got = ctx.get_features("svc", {"user_id": [2, 1, 99, 2]}).to_response()
    assert got == expected
    assert got["results"][1]["statuses"] == ["PRESENT", "PRESENT", "MISSING", "PRESENT"]


def test_cache_out_of_bounds_is_a_plan_error_with_its_line(make_repo) -> None:
    defs = DEFS.replace("cache=timedelta(minutes=10)", "cache=timedelta(hours=25)")
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    with pytest.raises(ValidationErrors) as info:
        ctx.plan(root)
    text = str(info.value)
    line = defs.splitlines().index(next(x for x in defs.splitlines() if x.startswith("svc ="))) + 1
    assert f"defs.py:{line}" in text
    assert "at most 24 h" in text


def test_a_bad_entry_limit_is_a_config_error(repo: Path, monkeypatch) -> None:
    from contextkit.errors import ConfigError

    ctx = deploy(repo)
    monkeypatch.setenv(MAX_ENTRIES_ENV, "0")
    fresh = contextkit.connect(repo, "prod")  # the cache is made on a process's first read
    with pytest.raises(ConfigError, match="must be a positive integer") as info:
        fresh.get_features("svc", {"user_id": [1]})
    assert "unset it" in (info.value.hint or "")
    ctx.close()
