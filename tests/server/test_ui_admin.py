"""Admin actions in the web UI and the audit log, through the app a control plane serves (a test
client over a real registry and stores; jobs run in the app's worker threads).

The UI's buttons call the JSON API with the key the user signed in with, marked
``X-ContextKit-Client: ui``, from the server's own origin: these tests send what the page's
script sends. An admin triggers, retries and cancels jobs and manages keys; a reader sees no
buttons and is refused (403); a cross-site post is refused even with an admin key; every attempt
is in the audit log with its actor, workspace and outcome. Also: ``GET /v1/jobs?status=`` takes
every status a job can have.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from ops_fixtures import build_repo

import contextkit
from contextkit.governance.jobs import JobService
from contextkit.server.app import create_app

LIMIT_S = 120.0
# What the UI's script sends with an action, besides the key.
FROM_UI = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin",
           "X-ContextKit-Client": "ui"}  # fmt: skip


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    repo = build_repo(tmp_path_factory.mktemp("ui-admin") / "repo")
    ctx = contextkit.connect(repo, "prod")
    made = {
        "admin": ctx.access.create_key("ops", workspace="prod", role="admin"),
        "reader": ctx.access.create_key("app", workspace="prod", role="reader"),
        "root": ctx.access.create_key("root", workspace="*", role="admin"),
    }
    keys = {name: new.key for name, new in made.items()}
    ids = {name: new.record.id for name, new in made.items()}
    service = JobService(ctx.runtime, workers=1)
    with TestClient(create_app(ctx, auth=True, jobs=service)) as client:
        yield client, keys, ids, ctx
    service.close()
    ctx.close()


def auth(key: str, ui: bool = True) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **(FROM_UI if ui else {})}


def wait_finished(client: TestClient, key: str, job_id: str) -> dict:
    deadline = time.monotonic() + LIMIT_S
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(key, ui=False)).json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {job}"
        time.sleep(0.05)


def audit(client: TestClient, key: str, **params) -> list[dict]:
    response = client.get("/v1/audit", params=params, headers=auth(key, ui=False))
    assert response.status_code == 200, response.text
    return response.json()["entries"]


def test_admins_see_actions_and_readers_none(plane):
    client, keys, _, _ = plane
    admin = client.get("/ui/partial/w/prod/jobs", headers=auth(keys["admin"])).text
    assert 'data-action="trigger"' in admin and 'data-action="retry"' in admin
    assert "/ui/w/prod/access" in admin and "/ui/w/prod/audit" in admin
    reader = client.get("/ui/partial/w/prod/jobs", headers=auth(keys["reader"]))
    assert reader.status_code == 200 and "user_spend" in reader.text
    assert "data-action" not in reader.text and "/ui/w/prod/audit" not in reader.text
    for page in ("access", "audit"):
        refused = client.get(f"/ui/partial/w/prod/{page}", headers=auth(keys["reader"]))
        assert refused.status_code == 403, page
        assert client.get(f"/ui/partial/w/prod/{page}", headers=auth(keys["admin"])).is_success
    # The overview shows each view's schedule (no scheduler ran here: not planned yet).
    overview = client.get("/ui/partial/w/prod", headers=auth(keys["reader"])).text
    assert "next scheduled run" in overview and "at the scheduler's next tick" in overview


def test_an_admin_triggers_a_job_from_the_ui_and_it_runs(plane):
    client, keys, ids, ctx = plane
    before = {j.id for j in ctx.jobs("user_spend", 100)}
    response = client.post(
        "/v1/jobs", json={"workspace": "prod", "views": ["user_spend"], "full": False},
        headers=auth(keys["admin"]),
    )  # fmt: skip
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert job_id not in before
    job = wait_finished(client, keys["admin"], job_id)
    assert job["status"] in ("succeeded", "warning") and job["progress"], job
    page = client.get("/ui/partial/w/prod/jobs", headers=auth(keys["admin"])).text
    assert job_id in page and "data-refresh" not in page  # nothing left to follow

    (entry,) = [e for e in audit(client, keys["admin"], action="jobs.trigger")
                if e["details"].get("jobs", {}).get("user_spend") == job_id]  # fmt: skip
    assert (entry["actor"], entry["key_id"], entry["via"]) == ("ops", ids["admin"], "ui")
    assert (entry["workspace"], entry["target"], entry["outcome"]) == ("prod", "user_spend", "ok")
    assert ctx.registry.job_request(job_id)["requested_by"] == f"ops ({ids['admin']})"
    shown = client.get("/ui/partial/w/prod/audit", headers=auth(keys["admin"])).text
    assert "jobs.trigger" in shown and ids["admin"] in shown

    # Retry it from its row; cancelling the finished job is a 409, audited as such.
    retried = client.post(f"/v1/jobs/{job_id}/retry", headers=auth(keys["admin"]))
    assert retried.status_code == 202, retried.text
    again = wait_finished(client, keys["admin"], retried.json()["id"])
    assert again["status"] in ("succeeded", "warning") and again["id"] != job_id
    conflict = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(keys["admin"]))
    assert conflict.status_code == 409
    outcomes = {(e["action"], e["target"]): e["outcome"] for e in audit(client, keys["admin"])}
    assert outcomes[("jobs.retry", job_id)] == "ok"
    assert outcomes[("jobs.cancel", job_id)] == "job_conflict"


def test_a_reader_is_refused_and_the_attempt_is_audited(plane):
    client, keys, ids, ctx = plane
    count = len(ctx.jobs(None, 1000))
    job_id = ctx.jobs(None, 1)[0].id
    attempts = [
        ("/v1/jobs", {"workspace": "prod", "views": ["user_spend"]}),
        (f"/v1/jobs/{job_id}/retry", None),
        (f"/v1/jobs/{job_id}/cancel", None),
        ("/v1/access/keys", {"name": "sneaky", "workspace": "prod", "role": "admin"}),
    ]
    for path, body in attempts:
        response = client.post(path, json=body, headers=auth(keys["reader"]))
        assert response.status_code == 403, (path, response.text)
    assert client.get("/v1/audit", headers=auth(keys["reader"], ui=False)).status_code == 403
    assert len(ctx.jobs(None, 1000)) == count
    denied = [e for e in audit(client, keys["admin"], actor="app") if e["outcome"] == "denied"]
    assert {e["action"] for e in denied} >= {"jobs.trigger", "jobs.retry", "jobs.cancel",
                                              "keys.create"}  # fmt: skip
    assert all(e["key_id"] == ids["reader"] and e["workspace"] == "prod" for e in denied)


def test_a_cross_site_post_is_refused_even_with_an_admin_key(plane):
    client, keys, _, ctx = plane
    count = len(ctx.jobs(None, 1000))
    body = {"workspace": "prod", "views": ["user_spend"]}
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"}):  # fmt: skip
        response = client.post(
            "/v1/jobs", json=body, headers={"Authorization": f"Bearer {keys['admin']}", **headers}
        )
        assert response.status_code == 403, headers
        assert "cross-site" in response.json()["error"]["message"]
    assert len(ctx.jobs(None, 1000)) == count
    refused = [e for e in audit(client, keys["admin"], action="jobs.trigger")
               if "cross-site" in e["details"].get("error", "")]  # fmt: skip
    assert len(refused) == 3 and {e["outcome"] for e in refused} == {"denied"}


def test_keys_are_created_listed_and_revoked_from_the_ui(plane):
    client, keys, ids, _ = plane
    body = {"name": "dashboard", "workspace": "prod", "role": "reader", "kind": "service",
            "description": "the ops dashboard"}  # fmt: skip
    created = client.post("/v1/access/keys", json=body, headers=auth(keys["admin"]))
    assert created.status_code == 201, created.text
    new, new_id = created.json()["key"], created.json()["record"]["id"]
    assert client.get("/ui/partial/w/prod", headers=auth(new, ui=False)).status_code == 200
    page = client.get("/ui/partial/w/prod/access", headers=auth(keys["admin"])).text
    assert new_id in page and "the ops dashboard" in page
    assert f'data-key="{new_id}"' in page and new not in page  # the key itself is never shown
    assert "reader in <code>prod</code>" in page and "admin in <code>*</code>" in page
    listed = client.get("/v1/access/keys", headers=auth(keys["admin"], ui=False)).json()["keys"]
    assert {k["id"] for k in listed} >= {new_id, ids["admin"], ids["root"]}

    # A workspace admin may not mint a key for every workspace; an admin of all may.
    wide = {**body, "name": "everything", "workspace": "*"}
    assert client.post("/v1/access/keys", json=wide, headers=auth(keys["admin"])).status_code == 403
    assert client.post("/v1/access/keys", json=wide, headers=auth(keys["root"])).status_code == 201

    revoked = client.post(f"/v1/access/keys/{new_id}/revoke", headers=auth(keys["admin"]))
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert client.get("/ui/partial/w/prod", headers=auth(new, ui=False)).status_code == 401
    missing = client.post("/v1/access/keys/nope/revoke", headers=auth(keys["admin"]))
    assert missing.status_code == 404

    rows = audit(client, keys["admin"])
    outcomes = {(e["action"], e["target"], e["actor"]): e["outcome"] for e in rows}
    assert outcomes[("keys.create", new_id, "ops")] == "ok"
    assert outcomes[("keys.revoke", new_id, "ops")] == "ok"
    assert outcomes[("keys.revoke", "nope", "ops")] == "not_found"
    wide_rows = [e for e in rows if e["action"] == "keys.create" and e["workspace"] == "*"]
    assert {(e["actor"], e["outcome"]) for e in wide_rows} == {("ops", "denied"), ("root", "ok")}


def test_the_jobs_list_takes_every_job_status(plane):
    client, keys, _, ctx = plane
    # A queued job nobody runs (no worker was given it), in the other workspace.
    queued = ctx.registry.queue_job("other", "user_spend", range_start=None, range_end=None,
                                    request={"full": False})  # fmt: skip
    root = auth(keys["root"], ui=False)

    def listed(status: str) -> list[str]:
        response = client.get("/v1/jobs", params={"workspace": "other", "status": status},
                              headers=root)  # fmt: skip
        assert response.status_code == 200, (status, response.text)
        return [j["id"] for j in response.json()["jobs"]]

    assert listed("queued") == [queued]
    assert client.post(f"/v1/jobs/{queued}/cancel", headers=auth(keys["root"])).is_success
    assert listed("cancelled") == [queued] and listed("queued") == []
    assert queued not in listed("succeeded") and len(listed("succeeded")) >= 1
    for status in ("running", "warning", "failed", "abandoned"):
        assert queued not in listed(status)
    bad = client.get("/v1/jobs", params={"status": "done"}, headers=root)
    assert bad.status_code == 400 and "queued" in bad.json()["error"]["details"]["hint"]


def test_a_data_plane_offers_no_admin_actions(plane):
    _, _, _, ctx = plane
    with TestClient(create_app(ctx, auth=False)) as client:
        page = client.get("/ui/partial/w/prod/jobs").text
        assert "data-action" not in page and "/ui/w/prod/audit" not in page
        assert client.get("/ui/partial/w/prod/audit").status_code == 404
        assert client.post("/v1/access/keys", json={"name": "x"}).status_code in (404, 405)
