"""The UI's first paint without a script (issue 18 item 9): with ``--no-auth`` the page's content
is rendered into the shell; with auth the shell holds no data and says, in <noscript>, where the
same data is."""

from __future__ import annotations

from fastapi.testclient import TestClient
from ops_fixtures import build_repo

import contextkit
from contextkit.server.app import create_app


def test_without_auth_the_shell_holds_the_page_and_with_auth_a_noscript_note(tmp_path):
    repo = build_repo(tmp_path / "repo")
    ctx = contextkit.connect(repo, "prod")
    try:
        with TestClient(create_app(ctx, auth=False)) as client:
            home = client.get("/ui")
            assert home.status_code == 200
            assert "<h1>Workspaces</h1>" in home.text and "/ui/w/prod" in home.text
            assert "Loading…" not in home.text
            view = client.get("/ui/w/prod/views/user_spend")
            assert view.status_code == 200 and "user_spend" in view.text
            # A page that does not exist still answers the shell; the script shows the error.
            missing = client.get("/ui/w/prod/views/nope")
            assert missing.status_code == 200 and "Loading…" in missing.text
        with TestClient(create_app(ctx, auth=True)) as client:
            shell = client.get("/ui").text
            assert "user_spend" not in shell and "/ui/w/prod" not in shell
            assert "<noscript>" in shell and "contextkit status" in shell
    finally:
        ctx.close()
