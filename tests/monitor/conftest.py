"""Fixtures of the monitor tests: a private counters namespace, round-trip counting."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.connection import AbstractConnection

from dramatiq_turbo.redis import connect_redis
from tests.harness import unique


@pytest.fixture(scope="session")
def _namespaces(redis_url: str) -> Iterator[list[str]]:
    # A worker stopped after a test's own cleanup flushes once more (it must,
    # at shutdown): the namespaces are cleaned again once every test is done.
    namespaces: list[str] = []
    yield namespaces
    for namespace in namespaces:
        delete_keys(redis_url, f"{namespace}:*")


@pytest.fixture
def private_namespace(redis_url: str, _namespaces: list[str]) -> Iterator[Callable[[str], str]]:
    """``private_namespace(prefix)``: a key prefix of this test, cleaned after it and after the session."""
    mine: list[str] = []

    def make(prefix: str) -> str:
        namespace = unique(prefix)
        mine.append(namespace)
        _namespaces.append(namespace)
        return namespace

    yield make
    for namespace in mine:
        delete_keys(redis_url, f"{namespace}:*")


@pytest.fixture
def monitor_namespace(redis_url: str, _namespaces: list[str]) -> Iterator[str]:
    """A counters namespace no other test uses; its keys are deleted afterwards."""
    namespace = unique("turbo:monitor-test")
    _namespaces.append(namespace)
    yield namespace
    delete_keys(redis_url, f"{namespace}:*")


def delete_keys(url: str, pattern: str) -> None:
    client = connect_redis(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1_000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test database (nothing is flushed: tests use their own namespaces)."""
    found = connect_redis(redis_url)
    yield found
    found.close()


class RoundTrips:
    """Counts round trips to Redis: each first write of an exchange (later slices skip the health check).

    Every helper here and redis-py itself send a request's first bytes with
    ``check_health=True`` and any further slices of the same request
    without; so such writes are the round trips.  Counts every connection
    of this process while active: measure with nothing else running.
    """

    def __init__(self) -> None:
        self.count = 0
        original: Callable[..., Any] = AbstractConnection.send_packed_command

        def counted(connection: Any, command: Any, check_health: bool = True) -> Any:
            if check_health:
                self.count += 1
            return original(connection, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        self.undo = lambda: setattr(AbstractConnection, "send_packed_command", original)

    def reset(self) -> None:
        self.count = 0
