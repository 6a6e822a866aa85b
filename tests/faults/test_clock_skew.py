"""One worker command's clock is 30 s off: the global rate limit and a shared breaker still hold.

Limits and breakers decide by Redis ``TIME``, never by a process's clock.
The app shifts ``time.time``/``time.time_ns`` in the skewed command (its
monotonic clock, which the breaker keeps its open period on, stays true).
``trip`` jobs run only in the command with a true clock and open the shared
breaker; ``probe`` jobs run only in the skewed one, which must see it open.
Neither retries nor defers: Dramatiq times delayed messages by each
process's own clock, which is not what this test is about.
"""

from __future__ import annotations

import pytest

from tests import harness
from tests.faults.workload import FaultRun, Job, Mix, jobs_of
from tests.ratelimit.test_multiprocess import max_in_window

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

LIMIT = 25
RESET_TIMEOUT = 1_000  # the app's
MIX = Mix(plain=150, cached=40, cached_keys=10, limited=100, slow=0, flaky=0, write=0, notes=0)


@pytest.mark.parametrize("skew", [30, -30])
def test_clock_skew_breaks_neither_the_global_limit_nor_a_shared_breaker(skew, fault_run, pdfs):
    run: FaultRun = fault_run("redis", TURBO_FAULT_LIMIT=str(LIMIT))
    true_clock = run.start_workers(1)
    skewed = run.start_workers(1, TURBO_FAULT_CLOCK_SKEW=str(skew))
    skewed_pids = set(skewed.worker_pids())
    run.send(jobs_of(MIX, run.queue, pdfs))

    opened_at = _open_the_breaker(run)
    probes = [Job(f"probe-{i}", "probe", i, f"{run.queue}-probe") for i in range(12)]
    run.send(probes, per_second=20)  # over the 600 ms after the trip: the breaker is open all along
    run.wait_sent()
    harness.wait_for(
        lambda: run.now() > opened_at + RESET_TIMEOUT + 300, timeout=5, what="the open period to end"
    )
    run.send(
        [Job(f"probe-late-{i}", "probe", 100 + i, f"{run.queue}-probe") for i in range(3)], background=False
    )

    run.wait_outcomes(timeout=90)
    outcome = run.verify()
    _assert_probes(run, skewed_pids, opened_at)
    figures = _assert_global_limit(run, skewed_pids, set(true_clock.worker_pids()))
    print(f"\nskew {skew:+d} s: breaker opened at {opened_at:.0f}; limit {figures}; {outcome.summary()}")


def _open_the_breaker(run: FaultRun) -> float:
    """Send failing ``trip`` jobs to the true-clock command until the breaker is open; when it opened."""
    run.send([Job(f"trip-{i}", "trip", i, f"{run.queue}-trip") for i in range(6)], per_second=50)

    def opened() -> float | None:
        states = [e for e in run.events("state") if e.extra["new"] == "open"]
        return states[0].at if states else None

    at: float = harness.wait_for(opened, timeout=20, what="the breaker to open")
    return at


def _assert_probes(run: FaultRun, skewed_pids: set[int], opened_at: float) -> None:
    done = [e for e in run.events("done") if e.job.startswith("probe-")]
    assert {e.pid for e in done} <= skewed_pids, "probes ran in the skewed command only"
    # Within state_refresh (50 ms) of the trip every process knows; the open period is reset_timeout long.
    while_open = [e for e in done if opened_at + 100 <= e.at <= opened_at + RESET_TIMEOUT - 100]
    assert while_open, "probes ran while the breaker was open"
    called = [e.job for e in while_open if not e.extra["refused"]]
    assert not called, (
        f"the skewed process called a dependency whose breaker another process opened: {called}"
    )
    late = [e for e in done if e.job.startswith("probe-late-")]
    assert any(not e.extra["refused"] for e in late), (
        "after reset_timeout the skewed process let a trial through"
    )


def _assert_global_limit(run: FaultRun, skewed_pids: set[int], true_pids: set[int]) -> dict[str, float]:
    starts = [e for e in run.events("start") if e.job.startswith("limited-")]
    assert {e.pid for e in starts} & skewed_pids and {e.pid for e in starts} & true_pids, (
        "both commands ran limited jobs"
    )
    admitted = [e.extra["admitted"] for e in starts]
    body = [e.at for e in starts]
    # A body starts a few ms after its admission (more on a busy machine): a late body can carry
    # starts admitted within that spread of each other into the next window, and no more.
    redis_time = all(a > 1e12 for a in admitted)  # else a per-process clock: nothing to compare
    gaps = sorted(b - a for a, b in zip(admitted, body, strict=True)) if redis_time else [0.0]
    spread = gaps[-1] - gaps[0]
    tolerance = max(3, max_in_window(admitted, spread) if redis_time and spread > 0 else 0)
    in_body = max_in_window(body, 1_000)
    assert in_body <= LIMIT + tolerance, (
        f"{in_body} limited bodies started within 1 s (Redis time), over {LIMIT} + {tolerance}: "
        "the limit is global"
    )
    assert redis_time and max_in_window(admitted, 1_000) == LIMIT, (
        f"at most (and, busy, exactly) {LIMIT} admissions per 1 s of Redis time"
    )
    return {"in_body": in_body, "tolerance": tolerance, "gap_spread_ms": round(spread, 1)}
