"""Backoff jitter under contention: AWS's "Exponential Backoff and Jitter" comparison.

    .venv/bin/python benchmarks/bench_resilience_jitter.py

N jobs start at once and contend for one resource that serves one call per
``SERVICE`` ms: a call arriving while another job's call holds it fails
(optimistic concurrency, as in AWS's experiment: the first writer wins).  Every failed job waits the
delay ``Backoff`` computes (``compute_delay``, the same code the middleware
runs) and tries again.  The simulation runs in virtual time with a fixed seed,
so it is fast and repeatable; no Redis is used.  The baseline is plain
exponential backoff (``jitter=None``); Dramatiq's own ``Retries`` formula is
shown for comparison.
"""

from __future__ import annotations

import heapq
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_turbo.backoff import compute_delay

SERVICE = 10  # ms a call holds the resource
BASE, CAP = 10, 10_000  # ms
MODES: list[str | None] = [None, "dramatiq", "equal", "full", "decorrelated"]


def delay_for(mode: str | None, retries: int, previous: int, rng: random.Random) -> int:
    if mode == "dramatiq":
        # Dramatiq's Retries: min_backoff * 2^n * U(1, 2), past the cap max_backoff * U(0.5, 1).
        backoff = BASE * 2**retries * (1 + rng.random())
        return int(backoff if backoff <= CAP else CAP * (0.5 + rng.random() / 2))
    return compute_delay(retries, min_backoff=BASE, max_backoff=CAP, jitter=mode, previous=previous, rng=rng)


def simulate(jobs: int, jitter: str | None, seed: int) -> tuple[int, int]:
    """Total calls and virtual ms until the last job succeeded."""
    rng = random.Random(seed)
    # (time, job, retries, previous delay); all jobs start within the first ms.
    pending = [(rng.random(), job, 0, BASE) for job in range(jobs)]
    heapq.heapify(pending)
    calls = finished_at = 0
    busy_until = -1.0
    while pending:
        at, job, retries, previous = heapq.heappop(pending)
        calls += 1
        if at < busy_until:  # another job's write is in progress: conflict, back off
            delay = delay_for(jitter, retries, previous, rng)
            heapq.heappush(pending, (at + delay, job, retries + 1, delay))
        else:
            busy_until = at + SERVICE
            finished_at = max(finished_at, int(busy_until))
    return calls, finished_at


def main() -> None:
    print(
        f"{'jobs':>5} {'jitter':>13} {'calls':>8} {'calls/job':>10} {'finish ms':>10}"
        "  vs no jitter (calls, time)"
    )
    for jobs in (10, 50, 100, 200):
        results = {}
        for mode in MODES:
            runs = [simulate(jobs, mode, seed) for seed in range(5)]
            results[mode] = (sum(r[0] for r in runs) / len(runs), sum(r[1] for r in runs) / len(runs))
        base_calls, base_time = results[None]
        for mode in MODES:
            calls, finish = results[mode]
            print(
                f"{jobs:>5} {mode or 'none':>13} {calls:>8.0f} {calls / jobs:>10.2f} {finish:>10.0f}"
                f"  {base_calls / calls:.2f}x fewer calls, {base_time / finish:.2f}x faster"
            )


if __name__ == "__main__":
    main()
