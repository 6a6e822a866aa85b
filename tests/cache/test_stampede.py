"""Single-flight across real processes: 8 processes x 4 threads miss one cold key at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import harness

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]


def _spawn(ns: str, count: int, **settings: str) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, **harness.SERVICE_ENV, "PYTHONPATH": str(harness.ROOT), "CACHE_NS": ns, **settings}
    return [
        subprocess.Popen([sys.executable, "-m", "tests.apps.cache_caller"], cwd=harness.ROOT, env=env)
        for _ in range(count)
    ]


def _reports(client, ns: str) -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(f"{ns}:reports", 0, -1)]


@pytest.fixture
def callers():
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_8_processes_x_4_threads_compute_a_cold_key_once(redis_client, callers):
    ns = harness.unique("cache")
    callers += _spawn(ns, 8, CACHE_THREADS="4", CACHE_WORK="1.0")
    harness.wait_for(lambda: redis_client.llen(f"{ns}:ready") == 8, timeout=60, what="8 caller processes")
    redis_client.set(f"{ns}:go", 1)
    harness.wait_for(
        lambda: redis_client.llen(f"{ns}:reports") == 32, timeout=30, what="32 callers to return"
    )

    reports = _reports(redis_client, ns)
    assert int(redis_client.get(f"{ns}:computations")) == 1
    computers = [r for r in reports if r["computed"]]
    assert len(computers) == 1
    # Every caller got the one computed value.
    assert {json.dumps(r["value"], sort_keys=True) for r in reports} == {
        json.dumps(computers[0]["value"], sort_keys=True)
    }
    assert len({r["pid"] for r in reports}) == 8
    waiting = [r for r in reports if not r["computed"]]
    per_caller = [r["commands"] for r in waiting]
    print(
        f"\nstampede 8x4: computations=1, waiting callers={len(waiting)}, "
        f"commands per waiting caller: max={max(per_caller)} mean={sum(per_caller) / len(per_caller):.2f} "
        f"total={sum(per_caller)}; computer issued {computers[0]['commands']}"
    )
    assert max(per_caller) <= 10
    # Only one thread per process talks to Redis; the others wait in-process and send nothing.
    assert sum(1 for n in per_caller if n == 0) >= 32 - 8
    # Nobody waited much longer than the computation itself.
    assert max(r["seconds"] for r in reports) < 5
    for proc in callers:
        assert proc.wait(timeout=20) == 0


def test_a_dead_computers_lease_expires_and_a_waiter_takes_over(redis_client, callers):
    ns = harness.unique("cache")
    # The first process computes for 60 s (it is killed long before).
    first = _spawn(ns, 1, CACHE_THREADS="1", CACHE_WORK="60", CACHE_LEASE_TTL="1000")
    callers += first
    harness.wait_for(lambda: redis_client.llen(f"{ns}:ready") == 1, timeout=30, what="the first caller")
    redis_client.set(f"{ns}:go", 1)
    harness.wait_for(lambda: redis_client.get(f"{ns}:computations"), timeout=10, what="the first computation")
    # Two more processes arrive and wait for it.
    others = _spawn(ns, 2, CACHE_THREADS="2", CACHE_WORK="0.2", CACHE_LEASE_TTL="1000")
    callers += others
    harness.wait_for(lambda: redis_client.llen(f"{ns}:ready") == 3, timeout=30, what="the waiting callers")
    time.sleep(0.5)
    assert redis_client.llen(f"{ns}:reports") == 0  # they wait
    killed_at = time.monotonic()
    os.kill(first[0].pid, signal.SIGKILL)

    harness.wait_for(
        lambda: redis_client.llen(f"{ns}:reports") == 4, timeout=15, what="the waiters to finish"
    )
    took_over_after = time.monotonic() - killed_at
    reports = _reports(redis_client, ns)
    # One waiter took over (the lease expired within lease_ttl); the other three got its value.
    assert int(redis_client.get(f"{ns}:computations")) == 2
    assert sum(r["computed"] for r in reports) == 1
    assert len({json.dumps(r["value"], sort_keys=True) for r in reports}) == 1
    assert took_over_after < 4
    assert max(r["commands"] for r in reports if not r["computed"]) <= 10
