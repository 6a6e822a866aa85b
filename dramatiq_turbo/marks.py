"""Marks that one middleware leaves on a message for the others during one delivery.

They live on the worker's ``MessageProxy``, not in ``message.options``, so they
are never persisted with the message and vanish with the delivery.
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_cache_hit", "mark_cache_hit"]

_CACHE_HIT = "_turbo_cache_hit"


def mark_cache_hit(message: Any) -> None:
    """Say that ``message``'s result is served from the cache.

    ``RateLimiter`` and ``CircuitBreaker`` let a marked message through: a hit
    runs no actor code, so it takes no slot and needs no healthy dependency.
    """
    setattr(message, _CACHE_HIT, True)


def is_cache_hit(message: Any) -> bool:
    """Whether ``ResultCache`` marked ``message`` as served from the cache."""
    return bool(getattr(message, _CACHE_HIT, False))
