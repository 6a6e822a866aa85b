"""``CircuitBreaker``: the middleware that defers a guarded actor's messages while its dependency is down."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from ..defer import defer
from ..marks import is_cache_hit
from ..options import OptionError, get_option, require_ms
from ..outage import Outage
from ..redis import RedisLike, resolve_redis
from .core import Admission, Breaker, CircuitOpenError, pop_held, push_held, set_default
from .store import RedisStore, Settings

__all__ = ["CircuitBreaker"]

logger = logging.getLogger("dramatiq_turbo.breaker")

#: Where the admission of the message being processed waits for its outcome.
_ADMISSION = "_turbo_breaker_admission"
_WRAPPED = "_turbo_breaker_wrapped"


class CircuitBreaker(Middleware):
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
        client = resolve_redis(redis)
        self.store = RedisStore(client, namespace=namespace) if client is not None else None
        if client is None:
            logger.warning("CircuitBreaker has no Redis: each process keeps its own breakers.")
        self.outage = Outage(component="breaker", logger=logger)
        self._breakers: dict[str, Breaker] = {}
        self._lock = threading.Lock()
        self._current = threading.local()
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
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except CircuitOpenError as error:
                message = getattr(self._current, "message", None)
                if message is None:  # called directly, not by a worker
                    raise
                defer(
                    broker,
                    message,
                    delay=error.retry_after,
                    reason="circuit_open",
                    jitter=self._jitter_for(error.name),
                )

        setattr(guarded, _WRAPPED, True)
        return guarded

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._current.message = message
        # A message failed by an earlier hook (AgeLimit) will not run: it must not take a trial permit.
        if is_cache_hit(message) or message.failed:
            return
        name = self._name(broker, message)
        if name is None:
            return
        found = self.get(name)
        try:
            admission = found.acquire()
        except CircuitOpenError as error:
            defer(
                broker, message, delay=error.retry_after, reason="circuit_open", jitter=self._jitter_for(name)
            )
        setattr(message, _ADMISSION, admission)
        push_held(message, admission)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        admission = self._take_admission(message)
        if admission is None:
            return
        # No exception from a message that was failed before the actor ran is no success of the dependency.
        ignore = isinstance(exception, CircuitOpenError) or (exception is None and message.failed)
        admission.breaker.record(admission, exception, ignore=ignore)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        admission = self._take_admission(message)
        if admission is not None:
            admission.breaker.release(admission)

    def _take_admission(self, message: Any) -> Admission | None:
        """The message's admission, if it had one, forgotten by this delivery."""
        self._current.message = None
        admission: Admission | None = getattr(message, _ADMISSION, None)
        if admission is not None:
            setattr(message, _ADMISSION, None)
            pop_held(message)
        return admission

    # -- helpers ------------------------------------------------------------

    def _name(self, broker: dramatiq.Broker, message: Any) -> str | None:
        option = get_option(broker, message, "breaker", None)
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
