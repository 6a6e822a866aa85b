"""``MultiLevelCache``: L1 in the process, L2 in Redis, and single-flight computation."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import redis

from ..core.delivery import Call, send_calls
from ..core.fallback import Fallback
from ..core.tokens import new_token
from ..options import MAX_MS, require_ms
from ..outage import Outage
from ..redis import RedisLike, resolve_redis
from .invalidation import InvalidationListener
from .l1 import MISSING, LocalCache
from .serializers import DEFAULT_MAX_SIZE, Codec, Serializer, UndecodableValue, get_serializer
from .singleflight import DONE, FAILED, Flight, Leases, LocalFlights, RemoteTurn
from .store import NoL2, RedisStore

__all__ = ["Lookup", "MultiLevelCache", "PendingLookup"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_caches: weakref.WeakSet[MultiLevelCache] = weakref.WeakSet()


def _after_fork() -> None:
    for cache in list(_caches):
        cache._after_fork()


os.register_at_fork(after_in_child=_after_fork)


class Lookup:
    """What ``MultiLevelCache.begin`` found for a key.

    Either ``found`` is true and ``value`` is the cached value (``level`` says
    where it came from: ``"l1"`` or ``"l2"``), or it is the caller's turn to
    compute the value and then call ``complete(value)`` - or ``abandon()`` if
    the computation failed, so that waiters stop waiting for it.
    ``waited`` is ``None``, or the outcome of waiting for another caller's
    computation: ``"value"``, ``"failed"`` (it failed; this caller computes)
    or ``"timeout"`` (it took too long; this caller computes too).
    """

    __slots__ = ("_cache", "_done", "_flight", "_token", "found", "key", "level", "value", "waited")

    def __init__(
        self,
        cache: MultiLevelCache,
        key: str,
        *,
        found: bool,
        value: Any = None,
        level: str | None = None,
        waited: str | None = None,
        flight: Flight | None = None,
        token: str = "",
    ) -> None:
        self._cache = cache
        self.key = key
        self.found = found
        self.value = value
        self.level = level
        self.waited = waited
        self._flight = flight
        self._token = token
        self._done = found

    def complete(self, value: Any, ttl: int | None = None, *, send: Send | None = None) -> Any:
        """Store the computed ``value`` (L1 and L2) and hand it to every waiter.

        ``send``, when given, receives the Redis call that stores the value
        and ends the turn, to send it with other calls (``Delivery.after``);
        by default it is sent at once.

        Returns:
          The value as the cache serves it from now on (what the serializer
          gives back: a list for a tuple with JSON), which is also what the
          waiters receive.

        Raises:
          TypeError: when the serializer cannot hold ``value``; the waiters
            are released to compute on their own.
        """
        if self._done:
            return value
        self._done = True
        return self._cache._complete(self.key, value, ttl, self._flight, self._token, send)

    def abandon(self, *, send: Send | None = None) -> None:
        """Give up this turn without a value: nothing is stored, waiters try on their own."""
        if self._done:
            return
        self._done = True
        self._cache._abandon(self.key, self._flight, self._token, send)

    def give_way(self) -> None:
        """Let the computation still running elsewhere finish, instead of computing too.

        For a lookup that waited ``wait_timeout`` in vain (``waited ==
        "timeout"``): the caller does not compute (a worker can defer its
        message and come back for the value, rather than hold a thread while
        it waits).  This process's other waiters stop waiting on this caller
        and look again; the lease of whoever computes is left alone.

        Raises:
          ValueError: when the lookup holds a real turn (it did not time out):
            that one must end with ``complete`` or ``abandon``.
        """
        if self._done:
            return
        if self.waited != "timeout" or self._token:
            raise ValueError("give_way() is for a lookup whose wait timed out; complete or abandon a turn")
        self._done = True
        if self._flight is not None:
            self._cache._flights.fail(self.key, self._flight)


#: Where a lookup hands the Redis call that ends its turn: ``Delivery.after``, say.
Send = Callable[[Call], None]


class PendingLookup:
    """A lookup that went as far as it could without Redis: ``MultiLevelCache.prepare``.

    ``call`` is the Redis call it still needs (``None`` when L1 or another
    thread of this process answered); send it with other calls, or not, and
    ``resume()`` gives the ``Lookup``.  A pending lookup that is given up
    before ``resume`` ends with ``abandon`` so that this process's other
    waiters, and the lease the call may have taken, are let go.
    """

    __slots__ = (
        "_cache",
        "_deadline",
        "_flight",
        "_generation",
        "_lookup",
        "_token",
        "_waited",
        "call",
        "key",
    )

    def __init__(
        self,
        cache: MultiLevelCache,
        key: str,
        *,
        lookup: Lookup | None = None,
        flight: Flight | None = None,
        deadline: float = 0.0,
        waited: str | None = None,
        call: Call | None = None,
        token: str = "",
    ) -> None:
        self._cache = cache
        self.key = key
        self._lookup = lookup
        self._flight = flight
        self._deadline = deadline
        self._waited = waited
        self._generation = cache._invalidations
        self._token = token
        self.call = call

    def resume(self) -> Lookup:
        """The lookup: sends ``call`` first if nobody did."""
        if self._lookup is None:
            call = self.call
            if call is None or not call.sent:
                self._lookup = self._cache._remote_begin(self.key, self._flight, self._deadline, self._waited)
            else:
                self._lookup = self._cache._remote_resume(self, call)
        return self._lookup

    def abandon(self, *, send: Send | None = None) -> None:
        """Give up before ``resume``: release whatever the call took, and this process's waiters."""
        if self._lookup is not None:
            self._lookup.abandon(send=send)
            return
        call = self.call
        took_lease = False
        if call is not None and call.sent and not isinstance(call.reply, BaseException):
            took_lease = int(call.reply[0]) == 2
        self._lookup = Lookup(self._cache, self.key, found=False, flight=self._flight)
        self._cache._abandon(self.key, self._flight, self._token if took_lease else "", send)


class MultiLevelCache:
    """A two-level cache: L1 in the process (TTL + LRU), L2 in Redis (TTL).

    ``get`` looks in L1, then L2, and an L2 hit fills L1.  Values are JSON
    by default; ``get_or_compute`` computes a missing value once however many
    threads and processes ask for it at the same time (single-flight).  With
    ``redis=None``, or while Redis is unreachable, it works on L1 alone; an
    outage is logged once and the cache resumes by itself.

    Parameters:
      redis: A client from ``connect_redis``, a Redis URL, or ``None`` for L1 only.
      l1_maxsize(int): Entries kept in the process; ``0`` disables L1.
      l1_ttl(int): Milliseconds an entry lives in L1 at most (never longer
        than its L2 copy).  Also the longest an L1 entry can be stale while
        this process is cut off from the invalidation channel.
      l2_ttl(int): Milliseconds a value lives in Redis unless ``ttl`` says otherwise.
      namespace(str): The prefix of every Redis key.
      serializer: ``"json"`` (default), ``"pickle"`` (opt-in: unpickling runs
        code) or an object with a one-byte ``tag``, ``dumps`` and ``loads``.
      compress_threshold(int): Encoded values of at least this many bytes
        are stored zlib-compressed; ``0`` never compresses.
      max_value_size(int): The largest encoded value, in bytes, that is
        cached (64 MiB): a larger one is not stored (``TypeError``), and a
        stored value that is larger, or inflates to more, is a miss.  So a
        value written by someone else under the namespace - a zip bomb,
        say - costs at most this much memory to refuse.
      lease_ttl(int): Milliseconds a single-flight lease lives unless its
        holder renews it; waiters take over within this time if it dies.
      wait_timeout(int): Milliseconds a caller waits for another one's
        computation before it computes on its own.
      retry_interval(int): During an outage, milliseconds between attempts
        to reach Redis (calls in between go straight to L1).
    """

    def __init__(
        self,
        *,
        redis: RedisLike = None,
        l1_maxsize: int = 100,
        l1_ttl: int = 60_000,
        l2_ttl: int = 86_400_000,
        namespace: str = "turbo:cache",
        serializer: str | Serializer = "json",
        compress_threshold: int = 4096,
        max_value_size: int = DEFAULT_MAX_SIZE,
        lease_ttl: int = 10_000,
        wait_timeout: int = 120_000,
        retry_interval: int = 1_000,
    ) -> None:
        if isinstance(l1_maxsize, bool) or not isinstance(l1_maxsize, int) or l1_maxsize < 0:
            raise ValueError(f"l1_maxsize must be an int >= 0, got {l1_maxsize!r}")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
        self.l1_ttl = require_ms("l1_ttl", l1_ttl)
        self.l2_ttl = require_ms("l2_ttl", l2_ttl, allow_zero=False, maximum=MAX_MS)
        self.lease_ttl = require_ms("lease_ttl", lease_ttl, allow_zero=False)
        self.wait_timeout = require_ms("wait_timeout", wait_timeout)
        self.retry_interval = require_ms("retry_interval", retry_interval)
        self.namespace = namespace
        self.codec = Codec(
            get_serializer(serializer), compress_threshold=compress_threshold, max_size=max_value_size
        )
        self.l1 = LocalCache(maxsize=l1_maxsize, ttl=self.l1_ttl)
        self._flights = LocalFlights()
        self._client = resolve_redis(redis)
        self._store: RedisStore | None = None
        self._leases: Leases | None = None
        self._listener: InvalidationListener | None = None
        # Bumped by every invalidation this process hears: a value read from
        # L2 before an invalidation must not be kept in L1 after it.
        self._invalidations = 0
        #: L2: Redis, or no L2 at all while Redis is down (or when there is none).
        self.stores: Fallback[RedisStore | NoL2] = Fallback(
            shared=None, local=NoL2(), component="cache", logger=logger, retry_interval=self.retry_interval
        )
        if self._client is not None:
            self._store = RedisStore(self._client, namespace=namespace)
            self._leases = Leases(self._store, lease_ttl=self.lease_ttl)
            self._listener = InvalidationListener(
                self._store,
                drop=self._drop_local,
                reset=self._reset_local,
                retry_interval=self.retry_interval,
            )
            self.stores.shared = self._store
        self._counts = dict.fromkeys(("l1_hits", "l2_hits", "misses", "errors", "computations", "waits"), 0)
        self._counts_lock = threading.Lock()
        _caches.add(self)

    # Public API ------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` from L1, else from L2 (filling L1), else ``default``."""
        value = self.l1.get(key)
        if value is not MISSING:
            return value
        self._check_key(key)
        generation = self._invalidations
        found = self._l2(lambda l2: l2.get(key))
        if found is not None:
            value = self._decode(key, *found, generation)
            if value is not MISSING:
                self._count("l2_hits")
                return value
        self._count("misses")
        return default

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of those ``keys`` that are cached, as a dict; L2 is read in one round trip."""
        keys = list(dict.fromkeys(keys))
        result: dict[str, Any] = {}
        wanted: list[str] = []
        for key in keys:
            self._check_key(key)
            value = self.l1.get(key)
            if value is MISSING:
                wanted.append(key)
            else:
                result[key] = value
        if wanted:
            generation = self._invalidations
            found = self._l2(lambda l2: l2.get_many(wanted))
            for key, entry in zip(wanted, found, strict=True):
                if entry is not None:
                    value = self._decode(key, *entry, generation)
                    if value is not MISSING:
                        result[key] = value
                        self._count("l2_hits")
        self._count("misses", len(keys) - len(result))
        return {key: result[key] for key in keys if key in result}

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` milliseconds (default ``l2_ttl``).

        Raises:
          TypeError: when the serializer cannot hold ``value``.
        """
        self._check_key(key)
        ttl = self._ttl(ttl)
        data, stored = self.codec.encode_and_copy(value)
        self.l1.set(key, stored, ttl)
        self._l2(lambda l2: l2.set(key, data, ttl))

    def set_many(self, items: Mapping[str, Any], ttl: int | None = None) -> None:
        """``set`` for many keys; L2 is written in one round trip."""
        ttl = self._ttl(ttl)
        encoded = []
        copies = []
        for key, value in items.items():
            self._check_key(key)
            data, stored = self.codec.encode_and_copy(value)
            encoded.append((key, data, ttl))
            copies.append((key, stored))
        for key, stored in copies:
            self.l1.set(key, stored, ttl)
        if encoded:
            self._l2(lambda l2: l2.set_many(encoded))

    def delete(self, key: str) -> bool:
        """Remove ``key`` from L2 and from L1 in every process; whether L2 had it.

        Other processes drop their L1 copy when the invalidation message
        reaches them (a few milliseconds); a process cut off from Redis
        keeps serving its copy for at most ``l1_ttl``.
        """
        self._check_key(key)
        self.l1.pop(key)
        return bool(self._l2(lambda l2: l2.delete([key])))

    def get_or_compute(self, key: str, fn: Callable[[], T], ttl: int | None = None) -> T:
        """The cached value of ``key``, or ``fn()`` computed once and cached for ``ttl`` ms.

        Concurrent callers of a missing key - threads here, and other
        processes through Redis - wait for one computation instead of
        repeating it.  If ``fn`` raises, nothing is cached, the exception
        propagates to this caller only, and the waiters compute on their own.
        Every caller, the one that computed included, gets the value as the
        cache stores it (with JSON, a tuple comes back as a list).
        """
        ttl = None if ttl is None else self._ttl(ttl)
        lookup = self.begin(key)
        if lookup.found:
            return lookup.value  # type: ignore[no-any-return]
        try:
            value = fn()
        except BaseException:
            lookup.abandon()
            raise
        return lookup.complete(value, ttl)  # type: ignore[no-any-return]

    def begin(self, key: str, *, wait_timeout: int | None = None) -> Lookup:
        """Find ``key``, waiting for a concurrent computation of it, or get the turn to compute it.

        The two-step form of ``get_or_compute``, for callers (such as the
        ``ResultCache`` middleware) whose computation is not one function
        call.  A ``Lookup`` that is not ``found`` must end with
        ``complete(value)`` or ``abandon()``.
        """
        return self.prepare(key, wait_timeout=wait_timeout).resume()

    def prepare(self, key: str, *, wait_timeout: int | None = None) -> PendingLookup:
        """``begin`` up to its Redis call: L1, then this process's computation of ``key``.

        The returned ``PendingLookup`` holds the Redis call still needed (if
        any), to be sent together with other calls; ``resume()`` then gives
        the ``Lookup``.
        """
        value = self.l1.get(key)
        if value is not MISSING:
            return PendingLookup(self, key, lookup=Lookup(self, key, found=True, value=value, level="l1"))
        self._check_key(key)
        wait_ms = self.wait_timeout if wait_timeout is None else require_ms("wait_timeout", wait_timeout)
        deadline = time.monotonic() + wait_ms / 1000
        waited: str | None = None
        while True:
            flight, leader = self._flights.join(key)
            if not leader:
                state = flight.wait(deadline - time.monotonic())
                if state == DONE:
                    self._count("waits")
                    found = Lookup(self, key, found=True, value=flight.value, level="l1", waited="value")
                    return PendingLookup(self, key, lookup=found)
                if state != FAILED:
                    # Waited long enough: compute without the flight.
                    return PendingLookup(self, key, lookup=self._turn(key, None, "", "timeout"))
                waited = "failed"
                continue
            # Leading this process's flight.  Another one may have just ended.
            value = self.l1.get(key)
            if value is not MISSING:
                self._flights.resolve(key, flight, value)
                found = Lookup(self, key, found=True, value=value, level="l1", waited=waited)
                return PendingLookup(self, key, lookup=found)
            return self._remote_prepare(key, flight, deadline, waited)

    def stats(self) -> dict[str, int]:
        """Counters: ``l1_hits``, ``l2_hits``, ``misses``, ``errors`` (Redis and undecodable values),
        ``computations`` (turns handed out to compute), ``waits`` (values received from another
        caller's computation), ``outages``, and ``l1_size``."""
        with self._counts_lock:
            counts = dict(self._counts)
        counts["l1_hits"] += self.l1.hits
        counts["errors"] += self.outage.errors
        counts["outages"] = self.outage.outages
        counts["l1_size"] = len(self.l1)
        return counts

    def close(self) -> None:
        """Stop the background threads (invalidation listener, lease renewal)."""
        if self._listener is not None:
            self._listener.stop()
        if self._leases is not None:
            self._leases.close()

    # Internals -------------------------------------------------------------
    def _remote_prepare(self, key: str, flight: Flight, deadline: float, waited: str | None) -> PendingLookup:
        leases = self._leases
        if self._usable_store() is None or leases is None:
            return PendingLookup(self, key, lookup=self._turn(key, flight, "", waited))
        token = new_token()
        return PendingLookup(
            self,
            key,
            flight=flight,
            deadline=deadline,
            waited=waited,
            call=leases.begin_call(key, token),
            token=token,
        )

    def _remote_resume(self, pending: PendingLookup, call: Call) -> Lookup:
        """The lookup from the reply of a pending lookup's call, sent by someone else."""
        assert self._leases is not None
        try:
            turn = self._leases.take_turn(pending.key, pending._token, call, deadline=pending._deadline)
        except redis.RedisError as error:
            self._failed(error)
            return self._turn(pending.key, pending._flight, "", pending._waited)
        return self._took_turn(
            pending.key,
            pending._flight,
            pending._deadline,
            pending._waited,
            turn,
            pending._generation,
            sent_at=call.sent_at,
        )

    def _remote_begin(
        self,
        key: str,
        flight: Flight | None,
        deadline: float,
        waited: str | None,
        *,
        skip_value: bool = False,
    ) -> Lookup:
        leases = self._leases
        if self._usable_store() is None or leases is None:
            return self._turn(key, flight, "", waited)
        generation = self._invalidations
        sent_at = time.monotonic()
        try:
            turn = leases.begin(key, deadline=deadline, skip_value=skip_value)
        except redis.RedisError as error:
            self._failed(error)
            return self._turn(key, flight, "", waited)
        return self._took_turn(key, flight, deadline, waited, turn, generation, sent_at=sent_at)

    def _took_turn(
        self,
        key: str,
        flight: Flight | None,
        deadline: float,
        waited: str | None,
        turn: RemoteTurn,
        generation: int,
        *,
        sent_at: float | None = None,
    ) -> Lookup:
        self.outage.succeeded(sent_at)
        if turn.waited:
            waited = "value"
        if turn.kind == "hit":
            assert turn.data is not None
            value = self._decode(key, turn.data, turn.ttl or -1, generation)
            if value is MISSING:
                # Undecodable: take the turn to overwrite it.
                return self._remote_begin(key, flight, deadline, waited, skip_value=True)
            if flight is not None:
                self._flights.resolve(key, flight, value)
            self._count("waits" if turn.waited else "l2_hits")
            return Lookup(self, key, found=True, value=value, level="l2", waited=waited)
        if turn.kind == "timeout":
            return self._turn(key, flight, "", "timeout")
        return self._turn(key, flight, turn.token, None if waited == "value" else waited)

    def _turn(self, key: str, flight: Flight | None, token: str, waited: str | None) -> Lookup:
        self._count("misses")
        self._count("computations")
        return Lookup(self, key, found=False, waited=waited, flight=flight, token=token)

    def _complete(
        self, key: str, value: Any, ttl: int | None, flight: Flight | None, token: str, send: Send | None
    ) -> Any:
        ttl = self.l2_ttl if ttl is None else ttl
        try:
            data, stored = self.codec.encode_and_copy(value)
        except Exception:
            # Whatever the serializer raised, the turn must end: waiters in
            # this process and others would otherwise wait for nothing.
            self._abandon(key, flight, token, send)
            raise
        self.l1.set(key, stored, ttl)
        self._finish_turn(key, token, data, ttl, send)
        if flight is not None:
            self._flights.resolve(key, flight, stored)
        return stored

    def _abandon(self, key: str, flight: Flight | None, token: str, send: Send | None = None) -> None:
        self._finish_turn(key, token, None, None, send)
        if flight is not None:
            self._flights.fail(key, flight)

    def _finish_turn(
        self, key: str, token: str, data: bytes | None, ttl: int | None, send: Send | None
    ) -> None:
        """Store ``data`` (unless ``None``) and end this process's lease on ``key``, if it holds one."""
        leases = self._leases
        if leases is None:
            return
        if self._usable_store() is not None:
            # The local hold ends first: the lease is not renewed past this turn.
            call = leases.finish_call(key, token, data, ttl, then=self._finished)
            if send is None:
                send_calls([call])
            else:
                send(call)
        elif token:
            # Redis failed a moment ago: stop renewing the lease, so it expires
            # and another process can take the turn.
            leases.forget(key)

    def _finished(self, call: Call) -> None:
        if isinstance(call.reply, redis.RedisError):
            self._failed(call.reply)
        else:
            self.outage.succeeded(call.sent_at)

    def _decode(self, key: str, data: bytes, ttl: int, generation: int) -> Any:
        """Decode a value read from L2 and fill L1 with it, unless an invalidation arrived meanwhile.

        ``generation`` is ``_invalidations`` as it was before the read: if a
        write elsewhere was announced since, the value read may already be
        old, so it is returned but not kept in L1 (it would be served for up
        to ``l1_ttl``).
        """
        try:
            value = self.codec.decode(data)
        except UndecodableValue as error:
            self._count("errors")
            logger.warning("Cached value of %r is a miss: %s; it will be overwritten.", key, error)
            return MISSING
        if generation == self._invalidations:
            self.l1.set(key, value, ttl if ttl > 0 else None)
        return value

    @property
    def outage(self) -> Outage:
        return self.stores.outage

    def _l2(self, use: Callable[[RedisStore | NoL2], T]) -> T:
        """``use(l2)`` on Redis, or on no L2 while Redis is down (or when there is none)."""
        if self._listener is not None:
            self._listener.ensure_started()
        return self.stores.run(use)[1]

    def _usable_store(self) -> RedisStore | None:
        """Redis, unless there is none or it failed less than ``retry_interval`` ago."""
        store = self.stores.current()
        if not isinstance(store, RedisStore):
            return None
        if self._listener is not None:
            self._listener.ensure_started()
        return store

    def _failed(self, error: redis.RedisError) -> None:
        self.stores.failed(error)

    def _drop_local(self, keys: list[str]) -> None:
        # Counted first: a reader that read L2 before this must not fill L1 after it.
        self._invalidations += 1
        for key in keys:
            self.l1.pop(key)

    def _reset_local(self) -> None:
        self._invalidations += 1
        self.l1.clear()

    def _ttl(self, ttl: int | None) -> int:
        return self.l2_ttl if ttl is None else require_ms("ttl", ttl, allow_zero=False, maximum=MAX_MS)

    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"a cache key must be a non-empty str, got {key!r}")
        if not key.isascii():
            try:
                key.encode()
            except UnicodeEncodeError:
                # A lone surrogate (JSON can carry one): Redis keys are UTF-8.
                raise ValueError(f"a cache key must be valid Unicode, got {key[:80]!r}") from None

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            with self._counts_lock:
                self._counts[name] += n

    def _after_fork(self) -> None:
        self.l1.after_fork()
        self._flights.after_fork()
        self._counts_lock = threading.Lock()
        if self._store is not None:
            # Each process needs its own origin: invalidations from a sibling
            # forked from the same parent must not look like its own.
            self._store.origin = uuid.uuid4().hex
        if self._leases is not None:
            self._leases.after_fork()
