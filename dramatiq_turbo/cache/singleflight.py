"""Single-flight: a value missing from the cache is computed once.

Two layers, because most waiters are threads of the same process:

* ``LocalFlights`` - within a process, the first thread to miss a key leads
  and the others wait on an ``Event`` for its outcome.  They issue no Redis
  command at all.
* ``Leases`` - across processes and hosts, the leading thread of each
  process asks Redis for the key's lease (``SET NX PX`` with a random
  token, in ``begin.lua``).  The holder computes and renews the lease from a
  background thread while it does; the others register as waiters and block
  on the key's wake list with ``BLPOP``, which returns the moment the holder
  finishes (``finish.lua`` pushes one wake-up per registered waiter) - no
  polling.  If the holder dies, its lease expires unrenewed; a waiter's
  ``BLPOP`` never blocks past the lease's remaining time, so one of them
  takes the lease over.  A waiter stops waiting at its deadline and
  computes on its own rather than hang.

A failed computation stores nothing: its waiters are woken and try again
(one of them leads the next attempt), so each caller computes or fails on
its own and none receives another caller's exception.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from ..core.delivery import Call, send_calls
from ..core.tokens import new_token
from ..redis import connect_redis_like
from .store import RedisStore

#: Seconds a waiter blocks in one pop at most, even when the lease lasts longer:
#: it then checks the lease again (the holder may have died without a word).
_MAX_BLOCK = 30.0

__all__ = ["Flight", "Leases", "LocalFlights", "RemoteTurn"]

logger = logging.getLogger(__name__)

PENDING, DONE, FAILED = "pending", "done", "failed"


class Flight:
    """One in-process computation of a key that other threads may wait for."""

    __slots__ = ("event", "state", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.state = PENDING
        self.value: Any = None

    def wait(self, timeout: float) -> str:
        """Wait up to ``timeout`` seconds; the state then (``PENDING`` means timed out)."""
        self.event.wait(max(0.0, timeout))
        return self.state


class LocalFlights:
    """The computations in flight in this process, one per key."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._lock = threading.Lock()

    def join(self, key: str) -> tuple[Flight, bool]:
        """The flight of ``key`` and whether the caller leads it (creates it)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight()
            return flight, True

    def resolve(self, key: str, flight: Flight, value: Any) -> None:
        self._end(key, flight, DONE, value)

    def fail(self, key: str, flight: Flight) -> None:
        self._end(key, flight, FAILED, None)

    def _end(self, key: str, flight: Flight, state: str, value: Any) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.value = value
        flight.state = state
        flight.event.set()

    def __len__(self) -> int:
        return len(self._flights)

    def after_fork(self) -> None:
        # Threads of the parent do not exist here: their flights never end.
        self._flights = {}
        self._lock = threading.Lock()


@dataclass
class RemoteTurn:
    """What ``Leases.begin`` got: a value (``hit``), the lease (``lead``) or nothing (``timeout``)."""

    kind: str
    data: bytes | None = None
    ttl: int | None = None
    token: str = ""
    waited: bool = False


class Leases:
    """Cross-process single-flight on Redis.

    Parameters:
      store(RedisStore): Names the keys and holds the client.
      lease_ttl(int): Milliseconds a lease lives unless renewed; renewed every
        third of it while its holder computes.  If the holder dies, waiters
        take over within this time.
    """

    def __init__(self, store: RedisStore, *, lease_ttl: int = 10_000) -> None:
        self.store = store
        self.lease_ttl = lease_ttl
        self._registration_ttl = max(lease_ttl, 1_000) * 3
        self._waiting_client: redis.Redis | None = None
        self._held: dict[str, str] = {}  # lease key -> token
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._renewer_pid = 0
        self._stop = threading.Event()

    def begin(self, key: str, *, deadline: float, skip_value: bool = False) -> RemoteTurn:
        """Read ``key``'s value, or take its lease, or wait for its holder until ``deadline`` (monotonic)."""
        token = new_token()
        call = self.begin_call(key, token, skip_value=skip_value)
        send_calls([call])
        return self.take_turn(key, token, call, deadline=deadline)

    def begin_call(self, key: str, token: str, *, skip_value: bool = False) -> Call:
        """The first step of ``begin``, as a call to send with others; ``take_turn`` goes on."""
        return Call(
            self.store.client,
            self.store.script("begin.lua"),
            self.store.flight_keys(key),
            [token, self.lease_ttl, self._registration_ttl, "1" if skip_value else "0"],
        )

    def take_turn(self, key: str, token: str, call: Call, *, deadline: float) -> RemoteTurn:
        """Go on from the reply of ``begin_call``: a value, the lease, or waiting for the holder.

        Raises:
          redis.RedisError: when a call failed.
        """
        _, lease_key, waiters_key, wake_key = self.store.flight_keys(key)
        waited = missed_wake = False
        while True:
            reply = call.result()
            kind = int(reply[0])
            if kind == 1:
                if missed_wake:
                    # The holder finished just as our pop timed out: the wake-up it
                    # pushed for us is in the list; take it, so none is left over.
                    self.store.client.lpop(wake_key)
                return RemoteTurn("hit", data=reply[1], ttl=int(reply[2]), waited=waited)
            if kind == 2:
                self._hold(lease_key, token)
                return RemoteTurn("lead", token=token, waited=waited)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # No longer waiting: leave the waiters, so the holder's finish
                # does not push a wake-up that nobody takes.
                self.store.client.srem(waiters_key, token)
                return RemoteTurn("timeout", waited=waited)
            lease_left = max(int(reply[1]), 0) / 1000
            # Never past the lease's end: if its holder died, this is when to take over.
            block = min(lease_left + 0.02, remaining, _MAX_BLOCK)
            missed_wake = self._waiting().blpop([wake_key], timeout=max(block, 0.01)) is None
            waited = True
            # Whatever woke us, a fresh value may be there now.
            call = self.begin_call(key, token)
            send_calls([call])

    def finish(self, key: str, token: str, data: bytes | None, ttl: int | None) -> None:
        """Store ``data`` (unless ``None``), release the lease if ``token`` holds it, wake the waiters."""
        self.finish_call(key, token, data, ttl).run()

    def finish_call(
        self,
        key: str,
        token: str,
        data: bytes | None,
        ttl: int | None,
        *,
        then: Callable[[Any], None] | None = None,
    ) -> Call:
        """``finish`` as a call to send with others; this process stops renewing the lease at once."""
        keys = self.store.flight_keys(key)
        if token:
            self._release(keys[1])
        return Call(
            self.store.client,
            self.store.script("finish.lua"),
            keys,
            [
                token,
                "0" if data is None else "1",
                b"" if data is None else data,
                ttl or 0,
                self.store.channel,
                self.store.origin,
                self._registration_ttl,
                key,
            ],
            then=then,
        )

    # Lease renewal -------------------------------------------------------
    def _hold(self, lease_key: str, token: str) -> None:
        with self._held_lock:
            self._held[lease_key] = token
            if self._renewer is None or self._renewer_pid != os.getpid() or not self._renewer.is_alive():
                self._stop = threading.Event()
                self._renewer = threading.Thread(
                    target=self._renew_loop, name="turbo-cache-renew", daemon=True
                )
                self._renewer_pid = os.getpid()
                self._renewer.start()

    def forget(self, key: str) -> None:
        """Stop renewing this process's lease on ``key`` without telling Redis (it expires on its own)."""
        self._release(self.store.flight_keys(key)[1])

    def _release(self, lease_key: str) -> None:
        with self._held_lock:
            self._held.pop(lease_key, None)

    def held(self) -> int:
        """How many leases this process holds now."""
        return len(self._held)

    def _renew_loop(self) -> None:
        script = self.store.script("renew.lua")
        stop = self._stop
        while not stop.wait(self.lease_ttl / 3000):
            with self._held_lock:
                held = list(self._held.items())
            for lease_key, token in held:
                try:
                    renewed = script(keys=[lease_key], args=[token, self.lease_ttl], client=self.store.client)
                except redis.RedisError as error:
                    logger.debug("Could not renew lease %s: %s", lease_key, error)
                    continue
                if not renewed:
                    self._lost(lease_key, token)

    def _lost(self, lease_key: str, token: str) -> None:
        """Renewing ``token``'s lease found nothing: lost, unless its turn ended or a new one began."""
        with self._held_lock:
            if self._held.get(lease_key) != token:
                # Released after the copy, or held again with a new token,
                # which must go on being renewed.
                return
            del self._held[lease_key]
        logger.warning("Single-flight lease %s was lost; another process may compute too.", lease_key)

    def _waiting(self) -> redis.Redis:
        """The client for blocking pops: one whose socket timeout outlasts the longest pop.

        With the store's own client a pop would have to end before its
        socket timeout (5 s by default, possibly far less), and a long
        computation would cost its waiters a command pair every few seconds.
        """
        client = self._waiting_client
        if client is None:
            timeout = self.store.client.connection_pool.connection_kwargs.get("socket_timeout")
            if timeout is None or float(timeout) > _MAX_BLOCK + 1:
                client = self.store.client
            else:
                client = connect_redis_like(self.store.client, socket_timeout=int((_MAX_BLOCK + 5) * 1000))
            self._waiting_client = client
        return client

    def close(self) -> None:
        self._stop.set()
        waiting = self._waiting_client
        if waiting is not None and waiting is not self.store.client:
            waiting.close()

    def after_fork(self) -> None:
        self._held = {}
        self._held_lock = threading.Lock()
        self._renewer = None
