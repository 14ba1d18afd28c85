"""The registry's API-key table, and the in-place migration of a registry written before it."""

from __future__ import annotations

import sqlite3

from contextkit.governance.access import Access
from contextkit.stores.registry import SCHEMA_VERSION, SQLiteRegistry

# The schema a version-1 registry file has on disk (contextkit before API keys).
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE workspaces (name TEXT PRIMARY KEY, live INTEGER NOT NULL, created_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE objects (workspace TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    spec TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (workspace, kind, name));
CREATE TABLE applies (workspace TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,
    applied_by TEXT NOT NULL, summary TEXT NOT NULL, PRIMARY KEY (workspace, version));
CREATE TABLE jobs (id TEXT PRIMARY KEY, workspace TEXT NOT NULL, view TEXT NOT NULL,
    status TEXT NOT NULL, range_start TEXT, range_end TEXT, spec_hash TEXT, rows_offline INTEGER,
    rows_online INTEGER, started_at REAL NOT NULL, finished_at REAL, error TEXT, details TEXT);
CREATE INDEX jobs_by_view ON jobs (workspace, view, started_at);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO workspaces VALUES ('prod', 1, 1700000000.0, 3);
INSERT INTO settings VALUES ('selected_workspace', 'prod');
"""


def test_a_version_1_registry_is_migrated_in_place_and_keeps_its_data(tmp_path):
    path = tmp_path / "registry.db"
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    con.close()

    registry = SQLiteRegistry(path, create=False)

    assert SCHEMA_VERSION >= 2  # API keys arrived in version 2
    [prod] = registry.list_workspaces()
    assert (prod.name, prod.live, prod.version) == ("prod", True, 3)
    assert registry.get_setting("selected_workspace") == "prod"
    new = Access(registry).create_key("app", workspace="prod", role="reader")
    assert [k.id for k in Access(registry).list_keys()] == [new.record.id]
    registry.close()
    con = sqlite3.connect(path)
    version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    con.close()
    # Opening it again is a no-op: the key is still there.
    again = SQLiteRegistry(path, create=False)
    assert again.find_api_key(new.record.id) is not None
    again.close()


def test_a_revoke_is_seen_through_the_change_token_of_every_connection(tmp_path):
    """The server's key cache is invalidated by ``change_token()``: a commit from another
    registry object (another process, in effect) and one from this object's own connection must
    both change it."""
    path = tmp_path / "registry.db"
    server, cli = SQLiteRegistry(path), SQLiteRegistry(path)
    server.create_workspace("prod", live=True)
    key = Access(cli).create_key("app", workspace="prod", role="reader")

    before = server.change_token()
    Access(cli).revoke(key.record.id)
    assert server.change_token() != before

    before = server.change_token()
    server.set_setting("anything", "1")
    assert server.change_token() != before
    server.close()
    cli.close()
