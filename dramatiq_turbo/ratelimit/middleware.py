"""``RateLimiter``: exact global rate and concurrency limits, without failing or dropping a message."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import dramatiq
import redis as redis_lib
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from ..defer import defer, deferral_count
from ..events import record
from ..marks import is_cache_hit
from ..options import require_ms
from ..outage import Outage
from ..redis import RedisLike, resolve_redis
from .inline import set_default
from .leases import Hold, LeaseRenewer
from .rules import InvalidRateLimit, Rule, key_budget, parse_rule
from .store import CONCURRENCY_POLL, Decision, LimitStore, LocalLimitStore, RedisLimitStore

__all__ = ["OPTION", "RateLimiter", "admitted_at"]

logger = logging.getLogger(__name__)

#: The actor (and message) option naming a limit.
OPTION = "rate_limit"

_HOLD = "_turbo_rate_limit_hold"
_ADMITTED = "_turbo_rate_limit_admitted"

# A deferral for a busy concurrency key doubles each time (bounded re-enqueues
# while a long job holds the slot), up to this many ms.
_MAX_CONCURRENCY_DEFERRAL = 10_000
# A thread waits for slots due within max_wait until it has waited this many
# times max_wait in all; then the message is deferred.
_WAIT_ROUNDS = 2
# Jitter added to a deferral: at most this, and at most one rate interval.
_MAX_JITTER = 100


def admitted_at(message: Any) -> float | None:
    """When the limiter admitted ``message`` in this delivery, in ms, or ``None``.

    This is the start that counts against the limit; actors can log it.  It
    is Redis time (``TIME``) with a Redis store, and the process's monotonic
    clock when limits are counted per process.
    """
    value = getattr(message, _ADMITTED, None)
    return float(value) if value is not None else None


class RateLimiter(Middleware):
    """Middleware that limits how often, and how many at once, messages start across all workers.

    An actor opts in with ``@dramatiq.actor(rate_limit=(30, 1_000))`` (at most
    30 starts in any window of 1,000 ms) or a dict::

        rate_limit={"max": 30, "duration": 1_000, "key": "actor", "burst": 5,
                    "concurrency": 4, "lease": 30_000}

    ``key`` is ``"actor"`` (default), ``"queue"`` or a function of the message
    returning the budget's name (``lambda m: f"customer:{m.kwargs['id']}"``;
    the name is global, so actors returning the same name share a budget).
    ``burst`` caps back-to-back starts; ``concurrency`` caps messages running
    at once, with slots leased for ``lease`` ms and renewed while the message
    runs, so a killed worker's slot comes back on its own.  A message option
    ``rate_limit`` overrides the actor's.

    A message over the limit waits in its worker thread when its slot is due
    within ``max_wait`` ms; otherwise it is deferred (same message id, enqueued
    again with the delay the store returned plus jitter): no retry is used, no
    result stored, nothing dropped.  Cache hits take no slot.

    Code inside actors limits single calls with ``rate_limit(key, ...)``
    (``dramatiq_turbo.ratelimit.inline``), which draws from this limiter's
    store and outage policy: its budget ``key:<key>`` is the one a ``key``
    function returning ``<key>`` names.  The limiter created last serves it.

    Parameters:
      redis: A client or URL for limits shared by every process; ``None``
        limits each process on its own (a warning says so).
      limits(dict): Per-queue limits, ``{"queue-name": (30, 1_000)}``, for
        messages whose actor has no ``rate_limit`` of its own.
      fail_open(bool): While Redis is unreachable, ``True`` (default) keeps
        running under per-process limits (logged once, counted); ``False``
        defers every limited message until Redis is back.
      max_wait(int): A worker thread waits for a slot due within this many
        milliseconds; a later slot, or a message that already waited twice
        this long in all, is deferred instead.  Default 1,000; 0 always defers.
      namespace(str): Prefix of the Redis keys.  Default ``"turbo:rl"``.
    """

    def __init__(
        self,
        *,
        redis: RedisLike = None,
        limits: Mapping[str, Any] | None = None,
        fail_open: bool = True,
        max_wait: int = 1_000,
        namespace: str = "turbo:rl",
    ) -> None:
        self.max_wait = require_ms("max_wait", max_wait)
        self.fail_open = bool(fail_open)
        self.limits = {queue: _queue_rule(queue, value) for queue, value in dict(limits or {}).items()}
        client = resolve_redis(redis)
        self.local: LocalLimitStore = LocalLimitStore()
        self.store: LimitStore = self.local
        if client is None:
            logger.warning(
                "RateLimiter has no Redis: limits are counted per process, not globally across workers."
            )
        else:
            self.store = RedisLimitStore(client, namespace=namespace)
        self.outage = Outage(component="rate_limit", logger=logger)
        self._actor_rules: dict[str, Rule] = {}
        #: Renews the concurrency leases of this limiter's messages and ``rate_limit()`` blocks.
        self.renewer = LeaseRenewer()
        # rate_limit() in actor code shares the store of the limiter created last.
        set_default(self)

    @property
    def actor_options(self) -> set[str]:
        return {OPTION}

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # In a worker process the limiter on the broker it runs is the one
        # rate_limit() must share, whatever else the app module created.
        set_default(self)

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        # Raised from a before_ hook, InvalidRateLimit (a MiddlewareError)
        # fails the declaration: a bad option is found at import time.
        value = actor.options.get(OPTION)
        if value is not None:
            self._actor_rules[actor.actor_name] = parse_rule(value, where=f"{actor.actor_name}: rate_limit")

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        # Replayed by add_middleware for actors declared before the limiter.
        if actor.actor_name not in self._actor_rules:
            self.before_declare_actor(broker, actor)

    def rule_for(self, broker: dramatiq.Broker, message: Any) -> Rule | None:
        """The limit that applies to ``message``: the message's, its actor's, or its queue's."""
        value = message.options.get(OPTION)
        if value is not None:
            return parse_rule(value, where=f"message {message.message_id}: rate_limit")
        rule = self._actor_rules.get(message.actor_name)
        if rule is None:
            actor_value = _actor_option(broker, message.actor_name)
            if actor_value is not None:
                rule = self._actor_rules[message.actor_name] = parse_rule(actor_value)
        return rule or self.limits.get(q_name(message.queue_name))

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if is_cache_hit(message):
            return
        rule = self.rule_for(broker, message)
        if rule is None:
            return
        key = _budget_key(rule, message)
        started = time.monotonic()
        while True:
            token = f"{message.message_id}:{uuid.uuid4().hex[:12]}"
            # Wait for any slot due within max_wait, but not forever: after
            # 2 x max_wait in all, heavy contention defers the message.
            waited = int((time.monotonic() - started) * 1000)
            allowance = self.max_wait if waited < _WAIT_ROUNDS * self.max_wait else 0
            store, decision = self._attempt(broker, message, rule, key, token, allowance)
            if decision.admitted:
                break
            if decision.wait <= allowance:
                time.sleep(decision.wait / 1000)
                continue
            defer(broker, message, **self._deferral(rule, decision, message))

        if waited := int((time.monotonic() - started) * 1000):
            record("ratelimit.wait", wait_ms=waited)
        setattr(message, _ADMITTED, decision.now)
        hold = Hold(store, key, token, rule.lease if rule.concurrency else 0)
        setattr(message, _HOLD, hold)
        if hold.lease:
            self.renewer.add(hold)

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self._release(message, refund=False)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        # Skipped after admission (by a later gate): the message did not start.
        self._release(message, refund=True)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        # After, not before: a graceful shutdown lets running messages finish,
        # and their leases must live until then.
        self.renewer.stop()

    def _attempt(
        self, broker: dramatiq.Broker, message: Any, rule: Rule, key: str, token: str, max_wait: int
    ) -> tuple[LimitStore, Decision]:
        max_wait = max(0, max_wait)
        if self.store is self.local:
            return self.local, self.local.acquire(key, rule, token, max_wait=max_wait)
        try:
            decision = self.store.acquire(key, rule, token, max_wait=max_wait)
        except redis_lib.RedisError as error:
            self.outage.failed(error)
            if self.fail_open:
                return self.local, self.local.acquire(key, rule, token, max_wait=max_wait)
            # Fail closed: nothing starts until Redis answers again.
            delay = rule.duration or CONCURRENCY_POLL * 10
            defer(broker, message, delay=delay, reason="rate_limit", jitter=min(delay, _MAX_JITTER * 10))
        self.outage.succeeded()
        return self.store, decision

    @staticmethod
    def _deferral(rule: Rule, decision: Decision, message: Any) -> dict[str, Any]:
        if decision.reason == "concurrency":
            # Nobody knows when a running job ends: back off, so a long job
            # does not make waiting messages spin through the queue.
            grown = CONCURRENCY_POLL * 2 ** min(deferral_count(message) + 1, 10)
            delay = max(decision.wait, min(grown, _MAX_CONCURRENCY_DEFERRAL))
            return {"delay": delay, "reason": "rate_limit", "jitter": _MAX_JITTER}
        # The store spaced return times by the rate: come back at our turn.
        return {
            "delay": decision.wait,
            "reason": "rate_limit",
            "jitter": int(min(rule.interval, _MAX_JITTER)),
        }

    def _release(self, message: Any, *, refund: bool) -> None:
        hold: Hold | None = getattr(message, _HOLD, None)
        if hold is None:
            return
        delattr(message, _HOLD)
        if hold.lease:
            self.renewer.discard(hold)
        elif not refund:
            return  # no slot to free, and the start happened
        try:
            hold.store.release(hold.key, hold.token, refund=refund)
        except redis_lib.RedisError as error:
            # The lease expires by itself; the start stays counted.
            self.outage.failed(error)


def _queue_rule(queue: str, value: Any) -> Rule:
    rule = parse_rule(value, where=f"limits[{queue!r}]")
    if not (isinstance(value, Mapping) and "key" in value):
        rule = dataclasses.replace(rule, key="queue")
    return rule


def _actor_option(broker: dramatiq.Broker, actor_name: str) -> Any:
    try:
        return broker.get_actor(actor_name).options.get(OPTION)
    except Exception:  # ActorNotFound: a message for an actor this process does not know
        return None


def _budget_key(rule: Rule, message: Any) -> str:
    if rule.key == "actor":
        return f"actor:{message.actor_name}"
    if rule.key == "queue":
        return f"queue:{q_name(message.queue_name)}"
    assert callable(rule.key)
    name = rule.key(message)
    if not isinstance(name, str) or not name:
        raise InvalidRateLimit(f"rate_limit key function returned {name!r}; it must return a non-empty str")
    return key_budget(name)
