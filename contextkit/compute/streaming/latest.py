"""The latest values of an attribute stream view: a batch of records upserted into the view's
online table, in the layout of a batch view's table (so the batch reader serves it unchanged)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contextkit.compute.layout import online_table
from contextkit.compute.streaming.records import EVENT_TIMESTAMP, Record, stored_value
from contextkit.types import String, Timestamp

if TYPE_CHECKING:
    pass


def upsert_latest(w, workspace, view, records, seqs) -> None:
    # The layout of a batch view's online table, so the batch reader serves it unchanged.
    table = online_table(workspace, view.name)
    keys = [(k.name, k.dtype or String) for k in view.join_keys]
    features = [(f.name, f.dtype or String) for f in view.features]
    w.ensure_table(table, keys, [(EVENT_TIMESTAMP, Timestamp), *features])
    newest: dict[tuple, Record] = {}
    for r in records:  # the latest by event time; on a tie, the later arrival
        key = tuple(r.values[k] for k, _ in keys)
        old = newest.get(key)
        if old is None or (r.ts, seqs[id(r)]) >= (old.ts, seqs[id(old)]):
            newest[key] = r
    stored = w.get(table, [k for k, _ in keys], list(newest), [EVENT_TIMESTAMP])
    rows = []
    for key, r in newest.items():
        current = stored.get(key)
        if current is not None and current[0] > r.ts:
            continue  # a newer value is stored: this late record only goes to the log
        rows.append([*key, r.ts, *(stored_value(t, r.values[n]) for n, t in features)])
    w.upsert(table, [k for k, _ in keys] + [EVENT_TIMESTAMP] + [n for n, _ in features], rows)
