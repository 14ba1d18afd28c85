"""Retrieval evaluation (``contextkit eval``): labelled queries against an embedding view, per
search mode and configuration, side by side, stored with the workspace version.

Input: JSONL, one labelled query a line::

    {"query": "initialize an unnamed semaphore", "relevant_ids": ["man:sem_init.3"]}
    {"query": "...", "relevant_ids": ["a", "b"], "entities": {"tenant": "t1"},
     "filter": {"category": "docs"}}

``relevant_ids`` are document ids: the view's key value (several key columns joined by ``|``),
what ``group_by="document"`` returns as ``id`` (or chunk ids ``doc#0`` with a configuration
that sets ``"group_by": "chunk"``). ``entities`` (key column -> value) and ``filter`` narrow that
query's search like a request's filter.

Per configuration (default: the modes ``vector``, ``text`` and ``hybrid``; others are dicts of
:func:`~contextkit.compute.embedding.search_view` options with a ``name``): recall@k (share of a
query's relevant ids in its top k, averaged), MRR@k (1 / rank of the first relevant hit), nDCG@k
(binary gains) and the p50/p99 latency of the whole search (encode included; the first query of
each configuration is an untimed warm-up).

Each run is stored in the registry (setting ``eval:<workspace>:<view>``, the last 50 runs) with
the workspace version and a hash of the query file, so that a later run compares itself with
the newest earlier run of the same queries: "recall@10 0.812 (-0.021 since version 7)".
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.errors import BadRequestError, NotFoundError

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime

SETTING = "eval:{workspace}:{view}"
KEPT_RUNS = 50
DEFAULT_CONFIGS: tuple[dict[str, Any], ...] = (
    {"name": "vector", "mode": "vector"},
    {"name": "text", "mode": "text"},
    {"name": "hybrid", "mode": "hybrid"},
)
_OPTIONS = {"mode", "group_by", "fusion", "depth", "weights", "rerank"}
METRICS = ("recall", "mrr", "ndcg", "p50_ms", "p99_ms")


@dataclass(frozen=True)
class LabelledQuery:
    query: str
    relevant: tuple[str, ...]
    filter: dict[str, Any] | None = None


def load_queries(path: str | Path) -> tuple[list[LabelledQuery], str]:
    """The labelled queries of a JSONL file and the file's sha256 (what runs are compared by)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadRequestError(f"cannot read the labelled queries {str(path)!r}: {exc}") from None
    out = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadRequestError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise BadRequestError(f"{where}: a labelled query is an object")
        query, relevant = item.get("query"), item.get("relevant_ids")
        if not isinstance(query, str) or not query.strip():
            raise BadRequestError(f"{where}: 'query' must be a non-empty string")
        if (
            not isinstance(relevant, list)
            or not relevant
            or not all(isinstance(r, str | int) for r in relevant)
        ):
            raise BadRequestError(
                f"{where}: 'relevant_ids' must be a non-empty list of ids",
                hint='e.g. {"query": "...", "relevant_ids": ["doc-1"]}',
            )
        conditions = dict(item.get("filter") or {})
        entities = item.get("entities") or {}
        if not isinstance(conditions, dict) or not isinstance(entities, dict):
            raise BadRequestError(f"{where}: 'filter' and 'entities' must be objects")
        conditions.update(entities)  # a key column equal to the entity's value
        out.append(LabelledQuery(query, tuple(str(r) for r in relevant), conditions or None))
    if not out:
        raise BadRequestError(f"{path} holds no labelled queries")
    return out, hashlib.sha256(raw).hexdigest()[:16]


def _config(raw: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    options = {k: v for k, v in raw.items() if k != "name"}
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise BadRequestError(
            f"unknown search option(s) in configuration {raw.get('name')!r}: " + ", ".join(unknown),
            hint="options: " + ", ".join(sorted(_OPTIONS)),
        )
    name = raw.get("name") or json.dumps(options, sort_keys=True)
    options.setdefault("mode", "vector")
    options.setdefault("group_by", "document")
    if options["group_by"] == "chunk":
        options["group_by"] = None
    return str(name), options


def score(ranked: Sequence[str], relevant: Sequence[str], k: int) -> tuple[float, float, float]:
    """recall@k, reciprocal rank (within k) and nDCG@k (binary gains) of one ranking."""
    wanted = set(relevant)
    top = list(ranked)[:k]
    found = [i for i, r in enumerate(top) if r in wanted]
    recall = len({top[i] for i in found}) / len(wanted)
    mrr = 1.0 / (found[0] + 1) if found else 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i in found)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(wanted), k)))
    return recall, mrr, dcg / ideal if ideal else 0.0


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def evaluate(
    runtime: Runtime,
    view: str,
    queries: Sequence[LabelledQuery],
    *,
    queries_hash: str = "",
    configs: Sequence[Mapping[str, Any]] | None = None,
    k: int = 10,
    store: bool = True,
) -> dict[str, Any]:
    """Run every configuration over the queries; returns (and stores) the run, with
    ``compared_with`` the newest earlier stored run of the same queries and k, and per
    configuration its ``delta`` (metric -> change) against it."""
    from contextkit.compute.embedding import encoder_for, search_view

    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100:
        raise BadRequestError(f"k must be an integer from 1 to 100, got {k!r}")
    specs = runtime.specs()
    spec = specs.embedding_views.get(view)
    if spec is None:
        raise NotFoundError(
            f"embedding view {view!r} is not applied in workspace {specs.workspace.name!r}",
            hint="embedding views: " + (", ".join(sorted(specs.embedding_views)) or "(none)"),
        )
    root = runtime.config.root.resolve()
    encoder = encoder_for(spec, runtime.config.models, root)
    results = []
    for raw in configs or DEFAULT_CONFIGS:
        name, options = _config(raw)
        sums = [0.0, 0.0, 0.0]
        latencies: list[float] = []
        for i, q in enumerate(queries):
            began = time.perf_counter()
            hits = search_view(
                runtime.vectors, encoder, specs.workspace.name, spec, query=q.query, top_k=k,
                filter=q.filter, root=root, **options,
            )  # fmt: skip
            took = (time.perf_counter() - began) * 1000
            if i or len(queries) == 1:
                latencies.append(took)
            for j, value in enumerate(score([h["id"] for h in hits], q.relevant, k)):
                sums[j] += value
        n = len(queries)
        results.append(
            {
                "name": name,
                "options": options,
                "recall": round(sums[0] / n, 4),
                "mrr": round(sums[1] / n, 4),
                "ndcg": round(sums[2] / n, 4),
                "p50_ms": round(_percentile(latencies, 50), 3),
                "p99_ms": round(_percentile(latencies, 99), 3),
            }
        )
    run = {
        "workspace": specs.workspace.name,
        "version": specs.workspace.version,
        "view": view,
        "k": k,
        "queries": len(queries),
        "queries_hash": queries_hash,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "configs": results,
    }
    key = SETTING.format(workspace=specs.workspace.name, view=view)
    history = stored_runs(runtime, view)
    earlier = next(
        (r for r in reversed(history) if r.get("queries_hash") == queries_hash and r["k"] == k),
        None,
    )
    run["compared_with"] = (
        {"version": earlier["version"], "at": earlier["at"]} if earlier is not None else None
    )
    before = {c["name"]: c for c in (earlier or {}).get("configs", [])}
    for config in results:
        was = before.get(config["name"])
        config["delta"] = (
            {m: round(config[m] - was[m], 4) for m in METRICS if m in was} if was else None
        )
    if store:
        stored = {k_: v for k_, v in run.items() if k_ != "compared_with"}
        runtime.registry.set_setting(key, json.dumps([*history, stored][-KEPT_RUNS:]))
    return run


def stored_runs(runtime: Runtime, view: str) -> list[dict[str, Any]]:
    """The stored runs of ``view`` in the runtime's workspace, oldest first."""
    raw = runtime.registry.get_setting(SETTING.format(workspace=runtime.workspace, view=view))
    try:
        runs = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return []
    return runs if isinstance(runs, list) else []
