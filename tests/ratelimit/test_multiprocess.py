"""The limits hold across real ``dramatiq`` worker processes on real brokers.

Every start is logged by the app (``tests/apps/ratelimit_app.py``) with the
limiter's admission time, which comes from Redis ``TIME``, so the windows
below are measured on the one clock all processes share.

The limit is exact at admission.  The actor body starts a little later (the
rest of the worker's hooks, a thread switch on a busy machine), so every run
also checks the body's own start times, read from Redis ``TIME`` at the top
of the body: the admission-to-body gap is bounded (``GAP_P99_MS``,
``GAP_MAX_MS``), and the limit holds on body times once the window is
shortened by the measured spread of that gap (see ``check_body_times``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from dramatiq_turbo import presets
from dramatiq_turbo.redis import hash_key, redis_time_ms
from tests.harness import send_by_name, unique, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

APP = "tests.apps.ratelimit_app"
# The io-bound preset's idle poll (100 ms, BullMQ's drainDelay analogue): a
# deferred message that returns to a quiet queue is picked up at once.
FAST_POLL = {"dramatiq_worker_timeout": str(presets.IO_BOUND.worker_timeout)}


def max_in_window(times: list[float], window: float) -> int:
    """The most starts in any half-open window ``[t, t + window)``."""
    times = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        best = max(best, last - first + 1)
    return best


#: Bounds on the gap between the limiter's admission and the top of the actor body.
#: Measured on an idle 2-core machine (8 processes x 2 threads): p99 8-16 ms,
#: max 10-23 ms.  The bounds leave room for other test runs on the same two
#: cores (the PDF-notes proofs allow 100 ms for the same skew), and still fail
#: a limiter that admits a message long before its body runs.
GAP_P99_MS = 50
GAP_MAX_MS = 100


def starts(client: Any, namespace: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(f"{namespace}:starts", 0, -1)]


def test_max_in_window_counts_half_open_windows() -> None:
    assert max_in_window([0, 500, 999.9, 1000], 1000) == 3
    assert max_in_window([0, 1, 2], 1000) == 3
    assert max_in_window([], 1000) == 0


def check_body_times(log: list[dict[str, Any]], *, limit: int, window: int, what: str) -> dict[str, float]:
    """The limit holds on the body's own start times, up to the measured admission-to-body skew.

    A body starts ``gap`` ms after its admission, with ``gap`` between
    ``low`` and ``high`` (bounded by ``GAP_MAX_MS``); ``skew = high - low``.
    The bodies in a window of ``w`` ms were admitted within ``w + skew`` ms.
    Two consequences are asserted:

    * in any window of ``window - skew`` ms at most ``limit`` bodies start
      (the limit itself, on a window shortened by the skew);
    * in any full window at most ``limit + tolerance`` start, where the
      tolerance is the most starts admitted within ``skew`` ms of each other:
      those that a late body carries over from the next window.  It is
      derived from the run, not fixed, because starts admitted back to back
      (no burst rule) make it as large as their clump: 5-10 of 30 here.
    """
    gaps = sorted(entry["body"] - entry["admitted"] for entry in log)
    low, high = gaps[0], gaps[-1]
    skew = high - low
    p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
    admitted = [entry["admitted"] for entry in log]
    body = [entry["body"] for entry in log]
    figures = {"p50": gaps[len(gaps) // 2], "p99": p99, "max": high, "skew": skew}
    summary = ", ".join(f"{name} {value:.1f} ms" for name, value in figures.items())
    assert low >= 0, f"{what}: a body started {-low:.1f} ms before its admission"
    assert p99 <= GAP_P99_MS, f"{what}: admission-to-body gap p99 above {GAP_P99_MS} ms ({summary})"
    assert high <= GAP_MAX_MS, f"{what}: admission-to-body gap above {GAP_MAX_MS} ms ({summary})"
    in_shortened = max_in_window(body, window - skew)
    assert in_shortened <= limit, (
        f"{what}: {in_shortened} bodies started within {window - skew:.1f} ms, over the limit of {limit} "
        f"per {window} ms less the skew ({summary})"
    )
    tolerance = max_in_window(admitted, skew) if skew > 0 else 0
    in_full = max_in_window(body, window)
    assert in_full <= limit + tolerance, (
        f"{what}: {in_full} bodies started within {window} ms, over {limit} + {tolerance} "
        f"(starts admitted within the {skew:.1f} ms skew; {summary})"
    )
    figures.update(tolerance=tolerance, in_full=in_full, in_shortened=in_shortened)
    return figures


def run_150_limited_jobs(
    broker: Any, redis_client: Any, workers: Any, namespace: str
) -> tuple[list[dict[str, Any]], float]:
    jobs = [f"j{i}" for i in range(150)]
    began = time.monotonic()
    for job in jobs:
        send_by_name(broker, "limited", job, queue=namespace)
    wait_for(
        lambda: redis_client.llen(f"{namespace}:starts") >= 150,
        timeout=40,
        interval=0.05,
        what="150 limited jobs to start",
    )
    wait_for(
        lambda: all(redis_client.get(f"{namespace}:runs:{job}") for job in jobs),
        timeout=10,
        what="150 limited jobs to finish",
    )
    elapsed = time.monotonic() - began
    time.sleep(0.5)  # a duplicate run would show up here
    return starts(redis_client, namespace), elapsed


def check_exact_limit(log: list[dict[str, Any]], redis_client: Any, namespace: str, elapsed: float) -> None:
    runs = Counter(int(redis_client.get(f"{namespace}:runs:j{i}") or 0) for i in range(150))
    assert runs == Counter({1: 150}), "every job ran exactly once"
    assert len(log) == 150 and len({entry["job"] for entry in log}) == 150
    assert all(entry["retries"] == 0 for entry in log), "waiting for a slot consumes no retry"

    admitted = sorted(entry["admitted"] for entry in log)
    assert max_in_window(admitted, 1000) <= 30, "no 1 s window holds more than 30 starts"
    span = admitted[-1] - admitted[0]
    # 150 starts at 30 per second need 4 s after the first; using at least 90%
    # of the budget means the other 120 start within 4 / 0.9 s.
    per_100ms = Counter(int((t - admitted[0]) // 100) for t in admitted)
    timeline = " ".join(f"{k}:{per_100ms[k]}" for k in sorted(per_100ms))
    late = sorted((e["admitted"] - admitted[0], e["deferrals"]) for e in log)[-5:]
    assert 3_999 <= span <= 4_000 / 0.9, f"starts spanned {span:.0f} ms; per 100 ms: {timeline}; last: {late}"
    assert elapsed < 9, f"the run took {elapsed:.1f} s"
    deferrals = max(entry["deferrals"] for entry in log)
    body = check_body_times(log, limit=30, window=1000, what="150 jobs at 30 per second")
    print(
        f"\n150 jobs: span {span:.0f} ms, wall {elapsed:.1f} s, max in 1 s window "
        f"{max_in_window(admitted, 1000)}, bodies max in 1 s window {body['in_full']} (<= 30 + "
        f"{body['tolerance']}), in {1000 - body['skew']:.0f} ms {body['in_shortened']}, "
        f"gap p50 {body['p50']:.1f} p99 {body['p99']:.1f} max {body['max']:.1f} ms, "
        f"deferrals per message max {deferrals}, total {sum(e['deferrals'] for e in log)}, "
        f"processes {len({e['pid'] for e in log})}"
    )
    assert deferrals <= 3, "a limited message is re-enqueued a bounded number of times"


def test_eight_processes_on_redis_never_exceed_30_per_second(
    make_broker, worker_processes, redis_client, redis_url
):
    namespace = unique("rl8")
    broker = make_broker("redis", namespace=namespace)
    workers = worker_processes(
        APP,
        processes=8,
        threads=2,
        env={"TURBO_TEST_REDIS_URL": redis_url, "TURBO_TEST_NAMESPACE": namespace, **FAST_POLL},
    )
    workers.start(ready_timeout=60)
    log, elapsed = run_150_limited_jobs(broker, redis_client, workers, namespace)
    check_exact_limit(log, redis_client, namespace, elapsed)
    assert len({entry["pid"] for entry in log}) >= 4, "the work really was spread over processes"


def test_four_processes_on_rabbitmq_never_exceed_30_per_second(
    make_broker, worker_processes, redis_client, redis_url, rabbitmq_url
):
    namespace = unique("rl4")
    broker = make_broker("rabbitmq")
    broker.declare_queue(namespace)
    workers = worker_processes(
        APP,
        processes=4,
        threads=2,
        env={
            "TURBO_TEST_REDIS_URL": redis_url,
            "TURBO_TEST_NAMESPACE": namespace,
            "TURBO_TEST_BROKER": "rabbitmq",
            "TURBO_TEST_RABBITMQ_URL": rabbitmq_url,
            **FAST_POLL,
        },
    )
    workers.start(ready_timeout=60)
    log, elapsed = run_150_limited_jobs(broker, redis_client, workers, namespace)
    check_exact_limit(log, redis_client, namespace, elapsed)


def test_each_customer_gets_its_own_budget(make_broker, worker_processes, redis_client, redis_url):
    namespace = unique("rlkey")
    broker = make_broker("redis", namespace=namespace)
    workers = worker_processes(
        APP,
        processes=2,
        threads=4,
        # Always defer instead of waiting, so no thread is held by one customer.
        env={
            "TURBO_TEST_REDIS_URL": redis_url,
            "TURBO_TEST_NAMESPACE": namespace,
            "TURBO_TEST_MAX_WAIT": "0",
        },
    )
    workers.start(ready_timeout=60)
    jobs = []
    for i in range(20):
        for customer in ("acme", "globex"):
            job = f"{customer}-{i}"
            jobs.append(job)
            send_by_name(broker, "per_customer", customer, job, queue=namespace)
    wait_for(
        lambda: all(redis_client.get(f"{namespace}:runs:{job}") for job in jobs),
        timeout=30,
        interval=0.05,
        what="40 per-customer jobs",
    )
    log = starts(redis_client, namespace)
    assert sorted(entry["job"] for entry in log) == sorted(jobs), "each job ran exactly once"
    assert all(entry["retries"] == 0 for entry in log)
    first = min(entry["admitted"] for entry in log)
    for customer in ("acme", "globex"):
        admitted = sorted(e["admitted"] for e in log if e["customer"] == customer)
        assert max_in_window(admitted, 1000) <= 10, f"{customer} stays within its own 10 per second"
        # The other customer's full budget did not eat this one's: each got
        # all 10 of its starts in the first second.
        in_first_second = sum(1 for t in admitted if t < first + 1000)
        assert in_first_second == 10, f"{customer} started {in_first_second} jobs in the first second"
        check_body_times([e for e in log if e["customer"] == customer], limit=10, window=1000, what=customer)
    assert max_in_window([e["admitted"] for e in log], 1000) == 20, "two budgets: 20 starts per second in all"


BURST_RULE = {"max": 20, "duration": 1000, "burst": 4}


def test_burst_rule_holds_across_processes(make_broker, worker_processes, redis_client, redis_url):
    """2 processes x 4 threads share one budget of 20 per second, at most 4 starts in any 200 ms."""
    namespace = unique("rlburst")
    burst, burst_window = BURST_RULE["burst"], 200  # burst * duration / max
    broker = make_broker("redis", namespace=namespace)
    workers = worker_processes(
        APP,
        processes=2,
        threads=4,
        env={
            "TURBO_TEST_REDIS_URL": redis_url,
            "TURBO_TEST_NAMESPACE": namespace,
            "TURBO_TEST_RATE_LIMIT": json.dumps(BURST_RULE),
            **FAST_POLL,
        },
    )
    workers.start(ready_timeout=60)
    jobs = [f"b{i}" for i in range(40)]
    for job in jobs:
        send_by_name(broker, "limited", job, queue=namespace)
    wait_for(
        lambda: all(redis_client.get(f"{namespace}:runs:{job}") for job in jobs),
        timeout=20,
        interval=0.05,
        what="40 burst-limited jobs",
    )
    log = starts(redis_client, namespace)
    assert sorted(entry["job"] for entry in log) == sorted(jobs), "each job ran exactly once"
    assert len({entry["pid"] for entry in log}) == 2, "both processes took part"
    admitted = sorted(entry["admitted"] for entry in log)
    per_50ms = Counter(int((t - admitted[0]) // 50) for t in admitted)
    timeline = " ".join(f"{k}:{per_50ms[k]}" for k in sorted(per_50ms))
    assert max_in_window(admitted, burst_window) <= burst, (
        f"at most {burst} admissions per 200 ms: {timeline}"
    )
    assert max_in_window(admitted, 1000) <= 20, f"at most 20 admissions per second: {timeline}"
    # 40 starts, 4 per 200 ms, need 1,800 ms after the first; using at least
    # 90% of the budget means they fit within 1,800 / 0.9 ms.
    span = admitted[-1] - admitted[0]
    assert span <= 1_800 / 0.9, f"starts spanned {span:.0f} ms; per 50 ms: {timeline}"
    body = check_body_times(log, limit=burst, window=burst_window, what="burst of 4 per 200 ms")
    print(
        f"\nburst: span {span:.0f} ms, admitted max per 200 ms {max_in_window(admitted, burst_window)}, "
        f"bodies max per {burst_window - body['skew']:.0f} ms {body['in_shortened']}, per 200 ms "
        f"{body['in_full']} (<= 4 + {body['tolerance']}), gap p50 {body['p50']:.1f} p99 {body['p99']:.1f} "
        f"max {body['max']:.1f} ms"
    )


def test_slot_of_a_killed_worker_comes_back_after_its_lease(
    make_broker, worker_processes, redis_client, redis_url
):
    namespace = unique("rlcc")
    lease = 1_500
    broker = make_broker("redis", namespace=namespace)
    env = {
        "TURBO_TEST_REDIS_URL": redis_url,
        "TURBO_TEST_NAMESPACE": namespace,
        "TURBO_TEST_CONCURRENCY_LEASE": str(lease),
    }
    holder = worker_processes(APP, processes=1, threads=2, env=env)
    (victim,) = holder.start(1, ready_timeout=60)
    send_by_name(broker, "concurrent", "hang", 0.05, True, queue=namespace)
    wait_for(lambda: redis_client.get(f"{namespace}:hanging"), timeout=15, what="the slot holder to start")

    others = worker_processes(APP, processes=1, threads=4, env=env)
    others.start(1, ready_timeout=60)
    jobs = [f"q{i}" for i in range(6)]
    for job in jobs:
        send_by_name(broker, "concurrent", job, 0.05, queue=namespace)
    time.sleep(lease / 1000 * 1.5)  # longer than a lease: renewals keep the slot taken
    assert not any(redis_client.get(f"{namespace}:runs:{job}") for job in jobs), "the one slot is held"

    holder.kill(victim)
    killed_at = redis_time_ms(redis_client)
    redis_client.set(f"{namespace}:running", 0)  # the killed body never decremented it
    wait_for(
        lambda: all(redis_client.get(f"{namespace}:runs:{job}") for job in [*jobs, "hang"]),
        timeout=30,
        interval=0.05,
        what="the queue to drain after the kill",
    )
    log = starts(redis_client, namespace)
    after = sorted(e["admitted"] for e in log if e["job"] != "hang" or e["delivery"] > 1)
    assert len(after) == len(jobs) + 1, "every job and the killed one's redelivery ran once"
    assert after[0] >= killed_at, "nobody took the slot while its holder was alive"
    assert after[0] - killed_at <= lease + 5_000, "the slot came back soon after its lease ran out"
    overlap = [int(x) for x in redis_client.lrange(f"{namespace}:overlap", 0, -1)]
    assert max(overlap[1:]) == 1, "never two running at once"
    leases = hash_key(f"{namespace}:rl", "actor:concurrent", "leases")
    # The last job's slot is released just after its body recorded its run: allow for
    # that, but for less than a lease, so a leaked slot (renewed, or left to expire) fails.
    wait_for(lambda: redis_client.zcard(leases) == 0, timeout=lease / 1000 * 0.6, what="no slot leaked")
    print(f"\nslot back {after[0] - killed_at:.0f} ms after SIGKILL (lease {lease} ms)")
