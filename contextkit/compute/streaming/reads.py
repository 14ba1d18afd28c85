"""Online reads of aggregate stream views: the window's tiles combined as of a read time."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.layout import tiles_table
from contextkit.compute.streaming.records import US
from contextkit.compute.streaming.tiles import STATE_PARTS, retained_us, tile_of
from contextkit.framework.specs import AggregateSpec, StreamFeatureViewSpec
from contextkit.types import Int64, epoch_micros

if TYPE_CHECKING:
    pass


def read_stream_aggregates(
    store: Any,
    workspace: str,
    view: StreamFeatureViewSpec,
    features: Sequence[str],
    key_rows: Sequence[tuple],
    now: datetime | None = None,
) -> list[tuple | None]:
    """``(event_timestamp_micros, *values)`` per key row (None when not served), for an
    aggregate stream view, as of ``now``. Counts, sums, min and max are aggregated by SQLite
    over the window's tiles (one query for the batch); ``last`` and the distinct sets are
    picked from the tiles' rows."""
    now_us = epoch_micros(now or datetime.now(UTC))
    step = view.aggregation_interval_seconds * US
    current = tile_of(now_us, view.aggregation_interval_seconds)
    table = tiles_table(workspace, view.name)
    keys = view.join_key_names
    key_rows = [tuple(k) for k in key_rows]
    selected = [view.feature(n) for n in features]

    def low(seconds: int) -> int:
        return current - seconds * US + step

    aggregates: list[tuple[str, str, int]] = [("max", "__max_ts", low(retained_us(view) // US))]
    slots: list[Any] = []
    picks: list[tuple[int, AggregateSpec]] = []
    for f in selected:
        c, lo = f.column, low(f.window_seconds)
        if c is None:
            slots.append(len(aggregates))
            aggregates.append(("sum", "__n", lo))
        elif f.function == "count":
            slots.append(len(aggregates))
            aggregates.append(("sum", f"{c}__n", lo))
        elif f.function in ("sum", "mean"):
            slots.append(len(aggregates))
            aggregates += [("sum", f"{c}__n", lo), ("sum", f"{c}__sum", lo)]
        elif f.function in ("min", "max"):
            slots.append(len(aggregates))
            aggregates.append((f.function, f"{c}__{f.function}", lo))
        else:  # last, count_distinct, last_distinct: from the rows
            slots.append(None)
            picks.append((len(slots) - 1, f))
    found = store.aggregate_range(table, keys, key_rows, "tile", current, aggregates)
    rows_needed = {f"{f.column}__{STATE_PARTS[f.function][0]}" for _, f in picks}
    for _, f in picks:
        if f.function == "last":
            rows_needed |= {f"{f.column}__last_ts", f"{f.column}__last_seq"}
    extra_cols = sorted(rows_needed)
    tile_rows: dict[tuple, list[tuple]] = {}
    if picks:
        lowest = min(low(f.window_seconds) for _, f in picks)
        tile_rows = store.read_range(table, keys, key_rows, "tile", lowest, ["tile", *extra_cols])
    ttl = (view.ttl_seconds or view.max_window_seconds) * US
    out: list[tuple | None] = []
    for key in key_rows:
        agg = found.get(key)
        newest = agg[0] if agg else None
        if newest is None or newest <= now_us - ttl:
            out.append(None)
            continue
        values: list[Any] = []
        for i, f in enumerate(selected):
            slot = slots[i]
            if slot is None:
                lo = low(f.window_seconds)
                rows = [r for r in tile_rows.get(key, []) if lo <= r[0] <= current]
                values.append(_from_rows(f, rows, extra_cols))
            elif f.function in ("sum", "mean"):
                n, total = agg[slot], agg[slot + 1]
                if not n:
                    values.append(None)
                elif f.function == "mean":
                    values.append(total / n)
                else:
                    values.append(int(total) if f.dtype == Int64 else total)
            elif f.column is None or f.function == "count":
                values.append(agg[slot] or 0)
            else:
                values.append(agg[slot])
        out.append((newest, *values))
    return out


def _from_rows(feature: AggregateSpec, rows: list[tuple], columns: list[str]) -> Any:
    """last / count_distinct / last_distinct over the window's tile rows (``tile`` first)."""
    c = feature.column
    at = {name: i + 1 for i, name in enumerate(columns)}
    if feature.function == "last":
        best = None
        for r in rows:
            ts, seq = r[at[f"{c}__last_ts"]], r[at[f"{c}__last_seq"]]
            if ts is not None and (best is None or (ts, seq) >= best[0]):
                best = ((ts, seq), r[at[f"{c}__last"]])
        return None if best is None else best[1]
    seen: dict[str, list[int]] = {}
    for r in rows:
        text = r[at[f"{c}__distinct"]]
        for value, rank in (json.loads(text) if text else {}).items():
            if value not in seen or rank > seen[value]:
                seen[value] = rank
    if feature.function == "count_distinct":
        return len(seen)
    newest = sorted(seen.items(), key=lambda kv: kv[1], reverse=True)[: feature.n]
    return [json.loads(value) for value, _ in newest]
