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
    from .batch import BatchResult as BatchResult
    from .batch import parallel as parallel
    from .batch import process_batch as process_batch
    from .chunking import smart_chunk as smart_chunk
    from .defer import DeferralFailed as DeferralFailed
    from .defer import Deferred as Deferred
    from .http import DownloadError as DownloadError
    from .http import DownloadRefused as DownloadRefused
    from .http import DownloadTimeout as DownloadTimeout
    from .http import DownloadTooLarge as DownloadTooLarge
    from .http import download_file as download_file
    from .http import http_session as http_session
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
