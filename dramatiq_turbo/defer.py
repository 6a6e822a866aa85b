"""Deferral: run a message later without failing, retrying or answering it.

``RateLimiter`` (no slot free) and ``CircuitBreaker`` (circuit open) both
decide, before an actor runs, that its message must wait.  They share this one
mechanism, which Dramatiq has no name for:

* the same message (same ``message_id``, args, options and trace context) is
  enqueued again with a delay, its ``turbo_deferrals`` option counting how
  often this happened;
* the current delivery is skipped with ``SkipMessage``, which acks it; its
  ``store_results`` option is switched off first, so the ``Results``
  middleware does not store ``None`` for a caller that waits on the real
  result;
* no retry is consumed (``retries`` is untouched), no callback fires and no
  pipeline continues: those happen once, when the message finally runs.

A deferral never travels as an exception to ``after_process_message``, where
``Callbacks`` would fire ``on_failure`` and ``Retries`` would count it.
"""

from __future__ import annotations

import random
from typing import Any, NoReturn

import dramatiq
from dramatiq.middleware import MiddlewareError, SkipMessage

from .events import record
from .options import require_ms, warn_ignored

__all__ = ["DEFERRALS_OPTION", "DeferralFailed", "Deferred", "defer", "deferral_count"]

#: The message option counting how often a message was deferred.
DEFERRALS_OPTION = "turbo_deferrals"

# Dramatiq brokers refuse delays of 7 days or more.
_MAX_DELAY = 7 * 24 * 3600 * 1000 - 1


class Deferred(SkipMessage):
    """The current delivery was skipped because the message was re-enqueued for later.

    Parameters:
      reason(str): Who deferred it and why, such as ``"rate_limit"``.
      delay(int): The delay, in milliseconds, the message was enqueued with.
    """

    def __init__(self, reason: str, delay: int) -> None:
        super().__init__(f"deferred by {reason} for {delay} ms")
        self.reason = reason
        self.delay = delay


class DeferralFailed(MiddlewareError):
    """The message could not be enqueued again, so it was not skipped.

    It then fails like an exception from the actor, so ``Retries``/``Backoff``
    retry it and nothing is lost.
    """


def deferral_count(message: Any) -> int:
    """How many times ``message`` has been deferred so far.

    The count travels in the message, so its sender may have put anything
    there: a value that is not a non-negative int counts as 0 (with a
    warning), and a huge one is taken as it is.  Either way the message is
    still deferred; the count only grows the delay of the next deferral.

    Parameters:
      message: The message (or its proxy).
    """
    count = message.options.get(DEFERRALS_OPTION, 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        warn_ignored(message, DEFERRALS_OPTION, count, ValueError("not a count"), 0)
        return 0
    return count


def defer(broker: dramatiq.Broker, message: Any, *, delay: int, reason: str, jitter: int = 0) -> NoReturn:
    """Enqueue ``message`` again after ``delay`` ms (plus up to ``jitter`` ms) and skip this delivery.

    Call it from a ``before_process_message`` hook; it always raises.

    Parameters:
      broker(dramatiq.Broker): The broker the message came from.
      message(dramatiq.MessageProxy): The message being processed.
      delay(int): Milliseconds to wait before the message may run again.
      reason(str): A short, low-cardinality reason (``"rate_limit"``,
        ``"circuit_open"``), kept in the message's ``turbo_deferred_by`` option.
      jitter(int): Up to this many milliseconds are added at random, so that
        messages deferred together do not all come back in the same instant.

    Raises:
      Deferred: after the message was enqueued again (a ``SkipMessage``).
      DeferralFailed: when the broker refused the new enqueue.
    """
    require_ms("delay", delay)
    require_ms("jitter", jitter)
    total = min(delay + (random.randint(0, jitter) if jitter else 0), _MAX_DELAY)
    later = message.copy(
        options={DEFERRALS_OPTION: deferral_count(message) + 1, "turbo_deferred_by": reason},
    )
    try:
        # No delay means no trip through the broker's delay queue (one enqueue, not two).
        broker.enqueue(later, delay=total or None)
    except Exception as error:
        raise DeferralFailed(f"could not defer message {message.message_id}: {error}") from error
    # Only now that the copy is safe: the skipped delivery must not store a
    # result (Results would store None for it), the copy keeps the original
    # setting because it was made before this line.
    message.options["store_results"] = False
    record("defer", reason=reason, delay_ms=total)
    raise Deferred(reason, total)
