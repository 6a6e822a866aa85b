"""Dead-lettering a message with the reason it was given up, on every broker.

``Backoff`` gives up a message whose retries are spent, ``StallGuard`` one
that keeps killing its worker.  Either way the dead-letter queue should say
why, and the message's result (for ``Results``) should be the failure, as
after Dramatiq's own nack.  What "keep the reason" takes depends on the
broker:

* ``StubBroker`` keeps the message object itself in its dead letters;
* ``RedisBroker`` moves the stored payload to the dead-letter queue on nack,
  so the payload is rewritten first;
* ``RabbitmqBroker`` dead-letters the body it delivered, which cannot change,
  so the updated message is published to ``<queue>.XQ`` by hand (confirmed)
  and the delivery acked; the failure is then stored for ``Results`` once the
  ack is done (``store_failure_after_ack``), as a nack would have.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import dramatiq
from dramatiq.common import xq_name
from dramatiq.errors import ActorNotFound
from dramatiq.results import Results

from ..options import get_option
from ..redact import redact_text

__all__ = ["FAILURE_OPTION", "dead_letter", "store_failure_after_ack"]

logger = logging.getLogger(__name__)

#: The message option that keeps why a message was given up, for whoever reads the dead-letter queue.
FAILURE_OPTION = "turbo_failure"

#: The attribute marking a delivery already dead-lettered with its reason, holding its exception.
_DEAD_LETTERED = "_turbo_dead_lettered"


def dead_letter(
    broker: dramatiq.Broker, message: Any, exception: BaseException, failure: dict[str, Any]
) -> None:
    """Dead-letter ``message`` (a worker's ``MessageProxy``) with ``failure`` in its ``turbo_failure`` option.

    Call it from a worker hook before the message is acked or nacked; the
    middleware calling it must call ``store_failure_after_ack`` from its
    ``after_ack`` hook.

    Parameters:
      broker(dramatiq.Broker): The broker the message came from.
      message: The message being given up.
      exception(BaseException): Its failure, stored as its result.
      failure(dict): Why: ``{"reason", "error", "detail", ...}``, JSON-serializable.
    """
    # The dead letter is read by people and tools (dramatiq-turbo stats): an
    # exception's text may hold a URL with its password, or an API key.
    message.options[FAILURE_OPTION] = {
        name: redact_text(value) if name in ("reason", "detail") and isinstance(value, str) else value
        for name, value in failure.items()
    }
    message.stuff_exception(exception)
    if _keep_on_dead_letter(broker, message):
        # Acked, not nacked: the result is stored once the ack is done (after_ack), as after a nack.
        setattr(message, _DEAD_LETTERED, exception)
    else:
        message.fail()


def store_failure_after_ack(broker: dramatiq.Broker, message: Any) -> None:
    """Store the failure of a message ``dead_letter`` published and acked (``RabbitmqBroker``)."""
    exception = getattr(message, _DEAD_LETTERED, None)
    if exception is not None:
        # Drop the reference at once: an exception keeps its frames alive (Dramatiq discussion #351).
        delattr(message, _DEAD_LETTERED)
        _store_failure_result(broker, message, exception)


def _keep_on_dead_letter(broker: dramatiq.Broker, message: Any) -> bool:
    """Make the message's dead letter carry its updated options, so it says why it failed.

    Returns ``True`` when the message is already in the dead-letter queue,
    so it must be acked rather than failed (a nack would dead-letter it a
    second time).  ``StubBroker`` keeps the message object itself.
    """
    rabbitmq = sys.modules.get("dramatiq.brokers.rabbitmq")
    if rabbitmq is not None and isinstance(broker, rabbitmq.RabbitmqBroker):
        return _publish_dead_letter(broker, message)
    _rewrite_redis_payload(broker, message)
    return False


def _rewrite_redis_payload(broker: dramatiq.Broker, message: Any) -> None:
    # RedisBroker moves the stored payload to the dead-letter queue on nack,
    # and that payload is the one enqueued last: rewrite it first.
    redis_id = message.options.get("redis_message_id")
    client = getattr(broker, "client", None)
    namespace = getattr(broker, "namespace", None)
    if redis_id is None or client is None or namespace is None:
        return
    key = f"{namespace}:{message.queue_name}.msgs"
    try:
        # This worker holds the message until it nacks it, so the entry cannot vanish in between.
        if client.hexists(key, redis_id):
            client.hset(key, redis_id, message.encode())
    except Exception as error:  # the message still fails; only the note is lost
        logger.warning("Could not store the failure reason of message %r: %s", message.message_id, error)


def _publish_dead_letter(broker: Any, message: Any) -> bool:
    """Publish the updated message to ``<queue>.XQ`` on RabbitMQ; ``True`` once the broker confirmed it.

    A nack makes RabbitMQ dead-letter the body it delivered, which cannot be
    changed, so the copy carrying the reason is published by hand (with the
    properties ``RabbitmqBroker.enqueue`` uses) and the delivery is then
    acked.  The publish goes through a short-lived channel in confirm mode
    with ``mandatory`` set: only a message the broker has taken counts, and
    the broker's own channel keeps its settings.  On any failure the caller
    falls back to the nack, which dead-letters the original body.
    """
    import pika  # RabbitmqBroker is in use, so pika is installed

    queue = xq_name(message.queue_name)
    properties = pika.BasicProperties(delivery_mode=2, priority=message.options.get("broker_priority"))
    body = message.encode()
    failure: Exception | None = None
    for _ in range(2):
        try:
            channel = broker.connection.channel()
        except pika.exceptions.AMQPConnectionError as error:
            # This thread's connection went stale since it last enqueued: open a new one, as enqueue does.
            del broker.connection
            failure = error
            continue
        try:
            channel.confirm_delivery()
            channel.basic_publish(
                exchange="", routing_key=queue, body=body, properties=properties, mandatory=True
            )
        except Exception as error:
            failure = error
            break
        finally:
            # The publish is settled either way; a failing close changes nothing.
            with contextlib.suppress(Exception):
                channel.close()
        return True
    logger.warning(
        "Could not dead-letter message %r with its failure reason (%s); the original body is dead-lettered.",
        message.message_id,
        failure,
    )
    return False


def _store_failure_result(broker: dramatiq.Broker, message: Any, exception: BaseException) -> None:
    """Store ``exception`` as the message's result, as ``Results.after_nack`` does for a failed message."""
    results = next((m for m in broker.middleware if isinstance(m, Results)), None)
    if results is None:
        return
    try:
        broker.get_actor(message.actor_name)
    except ActorNotFound:  # Results stores nothing for an unknown actor either
        return
    if get_option(broker, message, "store_results", results.store_results):
        ttl = get_option(broker, message, "result_ttl", results.result_ttl)
        results.backend.store_exception(message, exception, ttl)
