"""Admin actions in the web UI, in a real browser (Playwright driving the system's Chromium)
against a real `contextkit control-plane` process with API keys: an admin signs in, runs a job
from the Jobs page and watches it finish (the page follows it live), retries it, creates and
revokes a key on the Access page and finds all of it on the Audit page; a reader sees no buttons
and the API refuses it. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from ops_fixtures import build_repo
from serverproc import CLI, READY_TIMEOUT_S, ServerProcess
from test_ui import ARTIFACTS, CHROMIUM_ARGS, chromium

import contextkit

LIMIT_MS = 120_000  # a job on a loaded machine: waited for, never asserted on


class ControlPlane(ServerProcess):
    """``contextkit control-plane`` of ``repo``'s prod workspace, with auth, no scheduler."""

    def __init__(self, repo, log_path) -> None:
        self.port = None
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [CLI, "control-plane", "--repo", str(repo), "--workspace", "prod",
             "--no-scheduler", "--port", "0"],
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    path = chromium()
    if path is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set CONTEXTKIT_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    tmp = tmp_path_factory.mktemp("ui-admin-browser")
    repo = build_repo(tmp / "repo", ("prod",))
    ctx = contextkit.connect(repo, "prod")
    keys = {
        "admin": ctx.access.create_key("ops", workspace="prod", role="admin").key,
        "reader": ctx.access.create_key("app", workspace="prod", role="reader").key,
    }
    ctx.close()
    server = ControlPlane(repo, tmp / "control-plane.log")
    try:
        server.wait_ready(READY_TIMEOUT_S)
        yield {"base": server.base, "chromium": path, "keys": keys}
    finally:
        server.stop()


def sign_in(page, base: str, key: str) -> None:
    page.goto(base + "/ui")
    page.fill("#login-key", key)
    page.click("#login-form button[type=submit]")


@pytest.mark.slow
def test_admin_actions_in_a_real_browser(plane):
    from playwright.sync_api import expect, sync_playwright

    base, keys = plane["base"], plane["keys"]
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    finished = re.compile(r"succeeded|warning")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=plane["chromium"], args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            sign_in(page, base, keys["admin"])
            page.get_by_role("link", name="prod", exact=True).click()
            expect(page.locator("#views-table")).to_contain_text("next scheduled run")
            tabs = page.locator("nav.tabs")
            expect(tabs.get_by_role("link", name="Audit")).to_be_visible()

            # Run a job from the Jobs page; the page follows it until it finished.
            tabs.get_by_role("link", name="Jobs").click()
            page.select_option("form[data-action=trigger] select[name=view]", "user_spend")
            page.click("#run-job")
            result = page.locator("[data-slot=action-result]")
            expect(result).to_contain_text("Queued: user_spend (job ")
            job_id = re.search(r"job (\w+)", result.inner_text()).group(1)
            row = page.locator(f"#jobs-table tr[data-job='{job_id}']")
            expect(row.locator(".job-status")).to_have_text(finished, timeout=LIMIT_MS)
            page.screenshot(path=str(ARTIFACTS / "ui-admin-jobs.png"), full_page=True)

            # Retry it from its row: a new job, followed the same way.
            row.locator("button[data-action=retry]").click()
            expect(result).to_contain_text("queued again")
            retried = re.search(r"Job (\w+) queued", result.inner_text()).group(1)
            assert retried != job_id
            expect(page.locator(f"#jobs-table tr[data-job='{retried}'] .job-status")).to_have_text(
                finished, timeout=LIMIT_MS
            )

            # Create a key on the Access page (shown once), then revoke it.
            tabs.get_by_role("link", name="Access").click()
            page.fill("form[data-action=create-key] input[name=name]", "dashboard")
            page.click("#create-key")
            expect(page.locator("code.new-key")).to_contain_text("ck_")
            new_id = page.locator("code.new-key").inner_text().split("_")[1]
            expect(page.locator("#roles-table")).to_contain_text("dashboard")
            page.screenshot(path=str(ARTIFACTS / "ui-admin-access.png"), full_page=True)
            page.click(f"#keys-table button[data-key='{new_id}']")
            expect(result).to_contain_text(f"Revoked key {new_id}")
            expect(page.locator(f"#keys-table tr[data-key='{new_id}']")).to_have_count(0)

            # Everything is on the Audit page, as the signed-in key, through the UI.
            tabs.get_by_role("link", name="Audit").click()
            table = page.locator("#audit-table")
            for action in ("jobs.trigger", "jobs.retry", "keys.create", "keys.revoke"):
                entry = table.locator(f"tr[data-action='{action}']").first
                expect(entry.locator(".audit-actor")).to_have_text("ops")
                expect(entry.locator(".audit-outcome")).to_have_text("ok")
                expect(entry).to_contain_text("ui")
            page.screenshot(path=str(ARTIFACTS / "ui-admin-audit.png"), full_page=True)

            # A reader: no buttons, no admin tabs, and the API refuses the action.
            page.click("#sign-out")
            sign_in(page, base, keys["reader"])
            page.goto(base + "/ui/w/prod/jobs")
            expect(page.locator("#jobs-table")).to_contain_text(job_id)
            expect(page.locator("[data-action]")).to_have_count(0)
            expect(page.locator("nav.tabs").get_by_role("link", name="Audit")).to_have_count(0)
            status = page.evaluate(
                """async (key) => (await fetch("/v1/jobs", {method: "POST",
                     headers: {"Authorization": "Bearer " + key,
                               "content-type": "application/json"},
                     body: JSON.stringify({views: ["user_spend"]})})).status""",
                keys["reader"],
            )
            assert status == 403
        finally:
            browser.close()
    assert errors == []
