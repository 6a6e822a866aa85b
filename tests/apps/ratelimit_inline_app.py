"""Worker app for the ``rate_limit()`` proofs: actors whose code takes limited blocks, logged to Redis.

Configured by environment:

* ``TURBO_TEST_REDIS_URL``, ``TURBO_TEST_NAMESPACE`` (keys, queue and limiter namespace);
* ``TURBO_TEST_CONCURRENCY``: the ``concurrency`` of ``overlapping``'s block (default 3);
* ``TURBO_TEST_LEASE``: its lease in ms (default 400: blocks outlive it, so renewals must hold it).

Each admission is logged with the store's decision time (Redis ``TIME``, the
clock every process shares) and each concurrency block with the Redis time
just before it leaves, still inside its slot.
"""

import json
import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_turbo import RateLimiter, RateLimitTimeout, install, rate_limit
from dramatiq_turbo.redis import connect_redis

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]
QUEUE = NAMESPACE
CONCURRENCY = int(os.environ.get("TURBO_TEST_CONCURRENCY", "3"))
LEASE = int(os.environ.get("TURBO_TEST_LEASE", "400"))

broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
limiter = RateLimiter(redis=connect_redis(REDIS_URL), namespace=f"{NAMESPACE}:rl")
install(broker, rate_limit=limiter, cache=False, breaker=False, backoff=False, telemetry=False)
dramatiq.set_broker(broker)
store = redis.Redis.from_url(REDIS_URL)


def redis_now() -> float:
    """Redis time in ms, with µs, like the store's decision time."""
    seconds, microseconds = store.time()
    return int(seconds) * 1000 + int(microseconds) / 1000


def note_timeout(job: str, error: RateLimitTimeout) -> None:
    store.rpush(f"{NAMESPACE}:timeouts", json.dumps({"job": job, "error": str(error)}))


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def calls(job: str, count: int) -> None:
    """``count`` calls of one shared API, at most 20 per second across every process."""
    limit = rate_limit("shared-api", max=20, duration=1_000)
    try:
        for call in range(count):
            with limit as permit:
                entry = {"job": job, "call": call, "admitted": permit.admitted_at, "shared": permit.shared}
                store.rpush(f"{NAMESPACE}:admissions", json.dumps({**entry, "pid": os.getpid()}))
    except RateLimitTimeout as error:
        note_timeout(job, error)
        raise
    store.incr(f"{NAMESPACE}:done")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def overlapping(job: str, seconds: float) -> None:
    """One block of ``seconds``, at most ``CONCURRENCY`` running at once across every process."""
    try:
        with rate_limit("shared-db", concurrency=CONCURRENCY, lease=LEASE) as permit:
            time.sleep(seconds)
            span = {"job": job, "enter": permit.admitted_at, "exit": redis_now(), "pid": os.getpid()}
            store.rpush(f"{NAMESPACE}:spans", json.dumps(span))
    except RateLimitTimeout as error:
        note_timeout(job, error)
        raise
    store.incr(f"{NAMESPACE}:done")
