"""The suite's one shared store: safe Redis clients, keys, server time and Lua scripts.

Every middleware of the suite keeps its shared state (limits, breakers, cache)
in Redis so that all worker processes on all hosts agree.  This module gives
them one way to connect, to name keys, to read the server's clock and to load
their Lua scripts.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from itertools import repeat
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from .packed import execute_packed, execute_transaction

__all__ = [
    "RedisLike",
    "batch_get",
    "batch_set",
    "connect_redis",
    "connect_redis_like",
    "hash_key",
    "load_script",
    "redis_time_ms",
    "resolve_redis",
]

#: What the suite accepts wherever it takes a ``redis`` argument: a client, a URL or ``None``.
RedisLike = redis.Redis | str | None

DEFAULT_SOCKET_TIMEOUT = 5_000
DEFAULT_CONNECT_TIMEOUT = 2_000
DEFAULT_HEALTH_CHECK_INTERVAL = 30_000


def connect_redis(
    url: str,
    *,
    socket_timeout: int = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
    health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL,
    max_connections: int | None = None,
) -> redis.Redis:
    """Create a Redis client with settings that are safe for this suite.

    redis-py retries a command after a connection error or a timeout by
    default.  A timeout does not mean the command did not run: the server may
    have applied an ``INCR`` or a Lua script whose reply was lost, and a retry
    applies it again (redis/redis-py#2807).  A rate limiter would then count a
    start twice and a breaker a failure twice.  So this client never retries a
    command; the suite's middleware treat a failed command as an outage and
    degrade instead.  Timeouts are explicit so a stalled server cannot hang a
    worker thread.

    The client owns one connection pool.  Create it once per process and share
    it between the middleware (``install`` does this); redis-py resets the pool
    in a forked child on its own, so a client made before Dramatiq forks its
    worker processes is safe to use in them.

    Parameters:
      url(str): A ``redis://``, ``rediss://`` or ``unix://`` URL, with the
        database number in the path (``redis://127.0.0.1:6379/1``).
      socket_timeout(int): Milliseconds to wait for a reply.
      connect_timeout(int): Milliseconds to wait for a connection.
      health_check_interval(int): Milliseconds of idleness after which a
        pooled connection is checked with ``PING`` before it is used; ``0``
        never checks.
      max_connections(int): The pool's size; unbounded when ``None``.

    Returns:
      redis.Redis: The client.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"connect_redis() needs a Redis URL such as 'redis://127.0.0.1:6379/0', got {url!r}")
    for name, value in (("socket_timeout", socket_timeout), ("connect_timeout", connect_timeout)):
        if value <= 0:
            raise ValueError(f"{name} must be a positive number of milliseconds, got {value!r}")
    if health_check_interval < 0:
        raise ValueError(
            f"health_check_interval must be 0 (never) or a positive number of milliseconds, "
            f"got {health_check_interval!r}"
        )
    return redis.Redis.from_url(
        url,
        max_connections=max_connections,
        **_safe_options(
            socket_timeout, connect_timeout, health_check_interval, tcp=not url.startswith("unix:")
        ),
    )


def connect_redis_like(client: redis.Redis, *, socket_timeout: int = DEFAULT_SOCKET_TIMEOUT) -> redis.Redis:
    """A client with ``connect_redis``'s safe settings for the same server and database as ``client``.

    ``install`` uses it to share a ``RedisBroker``'s server without inheriting
    the broker client's retrying defaults; the cache uses it for blocking pops
    that outlast the usual socket timeout.

    Parameters:
      client(redis.Redis): The client whose server, database and credentials to use.
      socket_timeout(int): Milliseconds a reply may take.
    """
    pool = client.connection_pool
    tcp = not issubclass(pool.connection_class, redis.UnixDomainSocketConnection)
    options = {**pool.connection_kwargs, **_safe_options(socket_timeout, DEFAULT_CONNECT_TIMEOUT, tcp=tcp)}
    safe_pool = redis.ConnectionPool(connection_class=pool.connection_class, **options)
    return redis.Redis(connection_pool=safe_pool)


def _safe_options(
    socket_timeout: int,
    connect_timeout: int,
    health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL,
    *,
    tcp: bool = True,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout / 1000,
        "socket_connect_timeout": connect_timeout / 1000,
        "health_check_interval": health_check_interval / 1000,  # 0: never
        # Never retry: a command whose reply timed out may already have run.
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
    }
    if tcp:
        # TCP only: a unix socket connection refuses the option.
        options["socket_keepalive"] = True
    return options


def resolve_redis(client: RedisLike) -> redis.Redis | None:
    """Turn a ``redis`` argument (client, URL or ``None``) into a client or ``None``."""
    if client is None or isinstance(client, redis.Redis):
        return client
    if isinstance(client, str):
        return connect_redis(client)
    raise TypeError(f"redis must be a redis.Redis client, a Redis URL or None, got {type(client).__name__}")


#: What a hash tag cannot hold as it is: its braces, the escape itself, and lone surrogates.
_TAG_UNSAFE = re.compile("[%{}\ud800-\udfff]")


def hash_key(namespace: str, name: str, *parts: str) -> str:
    """Name a key of one logical object so all its keys share one cluster slot.

    ``hash_key("turbo:rl", "send_email", "log")`` is ``"turbo:rl:{send_email}:log"``:
    the braces are a Redis Cluster hash tag, so a Lua script that touches every
    key of ``send_email`` runs on one node.  Names come from users (a cache
    key, a rate-limit key function, a breaker name), so ``%``, ``{``, ``}``
    and lone surrogates in ``name`` become ``%XX`` codes (``tag_safe``): the
    tag ends where it should, and distinct names never share a key.
    """
    if not name:
        raise ValueError("a key needs a non-empty object name")
    key = f"{namespace}:{{{tag_safe(name)}}}"
    return ":".join((key, *parts)) if parts else key


def tag_safe(name: str) -> str:
    """``name`` escaped for a hash tag: ``%`` ``{`` ``}`` and lone surrogates become ``%XX`` codes.

    Injective, so distinct names never share a key, and free of ``}``, so the
    tag ends where ``hash_key`` ends it.  Names without those characters are
    unchanged.
    """
    if _TAG_UNSAFE.search(name) is None:
        return name
    return _TAG_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", name)


def redis_time_ms(client: redis.Redis) -> int:
    """The Redis server's clock in milliseconds.

    Times that several processes compare come from here, never from local
    clocks, which drift between hosts.
    """
    seconds, microseconds = client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


_script_sources: dict[tuple[str, str], str] = {}
_scripts: weakref.WeakKeyDictionary[redis.Redis, dict[tuple[str, str], Script]] = weakref.WeakKeyDictionary()
_scripts_lock = threading.Lock()


def load_script(client: redis.Redis, package: str, filename: str) -> Script:
    """The Lua script ``filename`` shipped in ``package``, registered once per client.

    The returned object runs the script with ``EVALSHA`` and loads it on the
    server the first time the server does not know it (after a restart, say).

    Parameters:
      client(redis.Redis): The client the script runs on.
      package(str): The package that ships the ``.lua`` file, such as
        ``"dramatiq_turbo.ratelimit"``.
      filename(str): The file's name, such as ``"acquire.lua"``.
    """
    name = (package, filename)
    with _scripts_lock:
        registered = _scripts.setdefault(client, {})
        script = registered.get(name)
        if script is None:
            source = _script_sources.get(name)
            if source is None:
                source = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
                _script_sources[name] = source
            script = registered[name] = client.register_script(source)
        return script


#: One item of ``batch_set``: the key, its value, and its time to live in milliseconds (``None``: no expiry).
BatchItem = tuple[str | bytes, bytes | str | int | float, int | None]


def batch_set(client: redis.Redis, items: Iterable[BatchItem]) -> int:
    """Write many keys, each with its own time to live, in one round trip.

    Redis has no multi-key write with a TTL per key, so each key with a TTL
    costs the server one command whichever way it is sent.  What makes a
    plain pipeline slow is the client: redis-py packs each command, and
    parses each reply, in Python.  Here the commands are packed by hiredis
    with C iterators and sent in one write, and the replies, when all of
    them are ``OK`` as they are when nothing fails, are checked as one byte
    string.  The writes run as one ``MULTI``/``EXEC`` transaction: readers
    see all of the batch or none of it.  A batch in which nothing expires is
    one plain ``MSET``.  ``RedisCluster`` clients are not supported; with a
    client of one cluster node, all keys must share one hash slot (name them
    with ``hash_key``).

    Parameters:
      client(redis.Redis): The client to write with.
      items: ``(key, value, ttl_ms_or_None)`` tuples.  A value is bytes, a
        str (stored as UTF-8), an int or a float; ``ttl_ms`` is a positive int
        of milliseconds, or ``None`` for a key that never expires.  When a key
        appears twice, its last item wins.

    Returns:
      int: How many keys were written.

    Raises:
      ValueError: naming the item, when a key, value or TTL is not valid;
        nothing is sent.
      redis.ResponseError: the server's reason, when it refused the batch
        (for example ``OutOfMemoryError``); then nothing was written.
      TypeError: for a client without a connection pool (``RedisCluster``).
    """
    items = list(items)
    if not items:
        return 0
    # Checked a column at a time with comprehensions and sets of types (C
    # loops): per-item Python checks would cost more than the write itself.
    try:
        keys = [key for key, _, _ in items]
        values = [value for _, value, _ in items]
        ttls = [ttl for _, _, ttl in items]
    except (TypeError, ValueError):
        keys, values, ttls = [], [], []
    if (
        len(keys) != len(items)
        or not set(map(type, keys)) <= _KEY_TYPES
        or not all(keys)
        or not set(map(type, values)) <= _VALUE_TYPES
        or not set(map(type, ttls)) <= _TTL_TYPES
        or min((ttl for ttl in ttls if ttl is not None), default=1) <= 0
        or max((ttl for ttl in ttls if ttl is not None), default=1) > MAX_TTL
    ):
        # Something is off, or only unusual (a StrEnum key, an IntEnum value):
        # check item by item, which names the first bad one or lets them pass,
        # then hand hiredis the plain types it packs (it refuses subclasses).
        _check_items(items)
        keys = [_plain(key) for key in keys]
        values = [_plain(value) for value in values]
        ttls = [None if ttl is None else _plain(ttl) for ttl in ttls]
    if not any(ttls):
        # Nothing expires: one native MSET, the cheapest multi-key write there is.
        pairs: list[Any] = [None] * (2 * len(keys))
        pairs[0::2] = keys
        pairs[1::2] = values
        execute_packed(client, ("MSET", *pairs))
        return len(keys)
    execute_transaction(client, set_commands(keys, values, ttls), len(keys))
    return len(keys)


def set_commands(
    keys: Sequence[Any], values: Sequence[Any], ttls: Sequence[int | None]
) -> Iterator[tuple[Any, ...]]:
    """One ``SET`` per key, with ``PX`` where the key expires (a plain ``SET`` also clears an old TTL)."""
    if all(ttls):
        # Every key expires: the tuples are built by C iterators, not a Python loop.
        return zip(repeat("SET"), keys, values, repeat("PX"), ttls)
    return (
        ("SET", key, value) if ttl is None else ("SET", key, value, "PX", ttl)
        for key, value, ttl in zip(keys, values, ttls, strict=True)
    )


#: The longest TTL ``batch_set`` accepts, in ms (about 31,700 years): Redis
#: refuses one that overflows when added to its clock, and it would refuse it
#: only when the transaction runs, after the other keys were written.
MAX_TTL = 10**15

_KEY_TYPES = {str, bytes}
_VALUE_TYPES = {bytes, str, int, float}
_TTL_TYPES = {int, type(None)}


def _plain(value: Any) -> Any:
    """``value`` as an exact str, bytes, int or float: a StrEnum's text, an IntEnum's number.

    The base types' own conversions are used, since a subclass's ``__str__``
    may say something else (``"Color.RED"`` for a ``(str, Enum)`` member).
    """
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return value


def _check_items(items: list[Any]) -> None:
    """Raise the ``ValueError`` that names the first bad item of ``batch_set``, if any."""
    for index, item in enumerate(items):
        _check_item(index, item)


def _check_item(index: int, item: Any) -> None:
    try:
        if isinstance(item, str | bytes):
            raise TypeError  # "abc" would unpack into three characters
        key, value, ttl = item
    except (TypeError, ValueError):
        raise ValueError(
            f"batch_set item {index} must be (key, value, ttl_ms_or_None), got {item!r}"
        ) from None
    if not isinstance(key, str | bytes) or not key:
        raise ValueError(f"batch_set item {index}: the key must be a non-empty str or bytes, got {key!r}")
    if isinstance(value, bool) or not isinstance(value, bytes | str | int | float):
        raise ValueError(
            f"batch_set item {index} ({key!r}): the value must be bytes, str, int or float, "
            f"got {type(value).__name__}"
        )
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL):
        raise ValueError(
            f"batch_set item {index} ({key!r}): ttl must be a positive int of milliseconds "
            f"(at most {MAX_TTL:,}) or None, got {ttl!r}"
        )


def batch_get(client: redis.Redis, keys: Sequence[str | bytes]) -> list[bytes | None]:
    """Read many keys in one round trip (one ``MGET``).

    Parameters:
      client(redis.Redis): The client to read with.
      keys: The keys, in the order the values are wanted.

    Returns:
      list: The raw values in the order of ``keys``, ``None`` where a key is
      missing.
    """
    if isinstance(keys, str | bytes):
        raise ValueError("batch_get takes a sequence of keys, not a single key")
    keys = list(keys)
    if not keys:
        return []
    values: list[bytes | None] = execute_packed(client, ("MGET", *keys))
    return values
