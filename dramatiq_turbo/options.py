"""How the suite's middleware read their settings for one message.

A per-message value in ``message.options`` overrides the actor's option,
which overrides the middleware's default, as in Dramatiq's own middleware.

Actor options are checked when the actor is declared, so a mistake fails at
import time (``OptionError``).  A message's options are another matter: they
come from whoever sent the message - another process, an older version of
the code, or someone hostile - and nothing checks them before a worker reads
them.  ``message_option`` reads one such option through a check: a value
that fails it is ignored with a warning naming the option and the message,
and the actor's (checked) setting applies instead, so a bad option never
crashes a worker thread and never costs the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import MiddlewareError

from .redact import redact_text

__all__ = ["MAX_MS", "OptionError", "get_option", "message_option", "require_ms"]

logger = logging.getLogger(__name__)

_MISSING = object()

#: The longest duration a setting that reaches Redis may have: 10^12 ms, about 31 years.
#: Redis refuses expiry times beyond 64-bit milliseconds, and Lua turns numbers
#: above 2^53 into floats that ``PEXPIRE`` rejects: either would look like an outage.
MAX_MS = 10**12

#: How much of a rejected value a warning shows.
_SHOWN = 80


class OptionError(MiddlewareError, ValueError):
    """An actor option has a bad value.

    Raise it from a ``before_declare_actor`` hook: Dramatiq lets only a
    ``MiddlewareError`` escape a ``before_*`` hook, so the mistake stops the
    declaration instead of being logged and ignored.  A message failed with
    it is not worth a retry (``retryable``): its options stay the same.
    """

    retryable = False


def get_option(broker: dramatiq.Broker, message: Any, name: str, default: Any = None) -> Any:
    """The value of option ``name`` for ``message``.

    Parameters:
      broker(dramatiq.Broker): The broker whose actor declared the option.
      message: The message (or its proxy) being processed or enqueued.
      name(str): The option's name, such as ``"cache_ttl"``.
      default: The middleware's default, used when neither the message nor
        the actor sets the option.
    """
    value = message.options.get(name, _MISSING)
    if value is not _MISSING:
        return value
    return _actor_option(broker, message, name, default)


def message_option(
    broker: dramatiq.Broker,
    message: Any,
    name: str,
    default: Any = None,
    *,
    check: Callable[[Any], Any],
) -> Any:
    """``get_option``, with the message's own value checked: a bad one is ignored with a warning.

    Parameters:
      broker(dramatiq.Broker): The broker whose actor declared the option.
      message: The message (or its proxy) being processed.
      name(str): The option's name.
      default: The middleware's default.
      check(callable): Takes the message's value and returns it (or a
        normalized form); raises ``ValueError`` or ``TypeError`` saying why
        it is wrong.  The actor's value and ``default`` are not checked:
        declarations and constructors check those.

    Returns:
      The checked message value; else the actor's option; else ``default``.
    """
    value = message.options.get(name, _MISSING)
    if value is not _MISSING:
        try:
            return check(value)
        except (TypeError, ValueError) as error:
            fallback = _actor_option(broker, message, name, default)
            warn_ignored(message, name, value, error, fallback)
            return fallback
    return _actor_option(broker, message, name, default)


def warn_ignored(message: Any, name: str, value: Any, error: BaseException, fallback: Any) -> None:
    """Log that message option ``name`` was ignored, and what applies instead."""
    shown = redact_text(repr(value))
    if len(shown) > _SHOWN:
        shown = shown[:_SHOWN] + "..."
    logger.warning(
        "Message %s of %s: ignoring its option %s=%s (%s); using %r instead.",
        message.message_id,
        message.actor_name,
        name,
        shown,
        redact_text(str(error))[:200],
        fallback,
    )


def _actor_option(broker: dramatiq.Broker, message: Any, name: str, default: Any) -> Any:
    try:
        actor = broker.get_actor(message.actor_name)
    except ActorNotFound:
        return default
    return actor.options.get(name, default)


def require_ms(name: str, value: Any, *, allow_zero: bool = True, maximum: int | None = None) -> int:
    """Check that ``value`` is a whole number of milliseconds and return it.

    Parameters:
      name(str): What the value is, for the error.
      value: The value to check.
      allow_zero(bool): Whether 0 is allowed.
      maximum(int): The largest allowed value, if any (``MAX_MS`` for
        durations that reach Redis).

    Raises:
      ValueError: naming ``name`` and the bad value, when it is not an
        ``int`` (seconds passed as a float are the usual mistake), is
        negative, or is above ``maximum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int of milliseconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} milliseconds, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:,} milliseconds, got {value!r}")
    return value
