"""Counting what a Redis client sends: commands and round trips, in total and per thread.

The proofs of "one round trip" and "few commands while waiting" count at the
socket, below the code under test and below redis-py, so they cannot be
fooled by either: every byte written is parsed back into commands, and a
round trip is counted each time the client starts reading after writing.
"""

from __future__ import annotations

import threading
from typing import Any

import hiredis
import redis

from dramatiq_turbo.redis import connect_redis


class Counts(threading.local):
    commands = 0
    round_trips = 0
    handshake = False


class CountingSocket:
    """Wraps a connected socket: parses what is written, notes when reading follows writing."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._requests = hiredis.Reader()
        self._wrote = False

    def sendall(self, data: Any) -> None:
        counts = CountingConnection.per_thread
        if not counts.handshake:
            self._requests.feed(bytes(data))
            commands = 0
            while self._requests.gets() is not False:
                commands += 1
            CountingConnection.add(commands=commands)
            self._wrote = True
        self._sock.sendall(data)

    def _reading(self) -> None:
        if self._wrote:
            self._wrote = False
            CountingConnection.add(round_trips=1)

    def recv(self, *args: Any) -> Any:
        self._reading()
        return self._sock.recv(*args)

    def recv_into(self, *args: Any) -> Any:
        self._reading()
        return self._sock.recv_into(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class CountingConnection(redis.Connection):
    """A ``redis.Connection`` whose socket counts into class-wide and per-thread counters."""

    lock = threading.Lock()
    total_commands = 0
    total_round_trips = 0
    per_thread = Counts()

    def _connect(self) -> Any:
        return CountingSocket(super()._connect())

    def on_connect_check_health(self, check_health: bool = True) -> None:
        # The handshake of a new pooled connection (CLIENT SETINFO, SELECT) is
        # paid once per connection, not per call: it is not counted.
        CountingConnection.per_thread.handshake = True
        try:
            super().on_connect_check_health(check_health)
        finally:
            CountingConnection.per_thread.handshake = False
            self._sock._wrote = False  # type: ignore[union-attr]

    @classmethod
    def add(cls, *, commands: int = 0, round_trips: int = 0) -> None:
        with cls.lock:
            cls.total_commands += commands
            cls.total_round_trips += round_trips
        cls.per_thread.commands += commands
        cls.per_thread.round_trips += round_trips

    @classmethod
    def snapshot(cls) -> tuple[int, int]:
        """This thread's (commands, round trips) so far."""
        return cls.per_thread.commands, cls.per_thread.round_trips


def counting_client(url: str, **options: Any) -> redis.Redis:
    """A ``connect_redis`` client whose connections count what they send."""
    client = connect_redis(url, **options)
    client.connection_pool.connection_class = CountingConnection
    return client
