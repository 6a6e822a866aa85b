"""Worker app for the fault suite (``tests/faults``): the whole stack on a recorded workload.

``install()`` puts every middleware on the broker (short leases, a fast
breaker and backoff, so faults resolve within a test); the actors cover what
the suite guards: plain jobs, cached duplicates (single-flight), a global
rate limit, a concurrency slot held by slow jobs, a flaky dependency behind a
breaker, bad input that is dead-lettered, writes to the suite's Redis, and
PDF notes through the example pipeline.  Every start and completion of an
actor body is recorded on the *records* Redis (which no test faults), timed
by that server's clock: ``tests/faults/workload.py`` reads them back.

Configured by environment:

* ``TURBO_FAULT_NS``: namespace of the records, the results and the queue.
* ``TURBO_FAULT_BROKER``: ``redis`` (default) or ``rabbitmq``;
  ``TURBO_FAULT_BROKER_URL``: its URL (a RabbitMQ URL may go through a proxy).
* ``TURBO_FAULT_STORE_URL``: the suite's Redis (cache, limits, breakers,
  stall counts, queue stats); ``TURBO_FAULT_RECORDS_URL``: records and results.
* ``TURBO_FAULT_SOCKET_TIMEOUT``: ms, the suite client's ``socket_timeout``.
* ``TURBO_FAULT_LEASE``: ms, single-flight and concurrency leases.
* ``TURBO_FAULT_HEARTBEAT``: ms, ``RedisBroker``'s ``heartbeat_timeout``.
* ``TURBO_FAULT_RETRY_INTERVAL``: ms, the cache's attempts during an outage.
* ``TURBO_FAULT_LIMIT``: starts per second of ``limited``.
* ``TURBO_FAULT_CLOCK_SKEW``: seconds added to ``time.time`` in this command.
* ``TURBO_FAULT_MODEL_URL``, ``TURBO_FAULT_NOTES_DB``: the PDF pipeline's model and database.
* ``TURBO_FAULT_TRACEMALLOC``: a file prefix; each worker process traces its
  allocations, SIGUSR1 takes a baseline and the next SIGUSR1 writes the top
  growth since to ``<prefix>-<pid>.txt`` (to find what a soak's slope is).
* ``TURBO_FAULT_BREAK``: comma-separated ways to break a guarantee on purpose,
  to see a test fail: ``twice`` (effects applied twice), ``retrying_client``
  (``write`` jobs on a redis-py client set to resend timed-out commands,
  instead of the suite's ``connect_redis`` client),
  ``local_limits`` (limits and breakers per process), ``leak`` (memory kept per job).
"""

from __future__ import annotations

import json
import os
import time

SKEW = float(os.environ.get("TURBO_FAULT_CLOCK_SKEW", "0"))


def _skew_clock(seconds: float) -> None:
    """Shift this process's wall clock; monotonic clocks stay true, as on a host whose NTP is off."""
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + seconds
    time.time_ns = lambda: real_time_ns() + int(seconds * 1e9)


# Before anything reads the clock: every later time.time() in this process is skewed.
if SKEW:
    _skew_clock(SKEW)

import dramatiq  # noqa: E402
import redis  # noqa: E402
from dramatiq.middleware import CurrentMessage  # noqa: E402
from dramatiq.results import Results  # noqa: E402
from dramatiq.results.backends import RedisBackend  # noqa: E402

from dramatiq_turbo import (  # noqa: E402
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    MultiLevelCache,
    RateLimiter,
    ResultCache,
    breaker,
    connect_redis,
    events,
    install,
)
from dramatiq_turbo.perprocess import PerProcess  # noqa: E402
from dramatiq_turbo.ratelimit import admitted_at  # noqa: E402

NS = os.environ["TURBO_FAULT_NS"]
QUEUE = NS
KIND = os.environ.get("TURBO_FAULT_BROKER", "redis")
BROKER_URL = os.environ["TURBO_FAULT_BROKER_URL"]
STORE_URL = os.environ["TURBO_FAULT_STORE_URL"]
RECORDS_URL = os.environ["TURBO_FAULT_RECORDS_URL"]
SOCKET_TIMEOUT = int(os.environ.get("TURBO_FAULT_SOCKET_TIMEOUT", "5000"))
LEASE = int(os.environ.get("TURBO_FAULT_LEASE", "1500"))
HEARTBEAT = int(os.environ.get("TURBO_FAULT_HEARTBEAT", "60000"))
RETRY_INTERVAL = int(os.environ.get("TURBO_FAULT_RETRY_INTERVAL", "500"))
LIMIT = int(os.environ.get("TURBO_FAULT_LIMIT", "20"))
BREAKS = set(filter(None, os.environ.get("TURBO_FAULT_BREAK", "").split(",")))
#: The breaker guarding ``flaky``; ``probe`` and ``trip`` share another one (see below).
FLAKY_BREAKER = "flaky-dep"
PROBE_BREAKER = "probe-dep"
RESET_TIMEOUT = 1_000


def _broker() -> dramatiq.Broker:
    if KIND == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=BROKER_URL)
    from dramatiq.brokers.redis import RedisBroker

    # A dead worker's messages come back in a maintenance pass after its
    # heartbeat times out: run the pass on every command.
    return RedisBroker(
        url=BROKER_URL, namespace=f"{NS}-dq", heartbeat_timeout=HEARTBEAT, maintenance_chance=1_000_000
    )


def _suite_client() -> redis.Redis:
    return connect_redis(STORE_URL, socket_timeout=SOCKET_TIMEOUT, connect_timeout=SOCKET_TIMEOUT)


def _retrying_client() -> redis.Redis:
    """What ``connect_redis`` must not be: a client that sends a command whose reply timed out again."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        STORE_URL,
        socket_timeout=SOCKET_TIMEOUT / 1000,
        retry_on_timeout=True,
        retry=Retry(ExponentialBackoff(cap=1, base=0.05), 10),
    )


broker = _broker()
suite = None if "local_limits" in BREAKS else _suite_client()
broker.add_middleware(
    # Results outlive the longest run (the soak's ten minutes and its checks).
    Results(backend=RedisBackend(url=RECORDS_URL, namespace=f"{NS}-results"), result_ttl=3_600_000)
)
broker.add_middleware(CurrentMessage())
install(
    broker,
    redis=suite,
    cache=ResultCache(
        cache=MultiLevelCache(
            redis=suite if suite is not None else _suite_client(),
            lease_ttl=LEASE,
            retry_interval=RETRY_INTERVAL,
        )
    ),
    rate_limit=RateLimiter(redis=suite, max_wait=3_000),
    breaker=CircuitBreaker(
        redis=suite, fail_max=4, reset_timeout=RESET_TIMEOUT, slow_call=10_000, jitter=300
    ),
    backoff=Backoff(min_backoff=100, max_backoff=1_000, max_retries=10),
)
dramatiq.set_broker(broker)

records = connect_redis(RECORDS_URL, socket_timeout=10_000)
with open(os.path.join(os.path.dirname(__file__), "fault_record.lua"), encoding="utf-8") as _file:
    _record_script = records.register_script(_file.read())
_keys = [f"{NS}:events", f"{NS}:done", f"{NS}:effect"]
_leaked: list[bytes] = []


def record(kind: str, job: str, effect: int = 0, **extra: object) -> float:
    """Log one event of ``job`` (a completion also adds its effect), timed by the records server."""
    message = CurrentMessage.get_current_message()
    message_id = message.message_id if message is not None else ""
    if kind == "start" and message is not None and hasattr(message, "redelivered"):
        # RabbitMQ's flag: it delivered this message before, and that delivery was never acked.
        extra["redelivered"] = message.redelivered
    if kind == "done" and message is not None:
        # RedisBroker's id of this delivery: the one its set of unacked messages holds.
        extra["rid"] = message.options.get("redis_message_id")
    args = [kind, job, os.getpid(), message_id, effect, json.dumps(extra)]
    now = float(_record_script(keys=_keys, args=args))
    if kind == "done" and "twice" in BREAKS:
        _record_script(keys=_keys, args=args)
    if kind == "done" and "leak" in BREAKS:
        _leaked.append(bytes(64 * 1024))
    return now


def _on_event(name: str, attributes: dict[str, object]) -> None:
    # Breaker transitions and refusals, with the process that saw them.
    if name == "breaker.state":
        record("state", str(attributes["breaker"]), old=attributes["previous"], new=attributes["state"])


events.add_listener(_on_event)


def _trace_memory(path: str) -> None:
    """``TURBO_FAULT_TRACEMALLOC=<prefix>``: SIGUSR1 takes a baseline, the next writes what grew since."""
    import signal
    import tracemalloc

    tracemalloc.start(8)
    baseline: list[tracemalloc.Snapshot] = []

    def dump(signum: int, frame: object) -> None:
        snapshot = tracemalloc.take_snapshot()
        if not baseline:
            baseline.append(snapshot)
            return
        top = snapshot.compare_to(baseline[0], "traceback")[:15]
        with open(f"{path}-{os.getpid()}.txt", "w", encoding="utf-8") as out:
            for stat in top:
                out.write(f"{stat}\n" + "\n".join(stat.traceback.format()) + "\n\n")

    signal.signal(signal.SIGUSR1, dump)


class _TraceOnBoot(dramatiq.Middleware):
    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        _trace_memory(os.environ["TURBO_FAULT_TRACEMALLOC"])


if os.environ.get("TURBO_FAULT_TRACEMALLOC"):
    broker.add_middleware(_TraceOnBoot())


class DependencyDown(ConnectionError):
    """The flaky dependency is down (while the test says so)."""


class BadInput(Exception):
    """Input no retry can fix: dead-lettered at once."""

    retryable = False


def _dependency(job: str) -> None:
    record("call", job)
    if records.get(f"{NS}:dependency") == b"down":
        raise DependencyDown("dependency is down")


@dramatiq.actor(queue_name=QUEUE, store_results=True)
def plain(job: str, x: int) -> int:
    record("start", job)
    time.sleep(0.005 + (x % 4) / 200)
    record("done", job, x)
    return 2 * x


@dramatiq.actor(queue_name=QUEUE, store_results=True, cache=True, cache_key=lambda job, x: f"square:{x}")
def cached(job: str, x: int) -> int:
    # Duplicates (same x, other jobs) are served from the cache: the body runs once per x.
    record("start", job, key=x)
    time.sleep(0.2)
    record("done", job, x, key=x)
    return x * x


@dramatiq.actor(queue_name=QUEUE, store_results=True, rate_limit=(LIMIT, 1_000))
def limited(job: str, x: int) -> int:
    message = CurrentMessage.get_current_message()
    record("start", job, admitted=admitted_at(message))
    record("done", job, x)
    return x + 1


@dramatiq.actor(
    queue_name=QUEUE,
    store_results=True,
    cache=True,
    cache_key=lambda job, x: f"slow:{x}",
    rate_limit={"concurrency": 2, "lease": LEASE},
)
def slow(job: str, x: int) -> int:
    # Holds a single-flight lease and a concurrency slot for a while: a kill lands here.
    record("start", job, key=x)
    time.sleep(1.2)
    record("done", job, x, key=x)
    return 10 * x


@dramatiq.actor(queue_name=QUEUE, store_results=True, breaker=FLAKY_BREAKER)
def flaky(job: str, x: int) -> int:
    record("start", job)
    _dependency(job)
    record("done", job, x)
    return 3 * x


@dramatiq.actor(queue_name=QUEUE, store_results=True)
def poison(job: str, x: int) -> int:
    record("start", job)
    raise BadInput(f"job {job} has bad input")


@dramatiq.actor(queue_name=QUEUE, store_results=True)
def write(job: str, x: int) -> int:
    """One INCR on the suite's Redis per attempt, each send recorded: a hidden resend would show."""
    record("start", job)
    record("send", job)
    started = time.monotonic()
    try:
        writer().hincrby(f"fault:{NS}:writes", job, 1)
    except redis.RedisError as error:
        record("timeout", job, error=type(error).__name__, ms=round((time.monotonic() - started) * 1000))
        raise
    record("done", job, x)
    return x


def suite_or_local() -> redis.Redis:
    return suite if suite is not None else _suite_client()


_writers = PerProcess(_retrying_client)


def writer() -> redis.Redis:
    """The suite's client (``connect_redis``); with ``retrying_client``, one that resends after a timeout."""
    return _writers.get() if "retrying_client" in BREAKS else suite_or_local()


# The clock-skew test routes these by queue: ``trip`` runs only in processes
# with a true clock, ``probe`` only in the skewed ones, so the probe sees a
# breaker another process opened.  Both catch what they provoke: no retry,
# no deferral (whose delays Dramatiq times by each process's own clock).
if SKEW:

    @dramatiq.actor(queue_name=f"{QUEUE}-probe", store_results=True)
    def probe(job: str, x: int) -> str:
        record("start", job)
        try:
            with breaker(PROBE_BREAKER):
                record("call", job)
        except CircuitOpenError:
            record("done", job, x, refused=True)
            return "refused"
        record("done", job, x, refused=False)
        return "called"

else:

    @dramatiq.actor(queue_name=f"{QUEUE}-trip", store_results=True)
    def trip(job: str, x: int) -> str:
        record("start", job)
        try:
            with breaker(PROBE_BREAKER):
                raise DependencyDown("the probed dependency is down")
        except (DependencyDown, CircuitOpenError) as error:
            record("done", job, x, error=type(error).__name__)
            return type(error).__name__


def _pipeline() -> object:
    from examples.pdf_notes.model import ChatModel
    from examples.pdf_notes.pipeline import NotesPipeline, Settings, llm_gate
    from examples.pdf_notes.storage import open_store

    settings = Settings(chunk_tokens=120, overlap=12, chunk_concurrency=4, ocr=False, max_bytes=200_000)
    return NotesPipeline(
        model=ChatModel(base_url=os.environ["TURBO_FAULT_MODEL_URL"], around_request=llm_gate(settings)),
        store=open_store(os.environ["TURBO_FAULT_NOTES_DB"]),
        cache=MultiLevelCache(redis=suite_or_local(), namespace="turbo:notes", lease_ttl=LEASE),
        settings=settings,
    )


pipelines = PerProcess(_pipeline)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=10)
def notes(job: str, path: str) -> dict[str, object]:
    """The PDF-notes pipeline's job (``examples/pdf_notes``), recorded like the others."""
    record("start", job)
    answer = pipelines.get().run(path)  # type: ignore[attr-defined]
    record("done", job, 1, cached=answer["cached"])
    return {"content_hash": answer["content_hash"], "key_points": answer["key_points"]}
