"""Hits and hybrid fusion: a result row as a hit, and two ranked lists (vector, text) fused by
reciprocal rank fusion (:func:`rrf_fuse`) or a normalised-score blend (:func:`blend`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from contextkit.stores._vector_common import InvalidSearchError

RRF_K = 60


def as_hit(row: Mapping[str, Any], score: float, keys: Sequence[str]) -> dict[str, Any]:
    skip = {"id", "text", "chunk_index", "char_offset", "updated_at", "_distance", "_score", *keys}
    return {
        "id": row["id"],
        "text": row["text"],
        "score": float(score),
        "key": {k: row[k] for k in keys},
        "metadata": {n: v for n, v in row.items() if n not in skip},
        "chunk_index": row["chunk_index"],
        "char_offset": row["char_offset"],
    }


def rrf_fuse(
    by_vector: list[dict[str, Any]],
    by_text: list[dict[str, Any]],
    top_k: int,
    keys: Sequence[str],
    k: int = RRF_K,
    weights: tuple[float, float] = (1.0, 1.0),
) -> list[dict[str, Any]]:
    """Reciprocal rank fusion of two ranked lists (ranks from 1), each list weighted."""
    fused: dict[str, dict[str, Any]] = {}
    for rank, row in enumerate(by_vector, start=1):
        entry = fused.setdefault(row["id"], {"row": row, "rrf": 0.0, "best": rank})
        entry["rrf"] += weights[0] / (k + rank)
        entry["vector"] = 1.0 - row["_distance"]
    for rank, row in enumerate(by_text, start=1):
        entry = fused.setdefault(row["id"], {"row": row, "rrf": 0.0, "best": rank})
        entry["rrf"] += weights[1] / (k + rank)
        entry["best"] = min(entry["best"], rank)
        entry["text"] = row["_score"]
    ranked = sorted(fused.items(), key=lambda item: (-item[1]["rrf"], item[1]["best"], item[0]))
    hits = []
    for _, entry in ranked[:top_k]:
        hit = as_hit(entry["row"], entry["rrf"], keys)
        hit["scores"] = {"vector": entry.get("vector"), "text": entry.get("text")}
        hits.append(hit)
    return hits


def parse_weights(weights: Any) -> tuple[float, float]:
    if weights is None:
        return 1.0, 1.0
    try:
        wv, wt = (float(w) for w in weights)
    except (TypeError, ValueError):
        raise InvalidSearchError(
            f"weights must be two numbers (vector, text), got {weights!r}"
        ) from None
    if not (math.isfinite(wv) and math.isfinite(wt)) or wv < 0 or wt < 0 or wv + wt == 0:
        raise InvalidSearchError(
            f"weights must be finite, non-negative and not both 0, got {weights!r}"
        )
    return wv, wt


def normalised(values: list[float]) -> list[float]:
    if not values:
        return []
    low, high = min(values), max(values)
    if high - low <= 1e-12:
        return [1.0] * len(values)
    return [(v - low) / (high - low) for v in values]


def blend(
    by_vector: list[dict[str, Any]],
    by_text: list[dict[str, Any]],
    top_k: int,
    keys: Sequence[str],
    wv: float,
    wt: float,
) -> list[dict[str, Any]]:
    """Normalised-score fusion: each list's scores min-max scaled to [0, 1] over its
    candidates, then weighted and summed (0 for a list a chunk is not in)."""
    fused: dict[str, dict[str, Any]] = {}
    vector_scores = [1.0 - r["_distance"] for r in by_vector]
    for rank, (row, norm) in enumerate(zip(by_vector, normalised(vector_scores), strict=True)):
        entry = fused.setdefault(row["id"], {"row": row, "score": 0.0, "best": rank})
        entry["score"] += wv * norm
        entry["vector"] = 1.0 - row["_distance"]
    text_scores = [float(r["_score"]) for r in by_text]
    for rank, (row, norm) in enumerate(zip(by_text, normalised(text_scores), strict=True)):
        entry = fused.setdefault(row["id"], {"row": row, "score": 0.0, "best": rank})
        entry["score"] += wt * norm
        entry["best"] = min(entry["best"], rank)
        entry["text"] = row["_score"]
    ranked = sorted(fused.items(), key=lambda item: (-item[1]["score"], item[1]["best"], item[0]))
    hits = []
    for _, entry in ranked[:top_k]:
        hit = as_hit(entry["row"], entry["score"], keys)
        hit["scores"] = {"vector": entry.get("vector"), "text": entry.get("text")}
        hits.append(hit)
    return hits
