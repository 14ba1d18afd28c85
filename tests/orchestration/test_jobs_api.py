"""The jobs API through a real `contextkit control-plane` process, with admin and reader keys:
trigger (202, ids at once), follow, reader refused (403), unknown view or workspace (404),
cancel of a finished job (409), an overlapping trigger answering the running job, cancel of a
running job, retry; and the same from the CLI (`contextkit jobs run|show|cancel|retry --remote`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sched_fixtures import build
from serverproc import CLI, READY_TIMEOUT_S, ServerProcess

import contextkit
from contextkit.compute.layout import online_table

LIMIT_S = 240.0


class ControlPlane(ServerProcess):
    """``contextkit control-plane ARGS --port 0`` (the scheduler off: jobs run on demand)."""

    def __init__(self, repo: Path, log_path: Path) -> None:
        self.port = None
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [CLI, "control-plane", "--repo", str(repo), "--workspace", "prod",
             "--no-scheduler", "--port", "0"],
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def call(base: str, method: str, path: str, key: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(condition, what: str):
    deadline = time.monotonic() + LIMIT_S
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs-api")
    gate = tmp / "gate"
    repo = build(tmp / "repo", gate)
    ctx = contextkit.connect(repo, "prod")
    keys = {
        "admin": ctx.access.create_key("ops", workspace="prod", role="admin").key,
        "reader": ctx.access.create_key("app", workspace="prod", role="reader").key,
        "other": ctx.access.create_key("x", workspace="dev", role="admin").key,
    }
    server = ControlPlane(repo, tmp / "control-plane.log")
    try:
        server.wait_ready(READY_TIMEOUT_S)
        yield server.base, keys, gate, repo, ctx
    finally:
        server.stop()
        ctx.close()


def finished(base, key, job_id):
    status, job = call(base, "GET", f"/v1/jobs/{job_id}", key)
    assert status == 200, job
    return job if job["status"] not in ("queued", "running") else None


def test_trigger_follow_and_refusals(plane):
    base, keys, _gate, _repo, _ctx = plane
    status, body = call(base, "POST", "/v1/jobs", keys["reader"], {"views": ["daily"]})
    assert status == 403, body
    status, body = call(base, "POST", "/v1/jobs", keys["other"], {"views": ["daily"]})
    assert status == 403, body
    status, body = call(base, "POST", "/v1/jobs", keys["admin"], {"views": ["nope"]})
    assert status == 404 and "nope" in body["error"]["message"], body
    status, body = call(base, "POST", "/v1/jobs", keys["admin"],
                        {"workspace": "missing", "views": ["daily"]})  # fmt: skip
    assert status in (403, 404), body  # a prod admin may not even learn whether it exists

    status, body = call(base, "POST", "/v1/jobs", keys["admin"],
                        {"views": ["daily"], "end": "2024-05-04T00:00:00Z"})  # fmt: skip
    assert status == 202, body
    job_id = body["job_id"]
    assert body["jobs"][0]["started"] is True and body["jobs"][0]["view"] == "daily"
    job = wait_for(lambda: finished(base, keys["reader"], job_id), "the job to finish")
    assert job["status"] == "succeeded", job
    assert job["rows_online"] == 2 and job["rows_offline"] == 6
    assert job["range_end"].startswith("2024-05-04") and job["log"]
    assert any("commit" in line for line in job["log"])

    status, body = call(base, "POST", f"/v1/jobs/{job_id}/cancel", keys["admin"], {})
    assert status == 409 and body["error"]["code"] == "job_conflict", body
    status, body = call(base, "POST", f"/v1/jobs/{job_id}/cancel", keys["reader"], {})
    assert status == 403, body
    status, body = call(base, "GET", "/v1/jobs/nope", keys["admin"])
    assert status == 404, body

    status, body = call(base, "POST", f"/v1/jobs/{job_id}/retry", keys["admin"], {})
    assert status == 202 and body["id"] != job_id and body["started"], body
    again = wait_for(lambda: finished(base, keys["admin"], body["id"]), "the retry")
    assert again["status"] == "succeeded" and again["range_end"] == job["range_end"]


def test_overlapping_trigger_and_cancel_of_a_running_job(plane):
    base, keys, gate, _repo, ctx = plane
    (gate / "armed").write_text("")
    try:
        status, body = call(base, "POST", "/v1/jobs", keys["admin"], {"views": ["gated"]})
        assert status == 202, body
        job_id = body["job_id"]
        wait_for(lambda: (gate / "blocked").exists(), "the job to block")
        status, again = call(base, "POST", "/v1/jobs", keys["admin"], {"views": ["gated"]})
        assert status == 202 and again["job_id"] == job_id and not again["jobs"][0]["started"]
        status, body = call(base, "POST", f"/v1/jobs/{job_id}/retry", keys["admin"], {})
        assert status == 409, body  # still running
        status, body = call(base, "POST", f"/v1/jobs/{job_id}/cancel", keys["admin"], {})
        assert status == 200 and body["status"] == "running", body  # stops at its next batch
    finally:
        (gate / "armed").unlink()
        (gate / "blocked").unlink(missing_ok=True)
    job = wait_for(lambda: finished(base, keys["admin"], job_id), "the cancelled job to stop")
    assert job["status"] == "cancelled", job
    assert ctx.offline.files("prod/gated") == []  # nothing was published
    assert not ctx.online.has_table(online_table("prod", "gated"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


def test_cli_against_the_control_plane_and_locally(plane):
    base, keys, _gate, repo, _ctx = plane
    remote = ["--remote", base, "--key", keys["admin"]]
    run = cli("jobs", "run", "daily", "--end", "2024-05-05", *remote, cwd=repo)
    assert run.returncode == 0, run.stderr
    assert "succeeded" in run.stdout and "daily" in run.stdout
    job_id = run.stdout.split()[0]
    shown = cli("jobs", "show", job_id, *remote, cwd=repo)
    assert shown.returncode == 0 and "2024-05-05" in shown.stdout, shown.stderr
    refused = cli("jobs", "cancel", job_id, *remote, cwd=repo)
    assert refused.returncode == 1 and "already finished" in refused.stderr
    denied = cli("jobs", "run", "daily", "--remote", base, "--key", keys["reader"], cwd=repo)
    assert denied.returncode == 1 and "admin" in denied.stderr, denied.stderr
    # Locally: the CLI runs the job itself; the listing still works, with the new statuses.
    local = cli("jobs", "run", "daily", "--end", "2024-05-06", "-r", str(repo), "-w", "prod",
                cwd=repo)  # fmt: skip
    assert local.returncode == 0 and "succeeded" in local.stdout, local.stderr
    listing = cli("jobs", "-r", str(repo), "-w", "prod", "--view", "daily", "--json", cwd=repo)
    assert listing.returncode == 0, listing.stderr
    assert len(json.loads(listing.stdout)["jobs"]) >= 3
    retried = cli("jobs", "retry", job_id, "-r", str(repo), cwd=repo)
    assert retried.returncode == 0 and "succeeded" in retried.stdout, retried.stderr


def test_apply_over_http_with_an_admin_key(plane, tmp_path):
    base, keys, gate, repo, ctx = plane
    (gate / "break").unlink(missing_ok=True)  # the pipeline validates the repo: it must pass
    ci = tmp_path / "ci-checkout"  # what a pipeline has: the repo and its data, no registry
    shutil.copytree(repo, ci, ignore=shutil.ignore_patterns(".contextkit"))
    defs = (ci / "sched_defs.py").read_text()
    (ci / "sched_defs.py").write_text(
        defs
        + textwrap.dedent("""
        @batch_feature_view(sources=[events], entities=[user], mode="sql",
                            features=[Attribute("x")])
        def added_in_ci(events):
            return f"SELECT user_id, x, ts FROM {events}"
        """)
    )
    before = ctx.registry.get_workspace("prod").version
    refused = cli("apply", "-r", str(ci), "-w", "prod", "--yes", "--remote", base,
                  "--key", keys["reader"], cwd=ci)  # fmt: skip
    assert refused.returncode == 1 and "admin" in refused.stderr, refused.stderr
    done = cli("apply", "-r", str(ci), "-w", "prod", "--yes", "--remote", base,
               "--key", keys["admin"], cwd=ci)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "create  batch_feature_view added_in_ci" in done.stdout
    assert f"version {before + 1}" in done.stdout
    assert ctx.registry.get_workspace("prod").version == before + 1
    assert "added_in_ci" in {o.name for o in ctx.registry.list_objects("prod")}
    again = cli("apply", "-r", str(ci), "-w", "prod", "--yes", "--remote", base,
                "--key", keys["admin"], cwd=ci)  # fmt: skip
    assert again.returncode == 0 and "No changes." in again.stdout
    # A stale plan is refused: the workspace moved since base_version.
    status, body = call(base, "POST", "/v1/apply", keys["admin"],
                        {"specs": [], "base_version": before})  # fmt: skip
    assert status == 409, body
    assert ctx.registry.get_workspace("prod").version == before + 1


def test_every_admin_action_is_in_the_audit_log(plane):
    """After the tests above: the control plane recorded each API call with its key's principal
    (refusals too), and the local CLI runs as the local user; `contextkit audit` reads both."""
    base, keys, _gate, repo, _ctx = plane
    remote = cli("audit", "--remote", base, "--key", keys["admin"], "--limit", "500", "--json",
                 cwd=repo)  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    entries = json.loads(remote.stdout)["entries"]
    seen = {(e["action"], e["actor"], e["via"], e["outcome"]) for e in entries}
    assert {
        ("jobs.trigger", "ops", "api", "ok"),
        ("jobs.trigger", "app", "api", "denied"),
        ("jobs.cancel", "ops", "api", "ok"),
        ("jobs.cancel", "ops", "api", "job_conflict"),
        ("apply", "ops", "api", "ok"),
        ("apply", "app", "api", "denied"),
    } <= seen, seen
    assert {e["workspace"] for e in entries} <= {"prod", "*"}
    local = cli("audit", "-r", str(repo), "-w", "prod", "--action", "jobs.retry", "--json",
                cwd=repo)  # fmt: skip
    assert local.returncode == 0, local.stderr
    (retry,) = [e for e in json.loads(local.stdout)["entries"] if e["via"] == "cli"]
    assert "@" in retry["actor"] and retry["key_id"] is None and retry["outcome"] == "ok"
    refused = cli("audit", "--remote", base, "--key", keys["reader"], cwd=repo)
    assert refused.returncode == 1 and "admin" in refused.stderr
