"""A message's trip through the gates: one Redis round trip before the actor, one after.

``ResultCache``, ``RateLimiter`` and ``CircuitBreaker`` are *gates*: each
decides, before an actor runs, whether its message may run, and records
something when it has run.  Each keeps its state in Redis, and asked one
after another they would cost a round trip each on the way in and again on
the way out.  Here their work travels together:

* on the way in, each gate's ``before_process_message`` *plans*: it decides
  what it can locally and declares the Redis calls it needs (``Call``); the
  last gate on the broker sends every declared call in one pipeline per
  client, hands each call its reply, then lets each gate *settle* in the
  broker's order (a gate may wait or defer the message there);
* on the way out, each gate's ``after_process_message`` (or
  ``after_skip_message``) declares its calls, and the first gate on the
  broker - the last one whose ``after_*`` hook runs - hands them to the
  process's *outbox*: the worker thread does not wait for them.  They go out
  at the head of the next trip before an actor (in the same pipeline, so in
  order), or from the outbox's own thread when no such trip comes first.  A
  thread's calls are always in Redis before its next trip's own.

A ``Delivery`` is the state of one message's trip: the gates it concerns,
their parts (each gate's own object, which no other gate reads), and the
facts gates share without importing each other (``cache_hit``).  It lives in
a context variable of the worker thread for the duration of the delivery,
never in ``message.options``, so nothing of it is persisted with the message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

import dramatiq
import hiredis
import redis
from dramatiq.middleware import Middleware, SkipMessage
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from ..packed import execute_packed_pipeline

__all__ = [
    "Call",
    "Delivery",
    "Gate",
    "current_delivery",
    "delivery_of",
    "flush_outbox",
    "is_cache_hit",
    "send_calls",
]

logger = logging.getLogger(__name__)

_UNSENT: Any = object()


class Call:
    """One run of a Lua script that a gate needs, sent with the other calls of its trip.

    Parameters:
      client(redis.Redis): The client to run it on; calls on one client share a pipeline.
      script(Script): From ``load_script``; run with ``EVALSHA`` (loaded on ``NOSCRIPT``).
      keys(list): The script's keys (one cluster slot).
      args(list): The script's arguments.
      then(callable): Called with this call once the trip is back: its
        ``reply`` (or the ``redis.RedisError`` the call failed with) and its
        ``sent_at``.  It must not raise.
    """

    __slots__ = ("args", "client", "keys", "reply", "script", "sent_at", "then")

    def __init__(
        self,
        client: redis.Redis,
        script: Script,
        keys: Sequence[Any],
        args: Sequence[Any],
        *,
        then: Callable[[Call], None] | None = None,
    ) -> None:
        self.client = client
        self.script = script
        self.keys = keys
        self.args = args
        self.then = then
        self.reply: Any = _UNSENT
        #: When the call went out (``time.monotonic()``), once it has.
        self.sent_at: float | None = None

    @property
    def sent(self) -> bool:
        """Whether the call went out (its reply, or its error, is known)."""
        return self.reply is not _UNSENT

    def result(self) -> Any:
        """The script's reply; raises the ``redis.RedisError`` it failed with."""
        if self.reply is _UNSENT:
            raise RuntimeError("the call has not been sent")
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply

    def run(self) -> Any:
        """Send this call alone, now, and return its reply (raising its error)."""
        send_calls([self])
        return self.result()

    def _command(self) -> tuple[Any, ...]:
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)


def send_calls(calls: Sequence[Call]) -> None:
    """Send ``calls``, one pipeline (one round trip) per client, and hand each its reply.

    A call whose script the server does not know (it restarted) is sent
    again with its source; a connection error or timeout becomes the reply of
    every call of that client, since any of them may have run.
    """
    groups: dict[int, list[Call]] = {}
    for call in calls:
        groups.setdefault(id(call.client), []).append(call)
    for group in groups.values():
        _send_group(group)
    for call in calls:
        if call.then is not None:
            try:
                call.then(call)
            except Exception:  # a bug in a gate must not cost the other gates their replies
                logger.exception("A gate failed to take the reply of its Redis call.")


def _send_group(group: list[Call]) -> None:
    client = group[0].client
    sendable, packed = _packed(group)
    if not sendable:
        return
    sent_at = time.monotonic()
    for call in sendable:
        call.sent_at = sent_at
    try:
        replies = execute_packed_pipeline(client, packed)
    except redis.RedisError as error:
        for call in sendable:
            call.reply = error
        return
    for call, reply in zip(sendable, replies, strict=True):
        if isinstance(reply, NoScriptError):
            try:
                # The script did not run: load it and run it (redis-py's Script does both).
                reply = call.script(keys=list(call.keys), args=list(call.args), client=client)
            except redis.RedisError as error:
                reply = error
        call.reply = reply


def _packed(group: list[Call]) -> tuple[list[Call], list[bytes]]:
    """The calls that can be sent, and their commands packed.

    A call that cannot be packed (an argument hiredis cannot encode) gets a
    ``redis.DataError`` as its reply, so its gate still settles, and the
    other calls of the trip - other messages' too - still go out.
    """
    sendable: list[Call] = []
    packed: list[bytes] = []
    for call in group:
        try:
            packed.append(hiredis.pack_command(call._command()))
        except Exception as error:
            call.reply = redis.DataError(f"the call could not be sent: {type(error).__name__}: {error}")
        else:
            sendable.append(call)
    return sendable, packed


class _Outbox:
    """The calls of the trips after the actor that have not gone out yet, in this process.

    Thread-safe.  ``put`` never waits; ``take`` hands pending calls to a trip
    that is about to go out, and first waits for any batch still on its way
    that holds calls of the taking thread, so that a thread's calls reach
    Redis in the order it made them.  One daemon thread per process sends
    what no trip took within 2 ms.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._landed = threading.Condition(self._lock)
        self._pending: list[tuple[int, Call]] = []
        self._in_flight: Counter[int] = Counter()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def put(self, calls: list[Call]) -> None:
        owner = threading.get_ident()
        with self._lock:
            self._adopt()
            self._pending.extend((owner, call) for call in calls)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="turbo-outbox", daemon=True)
                self._thread.start()
        self._wake.set()

    def take(self) -> tuple[list[Call], list[int]]:
        """The pending calls (to send first) and their owners (for ``landed``)."""
        me = threading.get_ident()
        with self._lock:
            self._adopt()
            while self._in_flight[me]:
                self._landed.wait()
            pending, self._pending = self._pending, []
            owners = [owner for owner, _ in pending]
            self._in_flight.update(owners)
        return [call for _, call in pending], owners

    def landed(self, owners: list[int]) -> None:
        """The calls taken with ``owners`` are back from Redis."""
        if not owners:
            return
        with self._lock:
            self._in_flight.subtract(owners)
            self._landed.notify_all()

    def send_with(self, calls: list[Call]) -> None:
        """Send the pending calls and then ``calls``, in one pipeline (so in that order)."""
        owed, owners = self.take()
        try:
            if owed or calls:
                send_calls(owed + calls)
        finally:
            self.landed(owners)

    def flush(self) -> None:
        """Send whatever is pending now, and wait for every batch on its way."""
        self.send_with([])
        with self._lock:
            while any(count > 0 for count in self._in_flight.values()):
                self._landed.wait(1.0)

    def _adopt(self) -> None:
        # In a forked child the parent's pending calls are the parent's to
        # send, and its thread is gone.  (Called with the lock held.)
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._pending, self._in_flight, self._thread = [], Counter(), None

    def _run(self) -> None:
        while True:
            self._wake.wait()
            # Wait a moment first: on a busy worker the next trip takes the
            # calls along for free, and its thread need not wait for a batch.
            time.sleep(_LINGER)
            self._wake.clear()
            self.send_with([])


_outbox = _Outbox()
#: Seconds the outbox's thread leaves pending calls for a trip to take along.
_LINGER = 0.002


def flush_outbox() -> None:
    """Send this process's pending after-the-actor calls now and wait for them (at shutdown, say)."""
    _outbox.flush()


class Delivery:
    """One delivery of one message through the gates.

    Parameters:
      broker(dramatiq.Broker): The broker the message came from.
      message: The worker's ``MessageProxy``.
      gates(tuple): The gates on ``broker``, in its middleware order.

    Attributes:
      cache_hit(bool): ``ResultCache`` serves the message's result; the
        actor's body will not run, so it takes no slot and no trial call.
      parts(dict): Each gate's own state for this delivery, keyed by the gate.
    """

    __slots__ = ("_after", "_before", "broker", "cache_hit", "first", "gates", "last", "message", "parts")

    def __init__(self, broker: dramatiq.Broker, message: Any, gates: tuple[Gate, ...]) -> None:
        self.broker = broker
        self.message = message
        self.gates = gates
        self.first = gates[0] if gates else None
        self.last = gates[-1] if gates else None
        self.cache_hit = False
        self.parts: dict[Gate, Any] = {}
        self._before: list[Call] = []
        self._after: list[Call] = []

    def join(self, gate: Gate, part: Any) -> None:
        """Say that ``gate`` takes part in this delivery, with ``part`` as its state."""
        self.parts[gate] = part

    def before(self, call: Call) -> None:
        """Send ``call`` in the trip before the actor."""
        self._before.append(call)

    def after(self, call: Call) -> None:
        """Send ``call`` in the trip after the actor (or after the skip)."""
        self._after.append(call)

    def depart(self) -> None:
        """Send the calls declared before the actor, then let each gate settle, in the broker's order.

        The process's pending after-the-actor calls go first in the same pipeline.
        """
        calls, self._before = self._before, []
        if calls:
            _outbox.send_with(calls)
        for gate in self.gates:
            part = self.parts.get(gate)
            if part is not None:
                gate.settle(self.broker, self.message, self, part)

    def arrive(self) -> None:
        """Hand the calls declared after the actor to the outbox; the delivery is over.

        What the delivery says of the message (``cache_hit``) stays readable
        by the middleware whose ``after_*`` hooks run after the gates' until
        the thread's next delivery; the gates' parts (a cached value, say)
        are let go now.
        """
        calls, self._after = self._after, []
        self.parts = {}
        if calls:
            _outbox.put(calls)


#: The delivery the current worker thread (or the task it runs) is in.
_current: ContextVar[Delivery | None] = ContextVar("turbo_delivery", default=None)


def delivery_of(broker: dramatiq.Broker, message: Any) -> Delivery:
    """The delivery of ``message`` in this thread, begun now if it has not begun.

    Middleware placed before the gates can use it to tell them something,
    such as ``delivery_of(broker, message).cache_hit = True``.
    """
    delivery = _current.get()
    if delivery is None or delivery.message is not message:
        delivery = Delivery(broker, message, _gates_of(broker))
        _current.set(delivery)
    return delivery


def is_cache_hit(message: Any) -> bool:
    """Whether the result of ``message``, in its delivery in this thread, is served from the cache."""
    delivery = current_delivery(message)
    return delivery is not None and delivery.cache_hit


def current_delivery(message: Any = None) -> Delivery | None:
    """The delivery in progress in this thread: of ``message`` if given, else whichever it is."""
    delivery = _current.get()
    if delivery is None or (message is not None and delivery.message is not message):
        return None
    return delivery


class Gate(Middleware):
    """A middleware whose Redis work before and after the actor travels in the delivery's trips.

    Subclasses implement ``plan`` and, as they need, ``settle``, ``finish``
    and ``abort``; this class turns Dramatiq's hooks into them.  A gate that
    a message does not concern returns from ``plan`` without joining.
    """

    def plan(self, broker: dramatiq.Broker, message: Any, delivery: Delivery) -> None:
        """Before the actor: decide what can be decided here; join and declare calls if concerned."""

    def settle(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, part: Any) -> None:
        """Before the actor, once the calls are back: let the message through, wait, or defer it."""

    def finish(
        self,
        broker: dramatiq.Broker,
        message: Any,
        delivery: Delivery,
        part: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """After the actor: declare what to record (calls go out in the trip after the actor)."""

    def abort(self, broker: dramatiq.Broker, message: Any, delivery: Delivery, part: Any) -> None:
        """After a skip (a deferral, ``AgeLimit``...): give back what the message took."""

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        # The worker's threads are done: what they left to send goes out now.
        flush_outbox()

    # Dramatiq's hooks ---------------------------------------------------------
    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        delivery = delivery_of(broker, message)
        try:
            self.plan(broker, message, delivery)
        except SkipMessage:
            raise
        except BaseException:
            if delivery.last is self:
                delivery.depart()
            raise
        if delivery.last is self:
            delivery.depart()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._leave(
            message,
            lambda delivery, part: self.finish(
                broker, message, delivery, part, result=result, exception=exception
            ),
        )

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._leave(message, lambda delivery, part: self.abort(broker, message, delivery, part))

    def _leave(self, message: Any, end: Callable[[Delivery, Any], None]) -> None:
        """End this gate's part of ``message``'s delivery; the first gate then sends the trip after."""
        delivery = current_delivery(message)
        if delivery is None:
            return
        try:
            part = delivery.parts.get(self)
            if part is not None:
                end(delivery, part)
        finally:
            if delivery.first is self:
                delivery.arrive()


def _gates_of(broker: dramatiq.Broker) -> tuple[Gate, ...]:
    # Asked for every message; the list changes only when middleware is added.
    middleware = broker.middleware
    known = _gates_seen.get(broker)
    if known is not None and known[0] is middleware and known[1] == len(middleware):
        return known[2]
    gates = tuple(m for m in middleware if isinstance(m, Gate))
    _gates_seen[broker] = (middleware, len(middleware), gates)
    return gates


#: Per broker: its middleware list as last seen, its length then, and its gates.
_gates_seen: weakref.WeakKeyDictionary[dramatiq.Broker, tuple[list[Any], int, tuple[Gate, ...]]] = (
    weakref.WeakKeyDictionary()
)
