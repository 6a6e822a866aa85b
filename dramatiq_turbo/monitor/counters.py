"""Per-minute counters of every queue, and worker heartbeats: where they live and how they add up.

Each worker process counts its messages in memory (a ``Tally``) and writes
the counts of the last second in one pipeline (``QueueStatsRecorder``'s
flush thread).  Redis adds up what all processes wrote, so ``QueueMonitor``
reads per queue and minute the sums of every process.

Layout under the namespace (``turbo:monitor`` by default), each key
hash-tagged per queue:

- ``<ns>:{<queue>}:m:<minute>``: a hash of counters for one minute
  (``minute`` is epoch ms // 60,000, by Redis time), expiring after the
  retention.  Fields: ``completed``, ``failed``, ``skipped``,
  ``dead``, ``enqueued``, ``deferred:<reason>``, ``rl_waits``, ``proc_ms``,
  ``cpu_ms``, ``wait_ms``, ``waits``, ``p:<bucket>`` and ``w:<bucket>``
  (processing and queue-wait histograms, see ``histogram``),
  ``breaker:<name>`` (refusals by an open circuit), and ``first`` (the time
  of the minute's first write, so a rate is not diluted by the part of the
  minute before the queue was active).
- ``<ns>:{workers}``: worker id -> its last heartbeat (JSON), and
  ``<ns>:{workers}:seen``: worker id -> when, by Redis time.
- ``<ns>:{queues}``: the names of the queues counted so far.

``MemoryCounterStore`` keeps the same data in one process, for
``StubBroker`` and for deployments without Redis.
"""

from __future__ import annotations

import collections
import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from ..redis import hash_key
from . import histogram
from .scripts import ScriptCall, monitor_script, run_pipeline

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_RETENTION",
    "Batch",
    "CounterStore",
    "CounterSummary",
    "MemoryCounterStore",
    "Reading",
    "RedisCounterStore",
    "Tally",
    "WorkerBeat",
    "summarize",
]

DEFAULT_NAMESPACE = "turbo:monitor"
#: How long counters and heartbeats are kept: one hour.
DEFAULT_RETENTION = 3_600_000
MINUTE = 60_000

#: ``(queue, minute)`` -> field -> count: what one flush writes.
Counts = dict[tuple[str, int], dict[str, int]]


@dataclass
class Batch:
    """What one flush writes: counts per queue and minute, and when each bucket was first touched."""

    counts: Counts = field(default_factory=dict)
    first: dict[tuple[str, int], int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def queues(self) -> set[str]:
        return {queue for queue, _ in self.counts}


class Tally:
    """What happened since the last flush: recorded on the message's path, summed off it.

    ``add`` appends one record to a deque (atomic, no lock: a few hundred
    nanoseconds); ``drain``, on the flush thread, pops them and sums them
    per queue and minute.  Its ``items`` may be a generator, so that even
    naming the fields (histogram buckets) happens off the message's path.
    """

    def __init__(self) -> None:
        self._records: collections.deque[tuple[str, int, Iterable[tuple[str, int]]]] = collections.deque()

    def add(self, queue: str, now: int, items: Iterable[tuple[str, int]]) -> None:
        """Record ``items`` (``(field, amount)`` pairs) for ``queue`` at ``now`` (epoch ms, store time)."""
        self._records.append((queue, now, items))

    def drain(self) -> Batch:
        """The sum of everything recorded since the last drain (which it forgets)."""
        batch = Batch()
        counts, first = batch.counts, batch.first
        pop = self._records.popleft
        while True:
            try:
                queue, now, items = pop()
            except IndexError:
                return batch
            key = (queue, now // MINUTE)
            bucket = counts.get(key)
            if bucket is None:
                bucket = counts[key] = {}
                first[key] = now
            for name, amount in items:
                bucket[name] = bucket.get(name, 0) + amount


@dataclass(frozen=True)
class WorkerBeat:
    """A heartbeat as stored: when (store time, ms) and what the worker said (see ``QueueStatsRecorder``)."""

    at: int
    payload: Mapping[str, Any]

    def live(self, now: int) -> bool:
        """Beat recently enough: within three of its intervals plus two seconds."""
        interval = int(self.payload.get("interval", 1_000))
        return now - self.at <= 3 * interval + 2_000


@dataclass(frozen=True)
class Reading:
    """What a store holds for some queues: ``buckets[queue][minute] -> {field: count}``."""

    at: int
    buckets: dict[str, dict[int, dict[str, int]]]
    workers: tuple[WorkerBeat, ...]
    queues: frozenset[str]


class CounterStore(Protocol):
    """Where counters and heartbeats go: Redis (shared) or memory (one process)."""

    def write(
        self, batch: Batch, *, worker: str | None = None, beat: Mapping[str, Any] | None = None
    ) -> int: ...

    def read(self, queues: Sequence[str], *, window: int) -> Reading: ...


def _minutes(now: int, window: int, *, margin: int = 0) -> range:
    """The minutes that ``window`` ms ending at ``now`` touch, widened by ``margin`` minutes each side."""
    current = now // MINUTE
    count = max(1, math.ceil(window / MINUTE))
    return range(current - count + 1 - margin, current + 1 + margin)


class RedisCounterStore:
    """Counters and heartbeats in Redis, shared by every process.

    Parameters:
      client(redis.Redis): From ``connect_redis``.
      namespace(str): Key prefix (``turbo:monitor``).
      retention(int): Milliseconds counters and heartbeats are kept.
    """

    def __init__(
        self, client: redis.Redis, *, namespace: str = DEFAULT_NAMESPACE, retention: int = DEFAULT_RETENTION
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.retention = retention
        self.workers_key = hash_key(namespace, "workers")
        self.seen_key = hash_key(namespace, "workers", "seen")
        self.queues_key = hash_key(namespace, "queues")
        self._heartbeat = monitor_script(client, "heartbeat.lua")
        # Redis time minus this host's, learnt from every exchange: keys
        # named by minute follow the server's clock without asking it first.
        self.offset = 0

    def bucket_key(self, queue: str, minute: int) -> str:
        return hash_key(self.namespace, queue, "m", str(minute))

    def now(self) -> int:
        """Redis time in ms, as far as the last exchange taught this process."""
        return int(time.time() * 1000) + self.offset

    def write(self, batch: Batch, *, worker: str | None = None, beat: Mapping[str, Any] | None = None) -> int:
        """Add ``batch`` to the counters and record the heartbeat (``beat=None`` with a ``worker``
        removes it), in one round trip.  Returns Redis time in ms."""
        commands: list[Any] = [("TIME",)]
        for (queue, minute), counts in batch.counts.items():
            key = self.bucket_key(queue, minute)
            commands += [("HINCRBY", key, name, amount) for name, amount in counts.items() if amount]
            commands.append(("HSETNX", key, "first", batch.first.get((queue, minute), minute * MINUTE)))
            commands.append(("PEXPIRE", key, self.retention))
        if batch:
            commands.append(("SADD", self.queues_key, *sorted(batch.queues())))
            commands.append(("PEXPIRE", self.queues_key, self.retention))
        if worker is not None:
            text = "" if beat is None else json.dumps(beat, separators=(",", ":"))
            interval = int(beat.get("interval", 1_000)) if beat else 1_000
            stale = max(60_000, 10 * interval)
            commands.append(
                ScriptCall(
                    self._heartbeat, (self.workers_key, self.seen_key), (worker, text, stale, self.retention)
                )
            )
        replies = run_pipeline(self.client, commands)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        now = _redis_time(replies[0])
        self.offset = now - int(time.time() * 1000)
        return now

    def read(self, queues: Sequence[str], *, window: int) -> Reading:
        """The counters of ``queues`` over the last ``window`` ms, all heartbeats, and the queue names
        counted so far: one round trip (two when this host's clock is off by more than a minute)."""
        minutes = _minutes(self.now(), window, margin=1)
        reading = self._read(queues, window, minutes)
        if _minutes(reading.at, window)[0] < minutes[0] or reading.at // MINUTE > minutes[-1]:
            reading = self._read(queues, window, _minutes(reading.at, window))
        return reading

    def _read(self, queues: Sequence[str], window: int, minutes: range) -> Reading:
        commands: list[Any] = [
            ("TIME",),
            ("HGETALL", self.workers_key),
            ("ZRANGE", self.seen_key, 0, -1, "WITHSCORES"),
            ("SMEMBERS", self.queues_key),
        ]
        for queue in queues:
            commands += [("HGETALL", self.bucket_key(queue, minute)) for minute in minutes]
        replies = run_pipeline(self.client, commands)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        at = _redis_time(replies[0])
        self.offset = at - int(time.time() * 1000)
        beats = _pairs(replies[1])
        seen = _pairs(replies[2])
        workers = tuple(
            WorkerBeat(int(float(seen[wid])), json.loads(text)) for wid, text in beats.items() if wid in seen
        )
        buckets: dict[str, dict[int, dict[str, int]]] = {}
        position = 4
        for queue in queues:
            per_minute = buckets[queue] = {}
            for minute in minutes:
                fields = _pairs(replies[position])
                position += 1
                if fields:
                    per_minute[minute] = {name: int(value) for name, value in fields.items()}
        names = frozenset(_text(name) for name in replies[3] or ())
        return Reading(at=at, buckets=buckets, workers=workers, queues=names)


class MemoryCounterStore:
    """Counters and heartbeats of this process only (no Redis), with the same retention.

    Parameters:
      retention(int): Milliseconds counters are kept.
    """

    def __init__(self, *, retention: int = DEFAULT_RETENTION) -> None:
        self.retention = retention
        self._lock = threading.Lock()
        self._buckets: dict[str, dict[int, dict[str, int]]] = {}
        self._workers: dict[str, WorkerBeat] = {}

    def now(self) -> int:
        return int(time.time() * 1000)

    def write(self, batch: Batch, *, worker: str | None = None, beat: Mapping[str, Any] | None = None) -> int:
        now = self.now()
        oldest = (now - self.retention) // MINUTE
        with self._lock:
            for (queue, minute), counts in batch.counts.items():
                bucket = self._buckets.setdefault(queue, {}).setdefault(minute, {})
                for name, amount in counts.items():
                    bucket[name] = bucket.get(name, 0) + amount
                bucket.setdefault("first", batch.first.get((queue, minute), minute * MINUTE))
            for per_minute in self._buckets.values():
                for minute in [m for m in per_minute if m < oldest]:
                    del per_minute[minute]
            if worker is not None:
                if beat is None:
                    self._workers.pop(worker, None)
                else:
                    self._workers[worker] = WorkerBeat(now, dict(beat))
        return now

    def read(self, queues: Sequence[str], *, window: int) -> Reading:
        now = self.now()
        minutes = _minutes(now, window)
        with self._lock:
            buckets = {
                queue: {m: dict(c) for m, c in self._buckets.get(queue, {}).items() if m in minutes}
                for queue in queues
            }
            workers = tuple(self._workers.values())
            names = frozenset(self._buckets)
        return Reading(at=now, buckets=buckets, workers=workers, queues=names)


@dataclass(frozen=True)
class CounterSummary:
    """One queue's counters summed over a window (see ``summarize``)."""

    totals: dict[str, int]
    per_minute: tuple[tuple[int, int, int], ...]  # (minute start ms, completed, failed)
    covered_ms: int
    processing: dict[int, int]
    wait: dict[int, int]
    breakers: dict[str, int]
    deferred: dict[str, int]

    def get(self, name: str) -> int:
        return self.totals.get(name, 0)

    def per_min(self, name: str) -> float:
        """The counter ``name`` as a rate per minute over the time the window covered."""
        return self.get(name) * MINUTE / self.covered_ms


def summarize(per_minute: Mapping[int, Mapping[str, int]], *, at: int, window: int) -> CounterSummary:
    """Sum one queue's buckets over the ``window`` ms ending at ``at``.

    Rates are over the time covered: from the first write in the window (or
    the window's start) to ``at``, at least one second, so a queue that
    became active 20 s ago is not reported at a third of its rate.
    """
    minutes = _minutes(at, window)
    totals: dict[str, int] = {}
    processing: dict[int, int] = {}
    wait: dict[int, int] = {}
    breakers: dict[str, int] = {}
    deferred: dict[str, int] = {}
    rows = []
    first = at
    for minute in minutes:
        counts = per_minute.get(minute, {})
        rows.append((minute * MINUTE, counts.get("completed", 0), counts.get("failed", 0)))
        if counts:
            first = min(first, counts.get("first", minute * MINUTE))
        for name, value in counts.items():
            _add_field(name, value, totals, processing, wait, breakers, deferred)
    # The whole first minute's counts are in, so its time is too, unless the queue started later.
    start = max(minutes[0] * MINUTE, min(first, at))
    covered = max(1_000, at - start)
    return CounterSummary(totals, tuple(rows), covered, processing, wait, breakers, deferred)


def _add_field(
    name: str,
    value: int,
    totals: dict[str, int],
    processing: dict[int, int],
    wait: dict[int, int],
    breakers: dict[str, int],
    deferred: dict[str, int],
) -> None:
    prefix, _, rest = name.partition(":")
    target: dict[Any, int]
    key: Any
    if not rest:
        if name != "first":
            totals[name] = totals.get(name, 0) + value
        return
    if prefix in ("p", "w"):
        target, key = (processing if prefix == "p" else wait), int(rest)
    elif prefix == "breaker":
        target, key = breakers, rest
    elif prefix == "deferred":
        target, key = deferred, rest
    else:
        return
    target[key] = target.get(key, 0) + value


def percentiles(counts: Mapping[int, int]) -> tuple[int | None, int | None]:
    """p50 and p95 of a histogram, in ms."""
    return histogram.percentile(counts, 50), histogram.percentile(counts, 95)


def _redis_time(reply: Any) -> int:
    seconds, microseconds = reply
    return int(seconds) * 1000 + int(microseconds) // 1000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> dict[str, Any]:
    """A reply of pairs as a dict with text keys.

    hiredis gives ``HGETALL`` as a dict and ``ZRANGE ... WITHSCORES`` as a
    list of ``[member, score]``; plain RESP2 parsers give flat lists.
    """
    if not reply:
        return {}
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    if isinstance(reply[0], list):
        return {_text(k): v for k, v in reply}
    return {_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}
