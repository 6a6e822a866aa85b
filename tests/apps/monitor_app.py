"""Worker app for the monitor's proofs: jobs that sleep, counted by ``QueueStatsRecorder``.

Configured by environment: ``TURBO_TEST_REDIS_URL``, ``TURBO_TEST_NAMESPACE``
(the broker's), ``TURBO_TEST_MONITOR_NAMESPACE`` (the counters'),
``TURBO_TEST_QUEUE`` and ``TURBO_TEST_SLEEP_MS``.  Each run records its start
and end (epoch ms) in ``<namespace>:runs``, so the test can check the
monitor's figures against its own.
"""

import json
import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, CurrentMessage

from dramatiq_turbo.monitor import QueueStatsRecorder

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]
QUEUE = os.environ["TURBO_TEST_QUEUE"]
SLEEP_MS = int(os.environ.get("TURBO_TEST_SLEEP_MS", "60"))

broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
recorder = QueueStatsRecorder(namespace=os.environ["TURBO_TEST_MONITOR_NAMESPACE"], flush_interval=200)
# Before Dramatiq's defaults, as install() places it: its after hooks then see the outcome.
broker.add_middleware(recorder, before=AgeLimit)
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)
store = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def work(number: int) -> None:
    start = time.time() * 1000
    message = CurrentMessage.get_current_message()
    time.sleep(SLEEP_MS / 1000)
    end = time.time() * 1000
    due = message.message_timestamp if message is not None else start
    store.rpush(f"{NAMESPACE}:runs", json.dumps({"number": number, "wait": start - due, "run": end - start}))
