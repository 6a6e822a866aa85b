"""What one ``rate_limit`` option means: a validated ``Rule``.

The option is written by users in two shapes, ``(max, duration)`` or a dict,
and is checked once, when the actor is declared, so a typo fails at import
time instead of on the first message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dramatiq.middleware import MiddlewareError

from ..options import MAX_MS, require_ms

__all__ = ["DEFAULT_LEASE", "InvalidRateLimit", "KeyFunc", "Rule", "key_budget", "parse_rule"]

#: How long a concurrency slot stays taken without renewal (a dead worker's slot returns after this).
DEFAULT_LEASE = 30_000

#: A function of the message returning the name of the budget it draws from.
KeyFunc = Callable[[Any], str]

_DICT_KEYS = frozenset({"max", "duration", "key", "burst", "concurrency", "lease"})

#: The largest count (``max``, ``burst``, ``concurrency``): far above any real
#: limit, and exact in Lua, whose numbers are doubles.
MAX_COUNT = 10**12


@dataclass(frozen=True)
class Rule:
    """One limit: at most ``max`` starts per ``duration`` ms and/or ``concurrency`` running at once.

    Parameters:
      max(int): Starts allowed in any window of ``duration`` ms; 0 when
        only ``concurrency`` is limited.
      duration(int): The window, in milliseconds.
      key: ``"actor"``, ``"queue"`` or a function of the message returning
        the name of the budget (such as ``f"customer:{id}"``).
      burst(int): Starts allowed back to back; at most ``burst`` starts in any
        ``burst * duration / max`` ms.  Equal to ``max`` (no smoothing) by default.
      concurrency(int): Messages of the key running at once across all
        processes; 0 for no limit.
      lease(int): Milliseconds a concurrency slot survives without renewal.
    """

    max: int = 0
    duration: int = 0
    key: str | KeyFunc = "actor"
    burst: int = 0
    concurrency: int = 0
    lease: int = DEFAULT_LEASE

    @property
    def interval(self) -> float:
        """Milliseconds between starts at the full rate (``duration / max``)."""
        return self.duration / self.max if self.max else 0.0

    @property
    def burst_window(self) -> int:
        """The window, in ms, in which at most ``burst`` starts may happen."""
        if not self.max or self.burst >= self.max:
            return 0
        return math.ceil(self.burst * self.duration / self.max)


class InvalidRateLimit(MiddlewareError, ValueError):
    """A ``rate_limit`` option or ``limits`` entry is malformed.

    A ``ValueError``, and a ``MiddlewareError`` so that Dramatiq lets it out of
    ``before_declare_actor``: declaring the actor fails, naming the problem.
    A message failed with it (its ``key`` function failed on it) is not worth
    a retry (``retryable``): it is dead-lettered with the reason at once.
    """

    retryable = False


def key_budget(name: str) -> str:
    """The budget that key ``name`` draws from.

    One name for both ways of naming a key: a ``rate_limit`` option whose
    ``key`` function returns ``name``, and ``rate_limit(name)`` in actor code.
    """
    return f"key:{name}"


def parse_rule(value: Any, *, where: str = "rate_limit") -> Rule:
    """Turn a ``rate_limit`` option (``(max, duration)`` or a dict) into a ``Rule``.

    Raises:
      InvalidRateLimit: a ``ValueError`` naming ``where`` and the problem.
    """
    try:
        return _parse(value, where)
    except InvalidRateLimit:
        raise
    except ValueError as error:
        raise InvalidRateLimit(str(error)) from None


def _parse(value: Any, where: str) -> Rule:
    if isinstance(value, Rule):
        return value
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise InvalidRateLimit(f"{where} must be (max, duration) or a dict, got {value!r}")
        fields: dict[str, Any] = {"max": value[0], "duration": value[1]}
    elif isinstance(value, Mapping):
        unknown = set(value) - _DICT_KEYS
        if unknown:
            raise InvalidRateLimit(
                f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(_DICT_KEYS)}"
            )
        fields = dict(value)
    else:
        raise InvalidRateLimit(f"{where} must be (max, duration) or a dict, got {value!r}")

    concurrency = _positive_int(f"{where}['concurrency']", fields.get("concurrency", 0), allow_zero=True)
    has_rate = "max" in fields or "duration" in fields
    if has_rate or not concurrency:
        max_ = _positive_int(f"{where} max", fields.get("max"))
        duration = require_ms(f"{where} duration", fields.get("duration"), allow_zero=False, maximum=MAX_MS)
    else:
        max_, duration = 0, 0
    burst = _positive_int(f"{where}['burst']", fields.get("burst", max_), allow_zero=not max_)
    if max_ and burst > max_:
        raise InvalidRateLimit(f"{where}['burst'] must be between 1 and max ({max_}), got {burst}")
    if not max_ and "burst" in fields:
        raise InvalidRateLimit(f"{where}['burst'] needs max and duration")
    lease = require_ms(
        f"{where}['lease']", fields.get("lease", DEFAULT_LEASE), allow_zero=False, maximum=MAX_MS
    )
    key = fields.get("key", "actor")
    if not (key in ("actor", "queue") or callable(key)):
        raise InvalidRateLimit(
            f"{where}['key'] must be 'actor', 'queue' or a function of the message, got {key!r}"
        )
    return Rule(max=max_, duration=duration, key=key, burst=burst, concurrency=concurrency, lease=lease)


def _positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} int, got {value!r}"
        )
    if value > MAX_COUNT:
        raise ValueError(f"{name} must be at most {MAX_COUNT:,}, got {value!r}")
    return value
