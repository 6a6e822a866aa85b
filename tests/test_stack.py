"""The whole stack from install() on a real RedisBroker: the middleware work together."""

from __future__ import annotations

import threading

import dramatiq
import pytest
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from dramatiq_turbo import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    RateLimiter,
    ResultCache,
    StallGuard,
    Telemetry,
    breaker,
    install,
)
from dramatiq_turbo.defer import DEFERRALS_OPTION
from dramatiq_turbo.redis import connect_redis
from tests.harness import unique

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(make_broker, redis_url, redis_client, start_worker):
    broker = make_broker("redis")
    backend = RedisBackend(url=redis_url, namespace=unique("results"))
    broker.add_middleware(Results(backend=backend))
    install(
        broker,
        redis=connect_redis(redis_url),
        breaker=CircuitBreaker(redis=redis_url, fail_max=2, reset_timeout=60_000),
    )
    return broker, backend


def test_install_builds_the_documented_order_on_a_real_broker(stack):
    broker, _ = stack
    names = [type(m).__name__ for m in broker.middleware]
    assert names[0] == "Telemetry"
    assert names.index("Pipelines") < names.index("Backoff") < names.index("Results")
    assert names[-4:] == ["ResultCache", "StallGuard", "RateLimiter", "CircuitBreaker"]
    assert "Retries" not in names
    kinds = (Telemetry, Backoff, ResultCache, StallGuard, RateLimiter, CircuitBreaker)
    assert all(sum(isinstance(m, kind) for m in broker.middleware) == 1 for kind in kinds)


def test_cache_hits_take_no_rate_limit_slot_and_pass_an_open_circuit(stack, start_worker):
    broker, backend = stack
    queue = unique("stack")
    runs: list[int] = []
    lock = threading.Lock()
    healthy = threading.Event()
    healthy.set()

    # One start per minute: only the first run of each argument may start.
    @dramatiq.actor(
        queue_name=queue,
        broker=broker,
        store_results=True,
        cache=True,
        rate_limit=(1, 60_000),
        breaker="dependency",
        max_retries=0,
    )
    def lookup(x: int) -> int:
        with lock:
            runs.append(x)
        if not healthy.is_set():
            raise ConnectionError("dependency down")
        return x * 100

    start_worker(broker, worker_threads=4)
    first = lookup.send(7)
    assert first.get_result(backend=backend, block=True, timeout=10_000) == 700

    # The slot is used up for a minute: identical messages are served from the cache at once.
    repeats = [lookup.send(7) for _ in range(5)]
    assert [m.get_result(backend=backend, block=True, timeout=5_000) for m in repeats] == [700] * 5
    assert runs == [7], "hits ran no actor code"

    # A new argument needs a slot: it is deferred, not run, not failed.
    other = lookup.send(8)
    with pytest.raises(dramatiq.results.ResultTimeout):
        other.get_result(backend=backend, block=True, timeout=1_000)
    assert runs == [7]

    # Trip the circuit of "dependency" (fail_max=2) by hand, as failing calls would.
    healthy.clear()
    for _ in range(2):
        with pytest.raises(ConnectionError), breaker("dependency"):
            raise ConnectionError("down")
    with pytest.raises(CircuitOpenError), breaker("dependency"):
        pass

    # While open, a cached result is still served.
    again = lookup.send(7)
    assert again.get_result(backend=backend, block=True, timeout=5_000) == 700
    assert runs == [7]


def test_a_deferred_message_keeps_its_identity(stack, start_worker, redis_client):
    broker, backend = stack
    queue = unique("stack")
    seen: list[tuple[str, int]] = []

    @dramatiq.actor(queue_name=queue, broker=broker, store_results=True, rate_limit=(1, 3_000))
    def tick(n: int) -> int:
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        seen.append((message.message_id, message.options.get(DEFERRALS_OPTION, 0)))
        return n

    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    start_worker(broker)
    messages = [tick.send(n) for n in range(2)]
    assert [m.get_result(backend=backend, block=True, timeout=10_000) for m in messages] == [0, 1]
    assert sorted(mid for mid, _ in seen) == sorted(m.message_id for m in messages)
    # max_wait is 1,000 ms and the next slot is 3,000 ms away: deferred, not waited for.
    first, second = sorted(count for _, count in seen)
    assert first == 0 and second >= 1
