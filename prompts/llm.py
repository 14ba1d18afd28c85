"""LLM completions through litellm, with bounded retries and errors the server can map to HTTP.

>>> import asyncio
>>> from contextkit.prompts.llm import complete, stream_complete
>>> messages = [{"role": "user", "content": "Where is my order?"}]
>>> result = asyncio.run(complete(messages, "openai/gpt-4o-mini", params={"temperature": 0}))
... # doctest: +SKIP
>>> result.text, result.usage["total_tokens"], result.latency_ms  # doctest: +SKIP
('Your order shipped yesterday.', 31, 412.5)
>>> async def show():
...     async for delta in stream_complete(messages, "openai/gpt-4o-mini"):
...         print(delta, end="")
>>> asyncio.run(show())  # doctest: +SKIP

Any litellm model name works (``openai/...``, ``anthropic/...``, ``ollama/...``); the API key is
read from the provider's usual variable (``OPENAI_API_KEY``...) unless ``api_key`` is passed, and
``api_base`` points at a compatible server (a local vLLM, the test stub).

Retries: timeouts, dropped connections, 5xx and 429 answers are retried up to ``retries`` times
(so ``retries + 1`` calls at most) with exponential backoff (``backoff * 2**attempt`` seconds plus
up to 10% jitter, capped at 8 s). 4xx answers are not retried. litellm's own retries are turned
off so the bound holds. ``timeout`` bounds each attempt (for a stream: the wait for each chunk).
A stream is retried only until its first chunk arrived; later failures are raised as they are.

Failures raise an :class:`LLMError` subclass whose ``http_status`` the server answers with:
:class:`LLMTimeoutError` 504, :class:`LLMProviderError` 502, :class:`LLMAuthError` 502 (the hint
names the API key variable), :class:`LLMRateLimitError` 503, :class:`LLMBadRequestError` 502;
a bare :class:`LLMError` with 500 when litellm is not installed.

litellm is imported on first use (it takes seconds), configured not to fetch its model cost map
or anything else over the network (see ``_litellm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMProviderError,
    LLMRateLimitError,
    LLMTimeoutError,
)

__all__ = ["CompletionResult", "complete", "stream_complete"]

DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 8.0
# Arguments complete() sets itself; `params` may not override them.
_RESERVED = frozenset(
    {"model", "messages", "stream", "timeout", "api_base", "api_key", "num_retries", "max_retries"}
)


@dataclass(frozen=True)
class CompletionResult:
    """A finished completion. ``usage`` holds ``prompt_tokens``, ``completion_tokens`` and
    ``total_tokens`` (0 when the provider sent none); ``latency_ms`` covers all attempts."""

    text: str
    model: str
    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None
    latency_ms: float = 0.0
    attempts: int = 1


async def complete(
    messages: Sequence[Mapping[str, Any]] | str,
    model: str,
    *,
    params: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    api_base: str | None = None,
    api_key: str | None = None,
) -> CompletionResult:
    """One chat completion. ``messages`` are ``{"role", "content"}`` dicts (a string is sent as
    one user message); ``params`` are passed to ``litellm.acompletion`` (``temperature``,
    ``max_tokens``, ``response_format``...). Raises :class:`LLMError` subclasses."""
    call = _call_arguments(messages, model, params, timeout, api_base, api_key)
    litellm = _load()
    started = time.perf_counter()
    attempt = 0
    while True:
        attempt += 1
        try:
            async with asyncio.timeout(timeout):
                response = await litellm.acompletion(**call)
            break
        except Exception as error:
            mapped, retryable = _map_error(error, model, attempt, timeout)
            if not retryable or attempt > retries:
                raise mapped from error
        await asyncio.sleep(_backoff_delay(backoff, attempt))
    latency_ms = (time.perf_counter() - started) * 1000
    return _result(response, model, latency_ms, attempt)


async def stream_complete(
    messages: Sequence[Mapping[str, Any]] | str,
    model: str,
    *,
    params: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    api_base: str | None = None,
    api_key: str | None = None,
) -> AsyncIterator[str]:
    """Stream a chat completion as text deltas (empty deltas are skipped). Same arguments and
    errors as :func:`complete`; ``timeout`` bounds the wait for each chunk."""
    call = {**_call_arguments(messages, model, params, timeout, api_base, api_key), "stream": True}
    litellm = _load()
    attempt = 0
    while True:
        attempt += 1
        stream = None
        try:
            async with asyncio.timeout(timeout):
                stream = await litellm.acompletion(**call)
            iterator = aiter(stream)
            async with asyncio.timeout(timeout):
                first = await anext(iterator, None)
            break
        except Exception as error:
            await _close(stream)
            mapped, retryable = _map_error(error, model, attempt, timeout)
            if not retryable or attempt > retries:
                raise mapped from error
        await asyncio.sleep(_backoff_delay(backoff, attempt))

    try:
        chunk = first
        while chunk is not None:
            delta = _delta_text(chunk)
            if delta:
                yield delta
            async with asyncio.timeout(timeout):
                chunk = await anext(iterator, None)
    except Exception as error:
        raise _map_error(error, model, attempt, timeout)[0] from error
    finally:
        await _close(stream)


# -- internals ---------------------------------------------------------------------------------


def _load() -> Any:
    try:
        from ._litellm import load_litellm

        return load_litellm()
    except ImportError as error:
        raise LLMError(
            f"litellm is not installed ({error})",
            hint="install the LLM extra: pip install 'contextkit[llm]'",
            http_status=500,
        ) from None


def _call_arguments(
    messages: Sequence[Mapping[str, Any]] | str,
    model: str,
    params: Mapping[str, Any] | None,
    timeout: float,
    api_base: str | None,
    api_key: str | None,
) -> dict[str, Any]:
    if not model:
        raise ValueError("model is required, e.g. 'openai/gpt-4o-mini'")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    clash = sorted(_RESERVED & set(params or {}))
    if clash:
        raise ValueError(f"params may not set {', '.join(clash)}: pass them as arguments")
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    call: dict[str, Any] = {
        **(params or {}),
        "model": model,
        "messages": [dict(message) for message in messages],
        "timeout": timeout,
        # We retry ourselves, so the bound in the docstring holds.
        "num_retries": 0,
        "max_retries": 0,
    }
    if api_base is not None:
        call["api_base"] = api_base
    if api_key is not None:
        call["api_key"] = api_key
    return call


def _backoff_delay(backoff: float, attempt: int) -> float:
    delay = min(backoff * 2 ** (attempt - 1), MAX_BACKOFF)
    return delay * (1 + random.random() * 0.1)


def _map_error(
    error: BaseException, model: str, attempt: int, timeout: float
) -> tuple[LLMError, bool]:
    """Our error for a litellm/openai/asyncio exception (by class name, then HTTP status), and
    whether retrying may help. Class names, not classes, so litellm need not be imported here."""
    if isinstance(error, LLMError):
        return error, False
    status = getattr(error, "status_code", None)
    status = status if isinstance(status, int) else None
    detail = _short(getattr(error, "message", None) or str(error) or type(error).__name__)
    name = type(error).__name__
    common: dict[str, Any] = {"model": model, "provider_status": status, "attempts": attempt}
    tries = f" after {attempt} attempt{'s' if attempt > 1 else ''}"

    if isinstance(error, TimeoutError) or name in ("Timeout", "APITimeoutError"):
        return LLMTimeoutError(
            f"LLM call to {model!r} timed out after {timeout:g} s{tries}",
            hint="raise the timeout, or check that the provider is reachable",
            **{**common, "provider_status": None},
        ), True
    if name in ("AuthenticationError", "PermissionDeniedError") or status in (401, 403):
        key_var = _api_key_variable(model)
        return LLMAuthError(
            f"the provider rejected the credentials for {model!r} (HTTP {status}): {detail}",
            hint=f"check the API key: set {key_var} in the server's environment "
            "(or pass api_key=...)",
            **common,
        ), False
    if name == "RateLimitError" or status == 429:
        return LLMRateLimitError(
            f"the provider rate-limited calls to {model!r}{tries}: {detail}",
            hint="slow down, or raise the provider quota",
            **common,
        ), True
    if name == "ContextWindowExceededError":
        return LLMBadRequestError(
            f"the prompt is too long for {model!r}: {detail}",
            hint="lower the prompt's max_tokens budget or top_k",
            **common,
        ), False
    if status is not None and 400 <= status < 500:
        return LLMBadRequestError(
            f"the provider refused the request to {model!r} (HTTP {status}): {detail}",
            hint="check the model name and the completion parameters",
            **common,
        ), False
    retryable = (status is not None and status >= 500) or name in (
        "APIConnectionError",
        "InternalServerError",
        "ServiceUnavailableError",
        "BadGatewayError",
        "APIError",
    )
    where = f"HTTP {status}" if status else name
    return LLMProviderError(
        f"LLM call to {model!r} failed ({where}){tries}: {detail}",
        hint="the provider or the network failed; retry later" if retryable else None,
        **common,
    ), retryable


def _api_key_variable(model: str) -> str:
    try:
        litellm = _load()
        missing = litellm.validate_environment(model=model).get("missing_keys") or []
        if missing:
            return " / ".join(missing)
        provider = litellm.get_llm_provider(model)[1]
    except Exception:
        provider = model.split("/", 1)[0] if "/" in model else "openai"
    return f"{provider.upper()}_API_KEY"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _result(response: Any, model: str, latency_ms: float, attempts: int) -> CompletionResult:
    choice = response.choices[0] if getattr(response, "choices", None) else None
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None) or ""
    usage_obj = getattr(response, "usage", None)
    usage = {
        key: int(getattr(usage_obj, key, 0) or 0)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    return CompletionResult(
        text=text,
        model=getattr(response, "model", None) or model,
        usage=usage,
        finish_reason=getattr(choice, "finish_reason", None),
        latency_ms=round(latency_ms, 2),
        attempts=attempts,
    )


def _delta_text(chunk: Any) -> str:
    choices = getattr(chunk, "choices", None)
    if not choices:
        return ""
    delta = getattr(choices[0], "delta", None)
    return getattr(delta, "content", None) or ""


async def _close(stream: Any) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is None:
        return
    with contextlib.suppress(Exception):  # closing a broken stream must not hide the real error
        await closer()
