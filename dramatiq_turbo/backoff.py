"""``Backoff``: Dramatiq's ``Retries`` with jitter, server hints and non-retryable errors.

Dramatiq's ``Retries`` has three habits this middleware replaces:

* ``Retries(min_backoff=0)`` silently becomes 15,000 ms (its constructor
  uses ``or``); here 0 is 0 and every duration is checked with
  ``require_ms``.
* Its delay is ``min_backoff * 2^n * U(1, 2)``, and once that passes the cap
  it waits ``max_backoff * U(0.5, 1)``, never the cap itself and never less
  than half of it.  Here the delay follows one of the jitter strategies
  measured in AWS's "Exponential Backoff and Jitter" (``full`` by default),
  and the cap is the cap.
* It retries a ``400 Bad Request`` twenty times and ignores a server's
  ``Retry-After``.  Here an exception says whether it is worth retrying
  (``retryable``), HTTP errors get HTTP semantics, and server hints set a
  lower bound on the delay.

Deferrals (``dramatiq_turbo.defer``) are skips, not failures: they never reach
this middleware, so they never consume a retry.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound, Retry
from dramatiq.middleware import Middleware

from .core.deadletter import FAILURE_OPTION, dead_letter, store_failure_after_ack
from .events import record
from .options import OptionError, message_option, require_ms, warn_ignored

__all__ = [
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MIN_BACKOFF",
    "FAILURE_OPTION",
    "JITTER",
    "Backoff",
    "compute_delay",
    "is_retryable",
    "parse_retry_after",
    "retry_hint",
]

logger = logging.getLogger(__name__)
#: Dramatiq's ``Retries`` logs its "Aborting" and "Retries exceeded" lines
#: here; alerts match the logger's name as well as the text, so ours do too.
retries_logger = logging.getLogger("dramatiq.middleware.retries.Retries")

#: The guide's policy: ``min(1000 * 2^n, 60000)`` ms.
DEFAULT_MIN_BACKOFF = 1_000
DEFAULT_MAX_BACKOFF = 60_000

#: Brokers refuse delays of 7 days or more.
_BROKER_MAX_DELAY = 7 * 24 * 3600 * 1000 - 1

#: The option keeping the last delay, which ``decorrelated`` jitter grows from.
_LAST_DELAY_OPTION = "turbo_backoff_delay"

#: HTTP statuses that are client errors yet worth retrying.
_RETRYABLE_4XX = frozenset({408, 429})
#: HTTP statuses whose ``Retry-After`` header is a hint to honour.
_HINTED_STATUSES = frozenset({429, 503})

#: A jitter strategy: ``(exponential, base, cap, previous, rng) -> delay`` in ms,
#: where ``exponential`` is ``min(cap, base * 2^n)`` and ``previous`` is the
#: last delay used for the message (``base`` before the first retry).
JitterStrategy = Callable[[float, float, float, float, random.Random], float]


def _no_jitter(exponential: float, base: float, cap: float, previous: float, rng: random.Random) -> float:
    return exponential


def _full_jitter(exponential: float, base: float, cap: float, previous: float, rng: random.Random) -> float:
    # Spreads contending clients over the whole window: fewest calls in AWS's measurements.
    return rng.uniform(0, exponential)


def _bounded_jitter(
    exponential: float, base: float, cap: float, previous: float, rng: random.Random
) -> float:
    # Full jitter above the base: spread out, yet never sooner than min_backoff,
    # which is what min_backoff means to Dramatiq's Retries and its users.
    return rng.uniform(base, max(base, exponential))


def _equal_jitter(exponential: float, base: float, cap: float, previous: float, rng: random.Random) -> float:
    # Keeps at least half of the exponential delay.
    return exponential / 2 + rng.uniform(0, exponential / 2)


def _decorrelated_jitter(
    exponential: float, base: float, cap: float, previous: float, rng: random.Random
) -> float:
    # Grows from the previous delay instead of the attempt number.
    return min(cap, rng.uniform(base, max(base, previous * 3)))


#: Jitter strategies by name; ``None`` means plain exponential backoff.
JITTER: dict[str | None, JitterStrategy] = {
    None: _no_jitter,
    "bounded": _bounded_jitter,
    "full": _full_jitter,
    "equal": _equal_jitter,
    "decorrelated": _decorrelated_jitter,
}


def _jitter_strategy(name: Any) -> JitterStrategy:
    try:
        return JITTER[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(k) for k in JITTER)
        raise ValueError(f"jitter must be one of {known}, got {name!r}") from None


def compute_delay(
    retries: int,
    *,
    min_backoff: int = DEFAULT_MIN_BACKOFF,
    max_backoff: int = DEFAULT_MAX_BACKOFF,
    jitter: str | None = "bounded",
    previous: int | None = None,
    rng: random.Random | None = None,
) -> int:
    """The delay in ms before retry number ``retries + 1``, before server hints.

    Parameters:
      retries(int): How many retries already happened (0 before the first).
      min_backoff(int): The base delay: the exponential delay is
        ``min(max_backoff, min_backoff * 2^retries)``.
      max_backoff(int): The cap; no delay exceeds it.
      jitter(str): A key of ``JITTER``: ``"bounded"`` (uniform between
        ``min_backoff`` and the exponential delay), ``"full"`` (from 0),
        ``"equal"``, ``"decorrelated"`` or ``None``.
      previous(int): The previous delay, for ``"decorrelated"``.
      rng(random.Random): The random source (seed it in tests).
    """
    strategy = _jitter_strategy(jitter)
    base, cap = float(min_backoff), float(max_backoff)
    # 2^n overflows floats far beyond any cap: stop growing once it is reached.
    exponential = cap if retries >= 64 else min(cap, base * 2**retries)
    delay = strategy(exponential, base, cap, float(base if previous is None else previous), rng or random)  # type: ignore[arg-type]
    return max(0, min(int(delay), max_backoff))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> int | None:
    """An HTTP ``Retry-After`` header in ms: delay-seconds or an HTTP date; ``None`` if absent or invalid.

    A date in the past gives 0.  A date is compared with this host's clock:
    it is the server's absolute time, so no other clock can help.
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    if text.isdigit():
        return int(text) * 1000
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0, int(seconds * 1000))


def _http_status(exception: BaseException) -> tuple[int | None, Any]:
    response = getattr(exception, "response", None)
    status = getattr(response, "status_code", None)
    if response is not None and isinstance(status, int) and hasattr(response, "headers"):
        return status, response.headers
    return None, None


def retry_hint(exception: BaseException) -> int | None:
    """The server's hint, in ms, of how long to wait before trying again; ``None`` when there is none.

    Read, in order: ``dramatiq.Retry(delay=...)``, an ``retry_after``
    attribute (int ms), and a requests-style ``response`` with status 429
    or 503 and a ``Retry-After`` header.
    """
    if isinstance(exception, Retry) and exception.delay is not None:
        return int(exception.delay)
    hint = getattr(exception, "retry_after", None)
    if isinstance(hint, int) and not isinstance(hint, bool) and hint >= 0:
        return hint
    status, headers = _http_status(exception)
    if status in _HINTED_STATUSES and headers is not None:
        return parse_retry_after(headers.get("Retry-After"))
    return None


def is_retryable(exception: BaseException) -> tuple[bool, str]:
    """Whether ``exception`` is worth retrying, and why not.

    An exception's own ``retryable`` attribute (bool) decides first; then an
    HTTP response: client errors (4xx) other than 408 and 429 are the
    request's fault, so trying again cannot help.  Everything else is
    retryable.
    """
    retryable = getattr(exception, "retryable", None)
    if isinstance(retryable, bool):
        return retryable, "" if retryable else f"{type(exception).__name__} is not retryable"
    status, _ = _http_status(exception)
    if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
        return False, f"HTTP {status} is a client error"
    return True, ""


class Backoff(Middleware):
    """Retries failed messages with capped exponential backoff and jitter.

    It replaces ``dramatiq.middleware.Retries`` (``install()`` swaps them) and
    reads the same actor options, so existing actors keep working:
    ``max_retries``, ``min_backoff``, ``max_backoff``, ``retry_when``,
    ``throws`` and ``on_retry_exhausted``; plus ``jitter`` and ``backoff``.

    The delay before retry ``n + 1`` is the jitter strategy applied to
    ``min(max_backoff, min_backoff * 2^n)``, or ``backoff(n, exception)`` when
    that option is set.  A server hint (``dramatiq.Retry(delay=...)``, an
    exception's ``retry_after`` in ms, or ``Retry-After`` on an HTTP 429/503
    response) raises it: the delay is ``min(max_backoff, max(hint, computed))``.
    A delay the actor asks for itself, ``dramatiq.Retry(delay=...)``, is the
    delay, as with ``Retries`` (a polling loop of ``Retry(delay=1)`` polls).

    A message whose exception is not retryable (``retryable = False``, an HTTP
    4xx other than 408/429, or one of ``throws``) fails at once.  Every message
    that is given up keeps the reason in its ``turbo_failure`` option
    (``{"reason", "error", "detail", "retries"}``), so the dead-letter queue
    says why: ``RedisBroker``'s stored message is rewritten before the nack
    moves it, ``StubBroker``'s dead letters hold it, and on
    ``RabbitmqBroker``, whose nack can only dead-letter the body it
    delivered, the updated message is published to ``<queue>.XQ`` (confirmed)
    and the delivery acked, the failure then stored for ``Results`` as a nack
    would have.

    Parameters:
      max_retries(int): Retries before giving up; ``None`` for no limit.
      min_backoff(int): The base delay in ms (1,000).  0 is honoured.
      max_backoff(int): The cap in ms (60,000).
      jitter(str): ``"bounded"`` (default: uniform between ``min_backoff``
        and the exponential delay, so no retry comes sooner than
        ``min_backoff``, as with Dramatiq's ``Retries``), ``"full"`` (from 0:
        fewest calls under contention, but a retry may come before
        ``min_backoff``), ``"equal"``, ``"decorrelated"`` or ``None``.
      backoff(Callable[[int, BaseException], int]): Computes the delay in ms
        from the retry count and the exception, replacing the exponential
        formula and jitter (hints and the cap still apply).
      retry_when(Callable[[int, BaseException], bool]): Decides whether to
        retry, instead of ``max_retries``, as in ``Retries``.
      seed(int): Seeds this middleware's random source (for tests).
    """

    def __init__(
        self,
        *,
        max_retries: int | None = 20,
        min_backoff: int = DEFAULT_MIN_BACKOFF,
        max_backoff: int = DEFAULT_MAX_BACKOFF,
        jitter: str | None = "bounded",
        backoff: Callable[[int, BaseException], int] | None = None,
        retry_when: Callable[[int, BaseException], bool] | None = None,
        seed: int | None = None,
    ) -> None:
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)):
            raise ValueError(f"max_retries must be an int or None, got {max_retries!r}")
        self.max_retries = max_retries
        self.min_backoff = require_ms("min_backoff", min_backoff)
        self.max_backoff = min(require_ms("max_backoff", max_backoff), _BROKER_MAX_DELAY)
        _jitter_strategy(jitter)
        self.jitter = jitter
        self.backoff = backoff
        self.retry_when = retry_when
        self.random = random.Random(seed)

    @property
    def actor_options(self) -> set[str]:
        return {
            "max_retries",
            "min_backoff",
            "max_backoff",
            "retry_when",
            "throws",
            "on_retry_exhausted",
            "jitter",
            "backoff",
        }

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        # Report a bad option when the actor is declared, not at its first failure.
        options = actor.options
        try:
            for name in ("min_backoff", "max_backoff"):
                if name in options:
                    require_ms(name, options[name])
            if "jitter" in options:
                _jitter_strategy(options["jitter"])
            if options.get("backoff") is not None and not callable(options["backoff"]):
                raise ValueError(
                    f"backoff must be a callable (retries, exception) -> ms, got {options['backoff']!r}"
                )
        except ValueError as error:
            raise OptionError(f"actor {actor.actor_name!r}: {error}") from None

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        # Dramatiq's worker calls isinstance(error, throws) with the message's
        # own throws when the actor fails: one that is not exception classes
        # would raise there and kill the worker thread.
        throws = message.options.get("throws")
        if throws is not None:
            try:
                _check_throws(throws)
            except TypeError as error:
                try:
                    fallback = broker.get_actor(message.actor_name).options.get("throws")
                except ActorNotFound:
                    fallback = None
                warn_ignored(message, "throws", throws, error, fallback)
                del message.options["throws"]

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return

        def option(name: str, default: Any) -> Any:
            # Set by whoever sent the message: a bad value is ignored (with a warning), not fatal.
            return message_option(broker, message, name, default, check=_MESSAGE_CHECKS.get(name, _as_is))

        retries = option("retries", 0)
        message.options["retries"] = retries
        throws = option("throws", None)
        if throws and isinstance(exception, throws):
            # Dramatiq's own line first: people alert on it.
            retries_logger.info("Aborting message %r.", message.message_id)
            self._give_up(broker, message, exception, f"{type(exception).__name__} is in throws", retries)
            return
        retryable, why_not = is_retryable(exception)
        if not retryable:
            self._give_up(broker, message, exception, why_not, retries)
            return

        message.options["retries"] = retries + 1
        message.options["traceback"] = traceback.format_exc(limit=30)
        message.options["requeue_timestamp"] = int(time.time() * 1000)

        max_retries = option("max_retries", self.max_retries)
        retry_when = option("retry_when", self.retry_when)
        if retry_when is not None:
            exhausted = not retry_when(retries, exception)
        else:
            exhausted = max_retries is not None and retries >= max_retries
        if exhausted:
            self._give_up(broker, message, exception, "retries exhausted", retries, max_retries)
            return
        self._retry(broker, message, exception, retries, option)

    def _retry(
        self,
        broker: dramatiq.Broker,
        message: Any,
        exception: BaseException,
        retries: int,
        option: Callable[[str, Any], Any],
    ) -> None:
        """Enqueue the message again after its delay; dead-letter it if even that fails."""
        try:
            delay = self._delay(message, exception, retries, option)
            message.options[_LAST_DELAY_OPTION] = delay
            logger.info("Retrying message %r in %d ms (retry %d).", message.message_id, delay, retries + 1)
            record("retry", reason=type(exception).__name__, delay_ms=delay, retries=retries + 1)
            broker.enqueue(message, delay=delay)
        except Exception as error:
            # A bad backoff option (a float from backoff(), say) or a failed
            # enqueue: Dramatiq would swallow this and ack the message, so
            # dead-letter it with the reason instead of losing it.
            logger.exception("Could not retry message %r.", message.message_id)
            self._give_up(
                broker, message, exception, f"retry failed: {type(error).__name__}: {error}"[:300], retries
            )

    def after_ack(self, broker: dramatiq.Broker, message: Any) -> None:
        store_failure_after_ack(broker, message)

    def _delay(
        self, message: Any, exception: BaseException, retries: int, option: Callable[[str, Any], Any]
    ) -> int:
        max_backoff = min(
            require_ms("max_backoff", option("max_backoff", self.max_backoff)), _BROKER_MAX_DELAY
        )
        if isinstance(exception, Retry) and exception.delay is not None:
            # Asked for by the actor: exactly this, not a floor under a backoff.
            return min(require_ms("Retry(delay=...)", int(exception.delay)), _BROKER_MAX_DELAY)
        custom = option("backoff", self.backoff)
        if custom is not None:
            computed = require_ms("backoff()", custom(retries, exception))
        else:
            computed = compute_delay(
                retries,
                min_backoff=require_ms("min_backoff", option("min_backoff", self.min_backoff)),
                max_backoff=max_backoff,
                jitter=option("jitter", self.jitter),
                previous=message.options.get(_LAST_DELAY_OPTION),
                rng=self.random,
            )
        hint = retry_hint(exception)
        delay = computed if hint is None else max(hint, computed)
        return min(delay, max_backoff)

    def _give_up(
        self,
        broker: dramatiq.Broker,
        message: Any,
        exception: BaseException,
        reason: str,
        retries: int,
        max_retries: int | None = None,
    ) -> None:
        failure = {
            "reason": reason,
            "error": type(exception).__name__,
            "detail": str(exception)[:500],
            "retries": retries,
        }
        if reason == "retries exhausted":
            retries_logger.warning("Retries exceeded for message %r.", message.message_id)
        else:
            logger.info("Giving up message %r at once: %s.", message.message_id, reason)
        record("giveup", reason="exhausted" if reason == "retries exhausted" else "not_retryable")
        dead_letter(broker, message, exception, failure)
        if reason != "retries exhausted":
            return
        target = message.options.get("on_retry_exhausted")
        if target is None:
            try:
                target = broker.get_actor(message.actor_name).options.get("on_retry_exhausted")
            except ActorNotFound:
                target = None
        if target:
            broker.get_actor(target).send(message.asdict(), {"retries": retries, "max_retries": max_retries})


def _as_is(value: Any) -> Any:
    return value


def _check_retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be an int >= 0, got {value!r}")
    return value


def _check_max_retries(value: Any) -> int | None:
    return None if value is None else _check_retries(value)


def _check_callable(value: Any) -> Any:
    # A message's options travel as JSON, so a callable can only be set in
    # this process (by a middleware or a test); anything else is a mistake.
    if value is not None and not callable(value):
        raise TypeError(f"must be a callable, got {type(value).__name__}")
    return value


def _check_throws(value: Any) -> Any:
    kinds = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds):
        raise TypeError(f"must be an exception class or a tuple of them, got {type(value).__name__}")
    return value


#: How Backoff checks a message's own value of each option it reads (the
#: actor's values are checked when it is declared).
_MESSAGE_CHECKS: dict[str, Callable[[Any], Any]] = {
    "retries": _check_retries,
    "max_retries": _check_max_retries,
    "retry_when": _check_callable,
    "backoff": _check_callable,
    "throws": _check_throws,
}
