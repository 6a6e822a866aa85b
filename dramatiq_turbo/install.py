"""``install``: stack the suite's middleware onto a broker in the one right order.

The order matters because ``before_*`` hooks run in list order and ``after_*``
hooks in reverse:

1. ``Telemetry`` first, so its consumer span covers every other hook
   (including a skip by ``AgeLimit``) and is ended last; ``QueueStatsRecorder``
   right after it, so its counts see every gate's deferral and, on the way
   out, ``Backoff``'s decision.
2. Dramatiq's defaults in their place, with ``Retries`` replaced by
   ``Backoff`` where ``Retries`` stood.
3. The gates, in this order: ``ResultCache`` (a hit marks the message so the
   next ones let it through), ``StallGuard`` (counts the start of a message
   whose actor will run: after the cache, so an L1 hit costs no round trip),
   ``RateLimiter`` (a slot is taken only by a message that will run; one
   taken in the same trip by a message the gates before it skip goes back),
   ``CircuitBreaker`` (asked last, just before the actor, so a trial call is
   not wasted on a message the limiter defers).
   On the way out the breaker records the outcome first, the limiter then
   frees a concurrency slot, and the cache stores the result.
"""

from __future__ import annotations

import importlib
import logging
import weakref
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, Retries

from .redact import protect_logs
from .redis import RedisLike, connect_redis_like, resolve_redis

__all__ = ["install"]

logger = logging.getLogger(__name__)

#: What each ``install`` flag accepts: on with defaults, off, or an instance.
MiddlewareFlag = bool | Middleware


@dataclass(frozen=True)
class _Slot:
    flag: str
    target: str  # "module:Class"
    takes_redis: bool

    def load(self) -> type[Middleware] | None:
        """The slot's middleware class, or ``None`` while the suite does not ship it."""
        module_name, _, class_name = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                return None
            raise
        cls = getattr(module, class_name, None)
        return cls if isinstance(cls, type) and issubclass(cls, Middleware) else None


_TELEMETRY = _Slot("telemetry", "dramatiq_turbo.telemetry:Telemetry", takes_redis=False)
_MONITOR = _Slot("monitor", "dramatiq_turbo.monitor:QueueStatsRecorder", takes_redis=True)
_BACKOFF = _Slot("backoff", "dramatiq_turbo.backoff:Backoff", takes_redis=False)
# The gates, in the order their before_process_message hooks must run.
_GATES = (
    _Slot("cache", "dramatiq_turbo.cache:ResultCache", takes_redis=True),
    _Slot("stall", "dramatiq_turbo.stall:StallGuard", takes_redis=True),
    _Slot("rate_limit", "dramatiq_turbo.ratelimit:RateLimiter", takes_redis=True),
    _Slot("breaker", "dramatiq_turbo.breaker:CircuitBreaker", takes_redis=True),
)


def install(
    broker: dramatiq.Broker,
    *,
    redis: RedisLike = None,
    cache: MiddlewareFlag = True,
    breaker: MiddlewareFlag = True,
    rate_limit: MiddlewareFlag = True,
    backoff: MiddlewareFlag = True,
    telemetry: MiddlewareFlag = True,
    monitor: MiddlewareFlag = True,
    stall: MiddlewareFlag = True,
) -> dramatiq.Broker:
    """Add the suite's middleware to ``broker`` in the right order and return it.

    Call it before importing the modules that declare your actors, so that
    options such as ``cache_ttl`` are known when the actors are declared.
    Calling it again adds nothing twice: a middleware already on the broker
    (of the same class) is kept as it is.

    Parameters:
      broker(dramatiq.Broker): The broker to extend.
      redis: The shared store for the cache, breakers and limits: a client,
        a URL, or ``None``.  With ``None`` and a ``RedisBroker``, the broker's
        server and database are used (through a client with
        ``connect_redis``'s safe settings); with ``None`` and any other broker,
        every middleware works per process.
      cache, breaker, rate_limit, backoff, telemetry, monitor, stall: ``True`` adds
        the middleware with its defaults (sharing ``redis``), ``False``
        leaves it out, and a middleware instance is added as it is.
        ``backoff`` replaces Dramatiq's ``Retries``; ``monitor`` is the
        ``QueueStatsRecorder`` that ``QueueMonitor`` and ``dramatiq-turbo
        stats`` read; ``stall`` is the ``StallGuard`` that dead-letters a
        message whose worker died while running it more than ``max_stalls``
        times.

    It also masks URL passwords and secret parameters (``api_key=...``) in
    every log record of the process, Dramatiq's own included
    (``dramatiq_turbo.redact.protect_logs``).

    Returns:
      dramatiq.Broker: ``broker``, for chaining.
    """
    flags = {
        "cache": cache,
        "breaker": breaker,
        "rate_limit": rate_limit,
        "backoff": backoff,
        "telemetry": telemetry,
        "monitor": monitor,
        "stall": stall,
    }
    for flag, value in flags.items():
        if not isinstance(value, bool | Middleware):
            raise TypeError(f"install({flag}=...) takes True, False or a middleware instance, got {value!r}")

    # Dramatiq logs each message with its arguments, and exceptions with their
    # text: URL passwords and API keys in them are masked in every log record.
    protect_logs()
    shared = _SharedRedis(redis, broker)
    slots = _slots_of(broker)

    for slot in (_TELEMETRY, _MONITOR, _BACKOFF, *_GATES):
        if _installed(broker, slot) is not None:
            continue
        middleware = _build(slot, flags[slot.flag], shared)
        if middleware is None:
            continue
        _place(broker, slot, middleware)
        slots[slot.flag] = middleware
    return broker


def _place(broker: dramatiq.Broker, slot: _Slot, middleware: Middleware) -> None:
    """Put ``middleware`` where its slot stands in the stack (see the module's docstring)."""
    if slot is _TELEMETRY:
        _insert(broker, middleware, 0)
    elif slot is _MONITOR:
        telemetry_slot = _installed(broker, _TELEMETRY)
        _insert(broker, middleware, 0 if telemetry_slot is None else _position(broker, telemetry_slot) + 1)
    elif slot is _BACKOFF:
        _replace_retries(broker, middleware)
    else:
        _add_gate(broker, slot, middleware)


# Which instance fills which slot, per broker: a configured instance need not
# be of the slot's default class.
_brokers_slots: weakref.WeakKeyDictionary[dramatiq.Broker, dict[str, Middleware]] = (
    weakref.WeakKeyDictionary()
)


def _slots_of(broker: dramatiq.Broker) -> dict[str, Middleware]:
    return _brokers_slots.setdefault(broker, {})


def _installed(broker: dramatiq.Broker, slot: _Slot) -> Middleware | None:
    """The middleware on ``broker`` that fills ``slot``, if any."""
    known = _slots_of(broker).get(slot.flag)
    if known is not None and any(m is known for m in broker.middleware):
        return known
    cls = slot.load()
    # A subclass fills the slot too: a user's own ResultCache subclass is a cache.
    return next((m for m in broker.middleware if isinstance(m, cls)), None) if cls else None


def _add_gate(broker: dramatiq.Broker, slot: _Slot, gate: Middleware) -> None:
    """Add ``gate`` after the gates that precede it and before those that follow it."""
    index = _GATES.index(slot)
    before = [m for s in _GATES[:index] if (m := _installed(broker, s)) is not None]
    after = [m for s in _GATES[index + 1 :] if (m := _installed(broker, s)) is not None]
    if before:
        position = max(_position(broker, m) for m in before) + 1
    elif after:
        position = min(_position(broker, m) for m in after)
    else:
        position = len(broker.middleware)
    _insert(broker, gate, position)


def _position(broker: dramatiq.Broker, middleware: Middleware) -> int:
    return next(i for i, m in enumerate(broker.middleware) if m is middleware)


def _insert(broker: dramatiq.Broker, middleware: Middleware, position: int) -> None:
    # add_middleware places by class; appending then moving keeps its other
    # work (actor options, replaying declared actors and queues) intact.
    broker.add_middleware(middleware)
    broker.middleware.remove(middleware)
    broker.middleware.insert(position, middleware)


class _SharedRedis:
    """The one Redis client every default middleware of one ``install`` call shares."""

    def __init__(self, value: RedisLike, broker: dramatiq.Broker) -> None:
        self._value = value
        self._broker = broker
        self._client: redis.Redis | None = None
        self._resolved = False

    def get(self) -> redis.Redis | None:
        if not self._resolved:
            self._client = resolve_redis(self._value)
            if self._client is None and isinstance(self._broker, RedisBroker):
                self._client = connect_redis_like(self._broker.client)
            self._resolved = True
        return self._client


def _build(slot: _Slot, flag: MiddlewareFlag, shared: _SharedRedis) -> Middleware | None:
    if flag is False:
        return None
    if isinstance(flag, Middleware):
        return flag
    cls = slot.load()
    if cls is None:
        logger.debug("install: %s is not available yet; not added.", slot.target)
        return None
    kwargs: dict[str, Any] = {"redis": shared.get()} if slot.takes_redis else {}
    return cls(**kwargs)


def _replace_retries(broker: dramatiq.Broker, backoff: Middleware) -> None:
    # A subclass of Retries retries too: left beside Backoff, failures would be retried twice.
    retries = next((m for m in broker.middleware if isinstance(m, Retries) and m is not backoff), None)
    if retries is None:
        broker.add_middleware(backoff)
        return
    position = _position(broker, retries)
    # Two retry middleware would each re-enqueue a failed message.
    broker.middleware.remove(retries)
    _insert(broker, backoff, position)
