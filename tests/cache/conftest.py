"""Fixtures of the cache tests: fakeredis for unit tests, caches that are closed afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from dramatiq_turbo.cache import MultiLevelCache
from tests import harness


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    """An in-memory Redis (with Lua) of its own."""
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def make_cache() -> Iterator[Callable[..., MultiLevelCache]]:
    """``make_cache(**options)``: a MultiLevelCache in a unique namespace, closed after the test."""
    caches: list[MultiLevelCache] = []

    def factory(**options: Any) -> MultiLevelCache:
        options.setdefault("namespace", harness.unique("turbo:cache"))
        cache = MultiLevelCache(**options)
        caches.append(cache)
        return cache

    yield factory
    for cache in caches:
        cache.close()
