"""``StallGuard``: dead-letter a message that keeps killing its worker (BullMQ's ``maxStalledCount``).

A message whose worker process dies while running it (out of memory, a
segfault in a C extension, a SIGKILL) is never acked, so the broker delivers
it again: ``RabbitmqBroker`` as soon as the connection drops, ``RedisBroker``
once the dead worker's heartbeat times out.  Dramatiq redelivers it forever,
and a message that crashes every worker that takes it takes the workers down
again and again.  ``StallGuard`` counts each message's starts in Redis and
forgets them when the message finishes (succeeds, fails, is retried or
deferred); a message that starts more than ``max_stalls + 1`` times without
finishing has stalled more than ``max_stalls`` times and is dead-lettered,
with the reason ``"stalled N times"``, instead of run again.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import redis as redis_lib
from cachetools import TTLCache
from dramatiq.middleware import SkipMessage

from .core.deadletter import dead_letter, store_failure_after_ack
from .core.delivery import Call, Delivery, Gate
from .core.fallback import Fallback
from .events import record
from .options import OptionError, message_option, require_ms
from .redis import RedisLike, hash_key, load_script, resolve_redis

__all__ = ["StallGuard", "StalledError", "stall_reason"]

logger = logging.getLogger(__name__)

OPTION = "max_stalls"


class StalledError(SkipMessage):
    """A message stalled (its worker died while running it) more often than its ``max_stalls``.

    Raised by ``StallGuard`` to skip the message, it is the message's result
    for ``Results`` (``ResultFailure`` names it).
    """

    def __init__(self, message_id: str, stalls: int) -> None:
        super().__init__(f"message {message_id} {stall_reason(stalls)}: its worker died while running it")
        self.message_id = message_id
        self.stalls = stalls


class RedisStarts:
    """Each message's starts, counted in Redis under ``<namespace>:{<message id>}``."""

    def __init__(self, client: redis_lib.Redis, *, namespace: str, ttl: int) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl = ttl
        self._script = load_script(client, __package__ or "dramatiq_turbo", "stall.lua")

    def start_call(self, message_id: str) -> Call:
        """The call counting one start; its reply is the starts so far."""
        return Call(self.client, self._script, [self._key(message_id)], ["start", self.ttl])

    def clear_call(self, message_id: str, *, then: Any = None) -> Call:
        """The call forgetting the message's starts."""
        return Call(self.client, self._script, [self._key(message_id)], ["clear", 0], then=then)

    def start(self, message_id: str) -> int:
        return int(self.start_call(message_id).run())

    def clear(self, message_id: str) -> None:
        self.clear_call(message_id).run()

    def _key(self, message_id: str) -> str:
        return hash_key(self.namespace, message_id)


class LocalStarts:
    """Each message's starts in this process: a stand-in while Redis is down.

    A process that dies loses its counts, so this catches no stall; it keeps
    the middleware's behaviour the same until Redis is back.
    """

    def __init__(self, *, ttl: int, size: int = 100_000) -> None:
        self._counts: TTLCache[str, int] = TTLCache(maxsize=size, ttl=ttl / 1000)

    def start(self, message_id: str) -> int:
        starts = self._counts.get(message_id, 0) + 1
        self._counts[message_id] = starts
        return starts

    def clear(self, message_id: str) -> None:
        self._counts.pop(message_id, None)


Starts = RedisStarts | LocalStarts


class _Count:
    """StallGuard's part of one delivery: the message's limit, the call that counts the start."""

    __slots__ = ("call", "limit", "store")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.call: Call | None = None
        self.store: Starts | None = None


class StallGuard(Gate):
    """Dead-letters a message whose worker died while running it more than ``max_stalls`` times.

    Every start of a message is counted in Redis (one script in the
    delivery's one round trip with the other gates' work) and the count is
    forgotten when the message finishes, in the trip after it.  A message
    whose start makes the count exceed ``max_stalls + 1`` is not run: it is
    dead-lettered with the reason ``"stalled N times"`` in its
    ``turbo_failure`` option, its result (for ``Results``) is a
    ``StalledError``, and the worker logs a warning, as Dramatiq's
    ``AgeLimit`` does for a message it drops.  A result served from the
    cache runs no actor code and counts no start.

    Without Redis, or while it is down, starts are counted per process, which
    catches no stall (a dead process forgets its counts): the middleware logs
    this once per outage and lets messages run.

    Actor (and message) options:
      max_stalls(int): Stalls a message may survive; ``None`` turns the
        guard off for the actor.

    Parameters:
      redis: The shared store: a client, a URL, or ``None`` (per process; see above).
      max_stalls(int): The default ``max_stalls`` (1: a message may take one
        worker down and is run once more).
      ttl(int): Milliseconds a message's count lives after its last start
        (one day): longer than a dead worker's messages take to come back.
      namespace(str): Redis key prefix.  Default ``"turbo:stall"``.
    """

    def __init__(
        self,
        *,
        redis: RedisLike = None,
        max_stalls: int = 1,
        ttl: int = 86_400_000,
        namespace: str = "turbo:stall",
    ) -> None:
        self.max_stalls = _require_stalls("max_stalls", max_stalls)
        self.ttl = require_ms("ttl", ttl, allow_zero=False)
        client = resolve_redis(redis)
        if client is None:
            logger.warning("StallGuard has no Redis: starts are counted per process, so no stall is caught.")
        shared = RedisStarts(client, namespace=namespace, ttl=self.ttl) if client is not None else None
        self.starts: Fallback[Starts] = Fallback(
            shared=shared, local=LocalStarts(ttl=self.ttl), component="stall", logger=logger
        )

    @property
    def actor_options(self) -> set[str]:
        return {OPTION}

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        if actor.options.get(OPTION) is not None:
            try:
                _require_stalls(OPTION, actor.options[OPTION])
            except ValueError as error:
                raise OptionError(f"actor {actor.actor_name!r}: {error}") from None

    def after_ack(self, broker: dramatiq.Broker, message: Any) -> None:
        store_failure_after_ack(broker, message)

    # The trip --------------------------------------------------------------------
    def plan(self, broker: dramatiq.Broker, message: Any, delivery: Delivery) -> None:
        if delivery.cache_hit:  # an L1 hit runs no actor code: it cannot stall
            return
        limit = self._limit_of(broker, message)
        if limit is None:
            return
        count = _Count(limit)
        delivery.join(self, count)
        store = self.starts.current()
        if isinstance(store, RedisStarts):
            count.call = store.start_call(message.message_id)
            delivery.before(count.call)

    def settle(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, count: _Count) -> None:
        message_id = message.message_id
        call = count.call
        if call is None:
            count.store, starts = self.starts.run(lambda store: store.start(message_id))
        else:
            count.store, starts = self.starts.answer(
                lambda: int(call.result()), lambda store: store.start(message_id), sent_at=call.sent_at
            )
        stalls = starts - 1
        if stalls <= count.limit or delivery.cache_hit:
            return
        logger.warning(
            "Message %r %s (its worker died while running it): dead-lettering it.",
            message_id,
            stall_reason(stalls),
        )
        record("giveup", reason="stalled")
        error = StalledError(message_id, stalls)
        failure = {"reason": stall_reason(stalls), "error": "StalledError", "detail": str(error)}
        dead_letter(broker, message, error, failure)
        raise error

    def finish(
        self,
        broker: dramatiq.Broker,
        message: Any,
        delivery: Delivery,
        count: _Count,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._forget(message, delivery, count)

    def abort(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, count: _Count) -> None:
        # Deferred, dropped or dead-lettered here: it did not stall, and a
        # dead letter put back in its queue by hand starts afresh.
        self._forget(message, delivery, count)

    def _forget(self, message: Any, delivery: Delivery, count: _Count) -> None:
        store = count.store
        if store is None and count.call is not None and count.call.sent:
            # Skipped by a gate that settled before this one: the start was counted all the same.
            store = self.starts.shared
        if isinstance(store, RedisStarts):
            delivery.after(store.clear_call(message.message_id, then=self._cleared))
        elif store is not None:
            store.clear(message.message_id)

    def _cleared(self, call: Call) -> None:
        if isinstance(call.reply, redis_lib.RedisError):
            # The count expires by itself; until then a redelivery is one start closer to the limit.
            self.starts.failed(call.reply)

    def _limit_of(self, broker: dramatiq.Broker, message: Any) -> int | None:
        # A sender's bad value is ignored with a warning: the message runs under the actor's limit.
        limit: int | None = message_option(
            broker, message, OPTION, self.max_stalls, check=lambda value: _check_stalls(OPTION, value)
        )
        return limit


def _require_stalls(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (or None for no limit), got {value!r}")
    return value


def _check_stalls(name: str, value: Any) -> int | None:
    return None if value is None else _require_stalls(name, value)


def stall_reason(stalls: int) -> str:
    """The reason a dead letter gives: ``"stalled 2 times"``."""
    return f"stalled {stalls} time{'' if stalls == 1 else 's'}"
