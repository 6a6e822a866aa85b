"""What each real broker reports: waiting, delayed, dead letters with Backoff's reason, in few round trips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, ShutdownNotifications, TimeLimit

from dramatiq_turbo.backoff import Backoff
from dramatiq_turbo.monitor import QueueMonitor, QueueStatsRecorder
from dramatiq_turbo.monitor.brokers import RedisBrokerAdapter, adapter_for
from tests.harness import unique, wait_for

from .conftest import RoundTrips

Factory = Callable[..., dramatiq.Broker]


class BadInput(ValueError):
    retryable = False


def backoff_broker(make_broker: Factory, kind: str, **recorder: Any) -> dramatiq.Broker:
    """A broker with the recorder first and Backoff instead of Retries, as install() stacks them."""
    middleware = [
        QueueStatsRecorder(flush_interval=600_000, **recorder),
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Backoff(max_retries=0, min_backoff=0, max_backoff=0),
    ]
    return make_broker(kind, middleware=middleware)


def test_delayed_dead_and_the_dead_letter_reason_on_every_broker(
    broker_kind: str, make_broker: Factory, start_worker: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    options = {}
    if broker_kind == "redis":
        options["namespace"] = request.getfixturevalue("monitor_namespace")
    broker = backoff_broker(make_broker, broker_kind, **options)
    queue = unique("q")

    @dramatiq.actor(queue_name=queue, broker=broker)
    def job(kind: str) -> None:
        if kind == "bad":
            raise BadInput("field 'x' is missing")

    job.send("bad")
    worker = start_worker(broker)
    wait_for(
        lambda: adapter_for(broker).read([queue], window=60_000, samples=0).queues[queue].dead == 1,
        timeout=10,
        what="the dead letter",
    )
    worker.stop()
    for _ in range(3):
        job.send("ok")
    for _ in range(2):
        job.send_with_options(args=("ok",), delay=60_000)

    monitor = QueueMonitor(broker, **({"namespace": options["namespace"]} if options else {}))
    stats = wait_for(
        lambda: (s := monitor.get_detailed_stats(queue)).waiting == 3 and s.delayed == 2 and s,
        timeout=10,
        what="3 waiting and 2 delayed",
    )
    assert stats.dead == 1
    [letter] = stats.dead_letters
    assert (letter.actor, letter.reason, letter.error, letter.detail) == (
        "job",
        "BadInput is not retryable",
        "BadInput",
        "field 'x' is missing",
    )
    assert stats.dead_lettered == 1 and stats.failed == 1
    assert (
        "1 message(s) dead-lettered in the last 5 min (1 in the dead-letter queue); "
        "reason: BadInput is not retryable (BadInput: field 'x' is missing)."
    ) in stats.recommendations
    if broker_kind == "rabbitmq":
        assert stats.oldest_age_ms is None  # RabbitMQ cannot peek at its queue without taking messages
        again = monitor.get_detailed_stats(queue)  # the dead letter was peeked and put back, in place
        assert again.dead == 1 and again.dead_letters[0].message_id == letter.message_id
    else:
        assert stats.oldest_age_ms is not None and 0 <= stats.oldest_age_ms < 10_000
        assert stats.in_progress == 0


@pytest.mark.integration
def test_redis_broker_state_of_fifty_queues_in_one_round_trip(make_broker: Factory) -> None:
    broker = make_broker("redis")
    queues = [unique("q") for _ in range(50)]
    for index, queue in enumerate(queues):
        broker.declare_queue(queue)
        for _ in range(index % 3):
            broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="a", args=(), kwargs={}, options={}))
    adapter = RedisBrokerAdapter(broker)
    adapter.read(queues[:1], window=60_000, samples=3)  # loads the script
    trips = RoundTrips()
    try:
        state = adapter.read(queues, window=60_000, samples=3)
    finally:
        trips.undo()
    assert trips.count == 1
    assert [state.queues[q].waiting for q in queues] == [i % 3 for i in range(50)]
    assert set(adapter.queues()) >= set(queues)


@pytest.mark.integration
def test_rabbitmq_counts_many_queues_at_once_and_reports_missing_ones(
    make_broker: Factory, rabbitmq_url: str
) -> None:
    import pika

    from dramatiq_turbo.monitor.rabbitmq import passive_counts

    broker = make_broker("rabbitmq")
    queues = [unique("q") for _ in range(20)]
    for queue in queues:
        broker.declare_queue(queue, ensure=True)
    broker.enqueue(dramatiq.Message(queue_name=queues[3], actor_name="a", args=(), kwargs={}, options={}))
    names = [*queues, *(f"{q}.XQ" for q in queues), unique("missing")]
    counts = wait_for(
        lambda: (c := passive_counts(pika.URLParameters(rabbitmq_url), names))[queues[3]].messages == 1 and c,
        timeout=5,
        what="the message to be counted",
    )
    assert [counts[q].messages for q in queues if q != queues[3]] == [0] * 19  # type: ignore[union-attr]
    assert counts[names[-1]] is None


@pytest.mark.integration
def test_an_unreachable_broker_raises(make_broker: Factory) -> None:
    from dramatiq.brokers.redis import RedisBroker

    from tests.harness import free_port

    broker = RedisBroker(url=f"redis://127.0.0.1:{free_port()}/1", socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        QueueMonitor(broker).get_detailed_stats("default")
