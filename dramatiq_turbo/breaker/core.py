"""One named breaker, its error, and ``breaker(name)`` for code inside actors."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, ParamSpec, TypeVar

import pybreaker

from ..core.delivery import Call, send_calls
from ..core.fallback import Fallback
from ..core.tokens import new_token
from ..events import record
from ..outage import Outage
from ..redact import redact_text
from .store import (
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    BreakerStore,
    MemoryStore,
    RedisStore,
    Reply,
    Settings,
    reply_of,
)

__all__ = ["Admission", "Breaker", "CircuitOpenError", "breaker", "current_admission"]

logger = logging.getLogger("dramatiq_turbo.breaker")

P = ParamSpec("P")
R = TypeVar("R")


class CircuitOpenError(pybreaker.CircuitBreakerError):
    """A call was refused because its breaker is open (or half-open with its trial calls taken).

    A subclass of ``pybreaker.CircuitBreakerError``, so code that already
    catches pybreaker's error keeps working.  ``Backoff`` reads
    ``retry_after`` as a server hint; ``CircuitBreaker`` turns an uncaught one
    into a deferral of the message.

    Attributes:
      name(str): The breaker's name.
      retry_after(int): Milliseconds until the breaker may let a call through.
      retryable(bool): Always ``True``: the dependency may recover.
    """

    retryable = True

    def __init__(self, name: str, retry_after: int) -> None:
        super().__init__(f"circuit {name!r} is open; retry in {retry_after} ms")
        self.name = name
        self.retry_after = retry_after


@dataclass(frozen=True)
class Admission:
    """Permission for one call: report its outcome with ``Breaker.record``.

    ``state`` is the state the call was admitted in (``"half-open"`` for a
    trial call) and ``generation`` the breaker's period that admitted it.
    """

    breaker: Breaker
    generation: int
    token: str
    store: BreakerStore
    started: float  # time.monotonic()
    state: str


class _StateView:
    """What pybreaker listeners get as ``old_state``/``new_state``: an object with a ``name``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class Breaker:
    """One dependency's breaker, as seen from this process.

    Calls are admitted and reported through a store (Redis, or this
    process's memory while Redis is down).  Nothing holds a lock while a call
    runs, so concurrent calls are never serialized.  What the store last said
    is kept locally: while the breaker is known to be open a call is refused
    without asking Redis, and while it is known to be closed with no failures
    counted a call is admitted without asking, and its success is not
    reported (there is nothing to reset).  "Known closed" lasts ``staleness`` ms after Redis said
    so (each reply renews it), so a process learns of a trip by another
    process within that time (or at its own next failure, whichever is first).

    Parameters:
      name(str): The dependency's name.
      settings(Settings): Thresholds and durations.
      shared(BreakerStore): The shared store, or ``None`` to work per process.
      exclude(tuple): Exception types that count neither as failure nor success.
      listeners(Iterable[pybreaker.CircuitBreakerListener]): Told of state
        changes this process makes (``state_change``) and of outcomes
        (``success``/``failure``).
      outage(Outage): Tracks the shared store's outages.
      staleness(int): Milliseconds a "closed" learnt from the shared store is
        trusted without asking again; at most a quarter of ``reset_timeout``.
    """

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        shared: BreakerStore | None = None,
        exclude: tuple[type[BaseException], ...] = (),
        listeners: Iterable[Any] = (),
        outage: Outage | None = None,
        staleness: int = 50,
    ) -> None:
        self.name = name
        self.settings = settings
        #: The shared store, or this process's while it fails (any error counts).
        self.stores: Fallback[BreakerStore] = Fallback(
            shared=shared,
            local=MemoryStore(),
            component="breaker",
            logger=logger,
            outage=outage,
            errors=(Exception,),
        )
        self.exclude = exclude
        self.listeners = tuple(listeners)
        #: Until when (monotonic seconds) this process knows the breaker is open.
        self._open_until = 0.0
        self.staleness = min(staleness, settings.reset_timeout // 4) / 1000
        #: Until when (monotonic seconds) "closed in generation ``_generation``
        #: with ``_fails`` failures" holds without asking the shared store.
        self._closed_until = 0.0
        self._generation = 0
        self._fails = 0
        self._learnt = (0, 0)  # (Redis time, generation) of the newest reply learnt
        #: State transitions made by this process, and calls refused, by kind.
        self.counts: Counter[str] = Counter()
        self.state = STATE_CLOSED

    @property
    def shared(self) -> BreakerStore | None:
        """The store every process shares (Redis), or ``None``."""
        return self.stores.shared

    @property
    def local(self) -> MemoryStore:
        """This process's store: the fallback while the shared one fails."""
        local: MemoryStore = self.stores.local  # type: ignore[assignment]
        return local

    @property
    def outage(self) -> Outage:
        return self.stores.outage

    # -- the hot path -------------------------------------------------------

    def acquire(self) -> Admission:
        """Admit one call, or raise ``CircuitOpenError``."""
        admission = self.admit_locally()
        if admission is not None:
            return admission
        token = new_token()
        return self.admission_from(self.acquire_call(token), token)

    def admit_locally(self) -> Admission | None:
        """An admission decided without Redis, or ``None`` when the store must be asked.

        Raises:
          CircuitOpenError: while the breaker is known to be open.
        """
        now = time.monotonic()
        if now < self._open_until:
            self._reject(int((self._open_until - now) * 1000) + 1)
        # Only a clean closed state is trusted: with failures counted, the next
        # one may trip the breaker in another process at any moment.
        if self.shared is not None and now < self._closed_until and self._fails == 0:
            return Admission(self, self._generation, "", self.shared, now, STATE_CLOSED)
        return None

    def acquire_call(self, token: str) -> Call | None:
        """The Redis call that asks for an admission, or ``None`` to ask this process's store."""
        if not isinstance(self.shared, RedisStore) or self.outage.active:
            return None
        return self.shared.call(self.name, self.settings, "acquire", token=token)

    def admission_from(self, call: Call | None, token: str) -> Admission:
        """The admission the store gave ``token`` (in ``call``'s reply, or asked now).

        Raises:
          CircuitOpenError: when it refused.
        """
        store, reply = self._answer(call, lambda s: s.acquire(self.name, self.settings, token))
        if not reply.admitted:
            wait = max(1, reply.retry_at - reply.now)
            if reply.state == STATE_OPEN:
                self._open_until = time.monotonic() + wait / 1000
            self._reject(wait)
        return Admission(self, reply.generation, token, store, time.monotonic(), reply.state)

    def record(
        self, admission: Admission, error: BaseException | None = None, *, ignore: bool = False
    ) -> None:
        """Report how an admitted call ended: ``error`` is its exception, ``None`` for success.

        A call slower than ``slow_call`` is a failure even when it succeeded;
        an error in ``exclude`` (or ``ignore=True``) counts as nothing.
        """
        call = self.record_call(admission, error, ignore=ignore)
        if call is not None:
            send_calls([call])

    def record_call(
        self, admission: Admission, error: BaseException | None = None, *, ignore: bool = False
    ) -> Call | None:
        """``record``, with the Redis call it needs returned instead of sent (``None``: none needed)."""
        outcome = self._outcome(admission, error, ignore)
        self._notify_outcome(outcome, error, (time.monotonic() - admission.started) * 1000)
        store = admission.store
        if store is not self.shared or not isinstance(store, RedisStore):
            self._record_here(store, admission, outcome)
            return None
        if self._needless(admission, outcome):
            return None
        return store.call(
            self.name,
            self.settings,
            "record",
            generation=admission.generation,
            outcome=outcome,
            token=admission.token,
            then=lambda call: self._recorded(call.reply, outcome, call.sent_at),
        )

    def release(self, admission: Admission) -> None:
        """Give back an admission whose call did not run (deferred or skipped)."""
        self.record(admission, ignore=True)

    # -- helpers ------------------------------------------------------------

    def _outcome(self, admission: Admission, error: BaseException | None, ignore: bool) -> str:
        elapsed = (time.monotonic() - admission.started) * 1000
        if ignore or (error is not None and isinstance(error, self.exclude)):
            return "ignore"
        if error is not None or elapsed > self.settings.slow_call:
            return "failure"
        return "success"

    def _needless(self, admission: Admission, outcome: str) -> bool:
        """Whether the store would learn nothing from this outcome."""
        if admission.state != STATE_CLOSED or outcome == "failure":
            return False
        if outcome == "ignore":
            return True  # a closed admission holds no trial permit to give back
        # A success resets the failures: needless when there are none (and no window counts calls).
        return (
            self.settings.failure_rate is None
            and self._fails == 0
            and admission.generation == self._generation
            and time.monotonic() < self._closed_until
        )

    def _record_here(self, store: BreakerStore, admission: Admission, outcome: str) -> None:
        try:
            reply = store.record(self.name, self.settings, admission.generation, outcome, admission.token)
        except Exception as error_:
            self.stores.failed(error_)
            return
        self._learn(reply)

    def _recorded(self, reply: Any, outcome: str, sent_at: float | None = None) -> None:
        if isinstance(reply, Exception):
            self.stores.failed(reply)
            self._closed_until = 0.0
            if outcome == "failure":
                # Redis is gone: the failure counts here, where the next calls are decided.
                generation = self.local.generation(self.name)
                self._record_here(self.local, self._local_admission(generation), outcome)
            return
        self.stores.succeeded(sent_at)
        self._learn(reply_of(reply), shared=True)

    def _local_admission(self, generation: int) -> Admission:
        return Admission(self, generation, "", self.local, time.monotonic(), STATE_CLOSED)

    def _answer(
        self, call: Call | None, decide: Callable[[BreakerStore], Reply]
    ) -> tuple[BreakerStore, Reply]:
        """The shared store's reply (from ``call``, or asked now), or this process's when it fails."""
        if call is not None and not call.sent:
            send_calls([call])
        if call is not None and self.shared is not None:
            store, reply = self.stores.answer(lambda: reply_of(call.result()), decide, sent_at=call.sent_at)
        else:
            store, reply = self.stores.run(decide)
        self._learn(reply, shared=store is self.shared)
        return store, reply

    def _learn(self, reply: Reply, *, shared: bool = False) -> None:
        if shared:
            version = (reply.now, reply.generation)
            # Replies of this process's threads may be handled out of order:
            # an older one must not undo a newer (unless Redis's clock jumped back).
            if version < self._learnt and reply.now > self._learnt[0] - 60_000:
                self._tell(reply)  # a change this call made is told all the same
                return
            self._learnt = version
        self.state = reply.state
        if reply.state == STATE_OPEN and reply.retry_at > reply.now:
            self._open_until = time.monotonic() + (reply.retry_at - reply.now) / 1000
        elif reply.state != STATE_OPEN:
            self._open_until = 0.0
        if shared and reply.state == STATE_CLOSED:
            self._generation, self._fails = reply.generation, reply.fails
            self._closed_until = time.monotonic() + self.staleness
        else:
            self._closed_until = 0.0
        self._tell(reply)

    def _tell(self, reply: Reply) -> None:
        if reply.previous and reply.previous != reply.state:
            self._changed(reply.previous, reply.state)

    def _changed(self, previous: str, state: str) -> None:
        self.counts[state] += 1
        log = logger.warning if state == STATE_OPEN else logger.info
        log("Circuit %r: %s -> %s.", redact_text(self.name), previous, state)
        record("breaker.state", breaker=self.name, state=state, previous=previous)
        for listener in self.listeners:
            try:
                listener.state_change(self, _StateView(previous), _StateView(state))
            except Exception:
                logger.exception("Breaker listener %r failed.", listener)

    def _notify_outcome(self, outcome: str, error: BaseException | None, elapsed: float) -> None:
        if not self.listeners or outcome == "ignore":
            return
        for listener in self.listeners:
            try:
                if outcome == "success":
                    listener.success(self)
                else:
                    listener.failure(self, error or TimeoutError(f"slow call: {elapsed:.0f} ms"))
            except Exception:
                logger.exception("Breaker listener %r failed.", listener)

    def _reject(self, retry_after: int) -> NoReturn:
        self.counts["rejected"] += 1
        record("breaker.reject", breaker=self.name)
        raise CircuitOpenError(self.name, retry_after)

    @property
    def current_state(self) -> str:
        """The state as last learnt by this process (pybreaker's name for it)."""
        if self.state == STATE_OPEN and time.monotonic() >= self._open_until:
            return STATE_HALF_OPEN
        return self.state


# -- breaker(name) ------------------------------------------------------------

_registry_lock = threading.Lock()
_default: Any = None  # the CircuitBreaker middleware that serves breaker(name)
_fallback: dict[str, Breaker] = {}


def set_default(middleware: Any) -> None:
    """Make ``middleware`` (a ``CircuitBreaker``) the one ``breaker(name)`` uses."""
    global _default
    with _registry_lock:
        _default = middleware


def get_breaker(name: str) -> Breaker:
    """The breaker called ``name`` of the current ``CircuitBreaker`` middleware.

    Without one, a per-process breaker with default settings.
    """
    middleware = _default
    if middleware is not None:
        found: Breaker = middleware.get(name)
        return found
    with _registry_lock:
        fallback = _fallback.get(name)
        if fallback is None:
            fallback = _fallback[name] = Breaker(name, Settings())
        return fallback


class breaker:
    """Guard one external call with the breaker called ``name``.

    As a context manager::

        with breaker("llm"):
            answer = client.complete(prompt)

    or as a decorator::

        @breaker("llm")
        def complete(prompt): ...

    Raises ``CircuitOpenError`` (in microseconds, without a Redis round trip
    while the open state is known locally) when the breaker refuses the call.
    An exception from the block counts as a failure unless it is excluded; a
    block slower than ``slow_call`` counts as one too.  The breaker is looked
    up when the block is entered, in the ``CircuitBreaker`` middleware created
    last (a per-process breaker with defaults when there is none).

    Inside a call already guarded by the same breaker (an actor with
    ``breaker="llm"`` that also uses ``breaker("llm")``) the block is part of
    that call: it takes no second admission, which would compete with its own
    outer call for the single trial permit when half-open.

    Admissions are kept in a context variable, so one ``breaker`` object may
    be used by many threads and asyncio tasks at once.

    Parameters:
      name(str): The dependency's name, as in the actor option ``breaker="llm"``.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"breaker() needs a dependency name, got {name!r}")
        self.name = name

    def __enter__(self) -> Breaker:
        found = get_breaker(self.name)
        held = _held.get()
        nested = any(admission is not None and admission.breaker is found for _, admission in held)
        admission = None if nested else found.acquire()
        _held.set((*held, (self, admission)))
        return found

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        admission = pop_held(self)
        if admission is not None:
            # A refusal from a breaker nested inside says nothing about this one.
            admission.breaker.record(admission, error, ignore=isinstance(error, CircuitOpenError))

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return fn(*args, **kwargs)

        return guarded


#: The admissions of the calls the current thread or task is inside, innermost last.
_held: ContextVar[tuple[tuple[object, Admission | None], ...]] = ContextVar("turbo_breaker_held", default=())


def push_held(owner: object, admission: Admission) -> None:
    """Note that the current context is inside ``admission``'s call (``owner`` pops it)."""
    _held.set((*_held.get(), (owner, admission)))


def current_admission() -> Admission | None:
    """The admission of the innermost breaker-guarded call the current thread or task is in.

    Its ``state`` says whether the call is a trial (``"half-open"``) and its
    ``generation`` which period of the breaker admitted it; ``None`` outside
    any guarded call.
    """
    for _, admission in reversed(_held.get()):
        if admission is not None:
            return admission
    return None


def pop_held(owner: object) -> Admission | None:
    """Forget ``owner``'s innermost admission and return it."""
    held = _held.get()
    for index in range(len(held) - 1, -1, -1):
        if held[index][0] is owner:
            _held.set(held[:index] + held[index + 1 :])
            return held[index][1]
    return None
