"""A small repo whose one prompt view completes through litellm, and a catch-all HTTP server.

For the LLM tests of the server: ``build_llm_repo(root, llm={...})`` writes, applies and
materializes a repo (one entity, one batch feature view, the prompt view ``ask`` on
``openai/gpt-4o-mini`` with ``temperature=0.2``, the service ``assistant``); ``CatchAll`` records
every request any client sends it (an attacker's server, or a provider that must not be called).
"""

from __future__ import annotations

import secrets
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import contextkit

T0 = datetime(2024, 5, 1, tzinfo=UTC)
CONTEXT = {"service": "assistant", "entities": {"user_id": 1}, "query": "hi", "complete": True}
CHAT = {"model": "contextkit/assistant", "messages": [{"role": "user", "content": "hi"}]}

DEFS = """\
from contextkit import ContextService, Entity, FileSource, PromptView, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql")
def user_x(events):
    return f"SELECT user_id, x, ts FROM {events}"

ask = PromptView(
    name="ask",
    template="x={{ features.user_x.x }} Q: {{ query }}",
    features=[user_x],
    model="openai/gpt-4o-mini",
    params={"temperature": 0.2},
)
assistant = ContextService(name="assistant", features=[user_x], prompts=["ask"])
"""


class CatchAll:
    """A threading HTTP server on 127.0.0.1 that records every request it gets and answers 500."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body.decode("utf-8", "replace"),
                    }
                )
                payload = b'{"error": {"message": "caught", "type": "server_error"}}'
                self.send_response(500)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _record

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CatchAll:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def build_llm_repo(root: Path, llm: dict[str, Any], defs: str = DEFS) -> contextkit.Context:
    """Write the repo at ``root`` with ``llm:`` settings, apply it to a live ``prod`` workspace
    and materialize it; returns the connected context (close it)."""
    (root / "data").mkdir(parents=True)
    settings = "".join(f"  {key}: {value}\n" for key, value in llm.items())
    (root / "contextkit.yaml").write_text(
        textwrap.dedent(
            """\
            project: llm
            registry: .contextkit/registry.db
            online_store: {type: sqlite, path: .contextkit/online.db}
            offline_store: {type: parquet, path: .contextkit/offline}
            """
        )
        + ("llm:\n" + settings if settings else "")
    )
    # A module name of its own: repo modules are cached by name across tests.
    (root / f"llm_defs_{secrets.token_hex(4)}.py").write_text(defs)
    events = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "x": pa.array([1.5, 2.5], pa.float64()),
            "ts": pa.array([T0, T0 + timedelta(hours=1)], pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(events, root / "data" / "events.parquet")
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=T0 + timedelta(days=1))
    return ctx
