"""``QueueStatsRecorder``: the worker side of ``QueueMonitor``, counting every queue's messages per minute."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware
from redis import Redis

from .. import events
from ..options import require_ms
from ..outage import Outage
from ..redis import RedisLike, connect_redis_like, resolve_redis
from . import histogram
from .counters import (
    DEFAULT_NAMESPACE,
    DEFAULT_RETENTION,
    MINUTE,
    CounterStore,
    MemoryCounterStore,
    RedisCounterStore,
    Tally,
)
from .utilization import BusyTracker

__all__ = ["DUE_OPTION", "QueueStatsRecorder"]

logger = logging.getLogger(__name__)

#: When the message became due (epoch ms): its queue wait starts then.
DUE_OPTION = "turbo_due"
#: Set while the message waits in a delay queue: its move to the queue keeps ``DUE_OPTION``.
_DELAYED_OPTION = "turbo_due_delayed"


class _Delivery:
    """One message on one worker thread, from ``before_process_message`` to its end."""

    __slots__ = ("breakers", "cpu", "deferred", "gave_up", "queue", "rl_waits", "start", "state", "wait")

    def __init__(self, queue: str, wait: int | None, state: _Process) -> None:
        self.queue = queue
        self.wait = wait
        self.state = state
        self.start = time.perf_counter()
        self.cpu = time.thread_time()
        self.deferred: str | None = None
        self.gave_up = False
        self.rl_waits = 0
        self.breakers: list[str] = []


class _Process:
    """The recorder's state in one process: rebuilt in a forked child, whose threads did not survive."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.id = f"{socket.gethostname()}:{self.pid}:{uuid.uuid4().hex[:6]}"
        self.tally = Tally()
        self.busy = BusyTracker()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.worker: dramatiq.Worker | None = None
        self.started = int(time.time() * 1000)


class QueueStatsRecorder(Middleware):
    """Counts each queue's messages per minute into a store that ``QueueMonitor`` reads.

    For every delivery it counts the outcome (completed, failed, skipped;
    dead-lettered when it is nacked), the queue wait (from the time the
    message became due, which it keeps in its ``turbo_due`` option: when it
    was sent, retried or deferred, or when its delay ended; against this
    host's clock), the processing time and its CPU time (percentiles from
    fixed histogram buckets); deferrals by reason, rate-limit waits and
    refusals by an open circuit, which the other middleware announce as
    events.  Producers count what they enqueue (arrivals).  A worker process
    also sends a heartbeat: its queues, threads, busy threads and
    utilization, and the circuit breakers and rate limits its actors declare.

    Nothing is written on the message's path: counts stay in memory and a
    background thread writes those of the last ``flush_interval`` in one
    pipelined round trip, plus a final flush in ``before_worker_shutdown`` and
    ``after_worker_shutdown`` (worker processes exit with ``os._exit``).  A
    failed write is logged once per outage and its counts dropped, never
    sent twice.  Counters expire after ``retention``.

    Place it right after ``Telemetry`` (before ``Retries``/``Backoff`` and
    the gates): its ``before_process_message`` then runs before theirs, so it
    sees their deferrals and its timing covers them, and its
    ``after_process_message`` after theirs, so it knows whether a failure is
    retried or given up.

    Parameters:
      redis: A client, a URL, or ``None``: the ``RedisBroker``'s own server
        then, and for other brokers counts kept in this process only.
      namespace(str): Key prefix, ``"turbo:monitor"`` by default.
      flush_interval(int): Milliseconds between writes (and heartbeats).
      retention(int): Milliseconds counters are kept (one hour).
    """

    def __init__(
        self,
        *,
        redis: RedisLike = None,
        namespace: str = DEFAULT_NAMESPACE,
        flush_interval: int = 1_000,
        retention: int = DEFAULT_RETENTION,
    ) -> None:
        self.flush_interval = require_ms("flush_interval", flush_interval, allow_zero=False)
        self.retention = require_ms("retention", retention, allow_zero=False)
        if self.retention < 2 * MINUTE:
            raise ValueError(f"retention must be at least 120,000 ms (two minutes), got {retention!r}")
        self.namespace = namespace
        self._client: Redis | None = resolve_redis(redis)
        self.store: CounterStore | None = None
        self._store_lock = threading.Lock()
        self._local = threading.local()
        self._process: _Process | None = None
        self._meta: dict[str, dict[str, set[str]]] = {}  # queue -> {"breakers": ..., "limits": ...}
        self.outage = Outage(component="monitor", logger=logger)
        self.dropped = 0  # counts lost to failed writes
        events.listen_while_alive(self, "_on_event")

    # -- per-process state ----------------------------------------------------

    def _state(self) -> _Process:
        state = self._process
        if state is None or state.pid != os.getpid():
            with self._store_lock:
                state = self._process
                if state is None or state.pid != os.getpid():
                    state = self._process = _Process()
        return state

    def _store_for(self, broker: dramatiq.Broker) -> CounterStore:
        store = self.store
        if store is None:
            with self._store_lock:
                if self.store is None:
                    self.store = self._build_store(broker)
                store = self.store
        return store

    def _build_store(self, broker: dramatiq.Broker) -> CounterStore:
        client = self._client
        if client is None:
            broker_client = getattr(broker, "client", None)
            if isinstance(broker_client, Redis):
                client = connect_redis_like(broker_client)
        if client is None:
            return MemoryCounterStore(retention=self.retention)
        return RedisCounterStore(client, namespace=self.namespace, retention=self.retention)

    def _ensure_flusher(self, broker: dramatiq.Broker) -> _Process:
        state = self._state()
        if state.thread is None:
            with state.lock:
                if state.thread is None:
                    self._store_for(broker)
                    state.thread = threading.Thread(
                        target=self._run, args=(broker, state.stop), name="turbo-monitor-flush", daemon=True
                    )
                    state.thread.start()
        return state

    def _run(self, broker: dramatiq.Broker, stop: threading.Event) -> None:
        while not stop.wait(self.flush_interval / 1000):
            self.flush(broker)

    # -- writing ----------------------------------------------------------------

    def flush(self, broker: dramatiq.Broker, *, leaving: bool = False) -> None:
        """Write what was counted since the last flush, and the heartbeat, now.

        Parameters:
          broker(dramatiq.Broker): The broker the counts are about.
          leaving(bool): Remove this worker's heartbeat instead (a clean shutdown).
        """
        state = self._state()
        store = self._store_for(broker)
        with state.flush_lock:
            batch = state.tally.drain()
            worker = state.id if state.worker is not None else None
            beat = self._heartbeat(broker, state) if worker is not None and not leaving else None
            if not batch and worker is None:
                return
            try:
                store.write(batch, worker=worker, beat=beat)
            except Exception as error:
                self.dropped += sum(sum(counts.values()) for counts in batch.counts.values())
                self.outage.failed(error)
            else:
                self.outage.succeeded()

    def _heartbeat(self, broker: dramatiq.Broker, state: _Process) -> dict[str, Any]:
        worker = state.worker
        assert worker is not None
        threads = int(getattr(worker, "worker_threads", 1))
        whitelist = getattr(worker, "consumer_whitelist", None)
        queues = sorted(whitelist or broker.get_declared_queues())
        running = state.busy.running()
        return {
            "id": state.id,
            "host": socket.gethostname(),
            "pid": state.pid,
            "queues": queues,
            "threads": threads,
            "busy": sum(running.values()),
            "running": running,
            "utilization": round(state.busy.tick(threads), 4),
            "cores": os.cpu_count() or 1,
            "interval": self.flush_interval,
            "started": state.started,
            "breakers": {q: sorted(m["breakers"]) for q, m in self._meta.items() if m["breakers"]},
            "limits": {q: sorted(m["limits"]) for q, m in self._meta.items() if m["limits"]},
        }

    def _count(self, broker: dramatiq.Broker, queue: str, items: Iterable[tuple[str, int]]) -> None:
        state = self._ensure_flusher(broker)
        state.tally.add(queue, int(time.time() * 1000) + self._offset(), items)

    def _offset(self) -> int:
        """Redis time minus this host's (0 without Redis): minutes follow the server's clock."""
        offset: int = getattr(self.store, "offset", 0)
        return offset

    # -- hooks ------------------------------------------------------------------

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        meta = self._meta.setdefault(q_name(actor.queue_name), {"breakers": set(), "limits": set()})
        option = actor.options.get("breaker")
        if option is True:
            meta["breakers"].add(actor.actor_name)
        elif isinstance(option, str) and option:
            meta["breakers"].add(option)
        limit = _describe_limit(actor.options.get("rate_limit"))
        if limit is not None:
            meta["limits"].add(f"{actor.actor_name}: {limit}")

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        state = self._ensure_flusher(broker)
        state.worker = worker

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Workers leave with os._exit: what is not written now is lost.
        self.flush(broker)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # The messages still running at before_worker_shutdown have ended by now.
        state = self._state()
        with state.lock:
            state.stop.set()
            # A worker started again in this process (tests do) gets a new flush thread.
            state.thread, state.stop = None, threading.Event()
        self.flush(broker, leaving=True)
        state.worker = None

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        # Dramatiq drops a delayed message's eta when a worker moves it to its
        # queue, and a re-enqueued message keeps its first timestamp: so the
        # time it became due travels in its options (written before encoding).
        options = message.options
        if delay is not None:
            options[DUE_OPTION] = options.get("eta", int(time.time() * 1000) + delay)
            options[_DELAYED_OPTION] = True
        elif not options.pop(_DELAYED_OPTION, False):
            options[DUE_OPTION] = int(time.time() * 1000)

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        # A delayed message arrives when the worker moves it to its queue (an enqueue without delay).
        if delay is None:
            self._count(broker, _canonical(message.queue_name), _ENQUEUED)

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        # The message itself, not its proxy: each attribute read through the proxy costs a microsecond.
        raw = getattr(message, "_message", message)
        queue = _canonical(raw.queue_name)
        state = self._ensure_flusher(broker)
        self._local.delivery = _Delivery(queue, _wait_ms(raw.options, raw.message_timestamp), state)
        state.busy.start(queue)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._finish(broker, message, "completed" if exception is None else "failed")

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._finish(broker, message, "skipped")

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        # A nack dead-letters the message, on every broker; it runs on the
        # consumer thread, once every after_process_message hook is done.
        self._count(broker, _canonical(message.queue_name), _DEAD)

    def _finish(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, outcome: str) -> None:
        delivery: _Delivery | None = getattr(self._local, "delivery", None)
        if delivery is None:
            return
        self._local.delivery = None
        ms = (time.perf_counter() - delivery.start) * 1000
        cpu = (time.thread_time() - delivery.cpu) * 1000
        state = delivery.state
        state.busy.stop()
        # A generator: the flush thread turns these facts into counter fields.
        counts = _delivery_counts(delivery, outcome, bool(message.failed), ms, cpu)
        state.tally.add(delivery.queue, int(time.time() * 1000) + self._offset(), counts)

    # -- events from the other middleware ---------------------------------------

    def _on_event(self, name: str, attributes: Mapping[str, Any]) -> None:
        delivery: _Delivery | None = getattr(self._local, "delivery", None)
        if delivery is None:
            return
        if name == "defer":
            delivery.deferred = str(attributes.get("reason", "other"))
        elif name == "ratelimit.wait":
            delivery.rl_waits += 1
        elif name == "breaker.reject":
            delivery.breakers.append(str(attributes.get("breaker", "")))
        elif name == "giveup":
            delivery.gave_up = True


_ENQUEUED = (("enqueued", 1),)
_DEAD = (("dead", 1),)

# The histograms' field names, made once: formatting them for every message costs more than counting.
_WAIT_FIELDS = tuple(f"w:{i}" for i in range(histogram.MAX_BUCKET + 1))
_PROC_FIELDS = tuple(f"p:{i}" for i in range(histogram.MAX_BUCKET + 1))


def _delivery_counts(
    delivery: _Delivery, outcome: str, failed: bool, ms: float, cpu: float
) -> Iterator[tuple[str, int]]:
    """The counter increments of one delivery that took ``ms`` (``cpu`` of them computing)."""
    yield outcome, 1
    if delivery.wait is not None:
        yield "wait_ms", delivery.wait
        yield "waits", 1
        yield _WAIT_FIELDS[histogram.bucket_of(delivery.wait)], 1
    if outcome != "skipped":
        yield "proc_ms", round(ms)
        yield "cpu_ms", round(cpu)
        yield _PROC_FIELDS[histogram.bucket_of(ms)], 1
    if delivery.gave_up and not failed:
        # Given up and acked, not nacked: Backoff on RabbitMQ publishes the
        # dead letter itself (with its reason), so after_nack never sees it.
        yield "dead", 1
    if delivery.deferred is not None:
        yield f"deferred:{delivery.deferred}", 1
    if delivery.rl_waits:
        yield "rl_waits", delivery.rl_waits
    for name in delivery.breakers:
        if name:
            yield f"breaker:{name}", 1


_canonical_names: dict[str, str] = {}


def _canonical(queue_name: str) -> str:
    """``q_name``, remembered (the few queue names of a process repeat for every message)."""
    name = _canonical_names.get(queue_name)
    if name is None:
        name = _canonical_names[queue_name] = q_name(queue_name)
    return name


def _wait_ms(options: Mapping[str, Any], timestamp: Any) -> int | None:
    """How long the message waited since it was due (see ``before_enqueue``), else since it was sent."""
    due = options.get(DUE_OPTION, options.get("eta", timestamp))
    if isinstance(due, bool) or not isinstance(due, int | float):
        return None
    # Set by the sender: NaN, an infinity or a number past any clock is no wait at all.
    try:
        wait = time.time() * 1000 - due
    except OverflowError:  # an int too large for a float
        return None
    return max(0, int(wait)) if math.isfinite(wait) else None


def _describe_limit(option: Any) -> str | None:
    """A ``rate_limit`` actor option in words: ``"30 per 1000 ms"``."""
    if isinstance(option, tuple | list) and len(option) == 2:
        return f"{option[0]} per {option[1]} ms"
    if isinstance(option, dict) and "max" in option and "duration" in option:
        return f"{option['max']} per {option['duration']} ms"
    return None
