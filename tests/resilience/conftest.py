"""Fixtures for the resilience tests: breakers on each store, cleaned up after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dramatiq_turbo.breaker import core
from dramatiq_turbo.breaker.core import Breaker
from dramatiq_turbo.breaker.store import RedisStore, Settings
from dramatiq_turbo.redis import connect_redis
from tests.harness import unique


@pytest.fixture(autouse=True)
def _reset_default_breaker() -> Iterator[None]:
    """``breaker(name)`` serves the last ``CircuitBreaker`` created: forget it between tests."""
    yield
    core.set_default(None)
    core._fallback.clear()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_breaker(store_kind: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Breaker]]:
    """``make_breaker(**settings)``: a breaker on the memory store or on real Redis (keys deleted after)."""
    namespace = unique("brk")
    clients: list[Any] = []

    def factory(**settings: Any) -> Breaker:
        shared = None
        if store_kind == "redis":
            client = connect_redis(request.getfixturevalue("redis_url"))
            clients.append(client)
            shared = RedisStore(client, namespace=namespace)
        exclude = settings.pop("exclude", ())
        return Breaker(unique("dep"), Settings(**settings), shared=shared, exclude=exclude)

    yield factory
    for client in clients:
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()
