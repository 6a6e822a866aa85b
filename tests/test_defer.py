"""Deferral: the same message runs later, consuming no retry, storing no early result."""

from __future__ import annotations

import threading
from collections import Counter

import dramatiq
import pytest
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend, StubBackend

from dramatiq_turbo.defer import DEFERRALS_OPTION, Deferred, defer, deferral_count
from tests.harness import unique


class DeferTwice(Middleware):
    """Defers each message twice before letting it run."""

    def before_process_message(self, broker, message):
        if deferral_count(message) < 2:
            defer(broker, message, delay=50, reason="test", jitter=20)


def test_deferred_message_runs_once_with_its_real_result_and_callbacks(broker, start_worker, request):
    backend = (
        StubBackend()
        if type(broker).__name__ == "StubBroker"
        else RedisBackend(url=request.getfixturevalue("redis_url"))
    )
    broker.add_middleware(Results(backend=backend))
    broker.add_middleware(DeferTwice())
    queue = unique("defer")
    runs: Counter[int] = Counter()
    seen: list[tuple[int, int, str | None]] = []
    successes: list[int] = []
    failures: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(queue_name=queue, store_results=True, max_retries=3, broker=broker)
    def double(x: int) -> int:
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        with lock:
            runs[x] += 1
            if message is not None:
                seen.append(
                    (
                        message.options.get("retries", 0),
                        deferral_count(message),
                        message.options.get("turbo_deferred_by"),
                    )
                )
        return 2 * x

    @dramatiq.actor(queue_name=queue, broker=broker)
    def on_success(message_data, result):
        with lock:
            successes.append(result)

    @dramatiq.actor(queue_name=queue, broker=broker)
    def on_failure(message_data, exception_data):
        with lock:
            failures.append(1)

    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    start_worker(broker)
    messages = [
        double.send_with_options(args=(x,), on_success=on_success, on_failure=on_failure) for x in range(5)
    ]
    results = [m.get_result(backend=backend, block=True, timeout=15_000) for m in messages]
    broker.join(queue, timeout=15_000)

    assert results == [0, 2, 4, 6, 8], "the blocked caller gets the real value, not the skipped None"
    assert runs == Counter({x: 1 for x in range(5)}), "each message ran exactly once"
    assert len(seen) == 5, "every run saw its message (the checks below are not about an empty list)"
    assert all(retries == 0 for retries, _, _ in seen), "a deferral consumes no retry"
    assert all(count == 2 and reason == "test" for _, count, reason in seen)
    assert sorted(successes) == [0, 2, 4, 6, 8] and failures == [], "callbacks fire once, on success"


def test_defer_keeps_the_message_identity_and_counts():
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.declare_queue("q")
    message = dramatiq.Message(
        queue_name="q",
        actor_name="a",
        args=(1,),
        kwargs={"k": 2},
        options={"trace": "ctx", "store_results": True},
    )
    proxy = dramatiq.broker.MessageProxy(message)
    with pytest.raises(Deferred) as raised:
        defer(broker, proxy, delay=1_000, reason="circuit_open")

    assert raised.value.reason == "circuit_open" and raised.value.delay == 1_000
    [later] = [dramatiq.Message.decode(data) for data in broker.queues["q.DQ"].queue]
    assert later.message_id == message.message_id
    assert (later.args, later.kwargs) == ((1,), {"k": 2})
    assert later.options["trace"] == "ctx" and later.options["store_results"] is True
    assert later.options[DEFERRALS_OPTION] == 1
    assert proxy.options["store_results"] is False, "the skipped delivery stores nothing"


@pytest.mark.parametrize("delay", [-1, 1.5, "10", None])
def test_defer_rejects_delays_that_are_not_milliseconds(delay):
    from dramatiq.brokers.stub import StubBroker

    message = dramatiq.broker.MessageProxy(
        dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    )
    with pytest.raises(ValueError, match="delay must be"):
        defer(StubBroker(), message, delay=delay, reason="x")


def test_defer_fails_loudly_when_the_broker_refuses():
    from dramatiq.brokers.stub import StubBroker

    from dramatiq_turbo.defer import DeferralFailed

    message = dramatiq.broker.MessageProxy(
        dramatiq.Message(queue_name="missing", actor_name="a", args=(), kwargs={}, options={})
    )
    with pytest.raises(DeferralFailed, match="could not defer"):
        defer(StubBroker(), message, delay=10, reason="x")
    assert "store_results" not in message.options, "not skipped, so its result may still be stored"


def test_defer_without_a_delay_enqueues_straight_to_the_queue(make_broker, start_worker):
    """No delay means no trip through the delay queue: one plain enqueue, and the message runs once."""
    broker = make_broker("stub")
    enqueues: list[tuple[str, int | None]] = []

    class DeferOnceAtOnce(Middleware):
        def before_enqueue(self, broker, message, delay):
            enqueues.append((message.queue_name, delay))

        def before_process_message(self, broker, message):
            if deferral_count(message) < 1:
                defer(broker, message, delay=0, reason="test")

    broker.add_middleware(DeferOnceAtOnce())
    queue = unique("defer0")
    runs: list[int] = []

    @dramatiq.actor(queue_name=queue, broker=broker)
    def job(x: int) -> None:
        runs.append(x)

    job.send(7)
    start_worker(broker)
    broker.join(queue, timeout=10_000)
    assert runs == [7], "ran once, after one deferral"
    assert enqueues == [(queue, None), (queue, None)], "the send, then the deferral: neither delayed"
