"""On RabbitMQ a given-up message reaches ``<queue>.XQ`` once, carrying its ``turbo_failure`` reason.

Real RabbitMQ, an in-process worker, and ``Results`` on the test Redis: the
caller blocked on the result still gets the failure, ``on_failure`` fires
once per failed run, and nothing is left in (or duplicated from) the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.common import dq_name, xq_name
from dramatiq.results import ResultFailure, Results
from dramatiq.results.backends import RedisBackend

from dramatiq_turbo import install
from dramatiq_turbo.backoff import FAILURE_OPTION, Backoff
from dramatiq_turbo.redis import connect_redis
from tests.harness import unique, wait_for

pytestmark = pytest.mark.integration


class BadInput(ValueError):
    retryable = False


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    # Longer reads than the default: the caller blocks on the result for up to 15 s.
    client = connect_redis(redis_url, socket_timeout=20_000)
    namespace = unique("res")
    yield RedisBackend(client=client, namespace=namespace, use_namespace_prefix_keys=True)
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def _setup(make_broker: Any, backend: RedisBackend) -> tuple[dramatiq.Broker, str, list[Any], Any]:
    broker = make_broker("rabbitmq")
    broker.add_middleware(Results(backend=backend))
    install(
        broker,
        backoff=Backoff(min_backoff=0, max_backoff=0),
        cache=False,
        breaker=False,
        rate_limit=False,
        telemetry=False,
    )
    queue = unique("dlq")
    callbacks: list[Any] = []
    runs: list[str] = []

    @dramatiq.actor(queue_name=queue, broker=broker)
    def failed_callback(message_data: dict[str, Any], error: dict[str, str]) -> None:
        callbacks.append((message_data["message_id"], error["type"]))

    @dramatiq.actor(queue_name=queue, broker=broker, store_results=True, on_failure="failed_callback")
    def work(kind: str) -> None:
        runs.append(kind)
        if kind == "bad":
            raise BadInput("field 'x' is missing")
        raise RuntimeError("still down")

    work.runs = runs  # type: ignore[attr-defined]
    return broker, queue, callbacks, work


def _counts(broker: Any, queue: str) -> dict[str, int]:
    channel = broker.channel
    return {
        name: channel.queue_declare(name, passive=True).method.message_count
        for name in (queue, dq_name(queue), xq_name(queue))
    }


def _dead_letters(broker: Any, queue: str) -> list[dramatiq.Message[Any]]:
    letters = []
    while True:
        method, _, body = broker.channel.basic_get(xq_name(queue), auto_ack=True)
        if method is None:
            return letters
        letters.append(dramatiq.Message.decode(body))


def _settle(worker: dramatiq.Worker, broker: Any, queue: str, dead: int) -> dict[str, int]:
    """Wait for ``dead`` dead letters and any duplicate; stop the worker (unacked comes back); count."""
    wait_for(lambda: _counts(broker, queue)[xq_name(queue)] >= dead, timeout=10, what="the dead letter")
    time.sleep(0.5)
    worker.stop(timeout=10_000)
    return _counts(broker, queue)


@pytest.mark.parametrize(
    ("kind", "options", "runs", "reason", "retries"),
    [
        ("bad", {}, 1, "BadInput is not retryable", 0),
        ("down", {"max_retries": 1}, 2, "retries exhausted", 1),
    ],
    ids=["not-retryable", "retries-exhausted"],
)
def test_rabbitmq_dead_letter_carries_the_reason_once(
    make_broker, start_worker, backend, kind, options, runs, reason, retries
):
    broker, queue, callbacks, work = _setup(make_broker, backend)
    message = work.send_with_options(args=(kind,), **options)
    worker = start_worker(broker)

    with pytest.raises(ResultFailure) as failure:
        message.get_result(backend=backend, block=True, timeout=15_000)
    assert failure.value.orig_exc_type == ("BadInput" if kind == "bad" else "RuntimeError")

    # Dramatiq's Callbacks fires on_failure once per failed run; the give-up adds none.
    wait_for(lambda: len(callbacks) == runs, timeout=10, what="the on_failure callbacks")
    counts = _settle(worker, broker, queue, dead=1)
    assert counts == {queue: 0, dq_name(queue): 0, xq_name(queue): 1}
    assert callbacks == [(message.message_id, failure.value.orig_exc_type)] * runs
    assert work.runs == [kind] * runs

    (letter,) = _dead_letters(broker, queue)
    assert letter.message_id == message.message_id
    assert letter.args == (kind,)
    assert letter.options[FAILURE_OPTION]["reason"] == reason
    assert letter.options[FAILURE_OPTION]["error"] == failure.value.orig_exc_type
    assert letter.options[FAILURE_OPTION]["retries"] == retries


def test_failed_publish_falls_back_to_the_plain_nack(make_broker, start_worker, backend, monkeypatch, caplog):
    from pika.adapters.blocking_connection import BlockingChannel
    from pika.exceptions import AMQPChannelError

    broker, queue, callbacks, work = _setup(make_broker, backend)
    publish = BlockingChannel.basic_publish
    refused: list[str] = []

    def refuse_dead_letters(self: Any, exchange: str, routing_key: str, *args: Any, **kwargs: Any) -> None:
        if routing_key == xq_name(queue):
            refused.append(routing_key)
            raise AMQPChannelError("refused by the test")
        publish(self, exchange, routing_key, *args, **kwargs)

    monkeypatch.setattr(BlockingChannel, "basic_publish", refuse_dead_letters)
    message = work.send("bad")
    with caplog.at_level(logging.WARNING, logger="dramatiq_turbo.backoff"):
        worker = start_worker(broker)
        with pytest.raises(ResultFailure) as failure:
            message.get_result(backend=backend, block=True, timeout=15_000)
        counts = _settle(worker, broker, queue, dead=1)

    assert failure.value.orig_exc_type == "BadInput"
    assert refused == [xq_name(queue)]
    assert "Could not dead-letter message" in caplog.text
    assert counts == {queue: 0, dq_name(queue): 0, xq_name(queue): 1}
    assert callbacks == [(message.message_id, "BadInput")]
    # The nack dead-lettered the body RabbitMQ delivered: the original, without the reason.
    (letter,) = _dead_letters(broker, queue)
    assert letter.message_id == message.message_id
    assert FAILURE_OPTION not in letter.options
