"""``RateLimiter``: exact global rate and concurrency limits, without failing or dropping a message."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import dramatiq
import redis as redis_lib
from dramatiq.common import q_name

from ..core.delivery import Call, Delivery, Gate, current_delivery
from ..core.fallback import Fallback
from ..core.tokens import new_token
from ..defer import defer, deferral_count
from ..events import record
from ..options import require_ms, warn_ignored
from ..outage import Outage
from ..redis import RedisLike, resolve_redis
from .inline import set_default
from .leases import Hold, LeaseRenewer
from .rules import InvalidRateLimit, Rule, key_budget, parse_rule
from .store import CONCURRENCY_POLL, Decision, LimitStore, LocalLimitStore, RedisLimitStore, decision_of

__all__ = ["OPTION", "RateLimiter", "admitted_at"]

logger = logging.getLogger(__name__)

#: The actor (and message) option naming a limit.
OPTION = "rate_limit"

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
    delivery = current_delivery(message)
    if delivery is None:
        return None
    for part in delivery.parts.values():
        if isinstance(part, _Attempt) and part.admitted is not None:
            return part.admitted
    return None


class _Attempt:
    """The limiter's part of one delivery: the attempt in the trip, then the slot it holds."""

    __slots__ = ("admitted", "call", "decision", "hold", "key", "rule", "started", "store", "token")

    def __init__(self, rule: Rule, key: str, token: str) -> None:
        self.rule = rule
        self.key = key
        self.token = token
        self.started = time.monotonic()
        self.call: Call | None = None
        self.store: LimitStore | None = None
        self.decision: Decision | None = None
        self.hold: Hold | None = None
        self.admitted: float | None = None


class RateLimiter(Gate):
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
    result stored, nothing dropped.  The attempt travels in the delivery's
    one round trip with the other gates' work; a cache hit found in that
    trip gives its slot back in the trip after it, so hits take no slot.

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
        if client is None:
            logger.warning(
                "RateLimiter has no Redis: limits are counted per process, not globally across workers."
            )
        shared = RedisLimitStore(client, namespace=namespace) if client is not None else None
        #: Redis, or this process's store while Redis is down (or when there is none).
        self.stores: Fallback[LimitStore] = Fallback(
            shared=shared, local=LocalLimitStore(), component="rate_limit", logger=logger
        )
        self._actor_rules: dict[str, Rule] = {}
        #: Renews the concurrency leases of this limiter's messages and ``rate_limit()`` blocks.
        self.renewer = LeaseRenewer()
        # rate_limit() in actor code shares the store of the limiter created last.
        set_default(self)

    @property
    def actor_options(self) -> set[str]:
        return {OPTION}

    @property
    def store(self) -> LimitStore:
        """Where limits are counted: Redis, or the local store when there is no Redis."""
        return self.stores.shared if self.stores.shared is not None else self.stores.local

    @store.setter
    def store(self, store: LimitStore) -> None:
        self.stores.shared = store

    @property
    def local(self) -> LimitStore:
        """This process's store: the fallback while Redis is down."""
        return self.stores.local

    @local.setter
    def local(self, store: LimitStore) -> None:
        self.stores.local = store

    @property
    def outage(self) -> Outage:
        return self.stores.outage

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
        """The limit that applies to ``message``: the message's, its actor's, or its queue's.

        A malformed ``rate_limit`` in the message's options (its sender may
        be another version, or hostile) is ignored with a warning: the
        actor's or queue's limit, checked when declared, applies instead.
        """
        value = message.options.get(OPTION)
        if value is not None:
            try:
                return parse_rule(value, where="rate_limit")
            except InvalidRateLimit as error:
                fallback = self._declared_rule(broker, message)
                warn_ignored(message, OPTION, value, error, fallback)
                return fallback
        return self._declared_rule(broker, message)

    def _declared_rule(self, broker: dramatiq.Broker, message: Any) -> Rule | None:
        """The limit of ``message``'s actor, or else of its queue."""
        rule = self._actor_rules.get(message.actor_name)
        if rule is None:
            actor_value = _actor_option(broker, message.actor_name)
            if actor_value is not None:
                rule = self._actor_rules[message.actor_name] = parse_rule(actor_value)
        return rule or self.limits.get(q_name(message.queue_name))

    # The trip --------------------------------------------------------------------
    def plan(self, broker: dramatiq.Broker, message: Any, delivery: Delivery) -> None:
        if delivery.cache_hit:  # known already (an L1 hit): nothing to ask Redis
            return
        rule = self.rule_for(broker, message)
        if rule is None:
            return
        attempt = _Attempt(rule, _budget_key(rule, message), _token(message))
        delivery.join(self, attempt)
        store = self.stores.current()
        if isinstance(store, RedisLimitStore):
            attempt.call = store.acquire_call(attempt.key, rule, attempt.token, max_wait=self.max_wait)
            delivery.before(attempt.call)

    def settle(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, attempt: _Attempt) -> None:
        store, decision = self._first_decision(broker, message, attempt)
        attempt.store, attempt.decision = store, decision
        if delivery.cache_hit:
            # A hit runs no actor code: it needs no slot, and one taken in the same trip goes back.
            if decision.admitted:
                self._give_back(delivery, store, attempt.key, attempt.token, refund=True)
            return
        while not decision.admitted:
            waited = int((time.monotonic() - attempt.started) * 1000)
            # Wait for any slot due within max_wait, but not forever: after
            # 2 x max_wait in all, heavy contention defers the message.
            allowance = self.max_wait if waited < _WAIT_ROUNDS * self.max_wait else 0
            if decision.wait > allowance:
                defer(broker, message, **self._deferral(attempt.rule, decision, message))
            time.sleep(decision.wait / 1000)
            attempt.token = _token(message)
            store, decision = self._attempt(broker, message, attempt, max(0, allowance))
            attempt.store, attempt.decision = store, decision
        if waited := int((time.monotonic() - attempt.started) * 1000):
            record("ratelimit.wait", wait_ms=waited)
        attempt.admitted = decision.now
        attempt.hold = Hold(
            store, attempt.key, attempt.token, attempt.rule.lease if attempt.rule.concurrency else 0
        )
        if attempt.hold.lease:
            self.renewer.add(attempt.hold)

    def finish(
        self,
        broker: dramatiq.Broker,
        message: Any,
        delivery: Delivery,
        attempt: _Attempt,
        *,
        result: Any = None,
        exception: Any = None,
    ) -> None:
        self._release(delivery, attempt, refund=False)

    def abort(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, attempt: _Attempt) -> None:
        # Skipped after admission (by a later gate): the message did not start.
        if attempt.hold is None and attempt.store is None and attempt.call is not None and attempt.call.sent:
            # Skipped between the trip and this limiter's turn to settle.
            with contextlib.suppress(redis_lib.RedisError):
                if decision_of(attempt.call.result()).admitted:
                    self._give_back(delivery, self.store, attempt.key, attempt.token, refund=True)
            return
        self._release(delivery, attempt, refund=True)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        super().after_worker_shutdown(broker, worker)
        # After, not before: a graceful shutdown lets running messages finish,
        # and their leases must live until then.
        self.renewer.stop()

    def _first_decision(
        self, broker: dramatiq.Broker, message: Any, attempt: _Attempt
    ) -> tuple[LimitStore, Decision]:
        call = attempt.call
        if call is None:
            return self._attempt(broker, message, attempt, self.max_wait)
        try:
            return self.stores.answer(
                lambda: decision_of(call.result()),
                self._deciding(attempt, self.max_wait),
                local_on_error=self.fail_open,
                sent_at=call.sent_at,
            )
        except redis_lib.RedisError:
            self._fail_closed(broker, message, attempt)

    def _attempt(
        self, broker: dramatiq.Broker, message: Any, attempt: _Attempt, max_wait: int
    ) -> tuple[LimitStore, Decision]:
        try:
            return self.stores.run(self._deciding(attempt, max_wait), local_on_error=self.fail_open)
        except redis_lib.RedisError:
            self._fail_closed(broker, message, attempt)

    @staticmethod
    def _deciding(attempt: _Attempt, max_wait: int) -> Callable[[LimitStore], Decision]:
        return lambda store: store.acquire(attempt.key, attempt.rule, attempt.token, max_wait=max_wait)

    @staticmethod
    def _fail_closed(broker: dramatiq.Broker, message: Any, attempt: _Attempt) -> NoReturn:
        # Nothing starts until Redis answers again.
        delay = attempt.rule.duration or CONCURRENCY_POLL * 10
        defer(broker, message, delay=delay, reason="rate_limit", jitter=min(delay, _MAX_JITTER * 10))

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

    def _release(self, delivery: Delivery, attempt: _Attempt, *, refund: bool) -> None:
        hold, attempt.hold = attempt.hold, None
        if hold is None:
            return
        if hold.lease:
            self.renewer.discard(hold)
        elif not refund:
            return  # no slot to free, and the start happened
        self._give_back(delivery, hold.store, hold.key, hold.token, refund=refund)

    def _give_back(
        self, delivery: Delivery, store: LimitStore, key: str, token: str, *, refund: bool
    ) -> None:
        """Free ``token``'s slot (and with ``refund`` its start), in the trip after the actor."""
        if isinstance(store, RedisLimitStore):
            delivery.after(store.release_call(key, token, refund=refund, then=self._released))
        else:
            store.release(key, token, refund=refund)

    def _released(self, call: Call) -> None:
        if isinstance(call.reply, redis_lib.RedisError):
            # The lease expires by itself; the start stays counted.
            self.stores.failed(call.reply)


def _token(message: Any) -> str:
    # The id is the sender's: kept for whoever reads the keys, but only as
    # much of it, and in a form, that Redis takes (no lone surrogates).
    shown = str(message.message_id)[:64].encode("utf-8", "backslashreplace").decode()
    return f"{shown}:{new_token()}"


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
    try:
        name = rule.key(message)
    except Exception as error:
        # Raised as a MiddlewareError, so the message fails here: any other
        # exception Dramatiq would log and then run the actor, past its limit.
        raise InvalidRateLimit(
            f"rate_limit key function failed on message {message.message_id}: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(name, str) or not name:
        raise InvalidRateLimit(f"rate_limit key function returned {name!r}; it must return a non-empty str")
    return key_budget(name)
