"""Worker app for the breaker proofs: an actor guarded by a shared breaker, calling a switchable dependency.

Configured by environment: ``TURBO_TEST_REDIS_URL``, ``TURBO_TEST_NAMESPACE``,
``TURBO_TEST_BREAKER_REDIS_URL`` (the breakers' store, default the same),
``TURBO_TEST_BROKER`` (``redis`` or ``rabbitmq``), ``TURBO_TEST_QUEUE``, and
for RabbitMQ ``TURBO_TEST_RABBITMQ_URL``.  The dependency's mode lives in
Redis (``<ns>:mode``: ``fail``, ``ok`` or ``flap``); every call to it, every
completion and every breaker transition is logged to Redis with Redis time.
"""

import json
import os
import random
import time

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from dramatiq_turbo import Backoff, CircuitBreaker, events, install
from dramatiq_turbo.breaker import current_admission
from dramatiq_turbo.defer import deferral_count

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]
QUEUE = os.environ["TURBO_TEST_QUEUE"]
KIND = os.environ.get("TURBO_TEST_BROKER", "redis")

if KIND == "rabbitmq":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=os.environ["TURBO_TEST_RABBITMQ_URL"])
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(
        url=REDIS_URL, namespace=NAMESPACE, maintenance_chance=1_000_000, heartbeat_timeout=5_000
    )

broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL, namespace=f"{NAMESPACE}-results")))
broker.add_middleware(CurrentMessage())
install(
    broker,
    redis=REDIS_URL,
    cache=False,
    rate_limit=False,
    telemetry=False,
    backoff=Backoff(
        min_backoff=50, max_backoff=300, max_retries=int(os.environ.get("TURBO_TEST_MAX_RETRIES", "50"))
    ),
    breaker=CircuitBreaker(
        # The breakers' store may be another server, which an outage test stops.
        redis=os.environ.get("TURBO_TEST_BREAKER_REDIS_URL", REDIS_URL),
        fail_max=3,
        reset_timeout=1_500,
        slow_call=5_000,
        half_open_calls=int(os.environ.get("TURBO_TEST_HALF_OPEN_CALLS", "1")),
        jitter=300,
        namespace=f"{NAMESPACE}:breaker",
    ),
)
dramatiq.set_broker(broker)
store = redis.Redis.from_url(REDIS_URL)


def _now_ms() -> int:
    seconds, micros = store.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _on_event(name, attributes):
    if name == "breaker.state":
        store.rpush(
            f"{NAMESPACE}:transitions",
            json.dumps([_now_ms(), attributes["previous"], attributes["state"], os.getpid()]),
        )


events.add_listener(_on_event)


class NotRetryable(Exception):
    retryable = False


def dependency(x: int) -> int:
    """The external service: logs every call it receives, with the breaker state that admitted it."""
    mode = (store.get(f"{NAMESPACE}:mode") or b"ok").decode()
    admission = current_admission()
    admitted_in = None if admission is None else [admission.state, admission.generation]
    store.rpush(f"{NAMESPACE}:calls", json.dumps([_now_ms(), x, mode, admitted_in, os.getpid()]))
    if mode == "fail":
        raise ConnectionError("dependency is down")
    # A slow dependency keeps trial calls in flight together (TURBO_TEST_CALL_MS, 0 by default).
    time.sleep(int(os.environ.get("TURBO_TEST_CALL_MS", "0")) / 1000)
    if mode == "flap":
        if x % 10 == 0:
            raise NotRetryable(f"input {x} is invalid")
        if random.random() < 0.5:
            raise ConnectionError("dependency flapped")
    return 2 * x


@dramatiq.actor(queue_name=QUEUE, breaker="dep", store_results=True)
def guarded(x: int) -> int:
    message = CurrentMessage.get_current_message()
    result = dependency(x)
    store.rpush(
        f"{NAMESPACE}:done",
        json.dumps([x, message.message_id, message.options.get("retries", 0), deferral_count(message)]),
    )
    return result


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=4)
def flapping(x: int) -> int:
    result = dependency(x)
    store.rpush(f"{NAMESPACE}:done", json.dumps([x, CurrentMessage.get_current_message().message_id]))
    return result
