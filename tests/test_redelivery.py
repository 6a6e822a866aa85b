"""A worker killed mid-job loses nothing: another worker completes its message."""

from __future__ import annotations

import time

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_turbo.redis import hash_key
from tests.harness import REDIS_URL, send_by_name, unique, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]


@pytest.mark.parametrize("suite", [False, True], ids=["dramatiq", "install"])
def test_sigkilled_worker_message_is_redelivered_and_completed(
    suite: bool, redis_client: redis.Redis, worker_processes
):
    """Dramatiq alone (a check of the harness), and with ``install()``: the killed job's cache lease
    and concurrency slot are released by expiry, and nothing runs twice after the redelivery."""
    namespace = unique("crash")
    env = {
        "TURBO_TEST_REDIS_URL": REDIS_URL,
        "TURBO_TEST_NAMESPACE": namespace,
        "TURBO_TEST_INSTALL": "1" if suite else "0",
    }
    producer = RedisBroker(url=REDIS_URL, namespace=namespace)
    first = worker_processes("tests.apps.crash", processes=1, threads=1, env=env)
    [doomed] = first.start(1)
    try:
        send_by_name(producer, "record_run", "job-1", True)
        send_by_name(producer, "record_run", "job-2")  # prefetched behind job-1 (one thread)
        wait_for(lambda: redis_client.get(f"{namespace}:deliveries:job-1"), timeout=20, what="job-1 to start")
        [killed_pid] = [int(pid) for pid in redis_client.lrange(f"{namespace}:runs:job-1", 0, -1)]

        first.kill(doomed)  # SIGKILL to the whole tree, mid-job: no ack, no cleanup
        if suite:
            # The dead worker still holds job-1's concurrency slot: only its lease's expiry frees it.
            slot = hash_key("turbo:rl", "queue:default", "leases")
            assert redis_client.zcard(slot) == 1, "the killed job's slot is held"

        second = worker_processes("tests.apps.crash", processes=1, threads=1, env=env)
        second.start(1)
        wait_for(
            lambda: redis_client.llen(f"{namespace}:done") >= 2,
            timeout=40,
            what="both jobs to be completed by the second worker",
        )
        time.sleep(1.5)  # a late duplicate run would show by now
        second.stop()

        done = sorted(item.decode() for item in redis_client.lrange(f"{namespace}:done", 0, -1))
        assert done == ["job-1", "job-2"], "each job completes exactly once"
        runs = [int(pid) for pid in redis_client.lrange(f"{namespace}:runs:job-1", 0, -1)]
        assert len(runs) == 2, "job-1 ran once in the killed worker, once in the second"
        assert runs[0] == killed_pid and runs[1] != killed_pid
        # Nothing left in the broker: no queued, delayed, dead or unacked message.
        assert redis_client.llen(f"{namespace}:default") == 0
        assert redis_client.hlen(f"{namespace}:default.msgs") == 0
        assert redis_client.zcard(f"{namespace}:default.XQ") == 0
        unacked = [
            key for key in redis_client.scan_iter(f"{namespace}:__acks__.*") if redis_client.scard(key)
        ]
        assert unacked == []
        if suite:
            assert redis_client.zcard(slot) == 0, "the slot came back, and the second worker's went back"
    finally:
        producer.close()
        for pattern in (f"{namespace}:*", "turbo:rl:{queue:default}*", "turbo:breaker:*"):
            for key in redis_client.scan_iter(pattern):
                redis_client.delete(key)
