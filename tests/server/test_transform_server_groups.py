"""Transform server groups: ``TransformServerGroup(name, views=[...], workers, timeout)`` runs
its realtime views in worker processes of each serving process. Checked at plan (unknown view,
a view in two groups, a view that is not realtime); served by a real ``contextkit serve``, where
a realtime view held in its worker does not hold up another service's ``/v1/features``; the
values equal the in-process path; a timeout is a 504, a crashed worker a 503, and the pool
recovers from both.

Nothing here is timed: a view "sleeps" until the test removes a hold file, and the test waits on
the file the function writes when it has started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.errors import (
    RealtimeFeatureError,
    TransformBusyError,
    TransformTimeoutError,
    TransformWorkerError,
)
from contextkit.framework.transform_workers import close_pools, pools
from tests.server.test_server_groups import line_of, plan_errors, post
from tests.serverproc import ServerProcess

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(hours=12)

# One function body, defined as three views: in the "python" group (long timeout), in the
# "strict" group (1 s timeout) and in no group (the in-process path).
BODY = """
@realtime_feature_view(sources=[RequestSource([Field("mode", String), Field("hold", String)]),
                                spend],
                       features=[Attribute("score", Int64), Attribute("pid", Int64)]{extra})
def {name}(request, spend):
    import os, pathlib, time
    if request["mode"] == "crash":
        os._exit(3)
    if request["mode"] == "raise":
        raise ValueError("asked to raise")
    if request["mode"] == "hold":  # wait until the test removes the hold file
        hold = pathlib.Path(request["hold"])
        (hold.parent / (hold.name + ".started")).touch()
        while hold.exists():
            time.sleep(0.01)
    return {{"score": (spend["x_sum_7d"] or 0) * 3 + 1, "pid": os.getpid()}}
"""

DEFS = (
    """\
from datetime import timedelta
from contextkit import (Aggregate, Attribute, ContextService, Entity, Field, FileSource, Int64,
                        RequestSource, String, TransformServerGroup, batch_feature_view,
                        realtime_feature_view)

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="sum", time_window=timedelta(days=7))])
def spend(events):
    return f"SELECT user_id, x, ts FROM {events}"
"""
    + BODY.format(name="pooled", extra="")
    + BODY.format(
        name="capped", extra=',\n                       transform_server_group="strict_group"'
    )
    + BODY.format(name="local", extra="")
    + """
slow = ContextService(name="slow", features=[pooled])
strict = ContextService(name="strict", features=[capped])
inproc = ContextService(name="inproc", features=[local])
fast = ContextService(name="fast", features=[spend])

python = TransformServerGroup(name="python", views=[pooled], workers=1,
                              timeout=timedelta(seconds=120))
# Its view names it (transform_server_group="strict_group").
strict_group = TransformServerGroup(name="strict_group", workers=1, timeout=timedelta(seconds=1))
"""
)


def events_table() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 2, 1, 3], pa.int64()),
            "x": pa.array([5, 7, 11, 2], pa.int64()),
            "ts": pa.array(
                [T0 + timedelta(hours=h) for h in (1, 2, 3, 4)], pa.timestamp("us", tz="UTC")
            ),
        }
    )


@pytest.fixture(autouse=True)
def _fresh_repo_modules(fresh_repo_modules):
    """Every repo here has a ``defs.py`` (see ``fresh_repo_modules``)."""
    yield
    close_pools()  # the workers this test process started


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("transform") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        "project: transform\nregistry: .contextkit/registry.db\n"
        "online_store: {type: sqlite, path: .contextkit/online.db}\n"
        "offline_store: {type: parquet, path: .contextkit/offline}\n"
    )
    (root / "defs.py").write_text(DEFS)
    pq.write_table(events_table(), root / "data" / "events.parquet")
    sys.modules.pop("defs", None)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=END)
    ctx.close()
    sys.modules.pop("defs", None)
    return root


def test_a_view_in_two_groups_or_unknown_is_a_plan_error_with_its_line(make_repo) -> None:
    defs = DEFS.replace("workers=1, timeout", 'views=[pooled, "nope", "spend"], workers=1, timeout')
    text = plan_errors(make_repo, defs)
    assert f"defs.py:{line_of(defs, 'strict_group =')}" in text
    assert "realtime view 'pooled' is already in transform server group 'python'" in text
    assert f"defs.py:{line_of(defs, 'python =')}" in text  # where the other group is
    assert "unknown realtime feature view 'nope'" in text and "capped, local, pooled" in text
    assert "unknown realtime feature view 'spend'" in text and "not a realtime" in text


def test_a_view_naming_an_unknown_or_a_second_group_is_a_plan_error(make_repo) -> None:
    attrs = 'features=[Attribute("score", Int64), Attribute("pid", Int64)]'
    defs = DEFS.replace('transform_server_group="strict_group"', 'transform_server_group="strct"')
    defs = defs.replace(
        f"{attrs})\ndef local(",
        f'{attrs}, transform_server_group="strict_group")\ndef local(',
    )
    defs = defs.replace("views=[pooled]", "views=[pooled, local]")
    text = plan_errors(make_repo, defs)
    capped, local = decorator_line(defs, "capped"), decorator_line(defs, "local")
    assert (
        f"defs.py:{capped}: realtime_feature_view 'capped': unknown transform server group 'strct'"
        in text
    )
    assert "transform server groups: python, strict_group" in text
    assert (
        f"defs.py:{local}: realtime_feature_view 'local': realtime view 'local' names "
        "transform server group 'strict_group' but is already in transform server group 'python'"
    ) in text


def test_workers_and_timeout_out_of_range_are_plan_errors(make_repo) -> None:
    defs = DEFS.replace(
        "workers=1,\n                              timeout=timedelta(seconds=120)",
        "workers=0,\n                              timeout=timedelta(hours=1)",
    )
    text = plan_errors(make_repo, defs)
    assert "workers=0 is out of range" in text and "timeout=3600s is out of range" in text
    assert f"defs.py:{line_of(defs, 'python =')}" in text


def decorator_line(text: str, view: str) -> int:
    """The line of the decorator of ``def view(``: where a view is reported."""
    lines = text.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith(f"def {view}("))
    return max(i for i in range(end) if lines[i].startswith("@realtime_feature_view")) + 1


def features(ctx, service: str, users: list[int], mode: str = "ok") -> tuple[list, list]:
    result = ctx.get_features(service, {"user_id": users}, {"mode": mode, "hold": ""}).to_dict()
    view = {"slow": "pooled", "strict": "capped", "inproc": "local"}[service]
    return result[f"{view}.score"], result[f"{view}.pid"]


def test_workers_compute_what_the_process_computes_and_recover_from_a_crash(deployed) -> None:
    ctx = contextkit.connect(deployed, "prod")
    try:
        assert pools() == []  # nothing started before a group's first call
        users = [1, 2, 3, 9]
        local, local_pids = features(ctx, "inproc", users)
        pooled, pids = features(ctx, "slow", users)
        assert pooled == local == [49, 22, 7, 1]  # (16, 7, 2, missing) * 3 + 1
        assert set(local_pids) == {os.getpid()} and os.getpid() not in pids  # another process

        with pytest.raises(TransformWorkerError) as crashed:
            features(ctx, "slow", [1], mode="crash")
        assert crashed.value.http_status == 503
        assert "died during the call (exit code 3)" in crashed.value.message
        again, new_pids = features(ctx, "slow", users)  # a new worker
        assert again == local and new_pids[0] not in pids

        # A function that raises is the same error as in process, the worker kept.
        with pytest.raises(RealtimeFeatureError) as raised:
            features(ctx, "slow", [1], mode="raise")
        assert type(raised.value) is RealtimeFeatureError
        assert "raised ValueError: asked to raise" in raised.value.message
        assert features(ctx, "slow", [1])[1] == new_pids[:1]
        os.kill(new_pids[0], 9)  # an idle worker killed from outside is replaced unnoticed
        stat = Path(f"/proc/{new_pids[0]}/stat")
        # Until the kill has landed (a zombie, or reaped): the worker has a second thread, and
        # its process can be reaped once that one is gone too.
        while stat.exists() and (
            stat.read_text().rsplit(") ", 1)[1][0] not in "ZX"
            or len(list((stat.parent / "task").iterdir())) > 1
        ):
            time.sleep(0.01)
        assert features(ctx, "slow", [1])[0] == [49]
        (pool,) = pools()
        assert pool.calls == {"ok": 4, "error": 1, "timeout": 0, "worker_failed": 1, "busy": 0}
    finally:
        ctx.close()


@pytest.mark.slow  # a real serve process / a fresh interpreter: seconds
def test_an_application_script_without_a_main_guard_can_use_a_group(deployed, tmp_path) -> None:
    """Workers never re-import the application's main module (multiprocessing's spawn would,
    and fail on a script that starts work at import)."""
    script = tmp_path / "app.py"
    script.write_text(
        "import contextkit\n"
        f"ctx = contextkit.connect({str(deployed)!r}, 'prod')\n"
        "result = ctx.get_features('slow', {'user_id': [1]}, {'mode': 'ok', 'hold': ''})\n"
        "print('score', result.to_dict()['pooled.score'])\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "score [49]"


def test_a_call_over_the_timeout_is_a_504_and_the_pool_recovers(deployed, tmp_path) -> None:
    ctx = contextkit.connect(deployed, "prod")
    hold = tmp_path / "hold"
    hold.touch()  # never removed during the call: the function waits past the 1 s timeout
    try:
        with pytest.raises(TransformTimeoutError) as late:
            ctx.get_features("strict", {"user_id": [1]}, {"mode": "hold", "hold": str(hold)})
        assert late.value.http_status == 504 and late.value.code == "transform_timeout"
        assert "'capped' did not answer within 1s" in late.value.message
        hold.unlink()
        assert features(ctx, "strict", [1])[0] == [49]  # a new worker answers
    finally:
        ctx.close()


def test_calls_beyond_the_waiting_bound_are_turned_away_at_once(deployed, tmp_path) -> None:
    """With its one worker held and one call waiting, a third call is a 503 transform_busy at
    once (it would otherwise hold a shared server thread for the whole 120 s timeout)."""
    ctx = contextkit.connect(deployed, "prod")
    hold, started = tmp_path / "hold", tmp_path / "hold.started"
    hold.touch()
    held = {"mode": "hold", "hold": str(hold)}
    answers: list = []

    def call() -> None:
        answers.append(ctx.get_features("slow", {"user_id": [1]}, held).to_dict()["pooled.score"])

    first, second = threading.Thread(target=call), threading.Thread(target=call)
    try:
        first.start()
        while not started.exists():  # the first call holds the group's only worker
            assert first.is_alive(), answers
            first.join(0.05)
        second.start()
        (pool,) = [p for p in pools() if p.name == "python"]
        while pool.waiting < 1:  # the second call waits for the worker
            assert second.is_alive(), answers
            second.join(0.05)
        with pytest.raises(TransformBusyError) as busy:
            ctx.get_features("slow", {"user_id": [1]}, held)
        assert busy.value.http_status == 503 and busy.value.code == "transform_busy"
        assert "'python' is busy and 1 call(s) already wait" in busy.value.message
        hold.unlink()
        first.join(300)
        second.join(300)
        assert answers == [[49], [49]] and pool.calls["busy"] == 1 and pool.waiting == 0
    finally:
        if hold.exists():
            hold.unlink()
        first.join(300)
        second.join(300)
        ctx.close()


@pytest.mark.slow  # a real serve process / a fresh interpreter: seconds
def test_a_held_transform_does_not_hold_up_another_service(deployed, tmp_path) -> None:
    server = ServerProcess("--no-auth", "--workspace", "prod", cwd=deployed)
    hold = tmp_path / "hold"
    started = tmp_path / "hold.started"
    hold.touch()
    slow_answer: list[tuple[int, dict]] = []
    try:
        server.wait_ready()
        slow_body = {
            "service": "slow",
            "entities": {"user_id": [1]},
            "request_context": {"mode": "hold", "hold": str(hold)},
        }
        slow = threading.Thread(
            target=lambda: slow_answer.append(post(server.base, "/v1/features", slow_body))
        )
        slow.start()
        while not started.exists():  # the function runs in its worker, held
            assert slow.is_alive(), slow_answer
            slow.join(0.05)
        # Another service of the same node answers while the transform is still held.
        status, body = post(
            server.base, "/v1/features", {"service": "fast", "entities": {"user_id": [1, 2]}}
        )
        assert status == 200 and body["results"][1]["values"] == [16, 7]
        status, text = post(
            server.base,
            "/v1/context",
            {"service": "fast", "entities": {"user_id": 2}, "render": False},
        )
        assert status == 200 and text["features"]["spend"]["values"]["x_sum_7d"] == 7
        assert slow.is_alive() and not slow_answer  # still held
        hold.unlink()
        slow.join(300)
        ((status, body),) = slow_answer
        assert status == 200 and body["results"][1]["values"] == [49]
        assert body["results"][2]["values"][0] != server.proc.pid

        status, body = post(
            server.base,
            "/v1/features",
            {**slow_body, "request_context": {"mode": "crash", "hold": ""}},
        )
        assert status == 503 and body["error"]["code"] == "transform_worker_failed"
        assert "transform server group 'python'" in body["error"]["message"]

        with urllib.request.urlopen(server.base + "/metrics", timeout=60) as response:
            text = response.read().decode()
        lines = text.splitlines()
        assert (
            'contextkit_transform_server_group_workers{transform_server_group="python",'
            'views="pooled"} 1' in lines
        )
        assert (
            'contextkit_transform_calls_total{workspace="prod",transform_server_group="python",'
            'outcome="worker_failed"} 1' in lines
        )
        with urllib.request.urlopen(server.base + "/ui/partial/w/prod", timeout=60) as response:
            page = response.read().decode()
        assert "Transform server groups" in page and "strict_group" in page
    finally:
        if hold.exists():
            hold.unlink()
        server.stop()


@pytest.mark.slow  # a real serve process: seconds
def test_a_busy_worker_ends_when_its_serving_process_is_killed(deployed, tmp_path) -> None:
    """A worker held in its function when its ``contextkit serve`` is killed (SIGKILL, the OOM
    killer) is not left behind: it ends although the function has not returned."""
    server = ServerProcess("--no-auth", "--workspace", "prod", cwd=deployed)
    hold = tmp_path / "hold"
    started = tmp_path / "hold.started"
    hold.touch()
    try:
        server.wait_ready()
        body = {
            "service": "slow",
            "entities": {"user_id": [1]},
            "request_context": {"mode": "hold", "hold": str(hold)},
        }
        caller = threading.Thread(
            target=lambda: _call_ignoring_errors(server.base, body), daemon=True
        )
        caller.start()
        while not started.exists():  # the function runs in its worker, held
            time.sleep(0.05)
        listed = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(server.pid)], capture_output=True, text=True
        )
        (worker,) = (int(pid) for pid in listed.stdout.split())
        server.kill()
        stat = Path(f"/proc/{worker}/stat")
        deadline = time.monotonic() + 60  # a bound, not a timing: it ends within seconds
        while stat.exists() and stat.read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, "the worker outlived its serving process"
            time.sleep(0.05)
        assert hold.exists()  # the function never returned: the worker ended on its own
    finally:
        if hold.exists():
            hold.unlink()
        server.stop()


def _call_ignoring_errors(base: str, body: dict) -> None:
    with contextlib.suppress(OSError):
        post(base, "/v1/features", body)


def test_a_worker_that_cannot_be_started_is_a_503_and_leaks_no_pipe(
    deployed, tmp_path, monkeypatch
) -> None:
    """The interpreter cannot be run (gone after an upgrade, fork refused): 503
    transform_worker_failed, not an unexpected error, and the pipes made for it are closed."""
    ctx = contextkit.connect(deployed, "prod")
    try:
        features(ctx, "inproc", [1])  # everything but the worker is loaded and open
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with pytest.raises(TransformWorkerError) as failed:
                features(ctx, "slow", [1])
            assert failed.value.http_status == 503
            assert "did not start" in failed.value.message
        assert len(os.listdir("/proc/self/fd")) == before
        monkeypatch.undo()
        assert features(ctx, "slow", [1])[0] == [49]  # the next call starts one
    finally:
        ctx.close()
