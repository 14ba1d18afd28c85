"""Validation user stories: a data engineer writes a repo with mistakes and runs `plan`.

Every problem must come back at once, as a ``ValidationErrors`` whose entries each name the file
and line of the object at fault (``defs.py:12``) and carry a hint saying how to fix it.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import contextkit
from contextkit.errors import ContextKitError, DefinitionError, ValidationErrors

T0 = datetime(2024, 5, 1, tzinfo=UTC)

HEADER = """\
from datetime import timedelta
from contextkit import Aggregate, Attribute, ContextService, Entity, FileSource
from contextkit import batch_feature_view
"""

GOOD_SOURCES = """\
user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")
"""


def with_header(body: str) -> str:
    """A repo file: the imports, then ``body`` (dedented)."""
    return HEADER + textwrap.dedent(body)


def with_sources(body: str) -> str:
    """A repo file: the imports, a `user` entity and an `events` source, then ``body``."""
    return HEADER + GOOD_SOURCES + textwrap.dedent(body)


def events_table() -> pa.Table:
    """Six events of three users: an int key, a numeric and a string column, UTC times."""
    return pa.table(
        {
            "user_id": pa.array([1, 2, 3, 1, 2, 3], pa.int64()),
            "x": pa.array([1.5, 2.0, 3.0, 4.0, 5.0, 6.0], pa.float64()),
            "name": ["a", "b", "c", "d", "e", "f"],
            "ts": pa.array(
                [T0 + timedelta(hours=i) for i in range(6)], pa.timestamp("us", tz="UTC")
            ),
        }
    )


@pytest.fixture(autouse=True)
def _fresh_repo_modules(fresh_repo_modules):
    """Every repo here has a ``defs.py`` (see ``fresh_repo_modules``)."""


def line_of(source: str, needle: str) -> int:
    """1-based line of the first line of (dedented) ``source`` containing ``needle``."""
    for number, line in enumerate(textwrap.dedent(source).splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in source")


def view_line(source: str, function: str) -> int:
    """Line of a view's first decorator: where contextkit says the view is defined."""
    lines = textwrap.dedent(source).splitlines()
    index = next(i for i, ln in enumerate(lines) if ln.startswith(f"def {function}("))
    while not lines[index].startswith("@"):
        index -= 1
    return index + 1


def plan_errors(root: Path) -> ValidationErrors:
    """Run `plan` against a fresh live workspace and return the validation errors it raises."""
    ctx = contextkit.connect(root, "prod")
    try:
        ctx.create_workspace("prod", live=True)
        with pytest.raises(ValidationErrors) as info:
            ctx.plan(root)
    finally:
        ctx.close()
    return info.value


def error_at(errors: ValidationErrors, where: str, *words: str) -> DefinitionError:
    """The one error located at ``where`` (``defs.py:12``) whose message contains ``words``."""
    found = [e for e in errors.errors if e.location == where and all(w in e.message for w in words)]
    assert len(found) == 1, f"no single error at {where} with {words}:\n{errors}"
    err = found[0]
    assert err.message.startswith(f"{where}: "), err.message
    assert err.hint, f"error without a hint: {err.message}"
    return err


# -- names and references ---------------------------------------------------------------------
def test_duplicate_names_are_all_reported_with_both_locations(make_repo):
    entities = """\
    from contextkit import Entity
    user = Entity(name="user", join_keys=["user_id"])
    """
    defs = with_header("""\
    customer = Entity(name="user", join_keys=["customer_id"])
    events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")
    @batch_feature_view(sources=[events], entities=["user"], mode="sql")
    def events_view(events):
        return f"SELECT user_id, x, ts FROM {events}"
    clash = FileSource(name="events_view", path="data/events.parquet", timestamp_field="ts")
    """)
    root = make_repo(
        {"entities.py": entities, "defs.py": defs}, data={"events.parquet": events_table()}
    )

    errors = plan_errors(root)

    assert len(errors.errors) == 2, str(errors)
    # Objects are read in file order, so the clash is reported at the later definition and
    # points back at the earlier one.
    in_entities, in_defs = (
        f"entities.py:{line_of(entities, 'user = ')}",
        f"defs.py:{line_of(defs, 'customer = ')}",
    )
    entity_clash = next(e for e in errors.errors if "duplicate entity name 'user'" in e.message)
    assert {entity_clash.location, entity_clash.message.split("also defined at ")[1][:-1]} == {
        in_entities,
        in_defs,
    }
    assert "rename" in entity_clash.hint
    # A source and a view share one namespace: both are tables in a view's SQL.
    table_clash = error_at(
        errors,
        f"defs.py:{line_of(defs, 'clash = ')}",
        "duplicate source or view name 'events_view'",
    )
    assert f"(also defined at defs.py:{view_line(defs, 'events_view')})" in table_clash.message


def test_unknown_entity_and_source_named_by_string_are_reported(make_repo):
    defs = with_sources("""\
    @batch_feature_view(sources=["nope"], entities=[user], mode="sql")
    def from_nowhere(nope):
        return f"SELECT * FROM {nope}"
    @batch_feature_view(sources=[events], entities=["ghost"], mode="sql")
    def of_nobody(events):
        return f"SELECT user_id, x, ts FROM {events}"
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})

    errors = plan_errors(root)

    assert len(errors.errors) == 2, str(errors)
    source = error_at(errors, f"defs.py:{view_line(defs, 'from_nowhere')}", "unknown source 'nope'")
    assert "FileSource" in source.hint
    entity = error_at(errors, f"defs.py:{view_line(defs, 'of_nobody')}", "unknown entity 'ghost'")
    assert "Entity(" in entity.hint


def test_a_service_over_an_unknown_view_says_how_to_fix_it(make_repo):
    defs = with_sources("""\
    @batch_feature_view(sources=[events], entities=[user], mode="sql")
    def spend(events):
        return f"SELECT user_id, x, ts FROM {events}"
    svc = ContextService(name="svc", features=[spend, "spnd"])
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})

    errors = plan_errors(root)

    error_at(errors, f"defs.py:{line_of(defs, 'svc = ')}", "unknown feature view 'spnd'")


# -- a view's output ----------------------------------------------------------------------------
def test_join_key_missing_from_a_views_output(make_repo):
    defs = with_sources("""\
    @batch_feature_view(sources=[events], entities=[user], mode="sql")
    def keyless(events):
        return f"SELECT x, ts FROM {events}"
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})

    errors = plan_errors(root)

    assert len(errors.errors) == 1, str(errors)
    err = error_at(errors, f"defs.py:{view_line(defs, 'keyless')}", "join key 'user_id' is missing")
    assert "select user_id" in err.hint


def test_aggregate_over_a_missing_or_a_string_column(make_repo):
    defs = with_sources("""\
    @batch_feature_view(sources=[events], entities=[user], mode="sql", features=[
        Aggregate(column="name", function="sum", time_window=timedelta(days=7)),
        Aggregate(column="amount", function="mean", time_window="1d"),
        Aggregate(column="name", function="count", time_window="1d"),
    ])
    def spend(events):
        return f"SELECT user_id, name, ts FROM {events}"
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})

    errors = plan_errors(root)

    where = f"defs.py:{view_line(defs, 'spend')}"
    assert len(errors.errors) == 2, str(errors)  # count over a string column is fine
    string_sum = error_at(errors, where, "'sum'", "'name'", "string", "numeric")
    assert "count" in string_sum.hint
    missing = error_at(errors, where, "'amount'", "does not output")
    assert "user_id, name, ts" in missing.hint


def test_a_view_whose_timestamp_is_not_a_timestamp(make_repo):
    defs = with_sources("""\
    @batch_feature_view(sources=[events], entities=[user], mode="sql")
    def texty(events):
        return f"SELECT user_id, x, CAST(ts AS VARCHAR) AS ts FROM {events}"
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})

    errors = plan_errors(root)

    err = error_at(errors, f"defs.py:{view_line(defs, 'texty')}", "'ts'", "string", "timestamp")
    assert "CAST(ts AS TIMESTAMP)" in err.hint


def test_a_misspelled_column_reports_the_duckdb_binder_error(make_repo):
    defs = with_sources("""\
    @batch_feature_view(sources=[events], entities=[user], mode="sql")
    def spend(events):
        return f"SELECT user_id, amout, ts FROM {events}"
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})

    errors = plan_errors(root)

    assert len(errors.errors) == 1, str(errors)
    # It points at the query's line that names the column, not only at the decorator.
    err = error_at(errors, f"defs.py:{line_of(defs, 'amout')}", "Binder Error", '"amout"')
    # The hint lists the real columns of the source, so the typo is easy to spot.
    assert "events(user_id, x, name, ts)" in err.hint

    # The engineer fixes the typo; the same repo now plans cleanly.
    (root / "defs.py").write_text(textwrap.dedent(defs).replace("amout", "x"))
    ctx = contextkit.connect(root, "prod")
    try:
        plan = ctx.plan(root)
    finally:
        ctx.close()
    assert {(c.action, c.name) for c in plan.changes} >= {("create", "spend")}


def test_views_using_each_other_by_name_form_a_reported_cycle(make_repo):
    defs = with_sources("""\
    @batch_feature_view(sources=["second"], entities=[user], mode="sql", timestamp_field="ts")
    def first(second):
        return f"SELECT * FROM {second}"
    @batch_feature_view(sources=["first"], entities=[user], mode="sql", timestamp_field="ts")
    def second(first):
        return f"SELECT * FROM {first}"
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})

    errors = plan_errors(root)

    assert len(errors.errors) == 1, str(errors)
    err = error_at(
        errors, f"defs.py:{view_line(defs, 'first')}", "dependency cycle: first -> second -> first"
    )
    assert "cannot use itself" in err.hint


# -- sources and their files --------------------------------------------------------------------
def test_a_csv_timestamp_column_read_as_text(make_repo):
    csv = pa.table({"user_id": [1, 2], "x": [1.0, 2.0], "ts": ["yesterday", "today"]})
    defs = with_header("""\
    clicks = FileSource(name="clicks", path="data/clicks.csv", timestamp_field="ts")
    """)
    root = make_repo({"defs.py": defs}, data={"clicks.csv": csv})

    errors = plan_errors(root)

    err = error_at(
        errors, f"defs.py:{line_of(defs, 'clicks = ')}", "timestamp_field 'ts'", "string"
    )
    assert "timestamp" in err.hint


def test_a_missing_source_file(make_repo):
    defs = with_header("""\
    orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")
    """)
    root = make_repo({"defs.py": defs})

    errors = plan_errors(root)

    err = error_at(
        errors, f"defs.py:{line_of(defs, 'orders = ')}", "file not found: data/orders.parquet"
    )
    assert "relative to the repo root" in err.hint


def test_a_corrupt_parquet_file(make_repo):
    defs = with_header("""\
    orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")
    """)
    root = make_repo({"defs.py": defs}, data={"orders.parquet": b"PAR1 not really" * 50})

    errors = plan_errors(root)

    err = error_at(
        errors, f"defs.py:{line_of(defs, 'orders = ')}", "cannot read data/orders.parquet"
    )
    assert "valid, complete parquet" in err.hint


def test_duckdb_errors_do_not_leak_contextkits_internal_queries(make_repo):
    defs = with_sources("""\
    orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")
    @batch_feature_view(sources=[events], entities=[user], mode="sql")
    def spend(events):
        return f"SELECT user_id, amout, ts FROM {events}"
    """)
    root = make_repo(
        {"defs.py": defs},
        data={"events.parquet": events_table(), "orders.parquet": b"garbage" * 100},
    )

    errors = plan_errors(root)

    assert len(errors.errors) == 2, str(errors)
    for err in errors.errors:
        assert "DESCRIBE" not in err.message and "^^^" not in err.message, err.message


def test_a_pandas_view_whose_function_raises(make_repo):
    defs = with_sources("""\
    @batch_feature_view(sources=[events], entities=[user], mode="pandas")
    def scores(events):
        return events.assign(score=events["x"] / events["no_such_column"])
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})

    errors = plan_errors(root)

    assert len(errors.errors) == 1, str(errors)
    err = error_at(
        errors,
        f"defs.py:{view_line(defs, 'scores')}",
        "'scores'",
        "raised KeyError",
        "no_such_column",
    )
    assert "debug" in err.hint


# -- everything at once -----------------------------------------------------------------------
def test_every_problem_in_a_repo_is_reported_in_one_plan(make_repo):
    """One broken repo with eight unrelated mistakes: one plan lists all of them."""
    defs = with_sources("""\
    clicks = FileSource(name="clicks", path="data/clicks.csv", timestamp_field="ts")
    gone = FileSource(name="gone", path="data/gone.parquet", timestamp_field="ts")
    broken = FileSource(name="broken", path="data/broken.parquet", timestamp_field="ts")

    @batch_feature_view(sources=["nope"], entities=["ghost"], mode="sql")
    def orphan(nope):
        return f"SELECT * FROM {nope}"

    @batch_feature_view(sources=[events], entities=[user], mode="sql")
    def keyless(events):
        return f"SELECT x, ts FROM {events}"

    @batch_feature_view(sources=[events], entities=[user], mode="sql", features=[
        Aggregate(column="name", function="sum", time_window="7d"),
    ])
    def name_sum(events):
        return f"SELECT user_id, name, ts FROM {events}"

    @batch_feature_view(sources=[events], entities=[user], mode="sql")
    def typo(events):
        return f"SELECT user_id, amout, ts FROM {events}"

    @batch_feature_view(sources=["loop_b"], entities=[user], mode="sql", timestamp_field="ts")
    def loop_a(loop_b):
        return f"SELECT * FROM {loop_b}"

    @batch_feature_view(sources=["loop_a"], entities=[user], mode="sql", timestamp_field="ts")
    def loop_b(loop_a):
        return f"SELECT * FROM {loop_a}"

    @batch_feature_view(sources=[events], entities=[user], mode="pandas")
    def boom(events):
        raise RuntimeError("kaboom")

    @batch_feature_view(sources=[events], entities=[user], mode="sql")
    def fine(events):
        return f"SELECT user_id, x, ts FROM {events}"
    """)
    csv = pa.table({"user_id": [1], "x": [1.0], "ts": ["not a time"]})
    root = make_repo(
        {"defs.py": defs},
        data={"events.parquet": events_table(), "clicks.csv": csv, "broken.parquet": b"x" * 300},
    )

    errors = plan_errors(root)

    expected = [
        (line_of(defs, "clicks = "), "timestamp_field 'ts'"),
        (line_of(defs, "gone = "), "file not found"),
        (line_of(defs, "broken = "), "cannot read data/broken.parquet"),
        (view_line(defs, "orphan"), "unknown source 'nope'"),
        (view_line(defs, "orphan"), "unknown entity 'ghost'"),
        (view_line(defs, "keyless"), "join key 'user_id' is missing"),
        (view_line(defs, "name_sum"), "needs a numeric column"),
        (line_of(defs, "amout"), "Binder Error"),
        (view_line(defs, "loop_a"), "dependency cycle"),
        (view_line(defs, "boom"), "RuntimeError: kaboom"),
    ]
    for line, words in expected:
        error_at(errors, f"defs.py:{line}", words)
    assert len(errors.errors) == len(expected), str(errors)
    # The printed error (what the CLI shows) lists each problem with its place and hint.
    text = str(errors)
    assert text.startswith(f"{len(expected)} problem(s) in the repo:")
    assert text.count("hint: ") == len(expected)
    assert "'fine'" not in text
    assert errors.details == {"errors": [e.message for e in errors.errors]}


# -- mistakes found while importing the repo --------------------------------------------------
def test_a_bad_aggregate_function_is_reported_at_its_line_while_importing(make_repo):
    defs = with_sources("""\
    spend = Aggregate(column="x", function="summ", time_window="7d")
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})
    ctx = contextkit.connect(root, "prod")
    try:
        ctx.create_workspace("prod", live=True)
        with pytest.raises(DefinitionError) as info:
            ctx.plan(root)
    finally:
        ctx.close()

    err = info.value
    assert f"defs.py:{line_of(defs, 'spend = ')}" in err.message
    assert "unknown function 'summ'" in err.message and "count, sum, mean" in err.message
    assert err.hint


def test_a_syntax_error_is_reported_at_its_file_and_line(make_repo):
    defs = with_sources("""\
    broken = (
    """)
    root = make_repo({"defs.py": defs}, data={"events.parquet": events_table()})
    ctx = contextkit.connect(root, "prod")
    try:
        ctx.create_workspace("prod", live=True)
        with pytest.raises(ContextKitError) as info:
            ctx.plan(root)
    finally:
        ctx.close()

    assert info.value.hint
    assert getattr(info.value, "location", "").endswith(f"defs.py:{line_of(defs, 'broken = (')}")
