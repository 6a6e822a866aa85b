"""dramatiq_turbo: fast, robust middleware for Dramatiq.

Public names are imported lazily, so ``import dramatiq_turbo`` stays cheap
and optional extras (PDF, tokenizer, OTLP exporter) are only needed by the
names that use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module that defines it.  Each feature adds its names here.
_EXPORTS: dict[str, str] = {
    "install": "dramatiq_turbo.install",
    "connect_redis": "dramatiq_turbo.redis",
    "Deferred": "dramatiq_turbo.defer",
    "DeferralFailed": "dramatiq_turbo.defer",
    "CircuitBreaker": "dramatiq_turbo.breaker",
    "CircuitOpenError": "dramatiq_turbo.breaker",
    "breaker": "dramatiq_turbo.breaker",
    "Backoff": "dramatiq_turbo.backoff",
}

if TYPE_CHECKING:
    from .backoff import Backoff as Backoff
    from .breaker import CircuitBreaker as CircuitBreaker
    from .breaker import CircuitOpenError as CircuitOpenError
    from .breaker import breaker as breaker
    from .defer import DeferralFailed as DeferralFailed
    from .defer import Deferred as Deferred
    from .install import install as install
    from .redis import connect_redis as connect_redis

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'dramatiq_turbo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
