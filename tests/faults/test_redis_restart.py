"""Redis crashes and comes back mid-run: the suite degrades as documented and recovers in the same workers.

The suite's Redis (a durable private server: its append-only file is
fsynced before each reply) is killed for 3 s while the workload runs, then
started again on the same port.  On ``RedisBroker`` it is the broker's
server too, so the workers also lose their queues for that time.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
import redis

from tests.faults.workload import Event, FaultRun, Job, Mix, jobs_of
from tests.ratelimit.test_multiprocess import max_in_window

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

DOWN_SECONDS = 3
LIMIT = 20
#: The components that fall back to per-process state, and log it, when Redis is down (docs/resilience.md,
#: cache.md, ratelimit.md).
#: Instances of each component in one worker process of the app: the notes pipeline has a cache of its own.
INSTANCES = {"cache": 2}
COMPONENTS = {"cache": ("cached-", "slow-", "notes-"), "rate_limit": ("limited-", "slow-")}
UNREACHABLE = re.compile(r"\[PID (\d+)\] .*?\] (\w+): Redis is unreachable")
REACHABLE = re.compile(r"\[PID (\d+)\] .*?\] (\w+): Redis is reachable again")


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_redis_restart_degrades_and_recovers_without_a_worker_restart(kind, fault_run, pdfs):
    run: FaultRun = fault_run(kind, TURBO_FAULT_SOCKET_TIMEOUT="1000", TURBO_FAULT_LIMIT=str(LIMIT))
    run.start_workers(2)
    pids = set(run.worker_pids())
    # Sent before the crash: the producer is not the subject here (its own client has no fallback).
    run.send(jobs_of(Mix(), run.queue, pdfs), per_second=250, background=False)
    run.wait_until_done(150, timeout=30)

    if kind == "rabbitmq":
        # Work that arrives during the outage (the broker is up): it must go on completing.
        during_jobs = [Job(f"plain-during-{i}", "plain", 10_000 + i, run.queue) for i in range(150)]
        run.send(during_jobs, per_second=40)
    down_at = run.now()
    run.store.stop()
    time.sleep(DOWN_SECONDS)
    run.store.start()
    up_at = run.now()

    # Work for the cache and the limiter after the restart, with keys the cache never saw.
    after = [Job(f"limited-after-{i}", "limited", 1_000 + i, run.queue) for i in range(40)]
    after += [Job(f"cached-after-{i}", "cached", 100 + i % 10, run.queue) for i in range(20)]
    run.send(after, background=False)

    run.wait_outcomes(timeout=90)
    outcome = run.verify(extra_computations=lambda key: len(pids))  # L1 only while down: once per process
    store = redis.Redis.from_url(run.store.url)
    try:
        shared = [x for x in range(100, 110) if store.exists(f"turbo:cache:{{cached:square:{x}}}")]
    finally:
        store.close()
    assert len(shared) == 10, f"results computed after the restart are in Redis again (L2): {shared}"
    assert set(run.worker_pids()) == pids, "the same worker processes finished the run: none was restarted"
    later = [e for e in outcome.done if e.at > up_at]
    assert {e.pid for e in later} <= pids and later, "jobs completed after the restart, in the same processes"
    if kind == "rabbitmq":
        during = [e for e in outcome.done if down_at + 1_000 < e.at < up_at]
        assert during, "with the broker up, jobs kept completing while the suite's Redis was down"
    _assert_outage_logged_once_and_recovered(run.output(), pids, _used_after(outcome.events, up_at + 1_500))
    _assert_limits(outcome.events, down_at, up_at)
    print(
        f"\n{kind}: down {up_at - down_at:.0f} ms; {outcome.summary()}; computations {outcome.computations}"
    )


def _used_after(events: list[Event], since: float) -> set[tuple[int, str]]:
    """(pid, component) for each process that ran a job using the component after ``since``."""
    return {
        (e.pid, component)
        for e in events
        if e.kind == "start" and e.at > since
        for component, prefixes in COMPONENTS.items()
        if e.job.startswith(prefixes)
    }


def _assert_outage_logged_once_and_recovered(output: str, pids: set[int], used: set[tuple[int, str]]) -> None:
    down = Counter((int(pid), component) for pid, component in UNREACHABLE.findall(output))
    back = Counter((int(pid), component) for pid, component in REACHABLE.findall(output))
    for component in COMPONENTS:
        assert any(c == component for _, c in down), f"{component}: the outage was logged ({dict(down)})"
    repeated = {key: n for key, n in down.items() if n > INSTANCES.get(key[1], 1)}
    lines = [line for line in output.splitlines() if "Redis is" in line]
    assert not repeated, f"one warning per process, component and outage: {repeated}:\n" + "\n".join(lines)
    # A component notices Redis is back at its next call: every process that used it again did.
    unrecovered = (set(down) & used) - set(back)
    assert not unrecovered, (
        f"each component noted Redis back by itself, in every process: missing {unrecovered}"
    )
    assert {pid for pid, _ in down} <= pids


def _assert_limits(events: list[Event], down_at: float, up_at: float) -> None:
    """The limit is global while Redis answers, per process while it is down (docs/ratelimit.md).

    Admission times are Redis time from the shared store, and each process's
    own monotonic clock from its local store: two scales that never share a
    window, so one list holds both and the limit is exact on each.
    """
    starts = [e for e in events if e.kind == "start" and e.job.startswith("limited-")]
    shared = [e.extra["admitted"] for e in starts if not down_at <= e.at <= up_at]
    assert max_in_window(shared, 1_000) <= LIMIT, "the global limit holds before the crash and after it"
    by_pid: dict[int, list[float]] = {}
    for e in starts:
        if down_at <= e.at <= up_at:
            by_pid.setdefault(e.pid, []).append(e.extra["admitted"])
    for pid, times in by_pid.items():
        assert max_in_window(times, 1_000) <= LIMIT, f"process {pid} kept its own limit while Redis was down"
