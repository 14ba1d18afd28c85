"""Inline SVG charts for the web UI, computed server-side: no JavaScript, no external library.

Each function returns :class:`markupsafe.Markup` (text is escaped here), ready for a Jinja
template: ``{{ histogram(edges, counts) }}``. Every chart is an ``<svg class="chart ...">`` with
``<title>`` tooltips on its marks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup

from contextkit.governance.lineage import Lineage, layers

_KIND_COLORS = {
    "file_source": "#6b7280",
    "push_source": "#6b7280",
    "batch_feature_view": "#2563eb",
    "stream_feature_view": "#0891b2",
    "realtime_feature_view": "#7c3aed",
    "embedding_view": "#059669",
    "context_service": "#d97706",
    "prompt_view": "#db2777",
}


def _n(value: float) -> str:
    """A compact number for axis labels."""
    if value is None or not math.isfinite(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1e6 or (0 < magnitude < 1e-3):
        return f"{value:.2e}"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"


def histogram(
    edges: Sequence[float], counts: Sequence[int], *, width: int = 300, height: int = 110
) -> Markup:
    """Bars of an equal-width histogram (``len(edges) == len(counts) + 1``)."""
    if not counts or len(edges) != len(counts) + 1:
        return Markup('<p class="muted">no values</p>')
    pad_l, pad_b, pad_t = 4, 16, 6
    plot_w, plot_h = width - 2 * pad_l, height - pad_b - pad_t
    top = max(counts) or 1
    bar_w = plot_w / len(counts)
    parts = [
        f'<svg class="chart chart-histogram" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="histogram">'
    ]
    for i, count in enumerate(counts):
        h = plot_h * count / top
        x = pad_l + i * bar_w
        y = pad_t + plot_h - h
        label = f"{_n(edges[i])} .. {_n(edges[i + 1])}: {count}"
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
            f'height="{max(h, 0.5 if count else 0):.1f}"><title>{escape(label)}</title></rect>'
        )
    base = pad_t + plot_h
    parts.append(
        f'<line class="axis" x1="{pad_l}" y1="{base}" x2="{width - pad_l}" y2="{base}"/>'
        f'<text class="tick" x="{pad_l}" y="{height - 3}">{escape(_n(edges[0]))}</text>'
        f'<text class="tick" x="{width - pad_l}" y="{height - 3}" text-anchor="end">'
        f"{escape(_n(edges[-1]))}</text></svg>"
    )
    return Markup("".join(parts))


def top_values(
    top: Sequence[Sequence], other: int = 0, nulls: int = 0, *, width: int = 300, limit: int = 8
) -> Markup:
    """Horizontal bars of the most frequent values (plus "other" and "null" when present)."""
    rows = [(str(v), int(n)) for v, n in list(top)[:limit]]
    rest = other + sum(int(n) for _v, n in list(top)[limit:])
    if rest:
        rows.append(("(other)", rest))
    if nulls:
        rows.append(("(null)", nulls))
    if not rows:
        return Markup('<p class="muted">no values</p>')
    line, label_w = 16, 96
    height = line * len(rows) + 4
    biggest = max(n for _v, n in rows) or 1
    parts = [
        f'<svg class="chart chart-bars" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="top values">'
    ]
    for i, (value, count) in enumerate(rows):
        y = 2 + i * line
        w = (width - label_w - 44) * count / biggest
        shown = value if len(value) <= 14 else value[:13] + "…"
        parts.append(
            f'<text class="label" x="{label_w - 4}" y="{y + 11}" text-anchor="end">'
            f"{escape(shown)}</text>"
            f'<rect class="bar" x="{label_w}" y="{y + 2}" width="{max(w, 1):.1f}" height="11">'
            f"<title>{escape(value)}: {count}</title></rect>"
            f'<text class="tick" x="{label_w + w + 4:.1f}" y="{y + 11}">{count}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def line(
    points: Sequence[tuple[str, float | None]],
    *,
    width: int = 300,
    height: int = 90,
    threshold: float | None = None,
    percent: bool = False,
    y_max: float | None = None,
    label: str = "",
) -> Markup:
    """A line over runs, oldest left: ``points`` are ``(run label, value or None)``."""
    values = [v for _l, v in points if v is not None]
    if not values:
        return Markup('<p class="muted">no runs measured yet</p>')
    pad_l, pad_r, pad_t, pad_b = 34, 6, 8, 14
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    top = max([*values, threshold or 0, y_max or 0]) or (0.01 if percent else 1.0)
    n = len(points)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad_l + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)
        return x, pad_t + plot_h - plot_h * v / top

    fmt = (lambda v: f"{v:.1%}") if percent else _n
    parts = [
        f'<svg class="chart chart-line" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(label or "over runs")}">',
        f'<line class="axis" x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - pad_r}" '
        f'y2="{pad_t + plot_h}"/>',
        f'<text class="tick" x="{pad_l - 3}" y="{pad_t + 4}" text-anchor="end">{fmt(top)}</text>',
        f'<text class="tick" x="{pad_l - 3}" y="{pad_t + plot_h}" text-anchor="end">'
        f"{fmt(0.0)}</text>",
    ]
    if threshold is not None:
        _x, y = xy(0, threshold)
        parts.append(
            f'<line class="threshold" x1="{pad_l}" y1="{y:.1f}" x2="{width - pad_r}" '
            f'y2="{y:.1f}"><title>threshold {fmt(threshold)}</title></line>'
        )
    coords = [(xy(i, v), lab, v) for i, (lab, v) in enumerate(points) if v is not None]
    if len(coords) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for (x, y), _l, _v in coords)
        parts.append(f'<polyline class="series" points="{path}"/>')
    for (x, y), lab, v in coords:
        over = threshold is not None and v > threshold
        parts.append(
            f'<circle class="point{" over" if over else ""}" cx="{x:.1f}" cy="{y:.1f}" r="3">'
            f"<title>{escape(lab)}: {fmt(v)}</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def lineage_graph(
    graph: Lineage,
    *,
    link: Callable[[str, str], str | None],
    highlight: str | None = None,
) -> Markup:
    """The lineage as columns of boxes (sources, views, services, prompts) joined by curves.

    ``link(kind, name)`` gives each box's href (None: no link). Within a column, boxes are
    ordered by the average row of what feeds them, so most edges run straight.
    """
    if not graph.nodes:
        return Markup('<p class="muted">nothing applied yet</p>')
    column = layers(graph)
    columns: dict[int, list[str]] = {}
    for node_id in sorted(graph.nodes, key=lambda n: (graph.nodes[n].kind, graph.nodes[n].name)):
        columns.setdefault(column[node_id], []).append(node_id)
    inputs: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        inputs[b].append(a)
    row: dict[str, float] = {}
    for c in sorted(columns):
        if c > 0:
            columns[c].sort(
                key=lambda n: (
                    sum(row.get(u, 0) for u in inputs[n]) / max(1, len(inputs[n])),
                    graph.nodes[n].name,
                )
            )
        for i, node_id in enumerate(columns[c]):
            row[node_id] = i
    box_w, box_h, gap_x, gap_y, pad = 170, 26, 70, 10, 10
    tallest = max(len(v) for v in columns.values())
    width = pad * 2 + len(columns) * box_w + (len(columns) - 1) * gap_x
    height = pad * 2 + tallest * (box_h + gap_y)
    order = sorted(columns)
    position: dict[str, tuple[float, float]] = {}
    for index, c in enumerate(order):
        x = pad + index * (box_w + gap_x)
        for i, node_id in enumerate(columns[c]):
            position[node_id] = (x, pad + i * (box_h + gap_y))
    parts = [
        f'<svg class="chart chart-lineage" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="lineage graph">'
    ]
    for a, b in graph.edges:
        (x1, y1), (x2, y2) = position[a], position[b]
        sx, sy, tx, ty = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
        mid = (sx + tx) / 2
        near = highlight is not None and highlight in (a, b)
        parts.append(
            f'<path class="edge{" near" if near else ""}" d="M{sx:.0f},{sy:.0f} C{mid:.0f},'
            f'{sy:.0f} {mid:.0f},{ty:.0f} {tx:.0f},{ty:.0f}"/>'
        )
    for node_id, (x, y) in position.items():
        node = graph.nodes[node_id]
        color = _KIND_COLORS.get(node.kind, "#374151")
        name = node.name if len(node.name) <= 22 else node.name[:21] + "…"
        classes = "node" + (" current" if node_id == highlight else "")
        box = (
            f'<g class="{classes}" data-node="{escape(node_id)}"><rect x="{x}" y="{y}" '
            f'width="{box_w}" height="{box_h}" rx="5" style="stroke:{color}"/>'
            f'<rect x="{x}" y="{y}" width="5" height="{box_h}" rx="2" style="fill:{color}"/>'
            f'<text x="{x + 12}" y="{y + 17}">{escape(name)}</text>'
            f"<title>{escape(node.kind.replace('_', ' '))} {escape(node.name)}"
            f"{': ' + escape(node.description) if node.description else ''}</title></g>"
        )
        href = link(node.kind, node.name)
        parts.append(f'<a href="{escape(href)}">{box}</a>' if href else box)
    parts.append("</svg>")
    return Markup("".join(parts))
