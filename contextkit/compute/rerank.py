"""The reranker stage of a search: the first stage's candidates scored again, query and text
together, by a cross-encoder (local, sentence-transformers) or a hosted rerank model (litellm's
rerank API: Cohere, Voyage, Jina-compatible servers, ...).

``rerank`` (on :class:`~contextkit.framework.definitions.prompt_views.Search`, ``ctx.search``
and ``/v1/search``) is a model reference or a dict::

    "local:/models/ms-marco-MiniLM-L-6-v2"           # a cross-encoder folder (no download)
    {"model": "cohere/rerank-english-v3.0", "depth": 50, "api_key_env": "COHERE_API_KEY"}

``depth`` (default 50, at least ``top_k``) is how many candidates the first stage hands over.
Bad options (an unknown provider or model, a missing folder) are a :class:`BadRequestError`
(400); a hosted model that fails, times out, refuses the key or cannot be reached is a
:class:`RerankError` (502, upstream).
Each reranked hit keeps its first-stage score under ``scores["retrieval"]`` and gets the
reranker's as ``score`` (and ``scores["rerank"]``); the stage's time is ``timings_ms["rerank"]``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contextkit.embeddings.encoders import import_torch
from contextkit.errors import BadRequestError, ContextKitError, RerankError

DEFAULT_DEPTH = 50
MAX_DEPTH = 1000
_LOCAL = "local:"


@dataclass(frozen=True)
class RerankOptions:
    model: str
    depth: int = DEFAULT_DEPTH
    api_base: str | None = None
    api_key_env: str | None = None

    @property
    def local_path(self) -> str | None:
        return self.model[len(_LOCAL) :] if self.model.startswith(_LOCAL) else None


def rerank_options(value: Any, root: Path | None = None) -> RerankOptions | None:
    """Parse a ``rerank`` option (None, a model string, or a dict); bad ones raise
    :class:`BadRequestError`."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"model": value}
    if not isinstance(value, Mapping):
        raise BadRequestError(
            f"rerank must be a model name or an object, got {type(value).__name__}",
            hint='e.g. "local:/models/cross-encoder" or {"model": "cohere/rerank-v3.5"}',
        )
    unknown = sorted(set(value) - {"model", "depth", "api_base", "api_key_env"})
    model = value.get("model")
    depth = value.get("depth", DEFAULT_DEPTH)
    if unknown or not isinstance(model, str) or not model.strip():
        raise BadRequestError(
            "rerank needs a model" + (f" and takes no {', '.join(unknown)}" if unknown else ""),
            hint="options: model, depth, api_base, api_key_env",
        )
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_DEPTH:
        raise BadRequestError(
            f"rerank depth must be an integer from 1 to {MAX_DEPTH}, got {depth!r}"
        )
    if model.startswith(_LOCAL) and root is not None:
        path = Path(model[len(_LOCAL) :]).expanduser()
        model = _LOCAL + str(path if path.is_absolute() else (root / path))
    return RerankOptions(model, depth, value.get("api_base"), value.get("api_key_env"))


_loaded: dict[str, Any] = {}
_lock = threading.Lock()


def _cross_encoder(path: str) -> Any:
    with _lock:
        model = _loaded.get(path)
        if model is None:
            if not Path(path).is_dir():
                raise BadRequestError(
                    f"the cross-encoder folder {path!r} does not exist",
                    hint="point local: at a sentence-transformers CrossEncoder folder",
                )
            import_torch()
            try:
                from sentence_transformers import CrossEncoder

                model = CrossEncoder(path, device="cpu", local_files_only=True)
            except Exception as exc:
                raise BadRequestError(
                    f"cannot load the cross-encoder in {path!r}: {exc}".strip()[:400]
                ) from exc
            _loaded[path] = model
        return model


def scores(options: RerankOptions, query: str, texts: Sequence[str]) -> list[float]:
    """One relevance score per text, higher is better."""
    if not texts:
        return []
    path = options.local_path
    if path is not None:
        model = _cross_encoder(path)
        return [float(s) for s in model.predict([(query, t) for t in texts])]
    import litellm

    api_key = os.environ.get(options.api_key_env) if options.api_key_env else None
    try:
        response = litellm.rerank(
            model=options.model,
            query=query,
            documents=list(texts),
            top_n=len(texts),
            return_documents=False,
            api_base=options.api_base,
            api_key=api_key,
        )
    except ContextKitError:
        raise
    except (litellm.BadRequestError, litellm.NotFoundError) as exc:
        # litellm refused the options (no such provider), or the provider the model name
        raise BadRequestError(
            f"the rerank model {options.model!r} refused the request: {_reason(exc)}",
            hint="check the model name (provider/model) and api_base",
        ) from exc
    except Exception as exc:  # the provider failed, timed out, refused the key or is unreachable
        raise RerankError(
            f"the rerank model {options.model!r} failed upstream: {_reason(exc)}",
            hint="the rerank provider is failing or unreachable; check api_base, the key in "
            "api_key_env, and the provider's status",
            details={"model": options.model, "upstream_status": getattr(exc, "status_code", None)},
        ) from exc
    out = [float("-inf")] * len(texts)
    for result in response.results or []:
        index = result["index"] if isinstance(result, Mapping) else result.index
        score = result["relevance_score"] if isinstance(result, Mapping) else result.relevance_score
        if 0 <= int(index) < len(texts):
            out[int(index)] = float(score)
    return out


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def rerank(
    options: RerankOptions, query: str, hits: list[dict[str, Any]], top_k: int
) -> list[dict[str, Any]]:
    """The ``top_k`` of ``hits`` by the reranker's score (ties keep the first-stage order)."""
    if not isinstance(query, str) or not query.strip():
        raise BadRequestError("reranking needs the query text", hint='send "query": "..."')
    texts = [h["text"] for h in hits]
    new = scores(options, query, texts)
    order = sorted(range(len(hits)), key=lambda i: (-new[i], i))
    out = []
    for i in order[:top_k]:
        hit = dict(hits[i])
        hit["scores"] = {**(hit.get("scores") or {}), "retrieval": hit["score"], "rerank": new[i]}
        hit["score"] = new[i]
        out.append(hit)
    return out
