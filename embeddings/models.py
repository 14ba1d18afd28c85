"""Building encoders from a repo's ``models:`` config: which options each type takes, the
built-in ``minilm``, and one shared encoder per process and config (:func:`get_encoder`).

Kept apart from :mod:`.encoders` (the encoder classes) so that :mod:`.onnx_encoder`, which builds
on the sentence-transformers encoder, and the factory that picks between them import in one
direction only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .encoders import (
    DEFAULT_MODEL,
    DEFAULT_MODELS,
    Encoder,
    HashEncoder,
    LiteLLMEncoder,
    SentenceTransformerEncoder,
)
from .errors import EncoderConfigError
from .onnx_encoder import OnnxEncoder

_OPTIONS: dict[str, set[str]] = {
    "sentence-transformers": {
        "path",
        "name",
        "batch_size",
        "normalize",
        "device",
        "backend",
        "quantize",
        "optimize",
        "cache_dir",
        "threads",
        "query_cache_size",
    },
    "litellm": {
        "model",
        "name",
        "dimension",
        "api_base",
        "api_key_env",
        "batch_size",
        "normalize",
        "max_retries",
        "retry_backoff_s",
        "max_backoff_s",
        "timeout_s",
        "extra_params",
    },
    "hash": {"dimension", "name", "batch_size"},
}
_TYPE_ALIASES = {"sentence_transformers": "sentence-transformers", "local": "sentence-transformers"}


def model_configs(models: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict]:
    """The repo's ``models:`` section plus the built-in ``minilm`` (which a repo may redefine)."""
    merged: dict[str, dict] = {k: dict(v) for k, v in DEFAULT_MODELS.items()}
    for key, config in (models or {}).items():
        if not isinstance(config, Mapping):
            raise EncoderConfigError(
                f"model {key!r}: expected a mapping like {{type: litellm, model: ...}}, "
                f"got {type(config).__name__}"
            )
        merged[str(key)] = dict(config)
    return merged


def build_encoder(
    key: str, config: Mapping[str, Any] | None = None, *, base_dir: str | Path | None = None
) -> Encoder:
    """Build the encoder a repo config describes under ``models: {key: config}``.

    Cheap and side-effect free: it validates the options (unknown type or option, missing model
    folder -> :class:`EncoderConfigError`) but loads no model and makes no call, so plan/apply
    validation can use it. ``config=None`` is allowed for the built-in ``minilm``. A relative
    ``path`` is resolved against ``base_dir`` (the repo root).

    >>> build_encoder("fake", {"type": "hash", "dimension": 8}).dimension
    8
    """
    if config is None:
        if key not in DEFAULT_MODELS:
            raise EncoderConfigError(
                f"unknown embedding model {key!r}",
                hint=f"declare it under 'models:' in contextkit.yaml (built in: {DEFAULT_MODEL})",
            )
        config = DEFAULT_MODELS[key]
    options = dict(config)
    kind = str(options.pop("type", "sentence-transformers"))
    kind = _TYPE_ALIASES.get(kind, kind)
    if kind not in _OPTIONS:
        raise EncoderConfigError(
            f"model {key!r}: unknown type {kind!r}",
            hint=f"use one of: {', '.join(sorted(_OPTIONS))}",
        )
    unknown = sorted(set(options) - _OPTIONS[kind])
    if unknown:
        raise EncoderConfigError(
            f"model {key!r}: unknown option(s) {', '.join(unknown)} for type {kind}",
            hint=f"allowed: {', '.join(sorted(_OPTIONS[kind]))}",
        )
    try:
        if kind == "sentence-transformers":
            return _local_encoder(options, base_dir)
        if kind == "litellm":
            return LiteLLMEncoder(options.pop("model", ""), **options)
        return HashEncoder(**options)
    except EncoderConfigError as err:
        raise EncoderConfigError(f"model {key!r}: {err.message}", hint=err.hint) from None
    except TypeError as exc:  # a wrongly typed option reaching a constructor
        raise EncoderConfigError(f"model {key!r}: {exc}") from None


_ONNX_ONLY = ("quantize", "optimize", "cache_dir", "threads")


def _local_encoder(options: dict[str, Any], base_dir: str | Path | None) -> Encoder:
    """A sentence-transformers model on torch (default) or ONNX Runtime (``backend: onnx``)."""
    path = options.pop("path", "default")
    if path not in (None, "default") and base_dir is not None:
        path = Path(base_dir) / Path(path).expanduser()
    backend = options.pop("backend", "torch")
    if backend == "onnx":
        if options.pop("device", "cpu") != "cpu":
            raise EncoderConfigError("backend onnx runs on CPU: leave 'device' out")
        cache_dir = options.get("cache_dir")
        if cache_dir is not None and base_dir is not None:
            options["cache_dir"] = Path(base_dir) / Path(cache_dir).expanduser()
        return OnnxEncoder(path, **options)
    if backend != "torch":
        raise EncoderConfigError(
            f"unknown backend {backend!r}", hint="use backend: torch (default) or onnx"
        )
    onnx_only = [o for o in _ONNX_ONLY if o in options]
    if onnx_only:
        raise EncoderConfigError(
            f"option(s) {', '.join(onnx_only)} need backend: onnx",
            hint="add backend: onnx to the model's entry",
        )
    return SentenceTransformerEncoder(path, **options)


_encoders: dict[tuple[str, str, str], Encoder] = {}
_encoders_lock = threading.Lock()


def get_encoder(
    key: str = DEFAULT_MODEL,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    base_dir: str | Path | None = None,
) -> Encoder:
    """The encoder for config key ``key``, built once per process and config (then shared).

    ``models`` is the repo's ``models:`` section (``minilm`` is added); unknown keys raise
    :class:`EncoderConfigError` naming the declared ones.
    """
    configs = model_configs(models)
    if key not in configs:
        raise EncoderConfigError(
            f"unknown embedding model {key!r}",
            hint=f"declared models: {', '.join(sorted(configs))}",
        )
    cache_key = (key, json.dumps(configs[key], sort_keys=True, default=str), str(base_dir))
    with _encoders_lock:
        encoder = _encoders.get(cache_key)
        if encoder is None:
            encoder = build_encoder(key, configs[key], base_dir=base_dir)
            _encoders[cache_key] = encoder
    return encoder


def known_dimension(encoder: Encoder) -> int | None:
    """The encoder's dimension when it is known without calling a hosted model (from the config
    or a local model's files); None for a hosted model whose config gives none."""
    if isinstance(encoder, LiteLLMEncoder):
        return encoder._dimension
    return encoder.dimension
