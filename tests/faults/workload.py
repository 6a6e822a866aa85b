"""The steady workload of the fault tests, and the checks every fault test ends with.

A ``FaultRun`` starts ``dramatiq`` commands of ``tests.apps.fault_app`` on a
broker, sends the jobs of a ``Mix`` at a steady rate, and reads back what
the app recorded (every start and completion of an actor body, timed by the
records server).  ``FaultRun.verify`` then asserts the guarantees each fault
must keep: every job done exactly once - or dead-lettered with its reason -
unless the fault explains one more run, results correct, nothing left in the
broker, and no key of the suite left without a TTL.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.results import ResultFailure, ResultMissing
from dramatiq.results.backends import RedisBackend

from tests import harness

APP = "tests.apps.fault_app"
FAILURE_OPTION = "turbo_failure"

#: The tracebacks the workload provokes on purpose (Dramatiq logs each failed run with one).
EXPECTED_TRACEBACKS = (
    "DependencyDown: dependency is down",
    "BadInput: job ",
    # The app's own write to the suite's Redis fails while that Redis is down or slow (and is retried).
    'writer().hincrby(f"fault:',
    # The cause in a chained traceback: the chain's last part, checked on its own, says whose it is.
    "During handling of the above exception, another exception occurred",
    "The above exception was the direct cause of the following exception",
)

#: What each actor returns for ``x``; ``notes`` and ``poison`` are checked apart.
EXPECTED = {
    "plain": lambda x: 2 * x,
    "cached": lambda x: x * x,
    "limited": lambda x: x + 1,
    "slow": lambda x: 10 * x,
    "flaky": lambda x: 3 * x,
    "write": lambda x: x,
}
#: What the breaker's ``trip`` and ``probe`` jobs may return (the clock-skew test checks which).
OUTCOMES = {"trip": {"DependencyDown", "CircuitOpenError"}, "probe": {"refused", "called"}}
#: Actors whose duplicates share a cache key (``x``): their body runs once per key, not per job.
CACHED = ("cached", "slow")


@dataclass(frozen=True)
class Mix:
    """How many jobs of each actor; ``cached`` and ``slow`` reuse ``keys`` values of ``x``."""

    plain: int = 300
    cached: int = 80
    cached_keys: int = 20
    limited: int = 60
    slow: int = 6
    slow_keys: int = 3
    flaky: int = 40
    poison: int = 4
    write: int = 10
    notes: int = 6

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in (*EXPECTED, "poison", "notes"))


@dataclass
class Job:
    name: str
    actor: str
    arg: Any
    queue: str
    message: dramatiq.Message[Any] | None = None


@dataclass(frozen=True)
class Event:
    kind: str
    job: str
    pid: int
    message_id: str
    at: float  # ms, the records server's clock
    extra: dict[str, Any]


def jobs_of(mix: Mix, queue: str, pdfs: list[Path]) -> list[Job]:
    """The mix's jobs, each kind spread over the run (slow jobs in its first third: a kill finds one)."""
    placed: list[tuple[float, Job]] = []
    for actor in (*EXPECTED, "poison", "notes"):
        count = getattr(mix, actor)
        keys = {"cached": mix.cached_keys, "slow": mix.slow_keys}.get(actor)
        spread = 0.3 if actor == "slow" else 1.0
        for i in range(count):
            arg: Any = str(pdfs[i % len(pdfs)]) if actor == "notes" else (i % keys) + 1 if keys else i + 1
            placed.append(((i + 0.5) / count * spread, Job(f"{actor}-{i}", actor, arg, queue)))
    return [job for _, job in sorted(placed, key=lambda item: item[0])]


@dataclass
class FaultRun:
    """One workload on one broker; see the module's docstring."""

    namespace: str
    kind: str  # "redis" or "rabbitmq"
    store: harness.RedisServer
    records: redis.Redis
    records_url: str
    worker_processes: Callable[..., harness.WorkerProcesses]
    env: dict[str, str]
    broker_url: str
    jobs: list[Job] = field(default_factory=list)
    groups: list[harness.WorkerProcesses] = field(default_factory=list)
    producer: dramatiq.Broker | None = None
    sender: threading.Thread | None = None

    @property
    def queue(self) -> str:
        return self.namespace

    @property
    def backend(self) -> RedisBackend:
        return RedisBackend(client=self.records, namespace=f"{self.namespace}-results")

    def start_workers(self, commands: int = 2, *, processes: int = 2, threads: int = 4, **env: str) -> Any:
        """Start ``commands`` more ``dramatiq`` commands of the app; returns their group."""
        group = self.worker_processes(APP, processes=processes, threads=threads, env={**self.env, **env})
        group.expected_tracebacks = EXPECTED_TRACEBACKS
        group.start(commands)
        self.groups.append(group)
        return group

    def worker_pids(self) -> list[int]:
        return [pid for group in self.groups for pid in group.worker_pids()]

    def output(self) -> str:
        return "\n".join(group.output() for group in self.groups)

    # Sending -------------------------------------------------------------------
    def send(self, jobs: list[Job], *, per_second: float = 150, background: bool = True) -> None:
        """Send ``jobs`` at a steady rate (in a thread unless ``background`` is false)."""
        self.jobs += jobs
        if self.producer is None:
            self.producer = self._producer()
            for queue in {job.queue for job in jobs}:
                self.producer.declare_queue(queue)

        def run() -> None:
            assert self.producer is not None
            started = time.monotonic()
            for index, job in enumerate(jobs):
                pause = started + index / per_second - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                message = dramatiq.Message(
                    queue_name=job.queue,
                    actor_name=job.actor,
                    args=(job.name, job.arg),
                    kwargs={},
                    options={},
                )
                job.message = self.producer.enqueue(message)

        if background:
            self.sender = threading.Thread(target=run, daemon=True, name="fault-sender")
            self.sender.start()
        else:
            run()

    def wait_sent(self, timeout: float = 60) -> None:
        if self.sender is not None:
            self.sender.join(timeout)
            assert not self.sender.is_alive(), "the workload could not be sent in time"

    def _producer(self) -> dramatiq.Broker:
        if self.kind == "rabbitmq":
            from dramatiq.brokers.rabbitmq import RabbitmqBroker

            return RabbitmqBroker(url=harness.RABBITMQ_URL)
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=self.store.url, namespace=f"{self.namespace}-dq")

    def close(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                if self.kind == "rabbitmq":
                    _delete_rabbitmq_queues(self.producer, {job.queue for job in self.jobs})
                self.producer.close()

    # Reading the records -------------------------------------------------------
    def events(self, kind: str | None = None) -> list[Event]:
        raw = self.records.lrange(f"{self.namespace}:events", 0, -1)
        parsed = [
            Event(k, job, pid, mid, float(at), extra) for k, job, pid, mid, at, extra in map(json.loads, raw)
        ]
        return [event for event in parsed if kind is None or event.kind == kind]

    def now(self) -> float:
        """The records server's clock (ms): the events' time base."""
        return harness_time_ms(self.records)

    def done_count(self) -> int:
        return len(self.events("done"))

    def wait_until_done(self, count: int, *, timeout: float) -> None:
        """Wait for ``count`` completions: the workload is under way."""
        harness.wait_for(
            lambda: self.records.llen(f"{self.namespace}:events") and self.done_count() >= count,
            timeout=timeout,
            interval=0.1,
            what=f"{count} jobs to be done",
        )

    def running(self, actor: str) -> dict[str, Event]:
        """Jobs of ``actor`` whose latest start has no completion after it, by job."""
        latest: dict[str, Event] = {}
        for event in self.events():
            if event.job.startswith(f"{actor}-"):
                if event.kind == "start":
                    latest[event.job] = event
                elif event.kind == "done":
                    latest.pop(event.job, None)
        return latest

    def wait_outcomes(self, timeout: float) -> None:
        """Wait until every sent job has a result (a value or a failure) in the results backend."""
        self.wait_sent()
        deadline = time.monotonic() + timeout
        while True:
            missing = self.without_result()
            if not missing:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        events = self.events()
        seen = {name: [(e.kind, e.pid, round(e.at)) for e in events if e.job == name] for name in missing[:8]}
        raise AssertionError(
            f"after {timeout} s, {len(missing)} jobs have no outcome (none may be lost), e.g. {seen}"
            f"\nthe workers' log ends with:\n{self.output()[-3000:]}"
        )

    def without_result(self) -> list[str]:
        """The jobs sent whose result (value or failure) is not stored yet."""
        jobs = [job for job in self.jobs if job.message is not None]
        backend = self.backend
        pipe = self.records.pipeline(transaction=False)
        for job in jobs:
            pipe.exists(backend.build_message_key(job.message))
        return [job.name for job, found in zip(jobs, pipe.execute(), strict=True) if not found]

    # The end of every test ------------------------------------------------------
    def verify(
        self,
        *,
        explained: Callable[[Event], bool] = lambda event: False,
        extra_computations: Callable[[str], int] = lambda key: 0,
    ) -> Outcome:
        """Assert the guarantees every fault must keep; returns what was found, for reporting.

        ``explained(completion)`` says whether the fault explains an earlier
        completion of a job that ran again (its worker died before the ack);
        ``extra_computations(key)`` how many more computations of a cached
        key the fault explains (the computing worker died, the cache was down).
        """
        time.sleep(1.5)  # a late duplicate run would show by now
        outcome = Outcome(self.events())
        self._check_completions(outcome, explained)
        self._check_computations(outcome, extra_computations)
        self._check_effects(outcome)
        self._check_results(outcome)
        self._check_dead_letters(outcome)
        self._check_drained()
        outcome.keys_left, outcome.untimed_keys = suite_keys(
            self.store, ignore=(f"{self.namespace}-dq:", "fault:")
        )
        assert outcome.untimed_keys == [], (
            f"every key of the suite expires: these have no TTL: {outcome.untimed_keys[:10]}"
        )
        return outcome

    def _check_completions(self, outcome: Outcome, explained: Callable[[Event], bool]) -> None:
        for job in self.jobs:
            if job.actor in (*CACHED, "poison", "notes"):
                continue
            done = outcome.completions[job.name]
            assert done, f"{job.name} was never completed: nothing may be lost"
            unexplained = [event for event in done[:-1] if not explained(event)]
            if unexplained:
                runs = [(e.kind, e.pid, e.at, e.extra) for e in outcome.events if e.job == job.name]
                raise AssertionError(
                    f"{job.name} completed {len(done)} times: a job is done exactly once unless its worker "
                    f"died (or lost its connection) before acking it; its events: {runs}"
                )
            outcome.reruns += len(done) - 1

    def _check_computations(self, outcome: Outcome, extra: Callable[[str], int]) -> None:
        computed = Counter(
            f"{e.job.split('-', 1)[0]}:{e.extra['key']}" for e in outcome.done if e.job.startswith(CACHED)
        )
        for actor in CACHED:
            for key in {job.arg for job in self.jobs if job.actor == actor}:
                name = f"{actor}:{key}"
                outcome.computations[name] = computed[name]
                assert 1 <= computed[name] <= 1 + extra(name), (
                    f"{name} was computed {computed[name]} times: duplicates compute once (single-flight), "
                    f"plus {extra(name)} the fault explains"
                )

    def _check_effects(self, outcome: Outcome) -> None:
        effect = int(self.records.get(f"{self.namespace}:effect") or 0)
        applied = sum(int(v) for v in self.records.hvals(f"{self.namespace}:done"))
        assert applied == len(outcome.done), f"{applied} effects applied for {len(outcome.done)} completions"
        jobs = self.jobs_by_name
        expected = sum(_effect_of(event, jobs) for event in outcome.done)
        assert effect == expected, (
            f"the jobs' effects add up to {effect}, expected {expected}: each applied once"
        )

    @property
    def jobs_by_name(self) -> dict[str, Job]:
        return {job.name: job for job in self.jobs}

    def _check_results(self, outcome: Outcome) -> None:
        backend = self.backend
        notes: dict[str, set[str]] = defaultdict(set)
        for job in self.jobs:
            assert job.message is not None
            try:
                value = job.message.get_result(backend=backend)
            except ResultFailure as failure:
                assert job.actor == "poison", f"{job.name} failed: {failure}"
                outcome.failed += 1
                continue
            except ResultMissing:
                raise AssertionError(f"{job.name} has no result: every job ends with one") from None
            assert job.actor != "poison", f"{job.name} has bad input and cannot succeed, got {value!r}"
            if job.actor == "notes":
                expected_hash = hashlib.sha256(Path(job.arg).read_bytes()).hexdigest()
                assert value["content_hash"] == expected_hash, f"{job.name}: notes of another PDF"
                notes[job.arg].add(json.dumps(value["key_points"]))
            elif job.actor in OUTCOMES:
                assert value in OUTCOMES[job.actor], f"{job.name} returned {value!r}"
            else:
                assert value == EXPECTED[job.actor](job.arg), (
                    f"{job.name} returned {value!r}: results are correct"
                )
        for path, variants in notes.items():
            assert len(variants) == 1, f"{path}: every job of one PDF gets the same notes"

    def _check_dead_letters(self, outcome: Outcome) -> None:
        letters = dead_letters(self)
        poison = {job.message.message_id for job in self.jobs if job.actor == "poison" and job.message}
        found = {}
        for letter in letters:
            failure = letter.options.get(FAILURE_OPTION) or {}
            assert letter.message_id in poison, (
                f"only bad input is dead-lettered, found {letter.actor_name} {letter.args}: {failure}"
            )
            assert failure.get("error") == "BadInput" and "not retryable" in failure.get("reason", ""), (
                failure
            )
            found[letter.message_id] = failure
        assert set(found) == poison, (
            f"every bad job is dead-lettered with its reason: {len(found)} of {len(poison)}"
        )
        outcome.dead_letters = len(letters)

    def _check_drained(self) -> None:
        if self.kind == "redis":
            client = redis.Redis.from_url(self.store.url)
            try:
                left = [k for k in client.scan_iter(f"{self.namespace}-dq:*") if not _broker_bookkeeping(k)]
                unacked = [k for k in client.scan_iter(f"{self.namespace}-dq:__acks__.*") if client.scard(k)]
            finally:
                client.close()
            assert left == [] and unacked == [], f"nothing left queued, delayed or unacked: {left} {unacked}"
        else:
            counts = rabbitmq_counts(self.producer, self.queue)
            assert counts == {self.queue: 0, f"{self.queue}.DQ": 0}, (
                f"nothing left queued or delayed: {counts}"
            )


@dataclass
class Outcome:
    """What ``FaultRun.verify`` found."""

    events: list[Event]
    reruns: int = 0
    failed: int = 0
    dead_letters: int = 0
    computations: dict[str, int] = field(default_factory=dict)
    keys_left: Counter[str] = field(default_factory=Counter)
    untimed_keys: list[str] = field(default_factory=list)

    @functools.cached_property
    def done(self) -> list[Event]:
        return [event for event in self.events if event.kind == "done"]

    @functools.cached_property
    def completions(self) -> dict[str, list[Event]]:
        by_job: dict[str, list[Event]] = defaultdict(list)
        for event in self.done:
            by_job[event.job].append(event)
        return by_job

    def summary(self) -> str:
        kinds = Counter(event.kind for event in self.events)
        return (
            f"{kinds['done']} completions, {kinds['start']} starts, {self.reruns} reruns after lost acks, "
            f"{self.failed} failed, {self.dead_letters} dead letters; suite keys left (all expire): "
            f"{dict(self.keys_left)}"
        )


def _effect_of(event: Event, jobs: dict[str, Job]) -> int:
    """What a completion adds to the effect: ``x``, or 1 for a PDF."""
    job = jobs[event.job]
    return 1 if job.actor == "notes" else int(job.arg)


def _broker_bookkeeping(key: bytes) -> bool:
    # Dramatiq's own: heartbeats of live and dead workers, and the dead-letter queue (checked apart).
    name = key.decode()
    return "__heartbeats__" in name or "__acks__" in name or ".XQ" in name


def harness_time_ms(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) / 1000


def suite_keys(server: harness.RedisServer, *, ignore: tuple[str, ...]) -> tuple[Counter[str], list[str]]:
    """The keys left on the suite's own server, by family (up to the hash tag), and those that never expire.

    Keys under the prefixes ``ignore`` names (the broker's, the app's own) are left out.
    """
    client = redis.Redis.from_url(server.url)
    try:
        families: Counter[str] = Counter()
        untimed = []
        for key in client.scan_iter(count=1000):
            name = key.decode()
            if name.startswith(ignore):
                continue
            families[name.split("{", 1)[0] + "{...}" if "{" in name else ":".join(name.split(":")[:3])] += 1
            if client.pttl(key) == -1:
                untimed.append(name)
        return families, sorted(untimed)
    finally:
        client.close()


def dead_letters(run: FaultRun) -> list[dramatiq.Message[Any]]:
    """The dead letters of the run's queue (on RabbitMQ they are consumed: call it once)."""
    if run.kind == "redis":
        client = redis.Redis.from_url(run.store.url)
        try:
            stored = client.hvals(f"{run.namespace}-dq:{run.queue}.XQ.msgs")
        finally:
            client.close()
        return [dramatiq.Message.decode(body) for body in stored]
    from dramatiq.common import xq_name

    letters = []
    assert run.producer is not None
    while True:
        method, _, body = run.producer.channel.basic_get(xq_name(run.queue), auto_ack=True)
        if method is None:
            return letters
        letters.append(dramatiq.Message.decode(body))


def rabbitmq_counts(broker: Any, queue: str) -> dict[str, int]:
    from dramatiq.common import dq_name

    counts = {}
    for name in (queue, dq_name(queue)):
        counts[name] = broker.channel.queue_declare(name, passive=True).method.message_count
    return counts


def _delete_rabbitmq_queues(broker: Any, queues: set[str]) -> None:
    from dramatiq.common import dq_name, xq_name

    for queue in queues:
        for name in (queue, dq_name(queue), xq_name(queue)):
            broker.channel.queue_delete(name)


def rss_kib(pid: int) -> int | None:
    """The resident set size of a live process in KiB (``VmRSS``), or ``None`` once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def slope_per_minute(samples: list[tuple[float, int]]) -> float:
    """The least-squares slope of ``(seconds, KiB)`` samples, in KiB per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return 60 * cov / var if var else 0.0
