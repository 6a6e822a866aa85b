"""Many Redis commands in one round trip, packed by hiredis instead of redis-py.

redis-py packs each command, and parses each reply, in Python: about 0.3 µs
per argument and several µs per command here.  For a batch of thousands of
keys that costs more than the server's work, which is why a plain pipeline
of 1,000 commands is only about 12x faster than 1,000 round trips.  These
helpers pack with hiredis over C iterators, write the commands in slices so
the server starts on the first while the rest are being packed, and read
every reply after the last write: one round trip.

Like ``connect_redis``'s clients they never retry: a connection or timeout
error drops the connection and is raised, since the commands may have run.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import hiredis
import redis
from redis.connection import AbstractConnection

try:
    # redis-py's own mapping of error replies to exception classes
    # (OutOfMemoryError, ReadOnlyError, NoPermissionError, ...).
    from redis._parsers import BaseParser

    _error_from_reply: Callable[[str], Exception] = BaseParser.parse_error
except ImportError:  # pragma: no cover - redis-py moved its parsers
    _error_from_reply = redis.ResponseError

__all__ = [
    "execute_packed",
    "execute_packed_pipeline",
    "execute_pipeline",
    "execute_transaction",
    "raise_first_error",
]

_MULTI = hiredis.pack_command(("MULTI",))
_EXEC = hiredis.pack_command(("EXEC",))
#: Commands in the first write and in each one after it: the server starts
#: early, and each later write still carries tens of kilobytes.
_FIRST_WRITE = 64
_WRITE = 256
#: What hiredis.Reader.gets() returns when it needs more bytes (``False`` is a RESP3 reply).
_MORE = object()


def execute_packed(client: redis.Redis, command: tuple[Any, ...]) -> Any:
    """Run one command of many arguments (an ``MSET``, an ``MGET``), packed in one C call.

    Parameters:
      client(redis.Redis): The client whose pool to use.
      command(tuple): The command and its arguments (str, bytes, int or float).

    Returns:
      The command's reply.

    Raises:
      redis.ResponseError: the server's error reply.
    """
    # One reply: redis-py's own reader is the quicker one here (0.42 against
    # 0.56 ms for an MGET of 1,000 values), so this does not go through _exchange.
    pool = _pool_of(client)
    connection = pool.get_connection()
    try:
        connection.send_packed_command([hiredis.pack_command(command)])  # type: ignore[no-untyped-call]
        return connection.read_response()
    except (redis.ConnectionError, redis.TimeoutError):
        connection.disconnect()  # type: ignore[no-untyped-call]
        raise
    finally:
        pool.release(connection)


def execute_pipeline(client: redis.Redis, commands: Iterable[tuple[Any, ...]], count: int) -> list[Any]:
    """Run ``count`` commands back to back and return their replies, in one round trip.

    Parameters:
      client(redis.Redis): The client whose pool to use.
      commands: The commands, each a tuple of the command and its arguments
        (str, bytes, int or float).
      count(int): How many commands there are.

    Returns:
      list: One raw reply per command, in order; an error reply is returned
      as its ``redis.ResponseError``, not raised (the other commands ran).
    """
    return _exchange(client, map(hiredis.pack_command, commands), total=count)


def execute_packed_pipeline(client: redis.Redis, packed: Sequence[bytes]) -> list[Any]:
    """``execute_pipeline`` for commands already packed with ``hiredis.pack_command``.

    A caller that packs each command itself can keep one it cannot pack
    from failing the others: nothing is sent until every command is packed.
    """
    return _exchange(client, iter(packed), total=len(packed))


def execute_transaction(
    client: redis.Redis,
    commands: Iterable[tuple[Any, ...]],
    count: int,
    *,
    then: tuple[Any, ...] | None = None,
) -> Any:
    """Run ``count`` commands that reply ``OK`` (``SET``, ``MSET``) as one transaction, in one round trip.

    ``MULTI``, the commands, ``EXEC`` and then the command ``then`` (outside
    the transaction) are written back to back.  When the replies begin with
    the bytes that every success gives, they are checked as one comparison;
    otherwise each is parsed, to raise the server's reason.

    Parameters:
      client(redis.Redis): The client whose pool to use.
      commands: The commands, each a tuple of the command and its arguments.
      count(int): How many commands there are.
      then(tuple): A command to run once the transaction has been applied.

    Returns:
      The reply of ``then``, or ``None``.

    Raises:
      redis.ResponseError: the first error the server replied (a command
        refused while queued, ``OOM`` for example, aborts the whole transaction).
    """
    total = count + 2 + (then is not None)
    replies = _exchange(
        client,
        map(hiredis.pack_command, commands),
        head=_MULTI,
        tail=_EXEC + (hiredis.pack_command(then) if then else b""),
        expected=b"+OK\r\n" + b"+QUEUED\r\n" * count + b"*%d\r\n" % count + b"+OK\r\n" * count,
        covered=count + 2,
        total=total,
    )
    raise_first_error(replies)
    if len(replies) == total:  # parsed one by one: the transaction's own reply must be there
        executed = replies[count + 1]
        if executed is None:
            # Only a WATCH (left on the pooled connection by someone) aborts an EXEC this way.
            raise redis.WatchError("the transaction was not applied: a watched key changed")
        if not isinstance(executed, list) or len(executed) != count:
            raise redis.ResponseError(f"unexpected reply to EXEC of {count} commands: {executed!r}")
    return replies[-1] if then else None


def raise_first_error(replies: Iterable[Any]) -> None:
    """Raise the first error reply among ``replies``, looking inside an ``EXEC``'s list of replies too."""
    for reply in replies:
        for part in _parts(reply):
            if isinstance(part, redis.ResponseError):
                raise part


def _parts(reply: Any) -> Iterable[Any]:
    return reply if isinstance(reply, list) else (reply,)


def _exchange(
    client: redis.Redis,
    packed: Iterator[bytes],
    *,
    total: int,
    head: bytes = b"",
    tail: bytes = b"",
    expected: bytes = b"",
    covered: int = 0,
) -> list[Any]:
    """Write ``head``, the packed commands and ``tail``, then read ``total`` replies.

    When the replies start with ``expected``, the ``covered`` replies it
    encodes (all successes) are compared as bytes instead of parsed, and
    left out of the result.
    """
    pool = _pool_of(client)
    connection = _take(pool)
    try:
        # The health check (a PING when the connection has been idle) runs
        # before the first write only: between two slices it would land
        # inside the transaction.  One bytes object per write, since
        # redis-py makes one system call per item it is given.
        send = connection.send_packed_command
        send([b"".join([head, *islice(packed, _FIRST_WRITE)])])
        while chunk := b"".join(islice(packed, _WRITE)):
            send([chunk], check_health=False)
        if tail:
            send([tail], check_health=False)
        replies = _read_replies(connection, expected, covered, total)
    except BaseException:
        # Whatever stopped us (a dropped connection, a value hiredis cannot
        # pack, Dramatiq's TimeLimitExceeded), replies may be unread or a
        # MULTI left open: this connection must not serve anyone else.
        connection.disconnect()
        pool.release(connection)
        raise
    _give(pool, connection)
    return replies


class _Spares:
    """Connections of one pool that this module keeps for itself between batches.

    Taking a connection from redis-py's pool and giving it back costs more
    than a small round trip does (a lock, its bookkeeping and its
    instrumentation); a batch takes one of these instead.  A list's ``pop``
    and ``append`` are atomic, so no lock is needed.  The connections stay
    checked out of the pool, so ``pool.disconnect()`` (``client.close()``)
    still closes them; one closed that way connects again when next used.
    """

    __slots__ = ("connections", "pid")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.connections: list[Any] = []


_spares: weakref.WeakKeyDictionary[redis.ConnectionPool, _Spares] = weakref.WeakKeyDictionary()
#: Spare connections kept per pool at most (one per thread that batches at once).
_MAX_SPARES = 32


def _take(pool: redis.ConnectionPool) -> Any:
    spares = _spares.get(pool)
    if spares is not None and spares.pid == os.getpid():
        try:
            connection = spares.connections.pop()
        except IndexError:
            pass
        else:
            if connection._sock is None:
                connection.connect()
            return connection
    return pool.get_connection()


def _give(pool: redis.ConnectionPool, connection: Any) -> None:
    spares = _spares.get(pool)
    if spares is None or spares.pid != os.getpid():
        # First use in this process (or after a fork: the parent's are not ours).
        spares = _spares[pool] = _Spares()
    # At most a quarter of the pool waits here: the rest stays for the client's other users.
    room = min(_MAX_SPARES, int(getattr(pool, "max_connections", 0)) // 4)
    if len(spares.connections) < room and isinstance(connection, AbstractConnection):
        spares.connections.append(connection)
    else:
        pool.release(connection)


def _pool_of(client: redis.Redis) -> redis.ConnectionPool:
    pool: redis.ConnectionPool | None = getattr(client, "connection_pool", None)
    if pool is None:
        raise TypeError(
            f"{type(client).__name__} is not supported: batches need a redis.Redis client "
            "(on Redis Cluster the keys of one batch may live on different nodes)"
        )
    return pool


def _read_replies(connection: Any, expected: bytes, covered: int, total: int) -> list[Any]:
    sock = getattr(connection, "_sock", None)
    if not isinstance(connection, AbstractConnection) or not hasattr(sock, "recv"):
        # No real socket (fakeredis), or a proxy connection (redis-py's
        # client-side cache, which needs every push it gets): redis-py's parser.
        return _parse_replies(connection, total)
    # The connection is idle (its parser holds nothing) and its socket has
    # the client's timeout set: the replies are read from it directly.
    received = bytearray()
    matched = 0  # how many bytes of ``expected`` have arrived, as expected
    while matched < len(expected):
        received += _receive(sock)
        end = min(len(received), len(expected))
        if received[matched:end] != expected[matched:end]:
            break
        matched = end
    reader = hiredis.Reader(replyError=_error_from_reply, notEnoughData=_MORE)
    if expected and matched == len(expected):
        reader.feed(bytes(received[matched:]))
        total -= covered
    elif received:
        reader.feed(bytes(received))
    replies: list[Any] = []
    while len(replies) < total:
        reply = reader.gets()
        if reply is _MORE:
            reader.feed(_receive(sock))
        elif not isinstance(reply, hiredis.PushNotification):
            # RESP3 may put a push between replies; with no client-side cache
            # it can only be a server notice, not a reply.
            replies.append(reply)
    if reader.has_data() or any(_is_read_only(reply) for reply in replies):
        # Bytes past the last reply (a push) belong to nobody now; a replica's
        # READONLY means the pool must find the new master (Sentinel): start afresh.
        connection.disconnect()  # type: ignore[no-untyped-call]
    elif connection.health_check_interval:
        # redis-py moves this on in its own reads only; the connection was just used.
        connection.next_health_check = time.monotonic() + connection.health_check_interval  # type: ignore[assignment]
    return replies


def _is_read_only(reply: Any) -> bool:
    # Asked of every reply: plain values (most of them) answer without a generator.
    if isinstance(reply, list):
        return any(isinstance(part, redis.ReadOnlyError) for part in reply)
    return isinstance(reply, redis.ReadOnlyError)


def _parse_replies(connection: Any, total: int) -> list[Any]:
    replies: list[Any] = []
    for _ in range(total):
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as error:
            replies.append(error)
    return replies


def _receive(sock: Any) -> bytes:
    try:
        data: bytes = sock.recv(65536)
    except TimeoutError:
        raise redis.TimeoutError("Timeout reading from the Redis server") from None
    except OSError as error:
        raise redis.ConnectionError(f"Error reading from the Redis server: {error}") from None
    if not data:
        raise redis.ConnectionError("Connection closed by the Redis server")
    return data
