"""``ResultCache``: serve an actor's result from the cache instead of running it again."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware, MiddlewareError

from ..events import record
from ..marks import mark_cache_hit
from ..options import get_option, require_ms
from ..redis import RedisLike
from .hashing import args_key
from .multilevel import Lookup, MultiLevelCache

__all__ = ["CacheOptionError", "ResultCache"]

logger = logging.getLogger(__name__)

_WRAPPED = "_turbo_result_cache"


class CacheOptionError(MiddlewareError, ValueError):
    """An actor declares a cache option with a wrong value."""


class _Delivery:
    """This thread's current message, as far as the cache is concerned."""

    __slots__ = ("actor_name", "error", "hit", "lookup", "message_id", "ttl", "value")

    def __init__(self, message_id: str, actor_name: str) -> None:
        self.message_id = message_id
        self.actor_name = actor_name
        self.hit = False
        self.value: Any = None
        self.lookup: Lookup | None = None
        self.ttl: int | None = None
        self.error: Exception | None = None


class ResultCache(Middleware):
    """Results of cached actors are served from a ``MultiLevelCache``.

    A message of an actor with ``cache=True`` is looked up before it runs.
    On a hit the message is marked (``RateLimiter`` and ``CircuitBreaker``
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
        self.ttl = require_ms("ttl", ttl, allow_zero=False)
        self.default = bool(default)
        self._local = threading.local()

    @property
    def actor_options(self) -> set[str]:
        return {"cache", "cache_key", "cache_ttl", "cache_version"}

    # Declaration ---------------------------------------------------------------
    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        # Only a MiddlewareError escapes a hook, so bad options fail the declaration loudly.
        try:
            if "cache_ttl" in actor.options:
                require_ms(f"{actor.actor_name}: cache_ttl", actor.options["cache_ttl"], allow_zero=False)
        except ValueError as error:
            raise CacheOptionError(str(error)) from None
        key_fn = actor.options.get("cache_key")
        if key_fn is not None and not callable(key_fn):
            raise CacheOptionError(
                f"{actor.actor_name}: cache_key must be a callable returning a str, got {key_fn!r}"
            )

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        fn = actor.fn
        if getattr(fn, _WRAPPED, None) is self:
            return
        local = self._local
        actor_name = actor.actor_name

        @functools.wraps(fn)
        def cached_fn(*args: Any, **kwargs: Any) -> Any:
            delivery: _Delivery | None = getattr(local, "delivery", None)
            if delivery is not None and delivery.actor_name == actor_name:
                if delivery.error is not None:
                    raise delivery.error
                if delivery.hit:
                    # Served once: a nested call of the same actor runs for real.
                    delivery.hit = False
                    return delivery.value
            return fn(*args, **kwargs)

        setattr(cached_fn, _WRAPPED, self)
        actor.fn = cached_fn

    # Processing ----------------------------------------------------------------
    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._local.delivery = None
        if not self._enabled(broker, message):
            return
        delivery = _Delivery(message.message_id, message.actor_name)
        self._local.delivery = delivery
        try:
            key = self._key(broker, message)
            delivery.ttl = self._message_ttl(broker, message)
        except Exception as error:
            # A wrong cache_key or option (or a cache_key that raises, such as
            # a KeyError on the message's arguments) fails the message with
            # that error instead of running it uncached.
            delivery.error = error
            return
        lookup = self.cache.begin(key)
        if lookup.waited is not None:
            record("cache.wait", outcome=lookup.waited)
        if lookup.found:
            delivery.hit = True
            delivery.value = lookup.value
            mark_cache_hit(message)
            record("cache.hit", level=lookup.level)
        else:
            delivery.lookup = lookup
            record("cache.miss")

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        delivery = self._take(message)
        if delivery is None or delivery.lookup is None:
            return
        lookup = delivery.lookup
        if exception is not None or message.failed:
            lookup.abandon()
            return
        try:
            lookup.complete(result, delivery.ttl)
        except TypeError as error:
            logger.warning("Result of %s not cached: %s", message, error)
            return
        record("cache.store")

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        # Skipped (deferred by a later gate, too old, ...): nothing computed, let waiters try.
        delivery = self._take(message)
        if delivery is not None and delivery.lookup is not None:
            delivery.lookup.abandon()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        # After, not before: messages still running at shutdown keep their
        # leases renewed until the worker has let them finish.
        self.cache.close()

    # Helpers ---------------------------------------------------------------------
    def _take(self, message: Any) -> _Delivery | None:
        delivery: _Delivery | None = getattr(self._local, "delivery", None)
        self._local.delivery = None
        if delivery is None or delivery.message_id != message.message_id:
            return None
        return delivery

    def _enabled(self, broker: dramatiq.Broker, message: Any) -> bool:
        enabled = get_option(broker, message, "cache", None)
        if enabled is None:
            return (
                self.default
                or get_option(broker, message, "cache_key") is not None
                or get_option(broker, message, "cache_ttl") is not None
            )
        return bool(enabled)

    def _key(self, broker: dramatiq.Broker, message: Any) -> str:
        key_fn: Callable[..., Any] | None = get_option(broker, message, "cache_key")
        if key_fn is None:
            version = get_option(broker, message, "cache_version")
            return args_key(message.actor_name, message.args, message.kwargs, version)
        if not callable(key_fn):
            raise ValueError(
                f"{message.actor_name}: cache_key must be a callable returning a str, got {key_fn!r}"
            )
        key = key_fn(*message.args, **message.kwargs)
        if not isinstance(key, str) or not key:
            raise TypeError(f"{message.actor_name}: cache_key must return a non-empty str, got {key!r}")
        return f"{message.actor_name}:{key}"

    def _message_ttl(self, broker: dramatiq.Broker, message: Any) -> int:
        ttl = get_option(broker, message, "cache_ttl", self.ttl)
        return require_ms(f"{message.actor_name}: cache_ttl", ttl, allow_zero=False)
