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
    "Telemetry": "dramatiq_turbo.telemetry",
    "configure_telemetry": "dramatiq_turbo.telemetry",
    "MetricsCollector": "dramatiq_turbo.telemetry",
    "step": "dramatiq_turbo.telemetry",
    "Timer": "dramatiq_turbo.telemetry",
}

if TYPE_CHECKING:
    from .defer import DeferralFailed as DeferralFailed
    from .defer import Deferred as Deferred
    from .install import install as install
    from .redis import connect_redis as connect_redis
    from .telemetry import MetricsCollector as MetricsCollector
    from .telemetry import Telemetry as Telemetry
    from .telemetry import Timer as Timer
    from .telemetry import configure_telemetry as configure_telemetry
    from .telemetry import step as step

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
