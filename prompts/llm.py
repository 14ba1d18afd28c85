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

``params`` are generation parameters only, checked against an allow list,
:data:`GENERATION_PARAMS` (``temperature``, ``max_tokens``, ``stop``, ``response_format``...):
whoever chooses them (an HTTP request, a prompt view) must not choose where the call goes or what
it carries, so ``base_url``, ``api_base``, ``api_key``, ``extra_headers``, ``mock_response``... are
refused with :class:`LLMParamError` (400) before anything is sent. :func:`check_generation_params`
is the one check; :func:`check_model` says whether litellm knows a model name (offline).

Retries: timeouts, dropped connections, 5xx and 429 answers are retried up to ``retries`` times
(so ``retries + 1`` calls at most) with exponential backoff (``backoff * 2**attempt`` seconds plus
up to 10% jitter, capped at 8 s). 4xx answers are not retried. litellm's own retries are turned
off so the bound holds. ``timeout`` bounds each attempt (for a stream: the wait for each chunk).
A stream is retried only until its first chunk arrived; later failures are raised as they are.

Failures raise an :class:`LLMError` subclass whose ``http_status`` the server answers with:
:class:`LLMTimeoutError` 504, :class:`LLMProviderError` 502, :class:`LLMRateLimitError` 503,
:class:`LLMBadRequestError` 502; a configuration error, :class:`LLMNotConfiguredError` 503, when
the API key is missing (checked before the first call) or rejected (:class:`LLMAuthError`; the
hint names the key variable) or litellm knows no such model or provider: never retried, since
only the operator can fix it. A bare :class:`LLMError` with 500 when litellm is not installed.

litellm is imported on first use (it takes seconds), configured not to fetch its model cost map
or anything else over the network (see ``_litellm``).

``model="contextkit/echo"`` (:data:`ECHO_MODEL`) is answered here, without litellm, a key or a
network: a deterministic model to try completions with. It answers with the last user message
it was sent, after a line counting what it received; ``max_tokens`` cuts the answer after that
many words, and a stream yields it word by word:

>>> result = asyncio.run(complete(messages, "contextkit/echo"))
>>> print(result.text)
[contextkit/echo] 1 message(s), 18 characters. Last user message:
Where is my order?
>>> result.usage, result.finish_reason
({'prompt_tokens': 4, 'completion_tokens': 12, 'total_tokens': 16}, 'stop')
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMNotConfiguredError,
    LLMParamError,
    LLMProviderError,
    LLMRateLimitError,
    LLMTimeoutError,
)

__all__ = [
    "ECHO_MODEL",
    "GENERATION_PARAMS",
    "GENERATION_PARAM_TYPES",
    "CompletionResult",
    "check_generation_params",
    "check_model",
    "complete",
    "stream_complete",
]

# The built-in deterministic model: answered locally (see the module's docstring).
ECHO_MODEL = "contextkit/echo"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 8.0

_NUMBER, _INTEGER, _STRING, _OBJECT = "a number", "an integer", "a string", "an object"
_STOP = "a string or a list of strings"
# The generation parameters a request or a prompt view may set, with the JSON type each takes.
# An allow list, not a block list: litellm takes hundreds of keyword arguments, and some choose
# where the call goes and what it carries (base_url, api_base, api_key, extra_headers, headers,
# custom_llm_provider, extra_body, mock_response, metadata callbacks...); one of those in a
# request would send the server's provider key anywhere. Left out on purpose, though harmless:
# `n` (the answer is one choice), `tools`/`tool_choice`/`parallel_tool_calls`/`functions` and
# `logprobs`/`top_logprobs` (the answer carries text only: tool calls and log probabilities
# would be dropped without a word). Each name here is an OpenAI chat parameter litellm maps to
# every provider that has it.
GENERATION_PARAM_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "temperature": _NUMBER,
        "top_p": _NUMBER,
        "presence_penalty": _NUMBER,
        "frequency_penalty": _NUMBER,
        "max_tokens": _INTEGER,
        "max_completion_tokens": _INTEGER,
        "seed": _INTEGER,
        "stop": _STOP,
        "user": _STRING,
        "reasoning_effort": _STRING,
        "response_format": _OBJECT,
        "logit_bias": _OBJECT,
    }
)
GENERATION_PARAMS: frozenset[str] = frozenset(GENERATION_PARAM_TYPES)
_ALLOWED = sorted(GENERATION_PARAMS)
# Providers whose model names are the operator's own (deployments, local or hosted catalogues
# litellm's bundled list cannot hold): any name under them is accepted.
_OPEN_CATALOGUE_PROVIDERS = frozenset(
    {
        "azure",
        "azure_ai",
        "custom",
        "custom_openai",
        "hosted_vllm",
        "huggingface",
        "litellm_proxy",
        "llamafile",
        "lm_studio",
        "ollama",
        "ollama_chat",
        "openai_like",
        "openrouter",
        "sagemaker",
        "sagemaker_chat",
        "together_ai",
        "vllm",
        "xinference",
    }
)
_CHAT_MODES = (None, "chat", "completion", "responses")


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
    one user message); ``params`` are generation parameters from :data:`GENERATION_PARAMS`
    (``temperature``, ``max_tokens``, ``response_format``...), anything else raises
    :class:`LLMParamError`. Raises :class:`LLMError` subclasses."""
    call = _call_arguments(messages, model, params, timeout, api_base, api_key)
    if model == ECHO_MODEL:
        started = time.perf_counter()
        text, usage, finish = _echo(call["messages"], call)
        latency_ms = (time.perf_counter() - started) * 1000
        return CompletionResult(text, ECHO_MODEL, usage, finish, latency_ms, 1)
    litellm = _load()
    _check_api_key(litellm, model, api_base, api_key)
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
    if model == ECHO_MODEL:
        text, _usage, _finish = _echo(call["messages"], call)
        words = text.split(" ")
        for i, word in enumerate(words):
            yield word if i == len(words) - 1 else word + " "
            await asyncio.sleep(0)  # a stream: let other tasks run between chunks
        return
    litellm = _load()
    _check_api_key(litellm, model, api_base, api_key)
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


def _echo(
    messages: Sequence[Mapping[str, Any]], call: Mapping[str, Any]
) -> tuple[str, dict[str, int], str]:
    """The answer of :data:`ECHO_MODEL`: ``(text, usage, finish_reason)``; tokens are words."""

    def content(message: Mapping[str, Any]) -> str:
        value = message.get("content")
        if isinstance(value, list):  # OpenAI content parts
            return "".join(p.get("text", "") for p in value if isinstance(p, Mapping))
        return "" if value is None else str(value)

    texts = [content(m) for m in messages]
    last_user = next(
        (content(m) for m in reversed(messages) if m.get("role") == "user"),
        texts[-1] if texts else "",
    )
    header = (
        f"[{ECHO_MODEL}] {len(messages)} message(s), {sum(len(t) for t in texts)} characters. "
        "Last user message:"
    )
    words = f"{header}\n{last_user}".split(" ")
    limit = call.get("max_tokens") or call.get("max_completion_tokens")
    finish = "stop"
    if isinstance(limit, int) and 0 < limit < len(words):
        words, finish = words[:limit], "length"
    prompt_tokens = sum(len(t.split()) for t in texts)
    completion_tokens = sum(len(w.split()) for w in words)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return " ".join(words), usage, finish


def check_generation_params(
    params: Mapping[str, Any] | None, *, where: str = "params"
) -> dict[str, Any]:
    """``params`` checked against :data:`GENERATION_PARAMS`: a new dict without null values.

    Raises :class:`LLMParamError` (400) naming the first parameter that is not allowed or has
    the wrong type; ``where`` prefixes its name in the message and ``details.field`` (none when
    empty: the chat endpoint's parameters are top-level fields).

    >>> check_generation_params({"temperature": 0.2, "stop": None})
    {'temperature': 0.2}
    >>> try:
    ...     check_generation_params({"base_url": "http://attacker.example/v1"})
    ... except LLMParamError as error:
    ...     print(error.message, error.http_status)
    params.base_url is not an allowed generation parameter 400
    """
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise LLMParamError(
            f"{where} must be an object of generation parameters, got {type(params).__name__}",
            param=where,
            field=where,
            allowed=_ALLOWED,
            hint="allowed: " + ", ".join(_ALLOWED),
        )
    checked: dict[str, Any] = {}
    for name in sorted(params, key=str):
        value = params[name]
        label = f"{where}.{name}" if where else str(name)
        expected = GENERATION_PARAM_TYPES.get(name) if isinstance(name, str) else None
        if expected is None:
            raise LLMParamError(
                f"{label} is not an allowed generation parameter",
                param=str(name),
                field=label,
                allowed=_ALLOWED,
                hint="allowed: "
                + ", ".join(_ALLOWED)
                + ". The provider's endpoint, key and headers come from contextkit.yaml "
                "(llm.api_base, llm.api_key_env) and the server's environment, never from "
                "params",
            )
        if value is None:
            continue
        if not _has_type(value, expected):
            raise LLMParamError(
                f"{label} must be {expected}, got {_short(repr(value), 60)}",
                param=name,
                field=label,
                allowed=_ALLOWED,
            )
        checked[name] = value
    return checked


def check_model(model: str, *, declared: Sequence[str] = (), api_base: str | None = None) -> None:
    """Raise :class:`LLMNotConfiguredError` (``setting="model"``) unless litellm knows ``model``.

    Offline: litellm's model list and provider table, no network. Known means: one of
    ``declared`` (names the repo lists), or a chat model litellm has information on, or any name
    under a provider litellm resolves when ``api_base`` is set (the OpenAI-compatible server
    there decides which names it serves) or when the provider's model names are the operator's
    own (``azure``, ``ollama``, ``hosted_vllm``...). Embedding and image models are refused.
    Without litellm installed nothing is checked (no completion can run anyway).

    A name found in litellm's bundled list is settled without importing litellm (seconds);
    anything else asks litellm itself (``get_llm_provider``, ``get_model_info``), which also
    knows aliases the list does not spell out.

    >>> check_model("openai/gpt-4o-mini")
    >>> check_model("openai/my-finetune", declared=["openai/my-finetune"])
    >>> check_model("openai/whatever-the-server-has", api_base="http://127.0.0.1:8000/v1")
    """
    if model in declared or model == ECHO_MODEL:
        return
    from ._litellm import model_cost

    catalogue = model_cost()
    if catalogue is None:
        return
    provider, info = _lookup(catalogue, model)
    if provider is None or info is None:
        try:
            provider, info = _ask_litellm(model)
        except ImportError:
            return
    if provider is None:
        raise LLMNotConfiguredError(
            f"litellm knows no provider for model {model!r}",
            setting="model",
            model=model,
            hint="name the provider first, e.g. 'openai/gpt-4o-mini' or 'anthropic/...'; a "
            "model served by an OpenAI-compatible server is 'openai/<name>' with llm.api_base "
            "set in contextkit.yaml",
        )
    if api_base or provider in _OPEN_CATALOGUE_PROVIDERS:
        return
    if info is None:
        near = _near_models(catalogue, model.removeprefix(provider + "/"), provider)
        raise LLMNotConfiguredError(
            f"litellm knows no model {model!r}",
            setting="model",
            model=model,
            hint=(f"did you mean {' or '.join(map(repr, near))}? " if near else "")
            + "if the name is right (a fine-tuned or brand-new model), list it under llm.models "
            "in contextkit.yaml; for an OpenAI-compatible server set llm.api_base",
        )
    mode = info.get("mode")
    if mode not in _CHAT_MODES:
        raise LLMNotConfiguredError(
            f"model {model!r} is a{'n' if str(mode)[:1] in 'aeiou' else ''} {mode} model, "
            "not a chat model",
            setting="model",
            model=model,
            hint="prompt views complete with a chat model, e.g. 'openai/gpt-4o-mini'",
        )


# -- internals ---------------------------------------------------------------------------------


def _has_type(value: Any, expected: str) -> bool:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if expected == _NUMBER:
        return is_number and math.isfinite(value)
    if expected == _INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == _STRING:
        return isinstance(value, str)
    if expected == _OBJECT:
        return isinstance(value, Mapping)
    return isinstance(value, str) or (  # _STOP
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )


def _provider_of(info: Mapping[str, Any]) -> str:
    # litellm files some models under "vertex_ai-language-models" and the like.
    return str(info.get("litellm_provider") or "").split("-", 1)[0]


def _lookup(catalogue: Mapping[str, Any], model: str) -> tuple[str | None, Any]:
    """``(provider, info)`` from the model list alone; None where the list does not say."""
    info = catalogue.get(model)
    if "/" not in model:
        return (_provider_of(info), info) if isinstance(info, dict) else (None, None)
    provider, name = model.split("/", 1)
    if not isinstance(info, dict):
        bare = catalogue.get(name)
        info = bare if isinstance(bare, dict) and _provider_of(bare) == provider else None
    known = provider in _OPEN_CATALOGUE_PROVIDERS or any(
        isinstance(entry, dict) and _provider_of(entry) == provider for entry in catalogue.values()
    )
    return (provider if known else None), info


def _ask_litellm(model: str) -> tuple[str | None, Any]:
    """``(provider, info)`` from litellm itself (imports it); ImportError when not installed."""
    from ._litellm import load_litellm

    litellm = load_litellm()
    try:
        provider = litellm.get_llm_provider(model)[1]
    except Exception:  # litellm's BadRequestError "LLM Provider NOT provided"
        return None, None
    try:
        info = litellm.get_model_info(model)
    except Exception:  # "This model isn't mapped yet"
        info = None
    return provider, info


def _near_models(catalogue: Mapping[str, Any], name: str, provider: str) -> list[str]:
    import difflib

    names = [
        key.removeprefix(provider + "/")
        for key, info in catalogue.items()
        if isinstance(info, dict)
        and _provider_of(info) == provider
        and info.get("mode") in _CHAT_MODES
    ]
    return [f"{provider}/{near}" for near in difflib.get_close_matches(name, names, n=2)]


def _check_api_key(litellm: Any, model: str, api_base: str | None, api_key: str | None) -> None:
    """Refuse before any call when the provider's API key variable is unset (litellm would
    fail on the client side, as a 500 it retries). Only variables named ``*_API_KEY`` count:
    other settings litellm lists (AWS credentials, OLLAMA_API_BASE) have defaults elsewhere."""
    if api_key:
        return
    try:
        missing = litellm.validate_environment(model=model, api_base=api_base).get("missing_keys")
    except Exception:  # an unknown provider: the call says so, mapped in _map_error
        return
    if missing and all(str(key).endswith("_API_KEY") for key in missing):
        names = " or ".join(missing)
        raise LLMAuthError(
            f"no API key for {model!r}: {names} is not set in the server's environment",
            setting=missing[0],
            model=model,
            hint=f"set {names} where the server runs, or name another variable with "
            "llm.api_key_env in contextkit.yaml",
            attempts=0,
        )


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
    if not timeout > 0:  # from the repo config: a setting to fix, not a server bug
        raise LLMNotConfiguredError(
            f"the LLM timeout must be a positive number of seconds, got {timeout}",
            setting="llm.timeout_s",
            model=model,
            hint="set llm.timeout_s in contextkit.yaml (default 60)",
            attempts=0,
        )
    generation = check_generation_params(params)
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    call: dict[str, Any] = {
        **generation,
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
            setting=key_var,
            hint=f"check the API key: set {key_var} in the server's environment "
            "(or name another variable with llm.api_key_env in contextkit.yaml)",
            **common,
        ), False
    if _is_missing_credentials(detail):
        key_var = _api_key_variable(model)
        return LLMAuthError(
            f"no API key for {model!r}: {detail}",
            setting=key_var,
            hint=f"set {key_var} where the server runs, or name another variable with "
            "llm.api_key_env in contextkit.yaml",
            **common,
        ), False
    if "LLM Provider NOT provided" in detail or name == "NotFoundError" or status == 404:
        return LLMNotConfiguredError(
            f"the provider does not know model {model!r}"
            + (f" (HTTP {status})" if status else "")
            + f": {detail}",
            setting="model",
            hint="check the prompt view's model= (or the request's model): a litellm model "
            "name such as 'openai/gpt-4o-mini', or llm.api_base in contextkit.yaml for an "
            "OpenAI-compatible server",
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


def _is_missing_credentials(detail: str) -> bool:
    """litellm's wording when no key was found on the client side (openai: "Missing
    credentials", the openai SDK: "api_key client option must be set", anthropic/gemini:
    "Missing ... API Key")."""
    lowered = detail.lower()
    return (
        "missing credentials" in lowered
        or "api_key client option must be set" in lowered
        or ("missing" in lowered and "api key" in lowered)
    )


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
