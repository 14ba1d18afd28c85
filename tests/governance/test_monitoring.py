"""Monitoring as a user sees it: the numbers of each job, drift between jobs, freshness,
expectations that warn or fail (and what they leave in the stores), the CLI, and the registry
migration.

Quality numbers are checked against pandas on the same generated rows; drift against two samples
of one distribution and a shifted one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.compute.quality.drift import centroid_shift, psi
from contextkit.errors import ContextKitError, DefinitionError, ValidationErrors
from contextkit.stores.registry import SCHEMA_VERSION, SQLiteRegistry

CLI = str(Path(sys.executable).parent / "contextkit")
END = datetime(2024, 6, 1, tzinfo=UTC)
N = 3000

DEFS = """
from datetime import timedelta
from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
users = FileSource(name="users", path="data/users.parquet", timestamp_field="ts")

@batch_feature_view(sources=[users], entities=[user],
                    features=[Attribute("amount"), Attribute("visits"), Attribute("tier"),
                              Attribute("paid")],
                    batch_schedule="1h", {options})
def profile(users):
    return f"SELECT user_id, amount, visits, tier, paid, ts FROM {{users}}"

{service}
"""
SERVICE = 'svc = ContextService(name="svc", features=[profile])'


def users_frame(seed: int, *, shift: float = 0.0, tiers=(0.6, 0.3, 0.1), n: int = N):
    """One row per user: a normal amount (with nulls), a Poisson count, a category, a flag."""
    rng = np.random.default_rng(seed)
    amount = rng.normal(100 + shift, 20, n)
    amount[rng.random(n) < 0.07] = np.nan
    visits = rng.poisson(3 + shift / 10, n)
    tier = rng.choice(["free", "plus", "pro"], n, p=list(tiers)).astype(object)
    tier[rng.random(n) < 0.04] = None
    minutes = rng.integers(1, 60 * 24 * 3, n)
    return pd.DataFrame(
        {
            "user_id": np.arange(n, dtype="int64"),
            "amount": amount,
            "visits": visits.astype("int64"),
            "tier": tier,
            "paid": rng.random(n) < 0.35,
            "ts": [END - timedelta(minutes=int(m)) for m in minutes],
        }
    )


def write_users(root: Path, frame: pd.DataFrame) -> None:
    amount = [None if pd.isna(v) else float(v) for v in frame["amount"]]
    table = pa.table(
        {
            "user_id": pa.array(frame["user_id"], pa.int64()),
            "amount": pa.array(amount, pa.float64()),
            "visits": pa.array(frame["visits"], pa.int64()),
            "tier": pa.array([None if pd.isna(t) else t for t in frame["tier"]], pa.string()),
            "paid": pa.array(frame["paid"], pa.bool_()),
            "ts": pa.array(list(frame["ts"]), pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, root / "data" / "users.parquet")


def defs_py(options: str = "", service: bool = True) -> str:
    return DEFS.format(options=options, service=SERVICE if service else "")


@pytest.fixture
def shop(make_repo):
    """A live repo of one attribute view; call it with the view's extra options."""

    def build(options: str = "", frame=None, config: str = "", service: bool = True):
        root = make_repo({"defs.py": defs_py(options, service)}, name="shop")
        (root / "data").mkdir(exist_ok=True)
        if config:
            with (root / "contextkit.yaml").open("a") as f:
                f.write(config)
        write_users(root, users_frame(1) if frame is None else frame)
        ctx = contextkit.connect(root, "prod")
        ctx.create_workspace("prod", live=True)
        ctx.apply(ctx.plan(root))
        return root, ctx

    return build


def expectation_alerts(ctx) -> list:
    """Open alerts raised by expectations (the data is from 2024: freshness alerts are there
    too, computed against the real clock)."""
    return [a for a in ctx.monitoring.alerts() if a.source == "expectation"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, env=env)


# -- the numbers of a job ------------------------------------------------------------------------
def test_quality_numbers_match_pandas_on_the_same_rows(shop):
    frame = users_frame(7)
    root, ctx = shop(frame=frame)
    [job] = ctx.materialize(end=END)

    report = ctx.monitoring.quality("profile")
    stats = report["stats"]
    assert report["job"] == job.job_id and stats["scope"] == "online"
    assert stats["rows"] == N  # one row per user, all within the data: the online snapshot

    amount = frame["amount"]
    a = stats["columns"]["amount"]
    assert a["nulls"] == amount.isna().sum() and a["null_rate"] == pytest.approx(
        amount.isna().mean()
    )
    assert a["min"] == pytest.approx(amount.min()) and a["max"] == pytest.approx(amount.max())
    assert a["mean"] == pytest.approx(amount.mean()) and a["std"] == pytest.approx(amount.std())
    for name, q in (("p01", 0.01), ("p25", 0.25), ("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert a["quantiles"][name] == pytest.approx(amount.quantile(q)), name
    assert sum(a["histogram"]["counts"]) == amount.notna().sum()
    assert len(a["histogram"]["counts"]) == 20 and a["histogram"]["edges"][0] == a["min"]
    assert sum(a["bins"]["counts"]) == amount.notna().sum()

    visits = frame["visits"]
    v = stats["columns"]["visits"]
    assert (v["min"], v["max"], v["nulls"]) == (visits.min(), visits.max(), 0)
    assert v["mean"] == pytest.approx(visits.mean())
    assert v["quantiles"]["p75"] == pytest.approx(visits.quantile(0.75))

    tier = frame["tier"]
    t = stats["columns"]["tier"]
    assert t["nulls"] == tier.isna().sum() and t["distinct"] == tier.nunique()
    assert dict(t["top"]) == tier.value_counts().to_dict()
    assert t["top"][0][0] == "free" and t["other"] == 0

    p = stats["columns"]["paid"]
    assert p["true_rate"] == pytest.approx(frame["paid"].mean())
    assert dict(p["top"]) == {str(k).lower(): n for k, n in frame["paid"].value_counts().items()}

    newest = max(frame["ts"])
    assert stats["newest_event_us"] == int(newest.timestamp() * 1_000_000)
    assert "drift" not in stats  # the first job has nothing to compare with


def test_an_offline_only_view_is_measured_on_the_offline_rows_of_its_range(shop):
    frame = users_frame(3)
    root, ctx = shop(options="online=False", frame=frame, service=False)
    ctx.materialize(start=END - timedelta(days=1), end=END)

    stats = ctx.monitoring.quality("profile")["stats"]
    in_range = frame[frame["ts"] >= END - timedelta(days=1)]
    assert stats["scope"] == "offline"
    assert stats["rows"] == len(in_range)
    assert stats["columns"]["visits"]["mean"] == pytest.approx(in_range["visits"].mean())


# -- drift ---------------------------------------------------------------------------------------
def test_drift_is_near_zero_for_the_same_distribution_and_high_for_a_shifted_one(shop):
    root, ctx = shop(frame=users_frame(1))
    [first] = ctx.materialize(end=END)

    write_users(root, users_frame(2))  # another sample of the same distribution
    ctx.materialize(end=END)
    same = ctx.monitoring.quality("profile")["stats"]
    assert same["drift"]["reference_job"] == first.job_id
    for column in ("amount", "visits", "tier", "paid"):
        assert same["columns"][column]["drift"]["psi"] < 0.05, column

    write_users(root, users_frame(3, shift=20, tiers=(0.2, 0.3, 0.5)))  # +1 sd, other tiers
    ctx.materialize(end=END)
    shifted = ctx.monitoring.quality("profile")
    psis = {c: e["drift"]["psi"] for c, e in shifted["stats"]["columns"].items()}
    assert psis["amount"] > 0.25 and psis["tier"] > 0.25 and psis["visits"] > 0.25
    assert psis["paid"] < 0.05  # unchanged
    assert shifted["stats"]["drift"]["max_psi"] == max(psis.values())
    history = shifted["history"]
    assert [h["max_drift"] is None for h in history] == [False, False, True]

    # Pinned to the first job, a sample like the first one has no drift against it.
    ctx.monitoring.set_reference("profile", first.job_id)
    write_users(root, users_frame(4))
    ctx.materialize(end=END)
    pinned = ctx.monitoring.quality("profile")["stats"]
    assert pinned["drift"]["reference_job"] == first.job_id
    assert pinned["drift"]["reference"] == "pinned"
    assert pinned["columns"]["amount"]["drift"]["psi"] < 0.05


def test_psi_and_centroid_shift_definitions():
    rng = np.random.default_rng(0)
    same = psi(np.histogram(rng.normal(size=5000), bins=10, range=(-3, 3))[0],
               np.histogram(rng.normal(size=5000), bins=10, range=(-3, 3))[0])  # fmt: skip
    moved = psi(np.histogram(rng.normal(size=5000), bins=10, range=(-3, 3))[0],
                np.histogram(rng.normal(1, 1, 5000), bins=10, range=(-3, 3))[0])  # fmt: skip
    assert same < 0.02 and moved > 0.25
    assert psi([10, 0], [0, 10]) > 1 and psi([1, 2], []) is None  # empty buckets stay finite

    def centroid(mean):
        v = rng.normal(mean, 1.0, (2000, 16))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).mean(axis=0)

    base = np.zeros(16)
    base[0] = 2.0
    other = np.zeros(16)
    other[1] = 2.0
    assert centroid_shift(centroid(base), centroid(base)) < 0.01
    assert centroid_shift(centroid(base), centroid(other)) > 0.5


# -- expectations --------------------------------------------------------------------------------
def test_a_warning_expectation_marks_the_job_and_raises_an_alert_until_it_passes(shop):
    frame = users_frame(1)
    root, ctx = shop(
        options='expect_not_null={"tier": 0.1}, expect_between={"amount": (0, 150)}', frame=frame
    )
    [job] = ctx.materialize(end=END)

    assert job.status == "warning" and "amount" in job.error
    [record] = ctx.jobs("profile")
    assert record.status == "warning" and "values outside [0, 150]" in record.error
    # A warning still writes the stores: the new values are served.
    served = ctx.get_features("svc", {"user_id": [0]}).to_pandas()
    assert served["profile.visits"][0] == frame["visits"][0]
    [alert] = expectation_alerts(ctx)
    assert (alert.kind, alert.subject, alert.severity) == ("between", "amount", "warning")
    assert alert.job_id == job.job_id

    status = run_cli("status", cwd=root)
    assert status.returncode == 0, status.stderr
    assert "warning" in status.stdout and "between(amount)" in status.stdout
    jobs = run_cli("jobs", "--status", "warning", cwd=root)
    assert job.job_id in jobs.stdout

    # The data comes back within the range: the next job succeeds and the alert is resolved.
    frame["amount"] = np.minimum(frame["amount"], 150.0)
    write_users(root, frame)
    [again] = ctx.materialize(end=END)
    assert again.status == "succeeded" and again.error is None
    assert expectation_alerts(ctx) == []
    [resolved] = [a for a in ctx.monitoring.alerts(include_resolved=True) if a.resolved_at]
    assert resolved.kind == "between" and resolved.job_id == job.job_id
    assert "between(amount)" not in run_cli("status", cwd=root).stdout


def test_a_failing_expectation_fails_the_job_and_leaves_the_stores_as_they_were(shop):
    root, ctx = shop(options='expect_between={"amount": (0, 1000)}, on_expectation_failure="fail"')
    [good] = ctx.materialize(end=END)
    assert good.status == "succeeded"
    before = ctx.get_features("svc", {"user_id": [0, 1, 2]}).to_pandas()
    files = sorted(p.name for p in ctx.offline.files("prod/profile"))

    bad = users_frame(9)
    bad.loc[0, "amount"] = 5000.0
    write_users(root, bad)
    with pytest.raises(ContextKitError) as err:
        ctx.materialize(end=END, full=True)
    assert err.value.code == "expectation_failed"
    assert "1 of 3000 values outside [0, 1000]" in err.value.message
    assert "stores were left as they were" in err.value.hint

    [failed, _] = ctx.jobs("profile")
    assert failed.status == "failed" and "ExpectationFailedError" in failed.error
    after = ctx.get_features("svc", {"user_id": [0, 1, 2]}).to_pandas()
    pd.testing.assert_frame_equal(before, after)
    assert sorted(p.name for p in ctx.offline.files("prod/profile")) == files
    [alert] = expectation_alerts(ctx)
    assert alert.severity == "error" and alert.kind == "between"
    # The failed job's numbers are kept (they say what was wrong) but are no drift reference.
    assert ctx.monitoring.quality("profile", job=failed.id)["stats"]["columns"]["amount"][
        "max"
    ] == pytest.approx(5000.0)

    cli = run_cli("materialize", "--end", END.isoformat(), cwd=root)
    assert cli.returncode == 1 and "expectation(s)" in cli.stderr and "Traceback" not in cli.stderr


def test_staleness_at_the_job_and_freshness_afterwards(shop):
    root, ctx = shop(options='max_staleness="2h", ttl="3d"')
    [fresh] = ctx.materialize(end=END)
    assert fresh.status == "succeeded"  # newest value a minute or more before the end, < 2 h

    newest = max(users_frame(1)["ts"]).timestamp()
    now = newest + 1800
    [status] = ctx.monitoring.status(now=now)
    assert status.freshness.state == "fresh" and status.alerts == []
    assert status.freshness.data_age_s == pytest.approx(1800)
    [status] = ctx.monitoring.status(now=newest + 3 * 3600)
    assert status.freshness.state == "stale"  # max_staleness 2 h
    assert "max_staleness 2h" in status.alerts[0].message
    [status] = ctx.monitoring.status(now=newest + 4 * 86400)
    assert status.freshness.state == "expired"  # past the ttl: nothing is served

    # A job whose newest value is already older than max_staleness warns at once.
    [late] = ctx.materialize(end=END + timedelta(hours=5))
    assert late.status == "warning"
    assert "newest value is 5h" in late.error and "expected at most 2h" in late.error


def test_a_view_that_missed_its_schedule_is_late(shop):
    root, ctx = shop()
    ctx.materialize(end=END)
    end = END.timestamp()
    assert ctx.monitoring.status(now=end + 3600)[0].freshness.state == "fresh"
    late = ctx.monitoring.status(now=end + 3 * 3600)[0]  # scheduled hourly, last run 3 h ago
    assert late.freshness.state == "late" and late.alerts[0].kind == "late"


def test_expectations_are_checked_at_plan_time(make_repo):
    root = make_repo({"defs.py": defs_py('expect_not_null=["nope"]')})
    (root / "data").mkdir(exist_ok=True)
    write_users(root, users_frame(1))
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    with pytest.raises(ValidationErrors) as err:
        ctx.plan(root)
    assert "expect_not_null names 'nope', which is not a feature" in err.value.message
    assert "defs.py:" in err.value.message

    (root / "defs.py").write_text(defs_py('expect_between={"tier": (0, 1)}'))
    with pytest.raises(ValidationErrors, match="expect_between over 'tier' of type string"):
        ctx.plan(root)

    (root / "defs.py").write_text(defs_py('on_expectation_failure="explode"'))
    with pytest.raises(ContextKitError, match='on_expectation_failure must be "warn" or "fail"'):
        ctx.plan(root)
    from contextkit import batch_feature_view

    def view(s):
        return "SELECT 1"

    with pytest.raises(DefinitionError, match=r"expect_between\['x'\] must be a \(low, high\)"):
        batch_feature_view(sources=["s"], entities=["e"], expect_between={"x": 3})(view)


def test_changing_an_expectation_does_not_recompute_the_view(shop):
    root, ctx = shop()
    ctx.materialize(end=END)
    (root / "defs.py").write_text(defs_py('expect_not_null=["tier"]'))
    plan = ctx.plan(root)
    [change] = plan.changes
    assert change.action == "update" and not change.rematerialize
    ctx.apply(plan)
    [job] = ctx.materialize(end=END + timedelta(hours=1))
    assert job.start == END  # incremental from the watermark: the definition hash is unchanged
    assert job.status == "warning" and "tier" in job.error


def test_with_monitoring_off_only_the_expectations_are_measured(shop):
    root, ctx = shop(options='expect_not_null=["tier"]', config="monitoring: {enabled: false}\n")
    [job] = ctx.materialize(end=END)
    assert job.status == "warning"
    stats = ctx.monitoring.quality("profile")["stats"]
    assert stats["complete"] is False and set(stats["columns"]) == {"tier"}
    assert "top" not in stats["columns"]["tier"]


def test_quality_cli_prints_the_numbers_and_json(shop):
    root, ctx = shop()
    ctx.materialize(end=END)
    text = run_cli("quality", "profile", cwd=root)
    assert text.returncode == 0, text.stderr
    assert "amount" in text.stdout and "null rate" in text.stdout and "free" in text.stdout
    data = json.loads(run_cli("quality", "profile", "--json", cwd=root).stdout)
    assert data["stats"]["rows"] == N and data["view"] == "profile"
    unknown = run_cli("quality", "nope", cwd=root)
    assert unknown.returncode == 1 and "unknown view 'nope'" in unknown.stderr


# -- embedding views -----------------------------------------------------------------------------
EMBEDDING_DEFS = """
from contextkit import EmbeddingView, Entity, FileSource

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")

doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body",
                         model="hashed", metadata=["category", "price"],
                         expect_not_null=["category"], expect_between={"price": (0, 100)})
"""


def docs_table(bodies: list[str], categories: list[str | None], prices: list[float]) -> pa.Table:
    n = len(bodies)
    return pa.table(
        {
            "doc_id": pa.array(range(n), pa.int64()),
            "body": pa.array(bodies, pa.string()),
            "category": pa.array(categories, pa.string()),
            "price": pa.array(prices, pa.float64()),
            "updated_at": pa.array([END] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def test_an_embedding_view_measures_documents_and_vectors(make_repo):
    bodies = [f"document number {i} about topic {i % 5}" for i in range(60)]
    root = make_repo(
        {"defs.py": EMBEDDING_DEFS},
        data={"docs.parquet": docs_table(bodies, ["a", "b", None] * 20, [5.0] * 60)},
    )
    with (root / "contextkit.yaml").open("a") as f:
        f.write("models:\n  hashed: {type: hash, dimension: 32}\n")
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))

    [job] = ctx.materialize()
    assert job.status == "warning" and "category: 20 of 60 values are null" in job.error
    stats = ctx.monitoring.quality("doc_text")["stats"]
    assert stats["scope"] == "documents" and stats["rows"] == 60
    body = stats["columns"]["body"]
    lengths = [len(b) for b in bodies]
    assert body["kind"] == "text" and body["min"] == min(lengths) and body["max"] == max(lengths)
    assert stats["columns"]["price"]["outside"] == 0
    vectors = stats["vectors"]
    assert vectors["count"] == 60 and vectors["dimension"] == 32 and vectors["dimension_ok"]
    assert vectors["norm"]["min"] == pytest.approx(1.0, abs=1e-5)  # unit vectors
    assert vectors["zero"] == 0 and len(vectors["centroid"]) == 32

    [same] = ctx.materialize()  # nothing changed: the same vectors, the same centroid
    shift = ctx.monitoring.quality("doc_text")["stats"]["vectors"]["drift"]["centroid_shift"]
    assert same.status == "warning" and shift == pytest.approx(0.0, abs=1e-6)

    other = [f"an entirely different text {i} on subject {i * 7}" for i in range(60)]
    pq.write_table(docs_table(other, ["a", "b", "c"] * 20, [5.0] * 60), root / "data/docs.parquet")
    [changed] = ctx.materialize()
    assert changed.status == "succeeded" and expectation_alerts(ctx) == []
    moved = ctx.monitoring.quality("doc_text")["stats"]["vectors"]["drift"]["centroid_shift"]
    assert moved > 0.1  # other texts, other (pseudo-random) vectors


# -- the registry ----------------------------------------------------------------------------------
def test_a_version_2_registry_is_migrated_to_hold_statistics_and_alerts(tmp_path):
    path = tmp_path / "registry.db"
    old = SQLiteRegistry(path)
    old.create_workspace("prod", live=True)
    old.close()
    con = sqlite3.connect(path)
    con.executescript(
        "DROP TABLE job_stats; DROP TABLE alerts; "
        "UPDATE meta SET value = '2' WHERE key = 'schema_version';"
    )
    con.close()

    registry = SQLiteRegistry(path, create=False)
    assert SCHEMA_VERSION >= 3
    assert [w.name for w in registry.list_workspaces()] == ["prod"]
    assert registry.list_alerts() == [] and registry.latest_job_stats() == []
    registry.close()
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"job_stats", "alerts"} <= tables
    version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    con.close()
