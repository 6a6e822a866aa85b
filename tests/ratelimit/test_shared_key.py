"""Two actors whose key function names the same budget share it: the limit holds for both together."""

from __future__ import annotations

import threading

import dramatiq
import pytest

from dramatiq_turbo.ratelimit import RateLimiter, admitted_at
from tests.harness import unique
from tests.ratelimit.test_multiprocess import max_in_window


@pytest.mark.parametrize("store", ["local", pytest.param("redis", marks=pytest.mark.integration)])
def test_two_actors_naming_one_budget_share_it(store, make_broker, start_worker, request):
    redis = request.getfixturevalue("redis_url") if store == "redis" else None
    limiter = RateLimiter(redis=redis, max_wait=2_000, namespace=unique("shared"))
    broker = make_broker("stub")
    broker.add_middleware(limiter)
    queue = unique("shared")
    admitted: list[tuple[str, float]] = []
    lock = threading.Lock()
    limit = {"max": 4, "duration": 500, "key": lambda message: "partner-api"}

    def note(name: str) -> None:
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        with lock:
            admitted.append((name, admitted_at(message) or 0.0))

    broker.add_middleware(dramatiq.middleware.CurrentMessage())

    @dramatiq.actor(broker=broker, queue_name=queue, rate_limit=limit)
    def first() -> None:
        note("first")

    @dramatiq.actor(broker=broker, queue_name=queue, rate_limit=limit)
    def second() -> None:
        note("second")

    for _ in range(6):
        first.send()
        second.send()
    start_worker(broker, worker_threads=4)
    broker.join(queue, timeout=20_000)

    assert len(admitted) == 12
    assert {name for name, _ in admitted} == {"first", "second"}
    # 12 starts at 4 per 500 ms: one budget for both actors, so no window holds more than 4.
    assert max_in_window([t for _, t in admitted], 500) <= 4
    assert max(t for _, t in admitted) - min(t for _, t in admitted) >= 2 * 500 - 50, "it took 3 windows"
