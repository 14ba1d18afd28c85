"""The Ray point-in-time join's scratch folders (issue 16): folders left by a driver that died
are removed by the next read, folders of a join in progress are kept; the driver's ``AWS_*``
variables go to the cluster's processes in their runtime environment. Fast: no Ray runs here
(the cluster tests are tests/compute/test_ray_offline.py and test_ray_s3.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

from contextkit.compute.ray import offline as ray_offline
from contextkit.compute.ray.runtime import scrub, task_options, worker_env
from contextkit.stores.offline import ParquetOfflineStore
from contextkit.stores.process import current_process


def dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def folder(store: ParquetOfflineStore, name: str, owner: dict | None, files: int = 1) -> str:
    filesystem, path = store.scratch(name)
    filesystem.create_dir(path, recursive=True)
    for i in range(files):
        with filesystem.open_output_stream(f"{path}/r{i:06d}-p00000.parquet") as out:
            out.write(b"rows")
    if owner is not None:
        with filesystem.open_output_stream(f"{path}/{ray_offline.OWNER_FILE}") as out:
            out.write(json.dumps(owner).encode())
    return path


def test_stale_scratch_folders_are_removed_and_live_ones_kept(tmp_path):
    store = ParquetOfflineStore(tmp_path / "offline")
    assert ray_offline.remove_stale_scratch(store) == []  # no .scratch/ yet: nothing to do
    me = current_process()
    now = time.time()
    mine = {"host": me.host, "pid": me.pid, "start": me.start, "created": now}
    dead = replace(me, pid=dead_pid())
    folders = {
        "running": folder(store, "join-running", mine),
        "dead": folder(store, "join-dead", {**mine, "pid": dead.pid}),
        "old": folder(store, "join-old", {**mine, "host": "elsewhere", "created": now - 2 * 86400}),
        "other_host": folder(store, "join-other", {**mine, "host": "elsewhere"}),
        "no_owner": folder(store, "join-noowner", None),  # written before owner.json: by age
        "not_a_join": folder(store, "embed-x", {**mine, "pid": dead.pid}),
    }
    removed = ray_offline.remove_stale_scratch(store, now=now)
    assert sorted(removed) == sorted([folders["dead"], folders["old"]])
    filesystem = store.scratch("x")[0]
    for name, path in folders.items():
        gone = filesystem.get_file_info(path).type.name == "NotFound"
        assert gone == (name in ("dead", "old")), name
    # A day later the folder without an owner file is judged by its files' age and goes too;
    # one whose owner still runs goes once it is older than the limit.
    later = ray_offline.remove_stale_scratch(store, now=now + 2 * 86400)
    assert sorted(later) == sorted([folders["running"], folders["other_host"], folders["no_owner"]])


def test_the_drivers_aws_variables_go_to_every_task_and_actor(monkeypatch):
    for name in [n for n in list(worker_env()) if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    options = task_options()
    assert "runtime_env" not in options  # nothing to pass: no separate workers
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("CONTEXTKIT_COMPUTE", "ray")  # not the cluster's business
    env = task_options(env={"OPENAI_API_KEY": "k"})["runtime_env"]["env_vars"]
    assert env == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "OPENAI_API_KEY": "k",
    }
    # Errors that echo the runtime environment show no secret.
    said = scrub(
        "setup failed: {'AWS_SECRET_ACCESS_KEY': 's3cret', 'K': 'sk-live'}", {"K": "sk-live"}
    )
    assert "s3cret" not in said and "sk-live" in said and "***" in said


def test_the_schedulers_housekeeping_removes_stale_scratch(tmp_path):
    import contextkit
    from contextkit.governance.scheduler import Scheduler, SchedulerSettings

    (tmp_path / "contextkit.yaml").write_text("project: scratch\n")
    ctx = contextkit.connect(tmp_path, "prod")
    store = ctx.runtime.offline
    me = current_process()
    owner = {"host": me.host, "pid": dead_pid(), "start": me.start, "created": time.time()}
    stale = folder(store, "join-stale", owner)
    now = [time.time()]
    scheduler = Scheduler(ctx.runtime, clock=lambda: now[0], settings=SchedulerSettings())
    try:
        assert scheduler.tick(wait=True).scratch_removed == [stale]
        left = folder(store, "join-stale-2", owner)
        assert scheduler.tick(wait=True).scratch_removed == []  # not yet: once an hour
        now[0] += 3600
        assert scheduler.tick(wait=True).scratch_removed == [left]
    finally:
        scheduler.close()
        ctx.close()


def test_a_ray_failure_of_a_rendered_dataset_is_a_compute_error_without_secrets(monkeypatch):
    from contextkit.errors import ComputeError
    from contextkit.retrieval.datasets_ray import _ray_failure

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret-value")
    echoed = RuntimeError(
        "ActorDiedError: the actor died\n"
        "runtime_env: {'AWS_SECRET_ACCESS_KEY': 's3cret-value', 'OPENAI_API_KEY': 'sk-live-123'}"
    )
    failure = _ray_failure(echoed, {"OPENAI_API_KEY": "sk-live-123"})
    assert isinstance(failure, ComputeError) and failure.http_status == 503
    assert failure.message.startswith("rendered dataset on Ray failed: RuntimeError: runtime_env")
    assert "s3cret-value" not in failure.message and "sk-live-123" not in failure.message


def test_failure_reason_unwraps_rays_wrappers_and_scrubs(monkeypatch):
    from contextkit.compute.ray.runtime import failure_reason

    class TaskError(Exception):  # the shape of Ray's RayTaskError: the task's error in .cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__("task failed")
            self.cause = cause

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret-value")
    try:
        raise OSError("first line\nno route to s3cret-value")
    except OSError as inner:
        wrapped = TaskError(ValueError("outer"))
        wrapped.cause.__cause__ = inner
    assert failure_reason(wrapped) == "OSError: no route to ***"
    assert failure_reason(RuntimeError("")) == "RuntimeError: "
