"""Fixtures for the prompts layer: the OpenAI stub and one event loop for async tests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from openai_stub import make_openai_stub, openai_stub  # noqa: F401  (fixtures)

T = TypeVar("T")


@pytest.fixture(scope="session")
def arun() -> Iterator[Callable[[Awaitable[T]], T]]:
    """Run a coroutine to completion: ``arun(complete(...))``.

    One event loop for the whole session, like a server has: litellm keeps its HTTP clients and
    logging worker per loop and warns when the loop changes between calls.
    """
    with asyncio.Runner() as runner:
        yield runner.run


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection or resolve a name from Python code."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
