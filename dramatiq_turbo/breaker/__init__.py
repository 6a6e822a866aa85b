"""Circuit breakers shared by every worker process: the ``CircuitBreaker`` middleware and ``breaker(name)``.

* ``store``: where state lives (``RedisStore`` with ``breaker.lua``, ``MemoryStore``).
* ``core``: one named ``Breaker``, ``CircuitOpenError`` and ``breaker(name)``.
* ``middleware``: ``CircuitBreaker``, which defers guarded actors' messages while open.
"""

from __future__ import annotations

from .core import Admission, Breaker, CircuitOpenError, breaker, current_admission, get_breaker
from .middleware import CircuitBreaker
from .store import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, BreakerStore, MemoryStore, RedisStore, Settings

__all__ = [
    "STATE_CLOSED",
    "STATE_HALF_OPEN",
    "STATE_OPEN",
    "Admission",
    "Breaker",
    "BreakerStore",
    "CircuitBreaker",
    "CircuitOpenError",
    "MemoryStore",
    "RedisStore",
    "Settings",
    "breaker",
    "current_admission",
    "get_breaker",
]
