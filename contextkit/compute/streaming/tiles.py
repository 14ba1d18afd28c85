"""The tiles of an aggregate stream view (see the package docstring): the partial-aggregate
columns of a view, folding events into a tile, and merging a batch of records into the stored
tiles inside an online-store transaction."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.layout import tiles_table
from contextkit.compute.streaming.records import US, Record, stored_value
from contextkit.framework.specs import AggregateSpec, StreamFeatureViewSpec
from contextkit.types import Float64, Int64, String, epoch_micros

if TYPE_CHECKING:
    pass


STATE_PARTS = {
    "count": ("n",),
    "sum": ("n", "sum"),
    "mean": ("n", "sum"),
    "min": ("min",),
    "max": ("max",),
    "last": ("last", "last_ts", "last_seq"),
    "count_distinct": ("distinct",),
    "last_distinct": ("distinct",),
}


def state_columns(view: StreamFeatureViewSpec) -> list[tuple[str, str]]:
    """The partial-aggregate columns of a view's tiles, (name, dtype). Values are stored in the
    online store's native form (timestamps as microseconds, bools as 0/1), so min, max and
    sums are computed by SQLite itself at read time; ``distinct`` holds JSON
    ``{value: [event time, arrival seq]}``."""
    types = {f.column: f.dtype for f in view.features if isinstance(f, AggregateSpec)}
    inputs = input_types(view)
    cols: dict[str, str] = {"__n": Int64, "__max_ts": Int64}
    for f in view.features:
        if not isinstance(f, AggregateSpec) or f.column is None:
            continue
        for part in STATE_PARTS[f.function]:
            if part in ("min", "max", "last"):
                dtype = inputs.get(f.column, types.get(f.column) or String)
            else:
                dtype = {"n": Int64, "sum": Float64, "distinct": String}.get(part, Int64)
            cols[f"{f.column}__{part}"] = dtype
    return list(cols.items())


def input_types(view: StreamFeatureViewSpec) -> dict[str, str]:
    """The dtype of each aggregated input column (an aggregate's own dtype says it for
    min/max/last, which keep the column's type)."""
    out: dict[str, str] = {}
    for f in view.features:
        if isinstance(f, AggregateSpec) and f.column and f.function in ("min", "max", "last"):
            out[f.column] = f.dtype or String
    return out


def fold(state: dict[str, Any], columns: list[str], values: dict[str, Any], ts: int, seq: int):
    """Fold one event (values in stored form) into a tile's state, each column once."""
    state["__n"] = (state["__n"] or 0) + 1
    state["__max_ts"] = ts if state["__max_ts"] is None else max(state["__max_ts"], ts)
    for c in columns:
        v = values.get(c)
        if v is None:
            continue
        if f"{c}__n" in state:
            state[f"{c}__n"] = (state[f"{c}__n"] or 0) + 1
        if f"{c}__sum" in state:
            state[f"{c}__sum"] = (state[f"{c}__sum"] or 0) + v
        low, high = state.get(f"{c}__min"), state.get(f"{c}__max")
        if f"{c}__min" in state and (low is None or v < low):
            state[f"{c}__min"] = v
        if f"{c}__max" in state and (high is None or v > high):
            state[f"{c}__max"] = v
        if f"{c}__last" in state and (
            state[f"{c}__last_ts"] is None
            or (ts, seq) >= (state[f"{c}__last_ts"], state[f"{c}__last_seq"])
        ):
            state[f"{c}__last"], state[f"{c}__last_ts"], state[f"{c}__last_seq"] = v, ts, seq
        if f"{c}__distinct" in state:
            seen = state[f"{c}__distinct"]
            if isinstance(seen, str):
                seen = state[f"{c}__distinct"] = json.loads(seen)
            elif seen is None:
                seen = state[f"{c}__distinct"] = {}
            key = json.dumps(v)
            if key not in seen or [ts, seq] > seen[key]:
                seen[key] = [ts, seq]


def tile_of(ts: int, interval_s: int) -> int:
    step = interval_s * US
    return (ts // step) * step


def retained_us(view: StreamFeatureViewSpec) -> int:
    """How far back (from the current tile's end) a view needs tiles."""
    return max(view.max_window_seconds, view.ttl_seconds or 0) * US


def merge_tiles(w, workspace, view, records, seqs, now: datetime) -> None:
    table = tiles_table(workspace, view.name)
    keys = [(k.name, k.dtype or String) for k in view.join_keys]
    key_names = [k for k, _ in keys]
    state_cols = state_columns(view)
    names = [n for n, _ in state_cols]
    w.ensure_table(table, [*keys, ("tile", Int64)], state_cols)
    horizon = tile_of(epoch_micros(now), view.aggregation_interval_seconds) - retained_us(view)
    inputs = sorted({f.column for f in view.features if f.column is not None})
    schema = input_types(view)
    touched: dict[tuple, list[Record]] = {}
    for r in records:
        tile = tile_of(r.ts, view.aggregation_interval_seconds)
        if tile < horizon:
            continue  # too old to matter online; it stays in the log for offline reads
        touched.setdefault((*(r.values[k] for k in key_names), tile), []).append(r)
    if not touched:
        return
    stored = w.get(table, [*key_names, "tile"], list(touched), names)
    rows = []
    for pk, group in touched.items():
        old = stored.get(pk)
        state = dict(zip(names, old, strict=True)) if old else dict.fromkeys(names)
        for r in group:
            values = {c: stored_value(schema.get(c, ""), r.values.get(c)) for c in inputs}
            fold(state, inputs, values, r.ts, seqs[id(r)])
        for name in names:
            if name.endswith("__distinct") and isinstance(state[name], dict):
                state[name] = json.dumps(state[name], separators=(",", ":"))
        rows.append([*pk, *(state[n] for n in names)])
    w.upsert(table, [*key_names, "tile", *names], rows)
    w.delete_before(table, "tile", horizon)
