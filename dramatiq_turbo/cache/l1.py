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
        self._cache: TTLCache[str, tuple[Any, float]] = TTLCache(
            maxsize=maxsize, ttl=ttl / 1000, timer=time.monotonic
        )
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``, or ``default`` when absent or expired."""
        with self._lock:
            entry = self._cache.get(key)
        if entry is None:
            return default
        if entry[1] <= time.monotonic():
            self.pop(key)
            return default
        return entry[0]

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        """Keep ``value`` for ``min(ttl, self.ttl)`` milliseconds."""
        if self.maxsize == 0 or self.ttl == 0 or ttl == 0:
            return
        lifetime = self.ttl if ttl is None else min(ttl, self.ttl)
        with self._lock:
            self._cache[key] = (value, time.monotonic() + lifetime / 1000)

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
