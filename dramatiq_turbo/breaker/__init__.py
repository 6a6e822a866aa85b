"""Circuit breakers shared by every worker process: the ``CircuitBreaker`` middleware and ``breaker(name)``.

* ``store``: where state lives (``RedisStore`` with ``breaker.lua``, ``MemoryStore``).
* ``core``: one named ``Breaker``, ``CircuitOpenError`` and ``breaker(name)``.
* ``middleware``: ``CircuitBreaker``, which defers guarded actors' messages while open.
"""

from __future__ import annotations

import sys
import types

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


class _CallablePackage(types.ModuleType):
    """This package, callable as ``breaker(name)``.

    ``dramatiq_turbo.breaker`` is both this package and the public function
    ``breaker``; once the package is imported, Python binds the name to the
    package, so calling it must mean ``breaker(name)``.
    """

    def __call__(self, name: str) -> breaker:
        return breaker(name)


sys.modules[__name__].__class__ = _CallablePackage
