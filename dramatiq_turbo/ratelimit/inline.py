"""``rate_limit(key, ...)``: a global limit per call, for code inside actors.

``RateLimiter`` limits how often *messages* start.  A job that calls a model
many times needs a limit that holds per call, across all worker processes:
``rate_limit`` counts each entry of a ``with`` block (or call of a decorated
function) as one start of the budget ``key:<key>`` in the store of the
``RateLimiter`` created last.  Every process sharing that Redis shares the
budget, and so does an actor whose ``rate_limit`` option has a ``key``
function returning ``<key>``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, overload

import redis as redis_lib

from ..core.fallback import Fallback
from ..core.tokens import new_token
from ..events import record
from ..options import require_ms
from .leases import Hold, LeaseRenewer
from .rules import DEFAULT_LEASE, InvalidRateLimit, Rule, key_budget, parse_rule
from .store import CONCURRENCY_POLL, Decision, LimitStore, LocalLimitStore

__all__ = ["DEFAULT_MAX_WAIT", "Permit", "RateLimitTimeout", "current_permit", "rate_limit", "set_default"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: How long a ``rate_limit`` block waits for its slot by default (ms).  Longer
#: than ``RateLimiter``'s ``max_wait`` on purpose: a message that stops waiting
#: there is deferred before it did anything, while a block that stops waiting
#: fails its job, whose retry does the work before the block again.
DEFAULT_MAX_WAIT = 10_000

# The waiting loop's sleep and clock (ms); tests replace them with a fake clock.
_sleep = time.sleep


def _now_ms() -> float:
    return time.monotonic() * 1000


class RateLimitTimeout(Exception):
    """A ``rate_limit`` block got no slot within its ``max_wait``.

    ``Backoff`` retries the message (``retryable``), after at least
    ``retry_after`` ms.

    Attributes:
      key(str): The key, as given to ``rate_limit``.
      limit(str): The limit, such as ``"30 per 1000 ms, 8 at once"``.
      waited(int): Milliseconds the block waited before giving up.
      retry_after(int): The store's hint: milliseconds until a slot may be free.
      retryable(bool): Always ``True``: a slot comes free later.
    """

    retryable = True

    def __init__(self, key: str, limit: str, waited: int, retry_after: int, why: str = "no slot") -> None:
        super().__init__(
            f"rate_limit {key!r} ({limit}): {why} after waiting {waited} ms; retry in {retry_after} ms"
        )
        self.key = key
        self.limit = limit
        self.waited = waited
        self.retry_after = retry_after
        self.why = why

    def __reduce__(self) -> tuple[Any, ...]:
        # The default would call __init__ with the message alone.
        return (type(self), (self.key, self.limit, self.waited, self.retry_after, self.why))


@dataclass(frozen=True)
class Permit:
    """The start a ``rate_limit`` block counted: ``with rate_limit(...) as permit``.

    Parameters:
      key(str): The budget's name in the store, ``"key:<key>"``.
      admitted_at(float): When the store admitted the block, in ms: Redis
        time (``TIME``) with a Redis store, this process's monotonic clock
        when limits are counted per process.
      waited(int): Milliseconds the block waited for its slot.
      shared(bool): ``True`` when counted in Redis, ``False`` when per process.
    """

    key: str
    admitted_at: float
    waited: int
    shared: bool


class _Limiter(Protocol):
    """What ``rate_limit`` uses of a ``RateLimiter``: its stores, outage policy and lease renewer."""

    stores: Fallback[LimitStore]
    fail_open: bool
    renewer: LeaseRenewer


class _PerProcess:
    """Stands in for a ``RateLimiter`` when there is none: limits counted in this process only."""

    def __init__(self) -> None:
        self.stores: Fallback[LimitStore] = Fallback(
            shared=None, local=LocalLimitStore(), component="rate_limit", logger=logger
        )
        self.fail_open = True
        self.renewer = LeaseRenewer()


_registry_lock = threading.Lock()
_default: _Limiter | None = None
_per_process: _PerProcess | None = None


def set_default(limiter: _Limiter | None) -> None:
    """Make ``limiter`` (a ``RateLimiter``) the one whose store ``rate_limit`` shares; ``None`` forgets it."""
    global _default
    with _registry_lock:
        _default = limiter


def _current_limiter() -> _Limiter:
    limiter = _default
    if limiter is not None:
        return limiter
    global _per_process
    with _registry_lock:
        if _per_process is None:
            logger.warning(
                "rate_limit() found no RateLimiter middleware: its limits are counted per process, "
                "not globally across workers."
            )
            _per_process = _PerProcess()
        return _per_process


@dataclass(frozen=True)
class _Entry:
    owner: object
    permit: Permit
    hold: Hold | None  # None: no slot to free (no concurrency limit, or nested in a block that holds it)
    limiter: _Limiter | None


#: The blocks the current thread or task is inside, innermost last.
_held: ContextVar[tuple[_Entry, ...]] = ContextVar("turbo_rate_limit_held", default=())


def current_permit() -> Permit | None:
    """The permit of the innermost ``rate_limit`` block the current thread or task is in, or ``None``.

    For a decorated function, which has no ``as permit``.
    """
    held = _held.get()
    return held[-1].permit if held else None


class rate_limit:
    """Limit how often, and how many at once, a block of actor code runs, across all workers.

    As a context manager (``async with`` in async code)::

        with rate_limit("llm", max=30, duration=1_000, concurrency=8) as permit:
            answer = client.complete(prompt)

    or as a decorator, of plain or ``async`` functions::

        @rate_limit("llm", max=30, duration=1_000)
        def complete(prompt): ...

    Each entry counts one start of the budget ``key:<key>`` in the store of
    the ``RateLimiter`` created last (re-registered in each worker process at
    boot): exact across processes, by Redis time, sharing the budget of any
    actor option whose ``key`` function returns ``key``.  Without a
    ``RateLimiter`` the limit holds per process (a warning says so once).

    Over the limit the calling thread (or task) waits for its slot, for at
    most ``max_wait`` ms in all; when the next slot is further away than what
    is left of that, it raises ``RateLimitTimeout`` at once, which ``Backoff``
    retries after at least the store's hint.  A concurrency slot is a lease,
    renewed while the block runs and freed when it exits, exception or not;
    the start of a block that ran stays counted.  While Redis is down the
    ``RateLimiter``'s policy applies: ``fail_open`` counts per process, fail
    closed raises ``RateLimitTimeout``.

    A block nested in another of the same key is part of that call and takes
    nothing (a second slot could wait forever for the outer one).  A slot the
    *message* holds through an actor option is not such a block: with
    ``concurrency`` on both, the message's slot is one of the ``N``.  Blocks
    are kept in a context variable, so one object may be used by many threads
    and tasks at once, and nested.

    Parameters:
      key(str): The budget's name, such as ``"llm"`` or ``f"customer:{id}"``.
      max(int): Starts allowed in any window of ``duration`` ms.
      duration(int): The window, in milliseconds.
      concurrency(int): Blocks of the key running at once, across all
        processes; ``None`` (default) for no limit.  Give ``max`` and
        ``duration``, ``concurrency``, or all three.
      max_wait(int): The most the block waits for its slot, in ms, before
        raising ``RateLimitTimeout``.  Default 10,000; 0 never waits.
      burst(int): Starts allowed back to back (default ``max``), as in the
        actor option.
      lease(int): Milliseconds a concurrency slot survives without renewal:
        a killed worker's slot comes back after this.  Default 30,000.
    """

    def __init__(
        self,
        key: str,
        *,
        max: int | None = None,
        duration: int | None = None,
        concurrency: int | None = None,
        max_wait: int = DEFAULT_MAX_WAIT,
        burst: int | None = None,
        lease: int = DEFAULT_LEASE,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidRateLimit(f"rate_limit() needs a non-empty str key naming the budget, got {key!r}")
        self.key = key
        self.budget = key_budget(key)
        self.rule = _rule(key, max=max, duration=duration, concurrency=concurrency, burst=burst, lease=lease)
        try:
            self.max_wait = require_ms("max_wait", max_wait)
        except ValueError as error:
            raise InvalidRateLimit(f"rate_limit({key!r}) {error}") from None

    def __repr__(self) -> str:
        return f"rate_limit({self.key!r}: {_describe(self.rule)}, max_wait={self.max_wait} ms)"

    # -- entering and leaving -----------------------------------------------

    def __enter__(self) -> Permit:
        outer = self._join_outer()
        if outer is not None:
            return outer
        waits = self._admit()
        try:
            while True:
                _sleep(next(waits) / 1000)
        except StopIteration as done:
            return _push(done.value)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = _pop(self)
        if entry is not None:
            _release(entry)

    async def __aenter__(self) -> Permit:
        # The same attempts as __enter__; only the sleeps yield to the event loop.
        outer = self._join_outer()
        if outer is not None:
            return outer
        waits = self._admit()
        try:
            while True:
                await asyncio.sleep(next(waits) / 1000)
        except StopIteration as done:
            return _push(done.value)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(kind, error, tb)

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def limited_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self:
                    return await fn(*args, **kwargs)

            return limited_async

        @functools.wraps(fn)
        def limited(*args: P.args, **kwargs: P.kwargs) -> Any:
            with self:
                return fn(*args, **kwargs)

        return limited

    # -- helpers ------------------------------------------------------------

    def _join_outer(self) -> Permit | None:
        """Inside a block of the same budget, note this one as part of it and return its permit."""
        held = _held.get()
        for entry in reversed(held):
            if entry.permit.key == self.budget:
                _held.set((*held, _Entry(self, entry.permit, None, None)))
                return entry.permit
        return None

    def _admit(self) -> Generator[int, None, _Entry]:
        """Take this block's start (and slot), yielding the ms to sleep between attempts."""
        limiter = _current_limiter()
        token = new_token()
        started = _now_ms()
        while True:
            waited = _elapsed(started)
            remaining = max(0, self.max_wait - waited)
            # The store answers a refusal due within the max_wait it is given
            # with the exact wait, and one beyond it with a *turn*, advancing
            # the budget's horizon by one interval (turns are for messages
            # deferred until then).  Giving what is left of max_wait means a
            # waiting thread takes no turn at each attempt, which would push
            # the turns of everyone on the budget further out for nothing; it
            # takes one only when it gives up, and its retry returns at it.
            store, decision = self._attempt(limiter, token, remaining, waited)
            if decision.admitted:
                return self._admitted(limiter, store, token, decision, _elapsed(started))
            # A rate refusal is exact: beyond what is left, no slot comes in
            # time, so raise now.  A concurrency refusal is a poll (nobody
            # knows when a block ends): poll until max_wait is used up.
            delay = min(decision.wait, remaining) if decision.reason == "concurrency" else decision.wait
            if not 0 < delay <= remaining:
                raise RateLimitTimeout(self.key, _describe(self.rule), waited, decision.wait)
            yield delay

    def _attempt(
        self, limiter: _Limiter, token: str, max_wait: int, waited: int
    ) -> tuple[LimitStore, Decision]:
        try:
            return limiter.stores.run(
                lambda store: store.acquire(self.budget, self.rule, token, max_wait=max_wait),
                local_on_error=limiter.fail_open,
            )
        except redis_lib.RedisError as error:
            # Fail closed: nothing starts until Redis answers again (as the middleware defers).
            retry_after = self.rule.duration or CONCURRENCY_POLL * 10
            why = "Redis is unreachable and the limiter fails closed"
            raise RateLimitTimeout(self.key, _describe(self.rule), waited, retry_after, why) from error

    def _admitted(
        self, limiter: _Limiter, store: LimitStore, token: str, decision: Decision, waited: int
    ) -> _Entry:
        hold = None
        if self.rule.concurrency:
            hold = Hold(store, self.budget, token, self.rule.lease)
            limiter.renewer.add(hold)
        if waited:
            record("ratelimit.wait", wait_ms=waited)
        permit = Permit(self.budget, decision.now, waited, shared=store is not limiter.stores.local)
        return _Entry(self, permit, hold, limiter)


def _rule(
    key: str,
    *,
    max: int | None,
    duration: int | None,
    concurrency: int | None,
    burst: int | None,
    lease: int,
) -> Rule:
    where = f"rate_limit({key!r})"
    if max is None and duration is None and concurrency is None:
        raise InvalidRateLimit(f"{where} needs max and duration, or concurrency, or all three")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise InvalidRateLimit(f"{where} concurrency must be a positive int or None, got {concurrency!r}")
    given = {"max": max, "duration": duration, "concurrency": concurrency, "burst": burst}
    fields: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    return parse_rule({**fields, "lease": lease}, where=where)


def _describe(rule: Rule) -> str:
    parts = []
    if rule.max:
        parts.append(f"{rule.max} per {rule.duration} ms")
    if rule.burst_window:
        parts.append(f"burst {rule.burst}")
    if rule.concurrency:
        parts.append(f"{rule.concurrency} at once")
    return ", ".join(parts)


def _elapsed(started: float) -> int:
    return int(_now_ms() - started)


def _push(entry: _Entry) -> Permit:
    _held.set((*_held.get(), entry))
    return entry.permit


def _pop(owner: object) -> _Entry | None:
    """Forget ``owner``'s innermost block and return it."""
    held = _held.get()
    for index in range(len(held) - 1, -1, -1):
        if held[index].owner is owner:
            _held.set(held[:index] + held[index + 1 :])
            return held[index]
    return None


def _release(entry: _Entry) -> None:
    hold, limiter = entry.hold, entry.limiter
    if hold is None or limiter is None:
        return
    limiter.renewer.discard(hold)
    try:
        # refund=False: the block ran, so its start stays counted; only the slot is freed.
        hold.store.release(hold.key, hold.token, refund=False)
    except redis_lib.RedisError as error:
        # The lease expires by itself.
        limiter.stores.failed(error)
