"""``ResultCache``: serve an actor's result from the cache instead of running it again."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import MiddlewareError

from ..core.delivery import Delivery, Gate, current_delivery
from ..events import record
from ..options import MAX_MS, require_ms, warn_ignored
from ..redis import RedisLike
from .hashing import args_key
from .multilevel import Lookup, MultiLevelCache, PendingLookup

__all__ = ["CacheOptionError", "ResultCache"]

logger = logging.getLogger(__name__)

_WRAPPED = "_turbo_result_cache"


class CacheOptionError(MiddlewareError, ValueError):
    """An actor declares a cache option with a wrong value."""


class _Part:
    """What the cache knows of the message in this delivery."""

    __slots__ = ("actor_name", "error", "hit", "lookup", "pending", "ttl", "value")

    def __init__(self, actor_name: str) -> None:
        self.actor_name = actor_name
        self.hit = False
        self.value: Any = None
        self.pending: PendingLookup | None = None
        self.lookup: Lookup | None = None
        self.ttl: int | None = None
        self.error: Exception | None = None


class ResultCache(Gate):
    """Results of cached actors are served from a ``MultiLevelCache``.

    A message of an actor with ``cache=True`` is looked up before it runs,
    in the same Redis round trip as the other gates' work (``Delivery``).
    On a hit the delivery says so (``RateLimiter`` and ``CircuitBreaker``
    let it through) and the actor's body does not run: the actor returns the
    cached value, so ``Results`` stores it, pipelines continue and
    ``on_success`` callbacks fire exactly as after a real run.  On a miss the
    actor runs and its result is stored.  Identical messages that run at the
    same time - in any thread of any worker process - compute once: the
    others wait for that computation (single-flight) and are hits.
    Exceptions are never cached.  While Redis is unreachable, jobs run with
    the in-process L1 alone; the outage is logged once.

    Actor (and message) options:
      cache(bool): Cache this actor's results.  Default: ``True`` when the
        actor sets ``cache_key`` or ``cache_ttl``, else the middleware's
        ``default`` (``False``).
      cache_key(callable): Called with the actor's arguments, returns the key
        (a str), e.g. ``lambda pdf_bytes, **_: content_hash(pdf_bytes)``.
        Default: the actor's name, ``cache_version`` and a hash of the
        canonical JSON of the arguments.
      cache_ttl(int): Milliseconds a result stays cached.  Default: ``ttl``.
      cache_version(str|int): Part of the default key; bump it when the
        actor's output changes for the same input.

    Parameters:
      redis: A client from ``connect_redis``, a URL, or ``None`` (L1 only).
        Ignored when ``cache`` is given.
      cache(MultiLevelCache): The cache to use; by default one with the
        namespace ``turbo:cache`` on ``redis``.
      ttl(int): Default ``cache_ttl`` in milliseconds (one day).
      default(bool): Whether actors are cached unless they say otherwise.
    """

    def __init__(
        self,
        *,
        redis: RedisLike = None,
        cache: MultiLevelCache | None = None,
        ttl: int = 86_400_000,
        default: bool = False,
    ) -> None:
        self.cache = cache if cache is not None else MultiLevelCache(redis=redis)
        self.ttl = require_ms("ttl", ttl, allow_zero=False, maximum=MAX_MS)
        self.default = bool(default)
        self._declared: dict[str, dict[str, Any]] = {}

    @property
    def actor_options(self) -> set[str]:
        return set(_OPTIONS)

    # Declaration ---------------------------------------------------------------
    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        # Only a MiddlewareError escapes a hook, so bad options fail the declaration loudly.
        try:
            if "cache_ttl" in actor.options:
                _check_ttl(actor.options["cache_ttl"], f"{actor.actor_name}: cache_ttl")
        except ValueError as error:
            raise CacheOptionError(str(error)) from None
        key_fn = actor.options.get("cache_key")
        if key_fn is not None and not callable(key_fn):
            raise CacheOptionError(
                f"{actor.actor_name}: cache_key must be a callable returning a str, got {key_fn!r}"
            )

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        self._declared.pop(actor.actor_name, None)
        if self._declared_cached(actor):
            self._wrap(actor)

    def _declared_cached(self, actor: dramatiq.Actor[Any, Any]) -> bool:
        enabled = actor.options.get("cache")
        if enabled is None:
            return self.default or "cache_key" in actor.options or "cache_ttl" in actor.options
        return bool(enabled)

    def _wrap(self, actor: dramatiq.Actor[Any, Any]) -> None:
        """Let ``actor`` return a hit without running its body (done once per actor)."""
        fn = actor.fn
        if getattr(fn, _WRAPPED, None) is self:
            return
        cache, actor_name = self, actor.actor_name

        @functools.wraps(fn)
        def cached_fn(*args: Any, **kwargs: Any) -> Any:
            delivery = current_delivery()
            part: _Part | None = delivery.parts.get(cache) if delivery is not None else None
            if part is not None and part.actor_name == actor_name:
                if part.error is not None:
                    raise part.error
                if part.hit:
                    # Served once: a nested call of the same actor runs for real.
                    part.hit = False
                    return part.value
            return fn(*args, **kwargs)

        setattr(cached_fn, _WRAPPED, self)
        actor.fn = cached_fn

    # The trip --------------------------------------------------------------------
    def plan(self, broker: dramatiq.Broker, message: Any, delivery: Delivery) -> None:
        options = self._options(broker, message)
        if not self._enabled(options):
            return
        part = _Part(message.actor_name)
        delivery.join(self, part)
        # A message option may turn the cache on for an actor declared without it.
        with contextlib.suppress(ActorNotFound):
            self._wrap(broker.get_actor(message.actor_name))
        try:
            key = self._key(message, options)
            part.ttl = self._message_ttl(message, options)
        except Exception as error:
            # A wrong cache_key or option (or a cache_key that raises, such as
            # a KeyError on the message's arguments) fails the message with
            # that error instead of running it uncached.
            part.error = error
            return
        part.pending = self.cache.prepare(key)
        if part.pending.call is None:
            # Answered here (an L1 hit, or this process's own computation):
            # the gates after this one know before they plan any Redis work.
            self.settle(broker, message, delivery, part)
        else:
            delivery.before(part.pending.call)

    def settle(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, part: _Part) -> None:
        if part.pending is None or part.lookup is not None or part.hit:
            return
        lookup = part.pending.resume()
        if lookup.waited is not None:
            record("cache.wait", outcome=lookup.waited)
        if lookup.found:
            part.hit = True
            part.value = lookup.value
            delivery.cache_hit = True
            record("cache.hit", level=lookup.level)
        else:
            part.lookup = lookup
            record("cache.miss")

    def finish(
        self,
        broker: dramatiq.Broker,
        message: Any,
        delivery: Delivery,
        part: _Part,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        lookup = part.lookup
        if lookup is None:
            if part.pending is not None:
                part.pending.abandon(send=delivery.after)  # never resumed: a gate before it failed
            return
        if exception is not None or message.failed:
            lookup.abandon(send=delivery.after)
            return
        try:
            lookup.complete(result, part.ttl, send=delivery.after)
        except TypeError as error:
            # The message's id, not the message: its str() shows its arguments.
            logger.warning(
                "Result of %s (message %s) not cached: %s", message.actor_name, message.message_id, error
            )
            return
        record("cache.store")

    def abort(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, part: _Part) -> None:
        # Skipped (deferred by a later gate, too old, ...): nothing computed, let waiters try.
        if part.lookup is not None:
            part.lookup.abandon(send=delivery.after)
        elif part.pending is not None:
            part.pending.abandon(send=delivery.after)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        super().after_worker_shutdown(broker, worker)
        # After, not before: messages still running at shutdown keep their
        # leases renewed until the worker has let them finish.
        self.cache.close()

    # Helpers ---------------------------------------------------------------------
    def _options(self, broker: dramatiq.Broker, message: Any) -> dict[str, Any]:
        """The cache options of ``message``: its own over its actor's (read once per actor)."""
        name = message.actor_name
        declared = self._declared.get(name)
        if declared is None:
            try:
                actor_options = broker.get_actor(name).options
            except ActorNotFound:
                return {}  # not declared in this process (yet): nothing to remember
            declared = self._declared[name] = {k: actor_options[k] for k in _OPTIONS if k in actor_options}
        options = message.options
        if options.keys().isdisjoint(_OPTIONS):
            return declared
        merged = dict(declared)
        for name in _OPTIONS:
            if name in options:
                self._take_message_option(message, merged, name, options[name])
        return merged

    def _take_message_option(self, message: Any, merged: dict[str, Any], name: str, value: Any) -> None:
        """Let the message's own ``name`` override the actor's, unless it is malformed.

        The message's options come from its sender, unchecked: a malformed
        value is ignored with a warning and the actor's (checked) one stays.
        ``None`` means "not set".

        Parameters:
          message: The message being processed.
          merged(dict): The options so far (the actor's); updated in place.
          name(str): One of the cache's options.
          value: The message's value of it.
        """
        if value is None:
            return
        try:
            merged[name] = _MESSAGE_CHECKS[name](value)
        except (TypeError, ValueError) as error:
            # What applies instead: the actor's setting, else the middleware's default.
            defaults = {"cache": self.default, "cache_ttl": self.ttl}
            warn_ignored(message, name, value, error, merged.get(name, defaults.get(name)))

    def _enabled(self, options: dict[str, Any]) -> bool:
        enabled = options.get("cache")
        if enabled is None:
            return self.default or any(options.get(name) is not None for name in ("cache_key", "cache_ttl"))
        return bool(enabled)

    @staticmethod
    def _key(message: Any, options: dict[str, Any]) -> str:
        key_fn: Callable[..., Any] | None = options.get("cache_key")
        if key_fn is None:
            return args_key(message.actor_name, message.args, message.kwargs, options.get("cache_version"))
        if not callable(key_fn):
            raise ValueError(
                f"{message.actor_name}: cache_key must be a callable returning a str, got {key_fn!r}"
            )
        key = key_fn(*message.args, **message.kwargs)
        if not isinstance(key, str) or not key:
            raise TypeError(f"{message.actor_name}: cache_key must return a non-empty str, got {key!r}")
        return f"{message.actor_name}:{key}"

    def _message_ttl(self, message: Any, options: dict[str, Any]) -> int:
        ttl = options.get("cache_ttl", self.ttl)
        return _check_ttl(ttl, f"{message.actor_name}: cache_ttl")


#: The options a message (or its actor) sets the cache with.
_OPTIONS = ("cache", "cache_key", "cache_ttl", "cache_version")

#: The longest ``cache_version`` a message may carry: it becomes part of every key.
_MAX_VERSION = 256


def _check_ttl(value: Any, name: str = "cache_ttl") -> int:
    return require_ms(name, value, allow_zero=False, maximum=MAX_MS)


def _check_enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"cache must be True or False, got {type(value).__name__}")
    return value


def _check_key_fn(value: Any) -> Any:
    # A message's options are JSON once sent: a function never survives the trip.
    if not callable(value):
        raise TypeError("cache_key must be a callable returning a str")
    return value


def _check_version(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"cache_version must be a str or an int, got {type(value).__name__}")
    if len(str(value)) > _MAX_VERSION:
        raise ValueError(f"cache_version must be at most {_MAX_VERSION} characters long")
    return value


#: How each option a message carries is checked before it overrides the actor's.
_MESSAGE_CHECKS: dict[str, Callable[[Any], Any]] = {
    "cache": _check_enabled,
    "cache_key": _check_key_fn,
    "cache_ttl": _check_ttl,
    "cache_version": _check_version,
}
