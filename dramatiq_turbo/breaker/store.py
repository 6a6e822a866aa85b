"""Where a breaker's state lives: one small interface, on Redis or in process.

The same state machine runs in ``breaker.lua`` (shared by every process, on
Redis time) and in ``MemoryStore`` (one process, for tests, for deployments
without Redis, and as the fallback while Redis is down).  Each decision is
atomic: the Lua script runs alone on the server, the memory store holds a
lock only for the few dictionary operations of one decision, never around a
call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from ..core.delivery import Call
from ..redis import hash_key, load_script

__all__ = [
    "STATE_CLOSED",
    "STATE_HALF_OPEN",
    "STATE_OPEN",
    "BreakerStore",
    "MemoryStore",
    "RedisStore",
    "Reply",
    "Settings",
    "reply_of",
]

# pybreaker's state names, so listeners written for pybreaker read the same words.
from pybreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN


@dataclass(frozen=True)
class Settings:
    """One breaker's configuration; durations in ms.

    Parameters:
      fail_max(int): Consecutive failures that trip the breaker.
      reset_timeout(int): How long it stays open before a trial call.
      slow_call(int): Calls slower than this count as failures.
      half_open_calls(int): Trial calls allowed across all processes once
        the open period ends; that many successes close the breaker.
      failure_rate(float): Also trip when the share of failures in the
        sliding ``window`` reaches this (0 < rate <= 1); ``None`` for off.
      window(int): The sliding window of the failure rate.
      min_calls(int): Calls the window needs before the rate counts.
    """

    fail_max: int = 5
    reset_timeout: int = 60_000
    slow_call: int = 30_000
    half_open_calls: int = 1
    failure_rate: float | None = None
    window: int = 60_000
    min_calls: int = 10

    @property
    def lease(self) -> int:
        """How long a trial permit is held before it is presumed lost (its process died)."""
        return max(self.slow_call, self.reset_timeout)

    @property
    def probe(self) -> int:
        """How long a call refused while half-open waits before asking again."""
        return max(10, min(self.reset_timeout, self.slow_call) // 5)


@dataclass(frozen=True)
class Reply:
    """A store's answer.

    ``retry_at`` and ``now`` are on the store's clock (Redis time, or this
    process's monotonic clock for ``MemoryStore``); only their difference is
    used by callers.  ``fails`` is the count of consecutive failures now.
    """

    admitted: bool
    state: str
    generation: int
    retry_at: int
    now: int
    previous: str = ""
    fails: int = 0


class BreakerStore(Protocol):
    """The two decisions of a breaker.

    ``acquire`` asks to make a call (and may turn an expired open state into
    half-open, granting a trial permit); ``record`` reports its outcome
    (``"success"``, ``"failure"`` or ``"ignore"``) for the generation it
    was admitted in, and always gives back the call's trial permit.
    """

    def acquire(self, name: str, settings: Settings, token: str) -> Reply: ...

    def record(self, name: str, settings: Settings, generation: int, outcome: str, token: str) -> Reply: ...


class RedisStore:
    """Breaker state shared by every process through Redis (``breaker.lua``).

    Parameters:
      client(redis.Redis): From ``connect_redis``.
      namespace(str): Key prefix; keys are ``<namespace>:{<name>}:...``.
    """

    def __init__(self, client: redis.Redis, *, namespace: str = "turbo:breaker") -> None:
        self.client = client
        self.namespace = namespace
        self._script = load_script(client, __package__ or "dramatiq_turbo.breaker", "breaker.lua")

    def keys(self, name: str) -> list[str]:
        return [
            hash_key(self.namespace, name, "state"),
            hash_key(self.namespace, name, "permits"),
            hash_key(self.namespace, name, "window"),
        ]

    def call(
        self,
        name: str,
        settings: Settings,
        op: str,
        *,
        generation: int = 0,
        outcome: str = "",
        token: str = "",
        then: Callable[[Any], None] | None = None,
    ) -> Call:
        """One decision (``"acquire"`` or ``"record"``) as a call to send with others (see ``reply_of``)."""
        args = [
            op,
            settings.fail_max,
            settings.reset_timeout,
            settings.half_open_calls,
            settings.lease,
            settings.failure_rate or 0,
            settings.window,
            settings.min_calls,
            settings.probe,
            generation,
            outcome,
            token,
        ]
        return Call(self.client, self._script, self.keys(name), args, then=then)

    def acquire(self, name: str, settings: Settings, token: str) -> Reply:
        return reply_of(self.call(name, settings, "acquire", token=token).run())

    def record(self, name: str, settings: Settings, generation: int, outcome: str, token: str) -> Reply:
        call = self.call(name, settings, "record", generation=generation, outcome=outcome, token=token)
        return reply_of(call.run())


def reply_of(reply: Any) -> Reply:
    """The ``Reply`` in a reply of ``breaker.lua``."""
    admitted, state, gen, retry_at, now, previous, fails = reply
    return Reply(
        admitted=bool(admitted),
        state=_text(state),
        generation=int(gen),
        retry_at=int(retry_at),
        now=int(now),
        previous=_text(previous),
        fails=int(fails),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _State:
    state: str = STATE_CLOSED
    generation: int = 0
    open_until: int = 0
    fails: int = 0
    successes: int = 0
    permits: dict[str, int] | None = None  # token -> lease end
    buckets: dict[int, list[int]] | None = None  # bucket -> [calls, failures]


class MemoryStore:
    """Breaker state for one process: the same state machine as ``breaker.lua``, on the monotonic clock."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _now() -> int:
        return int(time.monotonic() * 1000)

    def generation(self, name: str) -> int:
        """The current generation of breaker ``name`` here."""
        with self._lock:
            state = self._states.get(name)
            return state.generation if state is not None else 0

    def acquire(self, name: str, settings: Settings, token: str) -> Reply:
        with self._lock:
            now = self._now()
            s = self._states.setdefault(name, _State())
            previous = ""
            if s.state == STATE_OPEN and now >= s.open_until:
                previous, s.state, s.successes, s.permits = s.state, STATE_HALF_OPEN, 0, {}
                s.generation += 1
            if s.state == STATE_CLOSED:
                return Reply(True, s.state, s.generation, 0, now, previous, s.fails)
            if s.state == STATE_OPEN:
                return Reply(False, s.state, s.generation, s.open_until, now, previous)
            permits = s.permits if s.permits is not None else {}
            s.permits = {t: end for t, end in permits.items() if end > now}
            if s.successes + len(s.permits) < settings.half_open_calls:
                s.permits[token] = now + settings.lease
                return Reply(True, s.state, s.generation, 0, now, previous)
            return Reply(False, s.state, s.generation, now + settings.probe, now, previous)

    def record(self, name: str, settings: Settings, generation: int, outcome: str, token: str) -> Reply:
        with self._lock:
            now = self._now()
            s = self._states.setdefault(name, _State())
            previous = ""
            if s.permits:
                s.permits.pop(token, None)
            if generation == s.generation:
                if s.state == STATE_CLOSED and outcome != "ignore":
                    s.fails = s.fails + 1 if outcome == "failure" else 0
                    tripped = s.fails >= settings.fail_max
                    if settings.failure_rate:
                        calls, failures = self._window(s, settings, now, outcome == "failure")
                        tripped = tripped or (
                            calls >= settings.min_calls and failures >= settings.failure_rate * calls
                        )
                    if tripped:
                        previous = self._trip(s, settings, now)
                elif s.state == STATE_HALF_OPEN:
                    if outcome == "failure":
                        previous = self._trip(s, settings, now)
                    elif outcome == "success":
                        s.successes += 1
                        if s.successes >= settings.half_open_calls:
                            previous, s.state = s.state, STATE_CLOSED
                            s.generation += 1
                            s.fails = s.successes = 0
                            s.permits, s.buckets, s.open_until = None, None, 0
            retry_at = s.open_until if s.state == STATE_OPEN else 0
            return Reply(False, s.state, s.generation, retry_at, now, previous, s.fails)

    @staticmethod
    def _trip(s: _State, settings: Settings, now: int) -> str:
        previous = s.state
        s.state, s.open_until = STATE_OPEN, now + settings.reset_timeout
        s.generation += 1
        s.fails = s.successes = 0
        s.permits, s.buckets = None, None
        return previous

    @staticmethod
    def _window(s: _State, settings: Settings, now: int, failed: bool) -> tuple[int, int]:
        size = max(1, settings.window // 10)
        current = now // size
        buckets = {b: c for b, c in (s.buckets or {}).items() if b > current - 10}
        counts = buckets.setdefault(current, [0, 0])
        counts[0] += 1
        counts[1] += int(failed)
        s.buckets = buckets
        return sum(c[0] for c in buckets.values()), sum(c[1] for c in buckets.values())
