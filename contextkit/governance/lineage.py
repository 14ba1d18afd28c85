"""Lineage of a workspace: which sources feed which views, and which services and prompts read them.

Built from the applied specs alone (no data is read). Nodes are ``kind:name`` ids; an edge
``(a, b)`` means data flows from ``a`` into ``b``: source -> view, view -> view, view -> service,
view -> prompt, service -> prompt (a service serves its prompts). Any spec kind works: references
are found through the fields specs use for them (``sources``, ``source``, ``inputs``,
``batch_source``, ``features``, ``searches``, ``prompts``)::

    graph = lineage(ctx.specs())
    graph.upstream("batch_feature_view:user_order_stats")    # {"file_source:orders"}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# The kinds in the order their columns appear in a drawing, left to right.
SOURCE_KINDS = ("file_source", "database_source", "push_source")
VIEW_KINDS = (
    "batch_feature_view", "stream_feature_view", "realtime_feature_view", "embedding_view",
)  # fmt: skip
_GROUPS = ("entities", "sources", "push_sources", "views", "stream_views", "realtime_views",
           "embedding_views", "prompts", "services")  # fmt: skip


@dataclass(frozen=True)
class Node:
    id: str
    kind: str
    name: str
    description: str = ""


@dataclass
class Lineage:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def node_id(self, name: str, kinds: Iterable[str] | None = None) -> str | None:
        """The id of the object called ``name`` (of one of ``kinds``), or None."""
        for node in self.nodes.values():
            if node.name == name and (kinds is None or node.kind in kinds):
                return node.id
        return None

    def upstream(self, node_id: str) -> set[str]:
        """Everything ``node_id`` reads from, directly or not."""
        return self._walk(node_id, {b: [] for b in self.nodes}, reverse=True)

    def downstream(self, node_id: str) -> set[str]:
        """Everything that reads ``node_id``, directly or not."""
        return self._walk(node_id, {a: [] for a in self.nodes}, reverse=False)

    def _walk(self, start: str, adjacency: dict[str, list[str]], *, reverse: bool) -> set[str]:
        for a, b in self.edges:
            if reverse:
                adjacency.setdefault(b, []).append(a)
            else:
                adjacency.setdefault(a, []).append(b)
        seen: set[str] = set()
        stack = [start]
        while stack:
            for nxt in adjacency.get(stack.pop(), []):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        seen.discard(start)
        return seen

    def neighborhood(self, node_id: str) -> Lineage:
        """The part of the graph connected to ``node_id`` (its upstream and downstream)."""
        keep = {node_id} | self.upstream(node_id) | self.downstream(node_id)
        return Lineage(
            {k: v for k, v in self.nodes.items() if k in keep},
            [(a, b) for a, b in self.edges if a in keep and b in keep],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [{"id": n.id, "kind": n.kind, "name": n.name} for n in self.nodes.values()],
            "edges": [{"from": a, "to": b} for a, b in self.edges],
        }


def _refs(spec: Any) -> Iterable[str]:
    """Names of the objects a spec reads (for a service, also the prompts it serves)."""
    for name in getattr(spec, "sources", None) or []:
        yield name
    for attr in ("source", "batch_source"):
        value = getattr(spec, attr, None)
        if isinstance(value, str):
            yield value
    for name in getattr(spec, "inputs", None) or []:
        if isinstance(name, str):
            yield name
    for ref in getattr(spec, "features", None) or []:
        view = getattr(ref, "view", None)
        if isinstance(view, str):
            yield view
    for search in getattr(spec, "searches", None) or []:
        yield search.view


def lineage(specs: Any) -> Lineage:
    """The lineage of a workspace's applied specs (a :class:`~contextkit.client.WorkspaceSpecs`)."""
    graph = Lineage()
    by_name: dict[str, list[str]] = {}
    objects = []
    for group in _GROUPS:
        for spec in (getattr(specs, group, None) or {}).values():
            if spec.kind == "entity":
                continue
            node = Node(f"{spec.kind}:{spec.name}", spec.kind, spec.name, spec.description)
            graph.nodes[node.id] = node
            by_name.setdefault(spec.name, []).append(node.id)
            objects.append((node, spec))
    edges: set[tuple[str, str]] = set()
    readable = {
        i for ids in by_name.values() for i in ids
        if not i.startswith(("prompt_view:", "context_service:"))
    }  # fmt: skip
    for node, spec in objects:
        for name in _refs(spec):
            for source in by_name.get(name, []):
                if source in readable and source != node.id:
                    edges.add((source, node.id))
        if node.kind == "context_service":
            for prompt in getattr(spec, "prompts", None) or []:
                target = f"prompt_view:{prompt}"
                if target in graph.nodes:
                    edges.add((node.id, target))
    graph.edges = sorted(edges)
    return graph


def layers(graph: Lineage) -> dict[str, int]:
    """A column per node for drawing, left to right: sources, views (a view right of the views
    it reads), services, prompts."""
    column: dict[str, int] = {}
    inputs: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        inputs[b].append(a)

    def depth(node_id: str, seen: frozenset[str] = frozenset()) -> int:
        if node_id in column:
            return column[node_id]
        kind = graph.nodes[node_id].kind
        if kind in SOURCE_KINDS:
            column[node_id] = 0
            return 0
        ups = [u for u in inputs[node_id] if graph.nodes[u].kind in (*SOURCE_KINDS, *VIEW_KINDS)]
        value = 1 + max((depth(u, seen | {node_id}) for u in ups if u not in seen), default=0)
        column[node_id] = value
        return value

    views = [n for n, node in graph.nodes.items() if node.kind not in ("context_service",
             "prompt_view")]  # fmt: skip
    for node_id in views:
        depth(node_id)
    last = max((column[n] for n in views), default=0)
    for node_id, node in graph.nodes.items():
        if node.kind == "context_service":
            column[node_id] = last + 1
        elif node.kind == "prompt_view":
            column[node_id] = last + 2
    return column
