"""The web UI at /ui, as an operator sees it.

Two parts. With a test client: the shell holds no data and needs no key, every page's content
(``/ui/partial/...``) needs a reader key for its workspace, and text from the registry is escaped.
With a real browser (Playwright driving the system's Chromium) against ``contextkit serve
--no-auth`` in its own process, over a small quickstart copy: open the UI, go to a view and see
its charts, follow the lineage, run the playground for a quickstart user and read the rendered
prompt, search an embedding view. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ops_fixtures import build_repo
from serverproc import running_server

import contextkit
from contextkit.server.app import create_app
from tests.conftest import DATA_END

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# Headless Chromium in a container: no sandbox (root, no user namespaces), no GPU, /tmp for shm.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--headless=new"]


# -- with a test client ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = build_repo(tmp_path_factory.mktemp("ui") / "repo")
    ctx = contextkit.connect(repo, "prod")
    keys = {
        "prod": ctx.access.create_key("ui-prod", workspace="prod", role="reader").key,
        "other": ctx.access.create_key("ui-other", workspace="other", role="reader").key,
        "ingester": ctx.access.create_key("ui-ingest", workspace="prod", role="ingester").key,
    }
    with TestClient(create_app(ctx, auth=True)) as client:
        yield client, keys
    ctx.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_shell_needs_no_key_and_holds_no_data(served):
    client, _ = served
    for path in ("/ui", "/ui/w/prod/views/user_spend", "/ui/static/ui.js", "/ui/static/ui.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "user_spend" not in response.text and "svc" not in response.text
    assert 'data-auth="true"' in client.get("/ui").text
    assert client.get("/ui/static/nope.js").status_code == 404


def test_page_content_needs_a_reader_key_for_its_workspace(served):
    client, keys = served
    path = "/ui/partial/w/prod/views/user_spend"
    assert client.get(path).status_code == 401
    assert client.get(path, headers=bearer("ck_0123456789ab_" + "x" * 43)).status_code == 401
    assert client.get(path, headers=bearer(keys["other"])).status_code == 403
    assert client.get(path, headers=bearer(keys["ingester"])).status_code == 403
    page = client.get(path, headers=bearer(keys["prod"]))
    assert page.status_code == 200 and "user_spend" in page.text
    assert page.headers["server-timing"].startswith("render;dur=")
    # The list of workspaces shows only those the key may read.
    home = client.get("/ui/partial/", headers=bearer(keys["other"])).text
    assert "/ui/w/other" in home and "/ui/w/prod" not in home
    assert client.get("/ui/partial/", headers=bearer(keys["other"])).status_code == 200
    missing = client.get("/ui/partial/w/prod/views/nope", headers=bearer(keys["prod"]))
    assert (
        missing.status_code == 404 and "unknown view 'nope'" in missing.json()["error"]["message"]
    )
    assert client.get("/ui/partial/w/prod/nowhere", headers=bearer(keys["prod"])).status_code == 404


def test_every_page_renders_for_a_reader(served):
    client, keys = served
    pages = ["", "w/prod", "w/prod/lineage", "w/prod/views/user_spend", "w/prod/services/svc",
             "w/prod/jobs", "w/prod/jobs?status=succeeded", "w/prod/alerts", "w/prod/playground",
             "w/prod/search", "w/prod/objects/file_source/events"]  # fmt: skip
    for page in pages:
        response = client.get(f"/ui/partial/{page}", headers=bearer(keys["prod"]))
        assert response.status_code == 200, (page, response.text[:300])
        assert 'class="page' in response.text


def test_registry_text_is_escaped(make_repo):
    root = make_repo(
        {
            "defs.py": """
            from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

            user = Entity(name="user", join_keys=["user_id"])
            events = FileSource(name="events", path="data/events.csv", timestamp_field="ts")

            @batch_feature_view(sources=[events], entities=[user], features=[Attribute("x")],
                                description="<script>alert(1)</script> & more")
            def sneaky(events):
                return f"SELECT user_id, x, ts FROM {events}"

            svc = ContextService(name="svc", features=[sneaky],
                                 description="</script><img src=x onerror=alert(2)>")
            """
        },
        data={"events.csv": "user_id,x,ts\n1,5,2024-05-01T00:00:00Z\n"},
    )
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize()
    with TestClient(create_app(ctx, auth=False)) as client:
        view = client.get("/ui/partial/w/prod/views/sneaky").text
        overview = client.get("/ui/partial/w/prod").text
        playground = client.get("/ui/partial/w/prod/playground").text
    assert "<script>alert(1)</script>" not in view and "&lt;script&gt;alert(1)" in view
    assert "<img src=x" not in overview
    # The playground's data block cannot be closed by text from the registry.
    assert playground.count("</script>") == 1


# -- with a real browser ------------------------------------------------------------------------
def chromium() -> str | None:
    for candidate in (os.environ.get("CONTEXTKIT_CHROMIUM"), *CHROMIUM_CANDIDATES):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


EXTRA_VIEW = '''

@batch_feature_view(
    sources=[orders],
    entities=[user],
    features=[Attribute("amount"), Attribute("status")],
    expect_not_null=["amount"],
    expect_between={"amount": (0, 400)},
    max_drift=0.25,
    batch_schedule=timedelta(hours=1),
)
def last_order(orders):
    """Each user's latest order (with an expectation the quickstart data does not meet)."""
    return f"SELECT user_id, amount, status, ts FROM {orders}"
'''


@pytest.fixture(scope="module")
def browser_server(quickstart_data, tmp_path_factory):
    """The quickstart (small data, a hash embedding model so that nothing heavy loads), two
    materializations a week apart, served by `contextkit serve --no-auth` in its own process."""
    path = chromium()
    if path is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set CONTEXTKIT_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    root = tmp_path_factory.mktemp("ui-browser") / "shop"
    shutil.copytree(quickstart_data, root, ignore=shutil.ignore_patterns(".contextkit"))
    with (root / "contextkit.yaml").open("a") as config:
        config.write("models:\n  minilm: {type: hash, dimension: 64}\n")
    with (root / "features.py").open("a") as features:
        features.write(textwrap.dedent(EXTRA_VIEW))
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=DATA_END - timedelta(days=7))
    ctx.materialize(end=DATA_END)
    user = ctx.get_features("support_assistant", {"user_id": list(range(1, 60))}).to_pandas()
    busy = user.sort_values("user_order_stats.order_count_30d", ascending=False).iloc[0]
    ctx.close()

    log = tmp_path_factory.mktemp("ui-log") / "serve.log"
    with running_server(
        "--no-auth", "--no-access-log", "--workspace", "prod", cwd=root, log_path=log
    ) as server:
        yield {"base": server.base, "chromium": path, "user": busy}


@pytest.mark.slow
def test_the_ui_in_a_real_browser(browser_server):
    from playwright.sync_api import expect, sync_playwright

    base, user = browser_server["base"], browser_server["user"]
    user_id = int(user["user_id"])
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_server["chromium"], args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            # The list of workspaces, then the workspace: its services and views.
            page.goto(base + "/ui")
            page.get_by_role("link", name="prod", exact=True).click()
            expect(page.locator("#views-table")).to_contain_text("user_order_stats")
            expect(page.locator(".card.service")).to_have_count(2)
            expect(page.locator("#views-table")).to_contain_text("last_order")
            page.screenshot(path=str(ARTIFACTS / "ui-workspace.png"), full_page=True)

            # A view: schema, definition and charts (histograms and lines over the two runs).
            page.locator("#views-table").get_by_role("link", name="user_order_stats").click()
            expect(page).to_have_url(base + "/ui/w/prod/views/user_order_stats")
            expect(page.locator("h1")).to_contain_text("user_order_stats")
            card = page.locator('.column-card[data-column="amount_sum_30d"]')
            expect(card.locator("svg.chart-histogram rect.bar")).to_have_count(20)
            box = card.locator("svg.chart-histogram").bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 50
            assert card.locator("svg.chart-line").count() == 2  # null rate and drift over runs
            assert card.locator("svg.chart-line circle.point").count() >= 3  # 2 + 1 (no PSI yet)
            expect(page.locator("#quality")).to_contain_text("drift reference")
            expect(page.locator(".column-card")).to_have_count(12)
            page.screenshot(path=str(ARTIFACTS / "ui-view-full.png"), full_page=True)
            page.evaluate("document.getElementById('quality').scrollIntoView()")
            page.screenshot(path=str(ARTIFACTS / "ui-view.png"))  # the README's picture

            # The view with a failing expectation shows it, and so does the alerts page.
            page.goto(base + "/ui/w/prod/views/last_order")
            expect(page.locator(".alert", has_text="between(amount)")).to_have_count(1)
            page.locator("nav.tabs").get_by_role("link", name="Alerts").click()
            expect(page.locator("#alerts-table")).to_contain_text("values outside [0, 400]")

            # The lineage graph: a box per object, and a click opens it.
            page.locator("nav.tabs").get_by_role("link", name="Lineage").click()
            # 4 sources, 4 feature views and 2 embedding views, 2 services, 1 prompt view
            expect(page.locator("svg.chart-lineage g.node")).to_have_count(13)
            page.screenshot(path=str(ARTIFACTS / "ui-lineage.png"), full_page=True)
            page.locator('svg.chart-lineage g.node[data-node="prompt_view:support_prompt"]').click()
            expect(page.locator("h1")).to_contain_text("support_prompt")

            # The playground: a quickstart user's context, rendered prompt and its token count.
            page.locator("nav.tabs").get_by_role("link", name="Playground").click()
            page.select_option("#pg-service", "support_assistant")
            page.fill("input[name='key:user_id']", str(user_id))
            page.fill("#pg-query", "My hiking boots leak after a week. Can I return them?")
            page.click("#pg-run")
            rendered = page.locator("#pg-prompt-out pre.rendered").first
            expect(rendered).to_contain_text("You are the support assistant of an online shop")
            tier = user["user_profile.tier"]
            expect(rendered).to_contain_text(f"account tier: {tier}")
            count = int(user["user_order_stats.order_count_30d"])
            expect(rendered).to_contain_text(f"completed orders in the last 30 days: {count}")
            expect(page.locator("#pg-prompt-out pre.rendered").nth(1)).to_contain_text("hiking")
            tokens = page.locator("#pg-tokens")
            expect(tokens).to_contain_text("tokens of 1200")
            assert int(tokens.get_attribute("data-tokens")) > 50
            expect(page.locator("#pg-features")).to_contain_text("order_count_30d")
            expect(page.locator("#pg-documents .hit").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "ui-playground.png"), full_page=True)

            # The search page over an embedding view.
            page.locator("nav.tabs").get_by_role("link", name="Search").click()
            page.select_option("#s-view", "product_docs")
            page.select_option("#s-mode", "text")
            page.fill("#s-query", "waterproof boots")
            page.get_by_role("button", name="Search").click()
            expect(page.locator("#s-results .hit").first).to_be_visible()
            expect(page.locator("#s-results .summary")).to_contain_text("results · text")

            # Back and forward work (pages are loaded by the script, with the history API).
            page.go_back()
            expect(page.locator("h1")).to_contain_text("Playground")
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "ui-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert errors == []
