"""A bounded LRU cache of query embeddings, for the serving path.

Searches repeat: the same query text, encoded by the same model, gives the same vector, and a hit
costs a dictionary lookup instead of a model call. Entries are keyed by ``(model, text)``, where
``model`` is the encoder's identity (its name plus the options that change its vectors), so one
cache may be shared by several encoders. Cached vectors are read-only numpy arrays: a caller that
wants to change one must copy it first (writing raises ``ValueError``), so no caller can corrupt
another's result.

>>> cache = QueryCache(max_entries=2)
>>> import numpy as np
>>> v = cache.get_or_compute("m", "red shoes", lambda text: np.ones(3, dtype=np.float32))
>>> cache.get_or_compute("m", "red shoes", lambda text: np.zeros(3)) is v
True
>>> cache.hits, cache.misses
(1, 1)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from .errors import EncoderConfigError


class QueryCache:
    """At most ``max_entries`` vectors, least recently used evicted first; thread-safe.

    ``max_entries=0`` disables caching (every call computes). A 384-dimension float32 vector takes
    1.5 KiB, so the default of 4,096 entries holds about 6 MiB.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 0:
            raise EncoderConfigError(
                f"query_cache_size must be an integer >= 0, got {max_entries!r}"
            )
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"QueryCache({len(self)}/{self.max_entries} entries, {self.hits} hits)"

    def get(self, model: str, text: str) -> np.ndarray | None:
        """The cached vector, marked as recently used; None on a miss."""
        key = (model, text)
        with self._lock:
            vector = self._entries.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, model: str, text: str, vector: np.ndarray) -> np.ndarray:
        """Store a read-only copy of ``vector`` (1-D float32) and return it."""
        stored = np.array(vector, dtype=np.float32, copy=True).reshape(-1)
        stored.setflags(write=False)
        if self.max_entries == 0:
            return stored
        with self._lock:
            self._entries[(model, text)] = stored
            self._entries.move_to_end((model, text))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return stored

    def get_or_compute(
        self, model: str, text: str, compute: Callable[[str], np.ndarray]
    ) -> np.ndarray:
        """The cached vector for ``(model, text)``, else ``compute(text)``, stored then returned.

        The lock is not held while computing: two threads missing the same text at once both
        compute it (same result), rather than one waiting behind the other's model call.
        """
        vector = self.get(model, text)
        if vector is None:
            vector = self.put(model, text, compute(text))
        return vector

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0
