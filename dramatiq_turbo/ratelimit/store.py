"""Where limits are counted: one small interface, a Redis and an in-process implementation.

Both run the same algorithm, an exact sliding-window log:

* a start is admitted at time ``now`` only if fewer than ``max`` starts lie
  in ``(now - duration, now]``, so no window of ``duration`` ms ever holds
  more than ``max`` starts;
* a refused caller is told when to come back; return times are handed out
  spaced by ``duration / max`` (the ``horizon``), so waiters return one by one
  and the budget is used without a stampede;
* concurrency slots are leases that expire unless renewed, so a crashed
  process never keeps one.

``RedisLimitStore`` does each attempt in one Lua script timed by Redis
``TIME``: exact across processes and hosts.  Budget names come from users
(a ``key`` function may return any text), so the hash tag holds them
escaped (``hash_key`` escapes them): every key of a budget stays in one cluster slot and
distinct budgets never share a key.  ``LocalLimitStore`` does the
same in memory under a lock, for one process: the fallback when there is no
Redis, and a swap of store rather than an ``if`` in every method.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from ..core.delivery import Call
from ..redis import hash_key, load_script
from .rules import Rule

__all__ = ["CONCURRENCY_POLL", "Decision", "LimitStore", "LocalLimitStore", "RedisLimitStore", "decision_of"]

#: The longest a caller waiting for a concurrency slot sleeps before asking again (ms).
CONCURRENCY_POLL = 100


@dataclass(frozen=True)
class Decision:
    """The answer to one attempt.

    Parameters:
      admitted(bool): The start was counted (and a slot taken, if limited).
      wait(int): When refused, milliseconds until asking again is worthwhile.
      now(float): The store's clock at the attempt (Redis time for Redis), in ms.
      reason(str): ``"rate"`` or ``"concurrency"`` when refused, else ``""``.
    """

    admitted: bool
    wait: int
    now: float
    reason: str = ""


class LimitStore(Protocol):
    """What ``RateLimiter`` needs from a store."""

    def acquire(self, key: str, rule: Rule, token: str, *, max_wait: int = 0) -> Decision:
        """Count a start for ``key`` under ``rule`` (and take a slot), or say how long to wait.

        A refusal whose wait is at most ``max_wait`` ms is the exact time until
        a start leaves the window (the caller waits for it); a longer one is a
        turn among the deferred messages, spaced by the rate.
        """

    def release(self, key: str, token: str, *, refund: bool) -> None:
        """Free ``token``'s concurrency slot; with ``refund`` also remove its start."""

    def renew(self, key: str, tokens: list[str], lease: int) -> int:
        """Extend the leases of ``tokens`` by ``lease`` ms from now; return how many still existed."""


class RedisLimitStore:
    """Limits shared by every process that uses the same Redis database.

    Parameters:
      client(redis.Redis): From ``connect_redis`` (a client that never retries a script).
      namespace(str): Prefix of every key; keys of one budget share a cluster slot.
    """

    def __init__(self, client: redis.Redis, *, namespace: str = "turbo:rl") -> None:
        self.client = client
        self.namespace = namespace
        self._acquire = load_script(client, __package__, "acquire.lua")
        self._release = load_script(client, __package__, "release.lua")
        self._renew = load_script(client, __package__, "renew.lua")

    def keys(self, key: str) -> list[str]:
        """The Redis keys of budget ``key``: its log, horizon and leases."""
        return [hash_key(self.namespace, key, part) for part in ("log", "horizon", "leases")]

    def acquire(self, key: str, rule: Rule, token: str, *, max_wait: int = 0) -> Decision:
        return decision_of(self.acquire_call(key, rule, token, max_wait=max_wait).run())

    def acquire_call(self, key: str, rule: Rule, token: str, *, max_wait: int = 0) -> Call:
        """``acquire`` as a call to send with others; ``decision_of`` reads its reply."""
        args = [
            token,
            rule.max,
            rule.duration,
            rule.burst,
            rule.burst_window,
            rule.concurrency,
            rule.lease,
            repr(rule.interval),
            CONCURRENCY_POLL,
            max_wait,
        ]
        return Call(self.client, self._acquire, self.keys(key), args)

    def release(self, key: str, token: str, *, refund: bool) -> None:
        self.release_call(key, token, refund=refund).run()

    def release_call(
        self, key: str, token: str, *, refund: bool, then: Callable[[Any], None] | None = None
    ) -> Call:
        """``release`` as a call to send with others."""
        log, _, leases = self.keys(key)
        return Call(self.client, self._release, [log, leases], [token, "1" if refund else "0"], then=then)

    def renew(self, key: str, tokens: list[str], lease: int) -> int:
        return int(self._renew(keys=[self.keys(key)[2]], args=[lease, *tokens]))


def decision_of(reply: Any) -> Decision:
    """The ``Decision`` in a reply of ``acquire.lua``."""
    admitted, wait, now, reason = reply
    return Decision(bool(admitted), int(wait), float(now), _text(reason))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _Budget:
    starts: list[float] = field(default_factory=list)  # sorted start times
    tokens: dict[str, float] = field(default_factory=dict)  # token -> start time
    horizon: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)  # token -> expiry


class LocalLimitStore:
    """Limits for this process only, with the same algorithm as ``RedisLimitStore``.

    Thread-safe: one lock guards every budget (attempts are microseconds long).

    Parameters:
      clock: Returns the time in ms; ``time.monotonic`` by default (tests pass a fake).
    """

    def __init__(self, *, clock: object = None) -> None:
        self._clock = clock if callable(clock) else (lambda: time.monotonic() * 1000)
        self._budgets: dict[str, _Budget] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, rule: Rule, token: str, *, max_wait: int = 0) -> Decision:
        with self._lock:
            now = float(self._clock())
            budget = self._budgets.setdefault(key, _Budget())
            if rule.concurrency:
                for held, expiry in list(budget.leases.items()):
                    if expiry <= now:
                        del budget.leases[held]
                if len(budget.leases) >= rule.concurrency:
                    wait = min(min(budget.leases.values()) - now, CONCURRENCY_POLL)
                    return Decision(False, max(1, _ceil(wait)), now, "concurrency")
            if rule.max:
                self._expire(budget, now - rule.duration)
                wait = 0.0
                count = len(budget.starts)
                if count >= rule.max:
                    wait = budget.starts[count - rule.max] + rule.duration - now
                if rule.burst_window:
                    first = bisect.bisect_right(budget.starts, now - rule.burst_window)
                    recent = budget.starts[first:]
                    if len(recent) >= rule.burst:
                        leaving = recent[len(recent) - rule.burst]
                        wait = max(wait, leaving + rule.burst_window - now)
                if 0 < wait <= max_wait:
                    return Decision(False, max(1, _ceil(wait)), now, "rate")
                if wait > 0:
                    target = max(now + wait, budget.horizon)
                    budget.horizon = target + rule.interval
                    return Decision(False, max(1, _ceil(target - now)), now, "rate")
                bisect.insort(budget.starts, now)
                budget.tokens[token] = now
            if rule.concurrency:
                budget.leases[token] = now + rule.lease
            return Decision(True, 0, now)

    @staticmethod
    def _expire(budget: _Budget, cutoff: float) -> None:
        gone = bisect.bisect_right(budget.starts, cutoff)
        if gone:
            del budget.starts[:gone]
            budget.tokens = {t: s for t, s in budget.tokens.items() if s > cutoff}

    def release(self, key: str, token: str, *, refund: bool) -> None:
        with self._lock:
            budget = self._budgets.get(key)
            if budget is None:
                return
            budget.leases.pop(token, None)
            start = budget.tokens.pop(token, None)
            if refund and start is not None:
                index = bisect.bisect_left(budget.starts, start)
                if index < len(budget.starts) and budget.starts[index] == start:
                    del budget.starts[index]

    def renew(self, key: str, tokens: list[str], lease: int) -> int:
        with self._lock:
            budget = self._budgets.get(key)
            if budget is None:
                return 0
            expiry = float(self._clock()) + lease
            renewed = 0
            for token in tokens:
                if token in budget.leases:
                    budget.leases[token] = expiry
                    renewed += 1
            return renewed


def _ceil(value: float) -> int:
    whole = int(value)
    return whole + 1 if value > whole else whole
