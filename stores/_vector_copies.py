"""The in-memory copies of tables a store searches in numpy (:class:`ExactCache`: the exact copy,
and the projected one a projected plan adds), kept least recently used first out under two
bounds for the whole store: ``max_tables`` copies and ``max_bytes`` of vectors.

The serving process opens one store per vector location (the runtime shares it), so these bound
the process. Each copy is also bounded on its own (``exact_cache_max_bytes``, checked by the
store before it loads one). A copy is let in by evicting the least recently used ones, but only
those idle for ``min_idle_s``: loading a copy reads the whole table (about a second at 50k
rows), so two hot tables that do not fit together must not evict each other on every query. A
table whose copy is not let in is searched by LanceDB (its calibrated ANN, else flat), as a
table too large for a copy is, until room frees. The bytes counted are the vectors' (rows x dim
x 4, or rows x dim for a compact copy's 8-bit vectors, and a projected scan's rows x dims x 4 at
32 bits, rows x (dims + 8) at 8 bits; ``exact_cache_max_bytes`` counts a float copy's scan at 4
bytes, an upper bound); the text and metadata columns a copy holds beside them come on top.

Not thread-safe on its own: the store calls it under its lock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator

from contextkit.stores._vector_query import ExactCache

COPY_MIN_IDLE_S = 10.0
"""How long a copy must have gone unused before another table's copy may evict it."""


def copy_bytes(cache: ExactCache) -> int:
    """The vectors' memory of one copy: the exact matrix (or a compact copy's 8-bit vectors)
    and, for a projected plan, the projected rows."""
    scan = 0 if cache.scan is None else cache.scan.nbytes
    if cache.compact is not None:
        return cache.compact.nbytes + scan
    return int(cache.matrix.nbytes) + scan


class InMemoryCopies:
    """The store's copies by table name (a checkout is ``table@version``), LRU first."""

    def __init__(self, max_tables: int, max_bytes: int, min_idle_s: float | None = None):
        self.max_tables = max_tables
        self.max_bytes = max_bytes
        self.min_idle_s = COPY_MIN_IDLE_S if min_idle_s is None else min_idle_s
        self._copies: OrderedDict[str, ExactCache] = OrderedDict()
        self._used: dict[str, float] = {}

    # -- reading, as a mapping ---------------------------------------------------------------

    def get(self, table: str, default: ExactCache | None = None) -> ExactCache | None:
        return self._copies.get(table, default)

    def __getitem__(self, table: str) -> ExactCache:
        return self._copies[table]

    def __contains__(self, table: object) -> bool:
        return table in self._copies

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._copies))

    def __len__(self) -> int:
        return len(self._copies)

    def pop(self, table: str, default: ExactCache | None = None) -> ExactCache | None:
        self._used.pop(table, None)
        return self._copies.pop(table, default)

    @property
    def bytes(self) -> int:
        """The vectors' bytes of every copy kept."""
        return sum(copy_bytes(c) for c in self._copies.values())

    # -- using and keeping -------------------------------------------------------------------

    def use(self, table: str, now: float) -> ExactCache | None:
        """The table's copy (None if none), marked as the most recently used."""
        cache = self._copies.get(table)
        if cache is not None:
            self._copies.move_to_end(table)
            self._used[table] = now
        return cache

    def fits(self, table: str, nbytes: int, now: float) -> bool:
        """Whether a copy of ``nbytes`` for ``table`` would be let in now (replacing the table's
        own copy, evicting only copies idle for ``min_idle_s``)."""
        return self._evictions(table, nbytes, now) is not None

    def keep(self, table: str, cache: ExactCache, now: float) -> bool:
        """Keep ``cache`` as the table's copy, evicting idle copies least recently used first
        as the bounds need; False (and nothing changed) when it does not fit."""
        victims = self._evictions(table, copy_bytes(cache), now)
        if victims is None:
            return False
        for victim in victims:
            self.pop(victim)
        self._copies[table] = cache
        self._copies.move_to_end(table)
        self._used[table] = now
        return True

    def _evictions(self, table: str, nbytes: int, now: float) -> list[str] | None:
        """The copies to evict so that ``nbytes`` more for ``table`` fit (its own copy is
        replaced), or None when that would take a copy used within ``min_idle_s``."""
        if nbytes > self.max_bytes or self.max_tables < 1:
            return None
        others = [t for t in self._copies if t != table]  # least recently used first
        total = nbytes + sum(copy_bytes(self._copies[t]) for t in others)
        count = 1 + len(others)
        victims: list[str] = []
        for other in others:
            if total <= self.max_bytes and count <= self.max_tables:
                break
            if now - self._used.get(other, -math.inf) < self.min_idle_s:
                return None  # the rest were used even more recently
            victims.append(other)
            total -= copy_bytes(self._copies[other])
            count -= 1
        if total > self.max_bytes or count > self.max_tables:
            return None
        return victims
