"""``CircuitBreaker``: the middleware that defers a guarded actor's messages while its dependency is down."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq

from ..core.delivery import Call, Delivery, Gate, current_delivery
from ..core.tokens import new_token
from ..defer import defer
from ..options import OptionError, message_option, require_ms
from ..outage import Outage
from ..redis import RedisLike, resolve_redis
from .core import Admission, Breaker, CircuitOpenError, pop_held, push_held, set_default
from .store import RedisStore, Settings

__all__ = ["CircuitBreaker"]

logger = logging.getLogger("dramatiq_turbo.breaker")

_WRAPPED = "_turbo_breaker_wrapped"


class _Guard:
    """The breaker's part of one delivery: the breaker, the ask in the trip, the admission."""

    __slots__ = ("admission", "breaker", "call", "refused", "token")

    def __init__(self, found: Breaker) -> None:
        self.breaker = found
        self.admission: Admission | None = None
        self.call: Call | None = None
        self.token = ""
        self.refused: CircuitOpenError | None = None


class CircuitBreaker(Gate):
    """Per-dependency circuit breakers shared by every worker process through Redis.

    An actor opts in with the ``breaker`` option: a dependency name
    (``breaker="llm"``; actors sharing a name share a breaker) or ``True``
    (one breaker per actor).  Code inside any actor can guard one call with
    ``breaker(name)``.

    A breaker trips after ``fail_max`` consecutive failures (or, with
    ``failure_rate``, when that share of the calls in the last ``window`` ms
    failed, once there were ``min_calls``).  Calls slower than ``slow_call``
    count as failures; exceptions in ``exclude`` count as nothing.  It stays
    open for ``reset_timeout`` ms, then lets ``half_open_calls`` trial calls
    through, across all processes; as many successes close it, one failure
    opens it again.  Each state change starts a new generation, and outcomes
    of calls admitted in an earlier generation are ignored.

    While a guarded actor's breaker is open its messages do not run: each is
    deferred (``dramatiq_turbo.defer``: same message, no retry consumed, no
    result stored, no callback) until the breaker may try again, plus jitter.
    An uncaught ``CircuitOpenError`` raised by ``breaker(name)`` inside an
    actor defers the message the same way.  Cache hits pass through.

    While a breaker is closed with no failures counted, a process admits
    calls without asking Redis and reports successes to nobody: what Redis
    last said is trusted for ``state_refresh`` ms (at most a quarter of
    ``reset_timeout``), so a trip by another process is known here within
    that time.  Other asks travel in the delivery's one round trip with the
    other gates' work, and outcomes in the one after the actor.

    Without Redis, or while it is down, every process keeps its own breakers
    (with a warning, once per outage).

    Parameters:
      redis: The shared store: a client, a URL, or ``None`` to work per process.
      fail_max(int): Consecutive failures that trip a breaker (5).
      reset_timeout(int): Milliseconds a breaker stays open (60,000).
      slow_call(int): Calls slower than this many ms count as failures (30,000).
      half_open_calls(int): Trial calls across all processes after the open period (1).
      exclude(tuple): Exception types that do not count (bad input, say).
      failure_rate(float): Also trip at this failure share of the window (off).
      window(int): The failure-rate window in ms (60,000).
      min_calls(int): Calls the window needs before the rate counts (10).
      jitter(int): Deferred messages come back up to this many ms after the
        breaker may try again, so they do not all arrive at once
        (default: a fifth of ``reset_timeout``).
      settings(dict): Per-breaker overrides, ``{"llm": {"fail_max": 3}}``.
      listeners: ``pybreaker.CircuitBreakerListener`` instances told of
        state changes and outcomes.
      namespace(str): Redis key prefix.
      state_refresh(int): Milliseconds a clean closed state learnt from
        Redis is trusted without asking again (50).
    """

    def __init__(
        self,
        *,
        redis: RedisLike = None,
        fail_max: int = 5,
        reset_timeout: int = 60_000,
        slow_call: int = 30_000,
        half_open_calls: int = 1,
        exclude: Iterable[type[BaseException]] = (),
        failure_rate: float | None = None,
        window: int = 60_000,
        min_calls: int = 10,
        jitter: int | None = None,
        settings: dict[str, dict[str, Any]] | None = None,
        listeners: Iterable[Any] = (),
        namespace: str = "turbo:breaker",
        state_refresh: int = 50,
    ) -> None:
        self.defaults = _settings(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            slow_call=slow_call,
            half_open_calls=half_open_calls,
            failure_rate=failure_rate,
            window=window,
            min_calls=min_calls,
        )
        self.exclude = tuple(exclude)
        for kind in self.exclude:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ValueError(f"exclude must hold exception classes, got {kind!r}")
        self.jitter = require_ms("jitter", reset_timeout // 5 if jitter is None else jitter)
        self.overrides = {
            name: _settings(base=self.defaults, **values) for name, values in (settings or {}).items()
        }
        self.listeners = tuple(listeners)
        self.state_refresh = require_ms("state_refresh", state_refresh)
        client = resolve_redis(redis)
        self.store = RedisStore(client, namespace=namespace) if client is not None else None
        if client is None:
            logger.warning("CircuitBreaker has no Redis: each process keeps its own breakers.")
        self.outage = Outage(component="breaker", logger=logger)
        self._breakers: dict[str, Breaker] = {}
        self._lock = threading.Lock()
        set_default(self)

    @property
    def actor_options(self) -> set[str]:
        return {"breaker"}

    def get(self, name: str) -> Breaker:
        """The breaker called ``name`` (created on first use)."""
        found = self._breakers.get(name)
        if found is None:
            with self._lock:
                found = self._breakers.get(name)
                if found is None:
                    found = self._breakers[name] = Breaker(
                        name,
                        self.overrides.get(name, self.defaults),
                        shared=self.store,
                        exclude=self.exclude,
                        listeners=self.listeners,
                        outage=self.outage,
                        staleness=self.state_refresh,
                    )
        return found

    # -- hooks --------------------------------------------------------------

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        set_default(self)

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        option = actor.options.get("breaker")
        if option is not None and (not isinstance(option, bool | str) or option == ""):
            raise OptionError(
                f"actor {actor.actor_name!r}: breaker must be a dependency name or True, got {option!r}"
            )

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        if getattr(actor.fn, _WRAPPED, False):
            return
        actor.fn = self._wrap(broker, actor.fn)

    def _wrap(self, broker: dramatiq.Broker, fn: Callable[..., Any]) -> Callable[..., Any]:
        # The actor is called by the worker between before_ and after_process_message;
        # catching CircuitOpenError here keeps it from reaching after_process_message,
        # where Callbacks would fire on_failure and Backoff would spend a retry.
        # Every actor is wrapped, since any may use breaker(name) inside; the
        # wrapper does nothing until such an error escapes.
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except CircuitOpenError as error:
                delivery = current_delivery()
                if delivery is None:  # called directly, not by a worker
                    raise
                defer(
                    delivery.broker,
                    delivery.message,
                    delay=error.retry_after,
                    reason="circuit_open",
                    jitter=self._jitter_for(error.name),
                )

        setattr(guarded, _WRAPPED, True)
        return guarded

    # -- the trip -----------------------------------------------------------

    def plan(self, broker: dramatiq.Broker, message: Any, delivery: Delivery) -> None:
        # A message failed by an earlier hook (AgeLimit) will not run: it must
        # not take a trial permit; a hit known already (from L1) needs none.
        if message.failed or delivery.cache_hit:
            return
        name = self._name(broker, message)
        if name is None:
            return
        guard = _Guard(self.get(name))
        delivery.join(self, guard)
        try:
            guard.admission = guard.breaker.admit_locally()
        except CircuitOpenError as error:
            guard.refused = error  # deferred when settling, unless the result is a cache hit
            return
        if guard.admission is None:
            guard.token = new_token()
            guard.call = guard.breaker.acquire_call(guard.token)
            if guard.call is not None:
                delivery.before(guard.call)

    def settle(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, guard: _Guard) -> None:
        if guard.admission is None and guard.refused is None:
            try:
                guard.admission = guard.breaker.admission_from(guard.call, guard.token)
            except CircuitOpenError as error:
                guard.refused = error
        if delivery.cache_hit:
            # A hit needs no healthy dependency, and gives back a trial permit it took.
            self._give_back(delivery, guard)
            return
        if guard.refused is not None:
            name = guard.breaker.name
            defer(
                broker,
                message,
                delay=guard.refused.retry_after,
                reason="circuit_open",
                jitter=self._jitter_for(name),
            )
        assert guard.admission is not None
        push_held(message, guard.admission)

    def finish(
        self,
        broker: dramatiq.Broker,
        message: Any,
        delivery: Delivery,
        guard: _Guard,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        admission, guard.admission = guard.admission, None
        if admission is None:
            return
        pop_held(message)
        # No exception from a message that was failed before the actor ran is no success of the dependency.
        ignore = isinstance(exception, CircuitOpenError) or (exception is None and message.failed)
        call = admission.breaker.record_call(admission, exception, ignore=ignore)
        if call is not None:
            delivery.after(call)

    def abort(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, guard: _Guard) -> None:
        if guard.admission is None and guard.call is not None and guard.call.sent and guard.refused is None:
            # Skipped before this breaker settled: it may hold a trial permit all the same.
            try:
                guard.admission = guard.breaker.admission_from(guard.call, guard.token)
            except CircuitOpenError:
                return
        pop_held(message)
        self._give_back(delivery, guard)

    @staticmethod
    def _give_back(delivery: Delivery, guard: _Guard) -> None:
        admission, guard.admission = guard.admission, None
        if admission is not None:
            call = admission.breaker.record_call(admission, ignore=True)
            if call is not None:
                delivery.after(call)

    # -- helpers ------------------------------------------------------------

    def _name(self, broker: dramatiq.Broker, message: Any) -> str | None:
        option = message_option(broker, message, "breaker", None, check=_check_breaker)
        if option is None or option is False:
            return None
        if option is True:
            return str(message.actor_name)
        return str(option)

    def _jitter_for(self, name: str) -> int:
        settings = self.overrides.get(name)
        return self.jitter if settings is None else min(self.jitter, settings.reset_timeout)


def _settings(*, base: Settings | None = None, **values: Any) -> Settings:
    known = set(Settings.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown breaker setting(s) {sorted(unknown)}; known: {sorted(known)}")
    merged = {**(base.__dict__ if base else {}), **values}
    for name in ("reset_timeout", "slow_call", "window"):
        require_ms(name, merged[name], allow_zero=False)
    for name in ("fail_max", "half_open_calls", "min_calls"):
        value = merged[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    rate = merged["failure_rate"]
    if rate is not None and not (isinstance(rate, int | float) and 0 < rate <= 1):
        raise ValueError(f"failure_rate must be a number in (0, 1] or None, got {rate!r}")
    return Settings(**merged)


#: A breaker's name is a key part and a log field: a message may not name an endless one.
_MAX_NAME = 200


def _check_breaker(value: Any) -> Any:
    """A message's own ``breaker``: a dependency name, ``True`` or ``False``."""
    if isinstance(value, bool) or (isinstance(value, str) and 0 < len(value) <= _MAX_NAME):
        return value
    raise ValueError(f"must be a dependency name (1 to {_MAX_NAME} characters), True or False")
