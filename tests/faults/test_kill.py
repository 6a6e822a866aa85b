"""A worker SIGKILLed mid-job: its messages are redelivered and completed, its leases expire, nothing is lost.

On ``RedisBroker`` the whole ``dramatiq`` command is killed (a host crash);
its messages come back once its heartbeat times out.  On ``RabbitmqBroker``
one worker process of a command is killed (an out-of-memory kill); RabbitMQ
returns its unacked messages when its connections drop, and Dramatiq shuts
the rest of that command down.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from tests import harness
from tests.faults.workload import Event, FaultRun, Mix, jobs_of

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

LEASE = 1_500


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_sigkilled_worker_loses_nothing_and_its_leases_expire(kind, fault_run, pdfs):
    run: FaultRun = fault_run(kind, TURBO_FAULT_LEASE=str(LEASE), TURBO_FAULT_HEARTBEAT="2500")
    groups = [run.start_workers(1), run.start_workers(1)]
    run.send(jobs_of(Mix(), run.queue, pdfs))
    group, slow_job = _victim(run, groups)
    store = redis.Redis.from_url(run.store.url)
    try:
        if kind == "redis":
            # Frozen first, so what it holds can be read before it dies: a freeze then a kill is one crash.
            victims = set(group.worker_pids())
            group.kill(group.popen[0], signal.SIGSTOP)
            time.sleep(0.3)  # writes already on the wire land
            held = _held(store)
            unacked = _unacked(store, run)
            killed_at = run.now()
            group.kill(group.popen[0])
        else:
            victims = {slow_job.pid}
            held = _held(store)
            killed_at = run.now()
            os.kill(slow_job.pid, signal.SIGKILL)
            unacked = None
        # A slot is named by its message's id: keep those of the jobs the dead process was running.
        dead_jobs = {e.message_id for e in run.running("slow").values() if e.pid in victims}
        held.slots = {
            slot: expiry for slot, expiry in held.slots.items() if slot[1].split(":")[0] in dead_jobs
        }
        assert held.cache_leases and held.slots, (
            f"the killed job held a single-flight lease and a slot: {held}"
        )

        run.wait_outcomes(timeout=90)
        outcome = run.verify(
            explained=lambda event: _lost_ack(event, victims, unacked, killed_at),
            extra_computations=lambda key: _victim_computations(run, victims, key),
        )
        _assert_leases_expired(run, store, held, slow_job, killed_at)
        _assert_slot_held_until_expiry(run, held, victims, killed_at)
        print(f"\n{kind}: killed {sorted(victims)} at {killed_at:.0f}; {outcome.summary()}")
    finally:
        store.close()


def _victim(run: FaultRun, groups: list[harness.WorkerProcesses]) -> tuple[harness.WorkerProcesses, Event]:
    """The command running a slow job (for 0.3 s at least: it holds its lease and slot by then)."""

    def find() -> tuple[harness.WorkerProcesses, Event] | None:
        now = run.now()
        for event in run.running("slow").values():
            if now - event.at < 300:
                continue
            for group in groups:
                if event.pid in group.worker_pids():
                    return group, event
        return None

    found: tuple[harness.WorkerProcesses, Event] = harness.wait_for(
        find, timeout=30, interval=0.05, what="a slow job to run"
    )
    return found


class Held:
    """The leases on the suite's Redis at the kill: ``{key: pttl}`` and ``{(key, member): expiry}``."""

    def __init__(self, cache_leases: dict[str, int], slots: dict[tuple[str, str], float]) -> None:
        self.cache_leases = cache_leases
        self.slots = slots

    def __repr__(self) -> str:
        return f"Held(cache_leases={self.cache_leases}, slots={self.slots})"


def _held(store: redis.Redis) -> Held:
    leases = {
        key.decode(): store.pttl(key) for key in store.scan_iter("turbo:cache:{slow:*}:lease", count=1000)
    }
    slots = {}
    for key in store.scan_iter("turbo:rl:*slow*:leases", count=1000):
        for member, expiry in store.zrange(key, 0, -1, withscores=True):
            slots[(key.decode(), member.decode())] = expiry
    return Held(leases, slots)


def _unacked(store: redis.Redis, run: FaultRun) -> set[str]:
    """RedisBroker's ids of every delivery not acked yet, in any worker's set."""
    ids: set[str] = set()
    for key in store.scan_iter(f"{run.namespace}-dq:__acks__.*", count=1000):
        ids |= {member.decode() for member in store.smembers(key)}
    return ids


def _lost_ack(event: Event, victims: set[int], unacked: set[str] | None, killed_at: float) -> bool:
    """A completion in a killed process whose ack never left it: the broker delivers it again."""
    if event.pid not in victims:
        return False
    if unacked is not None:
        return event.extra.get("rid") in unacked
    # RabbitMQ keeps unacked deliveries per connection, out of sight: an ack is sent within milliseconds.
    return event.at >= killed_at - 1_000


def _victim_computations(run: FaultRun, victims: set[int], key: str) -> int:
    actor, _, x = key.partition(":")
    return sum(
        1
        for event in run.events("done")
        if event.pid in victims and event.job.startswith(f"{actor}-") and str(event.extra.get("key")) == x
    )


def _assert_leases_expired(
    run: FaultRun, store: redis.Redis, held: Held, slow_job: Event, killed_at: float
) -> None:
    # Nobody releases a dead process's lease: its key was computed again only once the lease expired.
    key = slow_job.extra["key"]
    lease = next(name for name in held.cache_leases if f"{{slow:slow:{key}}}" in name)
    expiry = killed_at + held.cache_leases[lease]
    again = [
        e
        for e in run.events("start")
        if e.job.startswith("slow-") and e.extra["key"] == key and e.at > killed_at
    ]
    assert again, f"slow:{key} was computed again after the kill"
    assert again[0].at >= expiry - 150, (
        f"slow:{key} was computed again {expiry - again[0].at:.0f} ms before the dead worker's lease expired"
    )
    assert again[0].at <= expiry + 10_000, "and soon after it expired"
    assert not _still(store), f"no single-flight lease is left: {_still(store)}"
    left = {(k, m) for k, m in held.slots if store.zscore(k, m) is not None}
    assert not left, f"the dead worker's concurrency slots expired: {left}"


def _still(store: redis.Redis) -> set[str]:
    return {key.decode() for key in store.scan_iter("turbo:cache:*:lease", count=1000)}


def _assert_slot_held_until_expiry(run: FaultRun, held: Held, victims: set[int], killed_at: float) -> None:
    """Until the dead worker's slots expired, live workers ran fewer slow jobs at once (the limit is 2)."""
    dead_slots = len(held.slots)
    expiry = min(held.slots.values())
    runs = _live_runs(run, victims)
    for start, _ in runs:
        if killed_at <= start < expiry:
            overlapping = sum(1 for s, e in runs if s <= start < e)
            assert overlapping <= 2 - dead_slots, (
                f"{overlapping} slow jobs ran at {start:.0f} while the dead worker held {dead_slots} slot(s)"
            )
    for start, _ in runs:
        assert sum(1 for s, e in runs if s <= start < e) <= 2, "never more than 2 slow jobs at once"


def _live_runs(run: FaultRun, victims: set[int]) -> list[tuple[float, float]]:
    open_runs: dict[tuple[str, int], float] = {}
    intervals = []
    for event in run.events():
        if not event.job.startswith("slow-") or event.pid in victims:
            continue
        if event.kind == "start":
            open_runs[(event.job, event.pid)] = event.at
        elif event.kind == "done":
            intervals.append((open_runs.pop((event.job, event.pid)), event.at))
    return intervals
