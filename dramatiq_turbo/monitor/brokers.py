"""What each broker says about its queues: one small adapter per broker, read in few round trips.

- ``RedisBrokerAdapter``: one Lua script per queue (``redis_queue.lua``),
  all of them in one pipeline: one round trip for any number of queues.
- ``RabbitmqBrokerAdapter``: passive declares of ``<queue>``, ``.DQ`` and
  ``.XQ``, all sent at once on one connection (``rabbitmq.passive_counts``).
- ``StubBrokerAdapter``: the in-memory queues.

``adapter_for(broker)`` picks one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dramatiq
import redis
from dramatiq.common import dq_name, xq_name

from ..core.deadletter import FAILURE_OPTION
from ..redact import redact_text
from ..redis import connect_redis_like
from .recorder import DUE_OPTION
from .scripts import ScriptCall, monitor_script, run_pipeline
from .stats import DeadLetter

__all__ = [
    "BrokerAdapter",
    "BrokerState",
    "QueueReading",
    "RabbitmqBrokerAdapter",
    "RedisBrokerAdapter",
    "StubBrokerAdapter",
    "adapter_for",
]


@dataclass(frozen=True)
class QueueReading:
    """One queue as its broker sees it (see ``QueueStats`` for the meaning of each count).

    ``oldest_due`` is when the first waiting message became due (epoch ms);
    ``consumers`` the broker's own count of what consumes the queue
    (RabbitMQ consumers; Redis clients that spoke to the broker within its
    heartbeat timeout, producers included), ``None`` when it has none.
    """

    waiting: int
    delayed: int
    dead: int
    in_progress: int | None = None
    dead_recent: int | None = None
    oldest_due: int | None = None
    consumers: int | None = None
    dead_letters: tuple[DeadLetter, ...] = ()


@dataclass(frozen=True)
class BrokerState:
    """The readings of several queues, and the broker's time (epoch ms) when they were read."""

    at: int
    queues: dict[str, QueueReading]


class BrokerAdapter(Protocol):
    kind: str

    def queues(self) -> set[str]:
        """The queues this broker knows of (declared here, or found on the server)."""
        ...

    def read(self, queues: Sequence[str], *, window: int, samples: int) -> BrokerState:
        """Read ``queues``; ``window`` ms for ``dead_recent``, ``samples`` dead letters each."""
        ...

    def close(self) -> None: ...


def decode_message(payload: bytes | str | None) -> dramatiq.Message[Any] | None:
    """A stored message, or ``None`` when it cannot be decoded (another encoder, garbage)."""
    if not payload:
        return None
    data = payload.encode() if isinstance(payload, str) else payload
    try:
        return dramatiq.Message.decode(data)
    except Exception:
        return None


def due_of(message: dramatiq.Message[Any] | None) -> int | None:
    """When ``message`` became due (epoch ms): as the recorder noted it, else its eta or timestamp."""
    if message is None:
        return None
    options = message.options
    due = options.get(DUE_OPTION, options.get("eta", message.message_timestamp))
    return int(due) if isinstance(due, int | float) and not isinstance(due, bool) else None


def dead_letter(message: dramatiq.Message[Any] | None) -> DeadLetter | None:
    """A dead letter and the reason ``Backoff`` recorded in it (``None`` fields without one)."""
    if message is None:
        return None
    failure = message.options.get(FAILURE_OPTION)
    failure = failure if isinstance(failure, dict) else {}
    retries = failure.get("retries", message.options.get("retries"))
    return DeadLetter(
        message_id=message.message_id,
        actor=message.actor_name,
        reason=_shown(failure.get("reason")),
        error=_shown(failure.get("error")),
        detail=_shown(failure.get("detail")),
        retries=retries if isinstance(retries, int) else None,
    )


def _shown(value: Any) -> str | None:
    # Older dead letters (and anyone's writes) were never redacted: do it on the way out.
    return redact_text(value) if isinstance(value, str) else None


def _dead_letters(payloads: Sequence[Any]) -> tuple[DeadLetter, ...]:
    letters = (dead_letter(decode_message(payload)) for payload in payloads)
    return tuple(letter for letter in letters if letter is not None)


class RedisBrokerAdapter:
    """Reads ``RedisBroker`` keys directly, through a client with ``connect_redis``'s safe settings.

    ``in_progress`` counts messages delivered to a worker and not yet acked
    (prefetched ones included); ``delayed`` includes delayed messages a
    worker holds until they are due.

    Parameters:
      broker: The ``RedisBroker``.
    """

    kind = "redis"

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.namespace: str = broker.namespace
        self.client = connect_redis_like(broker.client)
        self.heartbeat_timeout = int(getattr(broker, "heartbeat_timeout", 60_000))
        self._script = monitor_script(self.client, "redis_queue.lua")

    def _key(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    def queues(self) -> set[str]:
        found = set(self.broker.get_declared_queues())
        prefix = f"{self.namespace}:"
        for key in self.client.scan_iter(match=f"{prefix}*", count=1_000):
            name = key.decode()[len(prefix) :]
            if name.startswith("__"):
                continue  # __acks__, __heartbeats__
            for suffix in (".msgs", ".XQ", ".DQ"):
                name = name.removesuffix(suffix)
            found.add(name)
        return found

    def read(self, queues: Sequence[str], *, window: int, samples: int) -> BrokerState:
        calls = [
            ScriptCall(
                self._script,
                (
                    self._key(queue),
                    self._key(f"{queue}.msgs"),
                    self._key(f"{dq_name(queue)}.msgs"),
                    self._key(xq_name(queue)),
                    self._key(f"{xq_name(queue)}.msgs"),
                    self._key("__heartbeats__"),
                ),
                (window, samples, self.heartbeat_timeout),
            )
            for queue in queues
        ]
        replies = run_pipeline(self.client, calls) if calls else []
        readings: dict[str, QueueReading] = {}
        at = int(time.time() * 1000)
        for queue, reply in zip(queues, replies, strict=True):
            if isinstance(reply, redis.ResponseError):
                raise reply
            at = int(reply[0])
            readings[queue] = self._reading(reply)
        return BrokerState(at=at, queues=readings)

    @staticmethod
    def _reading(reply: list[Any]) -> QueueReading:
        _, ready, unacked, delayed, dead, recent, clients, oldest, *letters = reply
        return QueueReading(
            waiting=int(ready),
            delayed=int(delayed),
            dead=int(dead),
            in_progress=max(0, int(unacked) - int(ready)),
            dead_recent=int(recent),
            oldest_due=due_of(decode_message(oldest)),
            consumers=int(clients),
            dead_letters=_dead_letters(letters),
        )

    def close(self) -> None:
        self.client.close()


class RabbitmqBrokerAdapter:
    """Reads ``RabbitmqBroker`` queues with passive declares, all at once on one connection.

    RabbitMQ reports ready messages only: ``in_progress`` is unknown here
    (``None``; ``QueueMonitor`` fills it from worker heartbeats), delayed
    messages a worker has taken until they are due are not in ``delayed``,
    and the age of the oldest message is unknown (it cannot be peeked
    without taking it from the consumers).  Dead letters are peeked
    (read and put back) from the head of ``.XQ``: the oldest ones.

    Parameters:
      broker: The ``RabbitmqBroker``.
      timeout(int): Milliseconds for one whole read.
    """

    kind = "rabbitmq"

    def __init__(self, broker: Any, *, timeout: int = 10_000) -> None:
        self.broker = broker
        parameters = broker.parameters
        self.parameters = parameters[0] if isinstance(parameters, list) else parameters
        self.timeout = timeout

    def queues(self) -> set[str]:
        return set(self.broker.get_declared_queues())

    def read(self, queues: Sequence[str], *, window: int, samples: int) -> BrokerState:
        from .rabbitmq import passive_counts

        names = [name for queue in queues for name in (queue, dq_name(queue), xq_name(queue))]
        dead_queues = {xq_name(queue) for queue in queues}
        counts = passive_counts(
            self.parameters,
            names,
            peek=lambda name, messages: samples if name in dead_queues else 0,
            timeout=self.timeout / 1000,
        )
        readings = {}
        for queue in queues:
            main, delayed, dead = counts[queue], counts[dq_name(queue)], counts[xq_name(queue)]
            readings[queue] = QueueReading(
                waiting=main.messages if main else 0,
                delayed=delayed.messages if delayed else 0,
                dead=dead.messages if dead else 0,
                consumers=main.consumers if main else 0,
                dead_letters=_dead_letters(dead.peeked if dead else ()),
            )
        return BrokerState(at=int(time.time() * 1000), queues=readings)

    def close(self) -> None:
        pass


class StubBrokerAdapter:
    """Reads ``StubBroker``'s in-memory queues (tests, and single-process deployments)."""

    kind = "stub"

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def queues(self) -> set[str]:
        return set(self.broker.get_declared_queues())

    def read(self, queues: Sequence[str], *, window: int, samples: int) -> BrokerState:
        readings = {}
        for queue in queues:
            main = self.broker.queues.get(queue)
            delayed = self.broker.queues.get(dq_name(queue))
            dead = list(self.broker.dead_letters_by_queue.get(queue, ()))
            head = None
            if main is not None:
                with main.mutex, contextlib.suppress(IndexError):
                    head = main.queue[0]
            readings[queue] = QueueReading(
                waiting=main.qsize() if main else 0,
                # Unfinished tasks: put and not yet acked, so held delayed messages count too.
                delayed=delayed.unfinished_tasks if delayed else 0,
                dead=len(dead),
                in_progress=max(0, main.unfinished_tasks - main.qsize()) if main else 0,
                oldest_due=due_of(decode_message(head)),
                dead_letters=_dead_letters_of(dead, samples),
            )
        return BrokerState(at=int(time.time() * 1000), queues=readings)

    def close(self) -> None:
        pass


def _dead_letters_of(messages: list[Any], samples: int) -> tuple[DeadLetter, ...]:
    """The newest ``samples`` of StubBroker's dead letters (message proxies), newest first."""
    newest = reversed(messages[-samples:]) if samples > 0 else iter(())
    return tuple(letter for letter in map(dead_letter, newest) if letter is not None)


def adapter_for(broker: dramatiq.Broker) -> BrokerAdapter:
    """The adapter for ``broker``: Redis, RabbitMQ or Stub.

    Raises:
      TypeError: for another kind of broker.
    """
    from dramatiq.brokers.stub import StubBroker

    if isinstance(broker, StubBroker):
        return StubBrokerAdapter(broker)
    kind = type(broker).__name__
    with contextlib.suppress(ImportError):
        from dramatiq.brokers.redis import RedisBroker

        if isinstance(broker, RedisBroker):
            return RedisBrokerAdapter(broker)
    with contextlib.suppress(ImportError):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        if isinstance(broker, RabbitmqBroker):
            return RabbitmqBrokerAdapter(broker)
    raise TypeError(f"QueueMonitor supports RedisBroker, RabbitmqBroker and StubBroker, not {kind}")
