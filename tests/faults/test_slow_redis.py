"""The suite's Redis is slow mid-run: timeouts fire as configured, no thread hangs, no write is applied twice.

The broker is RabbitMQ, so work goes on while the suite's Redis is slow.
The workers reach that Redis through a TCP proxy the test owns.  Two
phases of 2.5 s each: the server stalls (its process is paused, SIGSTOP),
then the network is slow (the proxy delays each direction by 1 s, longer
than the 400 ms ``socket_timeout``).  The suite's client (``connect_redis``)
gives up after ``socket_timeout`` and the gates fall back to per-process
state.  In the slow phase every command still reaches the server and runs:
only its reply is late.  So a client must never send a timed-out command
again by itself (redis/redis-py#2807): the ``write`` jobs count their
sends, and Redis counts what it applied.
"""

from __future__ import annotations

import time

import pytest
import redis

from tests.faults.workload import Event, FaultRun, Mix, jobs_of
from tests.ratelimit.test_multiprocess import max_in_window
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

PHASE_SECONDS = 2.5
SOCKET_TIMEOUT = 400
DELAY_MS = 1_000
#: The proxy forwards at once (no delay) outside the slow phase; a delay above 0 keeps its queue in place.
NO_DELAY_MS = 0.01
LIMIT = 20


def test_slow_redis_times_out_as_configured_hangs_no_thread_and_doubles_no_write(
    fault_run, fault_store, pdfs
):
    proxy = TcpProxy("127.0.0.1", fault_store.port, delay_ms=NO_DELAY_MS)
    port = proxy.start()
    try:
        run: FaultRun = fault_run(
            "rabbitmq",
            TURBO_FAULT_STORE_URL=f"redis://127.0.0.1:{port}/1",
            TURBO_FAULT_SOCKET_TIMEOUT=str(SOCKET_TIMEOUT),
            TURBO_FAULT_LIMIT=str(LIMIT),
        )
        run.start_workers(2)
        run.send(jobs_of(Mix(write=80), run.queue, pdfs))
        run.wait_until_done(120, timeout=30)
        phases = [_stalled(run), _delayed(run, proxy)]

        run.wait_outcomes(timeout=90)
        outcome = run.verify(extra_computations=lambda key: len(run.worker_pids()))
        _assert_no_write_doubled(run)
        for name, (began, ended) in zip(("stalled", "slow network"), phases, strict=True):
            timeouts = _assert_timeouts(run.events("timeout"), began, ended, name)
            during = [e for e in outcome.done if began + 3 * SOCKET_TIMEOUT < e.at < ended]
            assert len(during) >= 5, f"{name}: jobs kept completing meanwhile (no thread hung): {len(during)}"
            print(f"\n{name}: {ended - began:.0f} ms, {len(timeouts)} timeouts, {len(during)} jobs done")
        _assert_limit_outside(run, phases)
        print(outcome.summary())
    finally:
        proxy.cut()


def _stalled(run: FaultRun) -> tuple[float, float]:
    began = run.now()
    run.store.pause()
    try:
        time.sleep(PHASE_SECONDS)
    finally:
        run.store.resume()
    return began, run.now()


def _delayed(run: FaultRun, proxy: TcpProxy) -> tuple[float, float]:
    time.sleep(1)  # the gates are back on Redis
    began = run.now()
    proxy.delay = DELAY_MS / 1000
    time.sleep(PHASE_SECONDS)
    proxy.delay = NO_DELAY_MS / 1000
    return began, run.now()


def _assert_timeouts(events: list[Event], began: float, ended: float, name: str) -> list[Event]:
    timeouts = [e for e in events if began <= e.at <= ended + DELAY_MS]
    assert timeouts, f"{name}: writes sent meanwhile timed out"
    waited = sorted(e.extra["ms"] for e in timeouts)
    assert waited[0] >= SOCKET_TIMEOUT * 0.9 and waited[-1] <= SOCKET_TIMEOUT + 1_000, (
        f"{name}: a command waits socket_timeout ({SOCKET_TIMEOUT} ms) for its reply, then fails: {waited}"
    )
    return timeouts


def _assert_no_write_doubled(run: FaultRun) -> None:
    sends: dict[str, int] = {}
    for event in run.events("send"):
        sends[event.job] = sends.get(event.job, 0) + 1
    store = redis.Redis.from_url(run.store.url)
    try:
        applied = {k.decode(): int(v) for k, v in store.hgetall(f"fault:{run.namespace}:writes").items()}
    finally:
        store.close()
    doubled = {job: (applied[job], sends.get(job, 0)) for job in applied if applied[job] > sends.get(job, 0)}
    assert not doubled, f"a write is applied at most once per send (applied, sent): {doubled}"
    done = {e.job for e in run.events("done") if e.job.startswith("write-")}
    assert all(applied.get(job, 0) >= 1 for job in done), "every completed write was applied"


def _assert_limit_outside(run: FaultRun, phases: list[tuple[float, float]]) -> None:
    # Admissions are Redis time from the shared store, or a process's monotonic clock while it is away.
    starts = [e for e in run.events("start") if e.job.startswith("limited-")]
    shared = [
        e.extra["admitted"]
        for e in starts
        if not any(began <= e.at <= ended + 2 * DELAY_MS for began, ended in phases)
    ]
    assert max_in_window(shared, 1_000) <= LIMIT, (
        "the global limit holds, each slot counted once, around them"
    )
