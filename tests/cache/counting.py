"""Counting what a Redis client sends: commands and round trips, in total and per thread.

The proofs of "one round trip" and "few commands while waiting" count at the
connection, below the code under test, so they cannot be fooled by it.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

from dramatiq_turbo.redis import connect_redis


class Counts(threading.local):
    commands = 0
    round_trips = 0
    handshake = False
    counted = False  # the command being sent was counted when it was packed


class CountingConnection(redis.Connection):
    """A ``redis.Connection`` that counts into class-wide and per-thread counters."""

    lock = threading.Lock()
    total_commands = 0
    total_round_trips = 0
    per_thread = Counts()

    def on_connect_check_health(self, check_health: bool = True) -> None:
        # The handshake of a new pooled connection (CLIENT SETINFO, SELECT) is
        # paid once per connection, not per call: it is not counted.
        CountingConnection.per_thread.handshake = True
        try:
            super().on_connect_check_health(check_health)
        finally:
            CountingConnection.per_thread.handshake = False

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._count(1)
        CountingConnection.per_thread.counted = True
        try:
            super().send_command(*args, **kwargs)
        finally:
            CountingConnection.per_thread.counted = False

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        self._count(len(commands), round_trip=False)
        CountingConnection.per_thread.counted = True
        return super().pack_commands(commands)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        # One write of a pipeline, or of one command: one round trip.
        cls = CountingConnection
        if cls.per_thread.handshake:
            super().send_packed_command(command, check_health)
            return
        if not cls.per_thread.counted:
            self._count(1)  # one command packed by the caller (dramatiq_turbo.redis.execute_packed)
        cls.per_thread.counted = False
        with cls.lock:
            cls.total_round_trips += 1
        cls.per_thread.round_trips += 1
        super().send_packed_command(command, check_health)

    @staticmethod
    def _count(n: int, round_trip: bool = True) -> None:
        cls = CountingConnection
        if cls.per_thread.handshake:
            return
        with cls.lock:
            cls.total_commands += n
        cls.per_thread.commands += n

    @classmethod
    def snapshot(cls) -> tuple[int, int]:
        """This thread's (commands, round trips) so far."""
        return cls.per_thread.commands, cls.per_thread.round_trips


def counting_client(url: str, **options: Any) -> redis.Redis:
    """A ``connect_redis`` client whose connections count what they send."""
    client = connect_redis(url, **options)
    client.connection_pool.connection_class = CountingConnection
    return client
