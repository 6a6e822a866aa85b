"""A graceful shutdown lets running messages finish, and their concurrency slots stay theirs until then."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq import Worker

from dramatiq_turbo.ratelimit import RateLimiter
from dramatiq_turbo.redis import connect_redis, hash_key
from tests.harness import unique, wait_for

pytestmark = pytest.mark.integration


def test_a_running_message_keeps_its_slot_through_a_graceful_shutdown(make_broker, redis_url):
    namespace = unique("shutdown")
    client = connect_redis(redis_url)
    broker = make_broker("stub")
    broker.add_middleware(RateLimiter(redis=client, namespace=namespace))
    queue = unique("shutdown")
    running, finished = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name=queue, rate_limit={"concurrency": 1, "lease": 300})
    def long_job() -> None:
        running.set()
        time.sleep(1.5)  # five leases long: alive only because they are renewed
        finished.set()

    slot = hash_key(namespace, "actor:long_job", "leases")
    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        long_job.send()
        assert running.wait(5)
        stopping = threading.Thread(target=worker.stop, kwargs={"timeout": 10_000})
        stopping.start()  # graceful: the running message is let finish
        held = []
        while not finished.is_set():
            held.append(client.zcard(slot))
            time.sleep(0.05)
        stopping.join(15)
        assert held and min(held) == 1, f"the slot stayed held while the message ran: {held}"
        assert len(held) >= 10, "sampled over several lease periods"
        wait_for(lambda: client.zcard(slot) == 0, timeout=5, what="the slot to be given back at the end")
    finally:
        if worker.consumers:
            worker.stop()
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()
