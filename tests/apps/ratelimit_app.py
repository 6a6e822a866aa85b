"""Worker app for the rate-limit proofs: limited actors that log every start to Redis.

Configured by environment:

* ``TURBO_TEST_REDIS_URL``, ``TURBO_TEST_NAMESPACE`` (keys, queue and limiter namespace);
* ``TURBO_TEST_BROKER``: ``redis`` (default) or ``rabbitmq`` (``TURBO_TEST_RABBITMQ_URL``);
* ``TURBO_TEST_RATE_LIMIT``: the JSON ``rate_limit`` of ``limited``;
* ``TURBO_TEST_CONCURRENCY_LEASE``: lease (ms) of ``concurrent``'s one slot;
* ``TURBO_TEST_MAX_WAIT``: the limiter's ``max_wait``.

Each start is logged with the limiter's admission time (Redis time), the
Redis time at the top of the actor body (both in ms with microseconds, so
the gap between them is measured, not rounded), the pid and the message's
retries and deferrals.
"""

import json
import os
import time

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage

from dramatiq_turbo import install
from dramatiq_turbo.defer import deferral_count
from dramatiq_turbo.ratelimit import RateLimiter, admitted_at
from dramatiq_turbo.redis import connect_redis

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]
QUEUE = NAMESPACE

if os.environ.get("TURBO_TEST_BROKER", "redis") == "rabbitmq":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=os.environ["TURBO_TEST_RABBITMQ_URL"])
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(
        url=REDIS_URL,
        namespace=NAMESPACE,
        # A killed worker's message comes back after 2 s, in a maintenance
        # pass that runs on every command.
        heartbeat_timeout=2_000,
        maintenance_chance=1_000_000,
    )
broker.add_middleware(CurrentMessage())
limiter = RateLimiter(
    redis=connect_redis(REDIS_URL),
    namespace=f"{NAMESPACE}:rl",
    max_wait=int(os.environ.get("TURBO_TEST_MAX_WAIT", "1000")),
)
install(broker, rate_limit=limiter, cache=False, breaker=False, backoff=False, telemetry=False)
dramatiq.set_broker(broker)
store = redis.Redis.from_url(REDIS_URL)


def redis_now_ms() -> float:
    """Redis ``TIME`` in ms with microseconds: the clock the limiter's admission times come from."""
    seconds, micros = store.time()
    return seconds * 1000 + micros / 1000


def log_start(job: str, **extra: object) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    entry = {
        "job": job,
        "admitted": admitted_at(message),
        "body": redis_now_ms(),
        "pid": os.getpid(),
        "retries": message.options.get("retries", 0),
        "deferrals": deferral_count(message),
        **extra,
    }
    store.rpush(f"{NAMESPACE}:starts", json.dumps(entry))


RATE_LIMIT = json.loads(os.environ.get("TURBO_TEST_RATE_LIMIT", "[30, 1000]"))


@dramatiq.actor(queue_name=QUEUE, max_retries=3, rate_limit=RATE_LIMIT)
def limited(job: str) -> None:
    log_start(job)
    store.incr(f"{NAMESPACE}:runs:{job}")


def customer_key(message: dramatiq.Message) -> str:
    return f"customer:{message.args[0]}"


@dramatiq.actor(
    queue_name=QUEUE, max_retries=3, rate_limit={"max": 10, "duration": 1000, "key": customer_key}
)
def per_customer(customer: str, job: str) -> None:
    log_start(job, customer=customer)
    store.incr(f"{NAMESPACE}:runs:{job}")


LEASE = int(os.environ.get("TURBO_TEST_CONCURRENCY_LEASE", "1500"))


@dramatiq.actor(queue_name=QUEUE, max_retries=0, rate_limit={"concurrency": 1, "lease": LEASE})
def concurrent(job: str, seconds: float = 0.05, hang_first_time: bool = False) -> None:
    delivery = store.incr(f"{NAMESPACE}:deliveries:{job}")
    running = store.incr(f"{NAMESPACE}:running")
    try:
        store.rpush(f"{NAMESPACE}:overlap", running)
        log_start(job, delivery=delivery)
        if hang_first_time and delivery == 1:
            store.set(f"{NAMESPACE}:hanging", os.getpid())
            time.sleep(300)  # killed long before this ends
        time.sleep(seconds)
    finally:
        store.decr(f"{NAMESPACE}:running")
    store.incr(f"{NAMESPACE}:runs:{job}")
