"""dramatiq_turbo: fast, robust middleware for Dramatiq.

Public names are imported lazily, so ``import dramatiq_turbo`` stays cheap
and optional extras (PDF, tokenizer, OTLP exporter) are only needed by the
names that use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# ``install`` and ``breaker`` are imported eagerly: each function shares its
# name with its module, and importing the submodule later would otherwise
# rebind the package attribute to the module.
from .breaker import breaker
from .install import install

# Public name -> module that defines it.  Each feature adds its names here.
_EXPORTS: dict[str, str] = {
    # the shared store
    "connect_redis": "dramatiq_turbo.redis",
    "batch_get": "dramatiq_turbo.redis",
    "batch_set": "dramatiq_turbo.redis",
    # deferral
    "Deferred": "dramatiq_turbo.defer",
    "DeferralFailed": "dramatiq_turbo.defer",
    # middleware
    "ResultCache": "dramatiq_turbo.cache",
    "MultiLevelCache": "dramatiq_turbo.cache",
    "content_hash": "dramatiq_turbo.cache",
    "RateLimiter": "dramatiq_turbo.ratelimit",
    "rate_limit": "dramatiq_turbo.ratelimit",
    "RateLimitTimeout": "dramatiq_turbo.ratelimit",
    "CircuitBreaker": "dramatiq_turbo.breaker",
    "CircuitOpenError": "dramatiq_turbo.breaker",
    "Backoff": "dramatiq_turbo.backoff",
    "Telemetry": "dramatiq_turbo.telemetry",
    "configure_telemetry": "dramatiq_turbo.telemetry",
    "MetricsCollector": "dramatiq_turbo.telemetry",
    "step": "dramatiq_turbo.telemetry",
    "Timer": "dramatiq_turbo.telemetry",
    "QueueMonitor": "dramatiq_turbo.monitor",
    "QueueStats": "dramatiq_turbo.monitor",
    "QueueStatsRecorder": "dramatiq_turbo.monitor",
    "StallGuard": "dramatiq_turbo.stall",
    "StalledError": "dramatiq_turbo.stall",
    # tools for actors and workers
    "presets": "dramatiq_turbo.presets",  # a public module
    "http_session": "dramatiq_turbo.http",
    "download_file": "dramatiq_turbo.http",
    "DownloadError": "dramatiq_turbo.http",
    "DownloadTooLarge": "dramatiq_turbo.http",
    "DownloadTimeout": "dramatiq_turbo.http",
    "DownloadRefused": "dramatiq_turbo.http",
    "process_batch": "dramatiq_turbo.batch",
    "BatchResult": "dramatiq_turbo.batch",
    "parallel": "dramatiq_turbo.batch",
    "smart_chunk": "dramatiq_turbo.chunking",
}

if TYPE_CHECKING:
    from . import presets as presets
    from .backoff import Backoff as Backoff
    from .batch import BatchResult as BatchResult
    from .batch import parallel as parallel
    from .batch import process_batch as process_batch
    from .breaker import CircuitBreaker as CircuitBreaker
    from .breaker import CircuitOpenError as CircuitOpenError
    from .cache import MultiLevelCache as MultiLevelCache
    from .cache import ResultCache as ResultCache
    from .cache import content_hash as content_hash
    from .chunking import smart_chunk as smart_chunk
    from .defer import DeferralFailed as DeferralFailed
    from .defer import Deferred as Deferred
    from .http import DownloadError as DownloadError
    from .http import DownloadRefused as DownloadRefused
    from .http import DownloadTimeout as DownloadTimeout
    from .http import DownloadTooLarge as DownloadTooLarge
    from .http import download_file as download_file
    from .http import http_session as http_session
    from .monitor import QueueMonitor as QueueMonitor
    from .monitor import QueueStats as QueueStats
    from .monitor import QueueStatsRecorder as QueueStatsRecorder
    from .ratelimit import RateLimiter as RateLimiter
    from .ratelimit import RateLimitTimeout as RateLimitTimeout
    from .ratelimit import rate_limit as rate_limit
    from .redis import batch_get as batch_get
    from .redis import batch_set as batch_set
    from .redis import connect_redis as connect_redis
    from .stall import StalledError as StalledError
    from .stall import StallGuard as StallGuard
    from .telemetry import MetricsCollector as MetricsCollector
    from .telemetry import Telemetry as Telemetry
    from .telemetry import Timer as Timer
    from .telemetry import configure_telemetry as configure_telemetry
    from .telemetry import step as step

__all__ = ["__version__", "breaker", "install", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'dramatiq_turbo' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    # A public module (``presets``) is itself the name.
    is_module = module_name == f"{__name__}.{name}" and not hasattr(module, name)
    value = module if is_module else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
