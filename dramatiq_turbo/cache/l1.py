"""L1: the in-process layer, a thread-safe TTL + LRU cache."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from cachetools import TTLCache

__all__ = ["LocalCache"]

_MISSING: Any = object()


class LocalCache:
    """A bounded in-process cache whose entries expire.

    ``cachetools.TTLCache`` gives the LRU bound and one TTL for all entries;
    each entry also carries its own deadline, so an entry whose L2 copy
    expires sooner than ``ttl`` is not served past that time.  cachetools is
    not thread-safe by itself: one lock guards every access.

    Parameters:
      maxsize(int): The most entries kept; the least recently used goes first.
      ttl(int): Milliseconds an entry lives at most.
    """

    def __init__(self, *, maxsize: int = 100, ttl: int = 60_000) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self._cache: TTLCache[str, tuple[Any, float | None]] = TTLCache(
            maxsize=maxsize, ttl=ttl / 1000, timer=time.monotonic
        )
        self._lock = threading.Lock()
        self._pid = os.getpid()
        #: Successful ``get`` calls (counted under the lock every hit takes anyway).
        self.hits = 0

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``, or ``default`` when absent or expired.  Counts hits in ``hits``."""
        # The hot path of every hit: one lock, one lookup, and a clock read
        # only for entries that must expire before the cache-wide TTL.
        with self._lock:
            try:
                value, deadline = self._cache[key]
            except KeyError:
                return default
            if deadline is None or deadline > time.monotonic():
                self.hits += 1
                return value
            del self._cache[key]
            return default

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        """Keep ``value`` for ``min(ttl, self.ttl)`` milliseconds."""
        if self.maxsize == 0 or self.ttl == 0 or ttl == 0:
            return
        # TTLCache enforces self.ttl; an entry only carries its own deadline when it is shorter.
        deadline = None if ttl is None or ttl >= self.ttl else time.monotonic() + ttl / 1000
        with self._lock:
            self._cache[key] = (value, deadline)

    def pop(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    def after_fork(self) -> None:
        """Replace a lock another thread may have held when the process forked."""
        self._lock = threading.Lock()
        self._pid = os.getpid()


MISSING = _MISSING
