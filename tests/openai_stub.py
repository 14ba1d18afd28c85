"""A local stand-in for the OpenAI HTTP API, for tests that must not reach the network.

Serves, on 127.0.0.1 and a free port, from a background thread (stdlib ``http.server``):

- ``POST /v1/chat/completions``: answers ``"echo: <last user message>"`` (deterministic), as one
  JSON body or, with ``"stream": true``, as SSE chunks (role chunk, one chunk per word, a
  ``finish_reason: "stop"`` chunk, a usage chunk if ``stream_options.include_usage``, then
  ``data: [DONE]``). Usage counts are word counts.
- ``POST /v1/embeddings``: one unit-length vector per input (a string or a list of strings),
  derived from a SHA-256 of the text, so equal texts get equal vectors; ``dimension`` (default
  8) or the request's ``dimensions`` sets the length; ``encoding_format: "base64"`` is honoured
  (the openai SDK asks for it by default).
- ``GET /v1/models``: the ``models`` given to the constructor.
- ``POST .../rerank`` (Cohere's shape, which litellm's ``rerank`` sends for ``cohere/...`` models):
  scores each document by how many of the query's words it holds, best first, ``top_n`` of them.

Failure modes, switchable per test (they apply to every path unless ``path=`` narrows them, and
to the next ``times`` requests, or to all while set when ``times`` is None):

- ``stub.fail(500)`` / ``stub.fail(401)`` / ``stub.fail(429, times=1)``: answer with that status
  and an OpenAI-style error body;
- ``stub.delay(2.0)``: sleep before answering (to trigger client timeouts);
- ``stub.hold(path=...)`` ... ``stub.release()``: keep matching requests unanswered until released
  (to catch a client in the middle of a call, e.g. a server warming up);
- ``OpenAIStub(api_key="test")``: answer 401 unless ``Authorization: Bearer test`` is sent;
- ``stub.reset()``: clear failure modes and recorded requests.

Every request is recorded in ``stub.requests`` (method, path, headers, parsed JSON body).

Use it as a context manager::

    from openai_stub import OpenAIStub

    with OpenAIStub(dimension=16) as stub:
        litellm.embedding(model="openai/stub-embedding", input=["a", "b"],
                          api_base=stub.base_url, api_key="test")
        assert stub.requests[-1].json["input"] == ["a", "b"]

or through the pytest fixtures defined below; import them into a ``conftest.py`` to use them
(``tests/`` is on ``sys.path`` because ``tests/conftest.py`` lives there)::

    from openai_stub import make_openai_stub, openai_stub  # noqa: F401  (fixtures)

    def test_hosted_embeddings(openai_stub):
        ...  # openai_stub.base_url is "http://127.0.0.1:<port>/v1"

    def test_wide_vectors(make_openai_stub):
        stub = make_openai_stub(dimension=384)   # stopped at teardown

For hosted-embedding tests: point the encoder at ``stub.base_url`` with any model name under
``openai/`` and any API key; vectors are normalised, deterministic per text, and
``OpenAIStub.vector_for(text, dimension)`` returns the exact vector the server sends, so a test can
compare search results against an in-test computation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

DEFAULT_MODELS = ("stub-model", "stub-embedding")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stub received (``json`` is None when the body was not JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any


@dataclass
class _Failure:
    kind: str  # "status", "delay" or "hold"
    value: float
    times: int | None
    path: str | None
    message: str | None = None
    used: int = field(default=0)
    after: int = 0  # matching requests answered normally before this failure starts
    skipped: int = field(default=0)

    def applies(self, path: str) -> bool:
        return (self.path is None or path.startswith(self.path)) and (
            self.times is None or self.used < self.times
        )


class OpenAIStub:
    """A local OpenAI-compatible server. ``url`` is ``http://127.0.0.1:<port>``, ``base_url``
    is ``url + "/v1"`` (what litellm's ``api_base`` and the openai SDK's ``base_url`` take)."""

    def __init__(
        self,
        *,
        dimension: int = 8,
        models: tuple[str, ...] = DEFAULT_MODELS,
        api_key: str | None = None,
    ) -> None:
        self.dimension = dimension
        self.models = models
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OpenAIStub:
        stub = self

        class Handler(_Handler):
            owner = stub

        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-stub",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in delay()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stub is not running: call start() or use `with`")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def embedding_model(self, *, dimension: int = 8, key_env: str = "STUB_OPENAI_KEY") -> dict:
        """A repo's ``models:`` entry for the stub's embedding model (no retries, a long timeout:
        a test may hold its calls)."""
        return {
            "type": "litellm", "model": "openai/stub-embedding", "api_base": self.base_url,
            "dimension": dimension, "api_key_env": key_env, "max_retries": 0, "timeout_s": 600,
        }  # fmt: skip

    # -- failure modes -----------------------------------------------------------------------

    def fail(
        self,
        status: int = 500,
        *,
        times: int | None = None,
        path: str | None = None,
        message: str | None = None,
        after: int = 0,
    ) -> None:
        """Answer ``status`` with an OpenAI-style error body (for ``times`` requests, or until
        ``reset``); ``path`` (a prefix such as ``"/v1/embeddings"``) narrows it; ``after``
        lets that many matching requests through first (a failure half-way through a job)."""
        with self._lock:
            self._failures.append(_Failure("status", status, times, path, message, after=after))

    def delay(self, seconds: float, *, times: int | None = None, path: str | None = None) -> None:
        """Sleep ``seconds`` before answering (for ``times`` requests, or until ``reset``)."""
        with self._lock:
            self._failures.append(_Failure("delay", seconds, times, path))

    def hold(self, *, path: str | None = None) -> None:
        """Keep matching requests unanswered until :meth:`release` (or ``stop``)."""
        with self._lock:
            self._released.clear()
            self._failures.append(_Failure("hold", 0.0, None, path))

    def release(self) -> None:
        """Answer the requests :meth:`hold` keeps waiting, and hold no new ones."""
        with self._lock:
            self._failures[:] = [f for f in self._failures if f.kind != "hold"]
            self._released.set()

    def reset(self) -> None:
        """Forget failure modes and recorded requests."""
        with self._lock:
            self._failures.clear()
            self.requests.clear()

    # -- what tests assert on ----------------------------------------------------------------

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests whose path starts with ``path``."""
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path)]

    @staticmethod
    def answer_for(messages: list[dict[str, Any]]) -> str:
        """The reply the stub gives to these chat messages."""
        return f"echo: {_last_user_text(messages)}"

    @staticmethod
    def vector_for(text: str, dimension: int) -> list[float]:
        """The embedding the stub returns for ``text``: unit length, deterministic."""
        values: list[float] = []
        counter = 0
        while len(values) < dimension:
            digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
            for (word,) in struct.iter_unpack(">I", digest):
                values.append(word / 0xFFFFFFFF * 2.0 - 1.0)
            counter += 1
        values = values[:dimension]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        return [v / norm for v in values]

    # -- used by the handler -----------------------------------------------------------------

    def _record_and_plan(self, request: RecordedRequest) -> tuple[float, _Failure | None]:
        """Record the request; return (seconds to sleep, status failure to answer with)."""
        with self._lock:
            self.requests.append(request)
            sleep, status = 0.0, None
            for failure in self._failures:
                if not failure.applies(request.path):
                    continue
                if failure.kind == "hold":
                    sleep = math.inf
                elif failure.kind == "delay" and not sleep:
                    failure.used += 1
                    sleep = failure.value
                elif failure.kind == "status" and status is None:
                    if failure.skipped < failure.after:
                        failure.skipped += 1
                        continue
                    failure.used += 1
                    status = failure
            return sleep, status


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = self.path.split("?", 1)[0]
        request = RecordedRequest(
            method, path, {k.lower(): v for k, v in self.headers.items()}, body
        )
        stub = self.owner
        sleep, failure = stub._record_and_plan(request)
        if sleep == math.inf:
            while not stub._released.wait(0.05):
                if stub._stopping.is_set():
                    return
        elif sleep and stub._stopping.wait(sleep):
            return
        try:
            if stub.api_key is not None and request.headers.get("authorization") != (
                f"Bearer {stub.api_key}"
            ):
                self._error(401, "Incorrect API key provided.", "invalid_api_key")
            elif failure is not None:
                self._error(int(failure.value), failure.message)
            elif method == "GET" and path == "/v1/models":
                self._models()
            elif method == "POST" and path == "/v1/chat/completions":
                self._chat(body or {})
            elif method == "POST" and path == "/v1/embeddings":
                self._embeddings(body or {})
            elif method == "POST" and path.endswith("/rerank"):
                self._rerank(body or {})
            else:
                self._error(404, f"Unknown route {method} {path}", "unknown_url")
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts)
            pass

    # -- responses ---------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str | None = None, code: str | None = None) -> None:
        kinds = {
            401: ("invalid_request_error", "Incorrect API key provided."),
            404: ("invalid_request_error", "Not found."),
            429: ("rate_limit_error", "Rate limit reached."),
        }
        kind, default = kinds.get(status, ("server_error", "The stub failed on purpose."))
        error = {"message": message or default, "type": kind, "param": None, "code": code}
        self._send_json(status, {"error": error})

    def _rerank(self, body: dict[str, Any]) -> None:
        words = set(str(body.get("query", "")).lower().split())
        scored = [
            {"index": i, "relevance_score": float(len(words & set(str(d).lower().split())))}
            for i, d in enumerate(body.get("documents") or [])
        ]
        scored.sort(key=lambda r: -r["relevance_score"])
        top = body.get("top_n") or len(scored)
        meta = {"billed_units": {"search_units": 1}}
        self._send_json(200, {"id": "rerank-stub", "results": scored[:top], "meta": meta})

    def _models(self) -> None:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "stub"}
            for model in self.owner.models
        ]
        self._send_json(200, {"object": "list", "data": data})

    def _chat(self, body: dict[str, Any]) -> None:
        model = body.get("model", "stub-model")
        answer = OpenAIStub.answer_for(body.get("messages") or [])
        prompt_tokens = sum(
            len(_content_text(m.get("content")).split()) for m in body.get("messages") or []
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(answer.split()),
            "total_tokens": prompt_tokens + len(answer.split()),
        }
        completion_id = "chatcmpl-stub-" + hashlib.sha256(answer.encode()).hexdigest()[:12]
        created = int(time.time())
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        words = answer.split(" ")
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        events.append(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk({}), "choices": [], "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _embeddings(self, body: dict[str, Any]) -> None:
        raw = body.get("input")
        if raw is None:
            self._error(400, "'input' is required", "missing_input")
            return
        # A string, a list of strings, or token arrays (hashed by their repr).
        inputs = [raw] if isinstance(raw, str) else list(raw)
        if inputs and isinstance(inputs[0], int):
            inputs = [raw]
        dimension = int(body.get("dimensions") or self.owner.dimension)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = OpenAIStub.vector_for(item if isinstance(item, str) else repr(item), dimension)
            embedding: Any = vector
            if as_base64:
                embedding = base64.b64encode(struct.pack(f"<{dimension}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(str(item).split()) for item in inputs)
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "stub-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for tests that need a dead address)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def make_openai_stub() -> Iterator[Callable[..., OpenAIStub]]:
    """Factory fixture: ``make_openai_stub(dimension=..., models=..., api_key=...)`` starts a
    stub; every stub it started is stopped at teardown."""
    started: list[OpenAIStub] = []

    def make(**options: Any) -> OpenAIStub:
        stub = OpenAIStub(**options).start()
        started.append(stub)
        return stub

    yield make
    for stub in started:
        stub.stop()


@pytest.fixture
def openai_stub(make_openai_stub: Callable[..., OpenAIStub]) -> OpenAIStub:
    """A running stub with default options, stopped after the test."""
    return make_openai_stub()
