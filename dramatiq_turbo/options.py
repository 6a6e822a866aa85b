"""How the suite's middleware read their settings for one message.

A per-message value in ``message.options`` overrides the actor's option,
which overrides the middleware's default, as in Dramatiq's own middleware.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import MiddlewareError

__all__ = ["OptionError", "get_option", "require_ms"]

_MISSING = object()


class OptionError(MiddlewareError, ValueError):
    """An actor option has a bad value.

    Raise it from a ``before_declare_actor`` hook: Dramatiq lets only a
    ``MiddlewareError`` escape a ``before_*`` hook, so the mistake stops the
    declaration instead of being logged and ignored.
    """


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
    try:
        actor = broker.get_actor(message.actor_name)
    except ActorNotFound:
        return default
    return actor.options.get(name, default)


def require_ms(name: str, value: Any, *, allow_zero: bool = True) -> int:
    """Check that ``value`` is a whole number of milliseconds and return it.

    Raises:
      ValueError: naming ``name`` and the bad value, when it is not an
        ``int`` (seconds passed as a float are the usual mistake) or is
        negative.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int of milliseconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} milliseconds, got {value!r}")
    return value
