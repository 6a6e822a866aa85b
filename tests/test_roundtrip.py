"""The harness itself: a message round-trips through each broker with a real worker."""

from __future__ import annotations

import threading

import dramatiq
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

from tests.harness import unique


def test_message_round_trips_through_each_broker(broker, start_worker):
    backend = StubBackend()
    broker.add_middleware(Results(backend=backend))
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()
    queue = unique("rt")

    @dramatiq.actor(queue_name=queue, store_results=True, broker=broker)
    def add(x: int, y: int) -> int:
        with lock:
            seen.append((x, y))
        return x + y

    start_worker(broker)
    messages = [add.send(i, i * 10) for i in range(20)]
    results = [message.get_result(backend=backend, block=True, timeout=15_000) for message in messages]

    assert results == [i + i * 10 for i in range(20)]
    assert sorted(seen) == [(i, i * 10) for i in range(20)], "each message ran exactly once"
