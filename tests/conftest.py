"""Fixtures for real services (Redis, RabbitMQ), brokers and worker processes.

Services are probed once per session.  When one is unreachable, the tests
that need it are skipped with the reason, and listed at the end of the run;
with ``CI=true`` they fail instead, because CI must prove them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker

from dramatiq_turbo.redis import connect_redis
from tests import harness

_probes: dict[str, str | None] = {}
_skipped_for: dict[str, str] = {}


def _service(name: str, url: str, probe: Callable[[str], str | None]) -> str:
    if name not in _probes:
        _probes[name] = probe(url)
    problem = _probes[name]
    if problem is None:
        return url
    message = f"{name} is not reachable at {url} ({problem})"
    if harness.IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    _skipped_for[name] = message
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis URL (``TURBO_TEST_REDIS_URL``, database 15 by default)."""
    return _service("Redis", harness.REDIS_URL, harness.probe_redis)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The test RabbitMQ URL (``TURBO_TEST_RABBITMQ_URL``)."""
    return _service("RabbitMQ", harness.RABBITMQ_URL, harness.probe_rabbitmq)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test database, emptied before and after the test."""
    client = connect_redis(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def spare_redis() -> Iterator[harness.RedisServer]:
    """A private ``redis-server`` on a free port that the test may stop and start again."""
    import shutil

    if shutil.which("redis-server") is None:
        message = "redis-server is not installed, so no spare Redis can be started"
        if harness.IN_CI:
            pytest.fail(f"CI=true: {message}", pytrace=False)
        _skipped_for["redis-server"] = message
        pytest.skip(message)
    server = harness.RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_broker(request: pytest.FixtureRequest) -> Iterator[Callable[..., dramatiq.Broker]]:
    """A factory ``make_broker(kind, **options)`` for brokers that are disposed of after the test.

    The broker becomes Dramatiq's global broker, so actors declared in the
    test bind to it.
    """
    brokers: list[dramatiq.Broker] = []

    def factory(kind: str, **options: Any) -> dramatiq.Broker:
        if kind == "redis":
            request.getfixturevalue("redis_url")
        elif kind == "rabbitmq":
            request.getfixturevalue("rabbitmq_url")
        broker = harness.make_broker(kind, **options)
        brokers.append(broker)
        dramatiq.set_broker(broker)
        return broker

    yield factory
    for broker in brokers:
        harness.dispose_broker(broker)


@pytest.fixture(
    params=[
        "stub",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("rabbitmq", marks=pytest.mark.integration),
    ]
)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Each broker kind in turn: the same test runs on Stub, Redis and RabbitMQ."""
    kind: str = request.param
    return kind


@pytest.fixture
def broker(broker_kind: str, make_broker: Callable[..., dramatiq.Broker]) -> dramatiq.Broker:
    """A fresh broker of ``broker_kind``."""
    return make_broker(broker_kind)


@pytest.fixture
def start_worker() -> Iterator[Callable[..., Worker]]:
    """A factory ``start_worker(broker, worker_threads=2, worker_timeout=100)`` for in-process workers.

    A short ``worker_timeout`` keeps idle polls fast; every worker is stopped
    after the test.
    """
    workers: list[Worker] = []

    def factory(broker: dramatiq.Broker, **options: Any) -> Worker:
        options.setdefault("worker_threads", 2)
        options.setdefault("worker_timeout", 100)
        worker = Worker(broker, **options)
        worker.start()
        workers.append(worker)
        return worker

    yield factory
    for worker in workers:
        worker.stop(timeout=10_000)


@pytest.fixture
def worker_processes() -> Iterator[Callable[..., harness.WorkerProcesses]]:
    """A factory for real ``dramatiq`` worker processes; all are stopped after the test.

    ``worker_processes(module, processes=1, threads=2, env={...})`` returns a
    ``WorkerProcesses``; call ``start(n)`` on it to launch ``n`` commands.
    After the test their logs are scanned: a traceback that contains none of
    the group's ``expected_tracebacks`` fails the test.
    """
    groups: list[harness.WorkerProcesses] = []

    def factory(
        module: str, *, processes: int = 1, threads: int = 2, env: dict[str, str] | None = None
    ) -> harness.WorkerProcesses:
        group = harness.WorkerProcesses(module, processes, threads, dict(env or {}))
        groups.append(group)
        return group

    yield factory
    unexpected: list[str] = []
    for group in groups:
        group.stop()
        unexpected += group.unexpected_tracebacks()
        group.cleanup()
    # A worker that crashed in a hook, a thread or a listener says so only in its log.
    assert not unexpected, f"unexpected traceback in a worker's log:\n{unexpected[0][-3000:]}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped_for:
        terminalreporter.section("services not available: their tests were SKIPPED")
        for message in _skipped_for.values():
            terminalreporter.write_line(f"  {message}")
        terminalreporter.write_line("  Start them (see README, 'Running the tests') to run every test.")
