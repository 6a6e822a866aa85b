"""From readings to ``QueueStats``: the broker's counts, the counters' rates, the workers' heartbeats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .brokers import QueueReading
from .counters import CounterSummary, WorkerBeat, percentiles
from .stats import Circuit, MinuteCount, QueueStats, WorkerInfo

__all__ = ["broker_fields", "build_stats", "counter_fields", "gate_fields", "worker_fields", "worker_info"]


def broker_fields(kind: str, reading: QueueReading, at: int) -> dict[str, Any]:
    """The fields the broker itself reports."""
    oldest = None
    if reading.oldest_due is not None:
        oldest = max(0, at - reading.oldest_due)
    elif reading.waiting == 0 and kind != "rabbitmq":
        oldest = 0  # nothing waits (RabbitMQ cannot tell the age even then: it cannot peek)
    return {
        "waiting": reading.waiting,
        "delayed": reading.delayed,
        "dead": reading.dead,
        "in_progress": reading.in_progress,
        "dead_recent": reading.dead_recent,
        "oldest_age_ms": oldest,
        "dead_letters": reading.dead_letters,
    }


def counter_fields(summary: CounterSummary) -> dict[str, Any]:
    """Rates and latencies from the per-minute counters."""
    completed, failed = summary.get("completed"), summary.get("failed")
    processed = completed + failed
    wait_p50, wait_p95 = percentiles(summary.wait)
    proc_p50, proc_p95 = percentiles(summary.processing)
    proc_ms = summary.get("proc_ms")
    return {
        "counters": True,
        "covered_ms": summary.covered_ms,
        "enqueued": summary.get("enqueued"),
        "completed": completed,
        "failed": failed,
        "skipped": summary.get("skipped"),
        # A failure that was not dead-lettered was retried (or deferred to a later try).
        "retried": max(0, failed - summary.get("dead")),
        "dead_lettered": summary.get("dead"),
        "per_minute": tuple(MinuteCount(*row) for row in summary.per_minute),
        "enqueued_per_min": round(summary.per_min("enqueued"), 2),
        "completed_per_min": round(summary.per_min("completed"), 2),
        "failed_per_min": round(summary.per_min("failed"), 2),
        "failure_rate": round(failed / processed, 4) if processed else 0.0,
        "wait_p50_ms": wait_p50,
        "wait_p95_ms": wait_p95,
        "processing_p50_ms": proc_p50,
        "processing_p95_ms": proc_p95,
        "processing_mean_ms": round(proc_ms / processed, 1) if processed else None,
        "cpu_share": round(min(1.0, summary.get("cpu_ms") / proc_ms), 3) if proc_ms else None,
        "rate_limit_deferred": summary.deferred.get("rate_limit", 0),
        "rate_limit_waits": summary.get("rl_waits"),
        "rate_limited": summary.deferred.get("rate_limit", 0) + summary.get("rl_waits"),
        "circuit_deferred": summary.deferred.get("circuit_open", 0),
    }


def worker_fields(
    queue: str, kind: str, reading: QueueReading, beats: Sequence[WorkerBeat], any_beats: bool
) -> dict[str, Any]:
    """Live workers of ``queue`` from heartbeats; without any, what the broker knows of its consumers."""
    mine = [beat.payload for beat in beats if queue in beat.payload.get("queues", ())]
    fields: dict[str, Any] = {}
    if mine:
        threads = sum(int(p.get("threads", 0)) for p in mine)
        fields["workers"] = len(mine)
        fields["worker_threads"] = threads
        fields["busy_threads"] = sum(int(p.get("running", {}).get(queue, 0)) for p in mine)
        weighted = sum(float(p.get("utilization", 0.0)) * int(p.get("threads", 0)) for p in mine)
        fields["utilization"] = round(weighted / threads, 3) if threads else None
        hosts = {p.get("host"): int(p.get("cores", 1)) for p in mine}
        fields["cores"] = sum(hosts.values())
        if reading.in_progress is None:
            fields["in_progress"] = fields["busy_threads"]
    elif any_beats:
        fields["workers"] = 0  # the recorder runs in this deployment, and no worker of it serves the queue
    elif kind == "rabbitmq" or (kind == "redis" and reading.consumers == 0):
        # RabbitMQ counts the queue's consumers; a Redis broker nobody spoke to has none.
        fields["workers"] = reading.consumers
    return fields


def gate_fields(
    queue: str, summary: CounterSummary | None, beats: Sequence[WorkerBeat], states: Mapping[str, Circuit]
) -> dict[str, Any]:
    """Circuits that guard ``queue``'s actors, and its rate limits when they are saturated."""
    names = set(summary.breakers) if summary else set()
    limits: set[str] = set()
    for beat in beats:
        names.update(beat.payload.get("breakers", {}).get(queue, ()))
        limits.update(beat.payload.get("limits", {}).get(queue, ()))
    circuits = []
    for name in sorted(names):
        state = states.get(name)
        refused = summary.breakers.get(name, 0) if summary else 0
        if state is not None and state.state != "closed":
            circuits.append(Circuit(name, state.state, state.retry_in_ms, refused))
    return {"open_circuits": tuple(circuits), "saturated_limits": tuple(sorted(limits))}


def worker_info(beat: WorkerBeat, now: int) -> WorkerInfo:
    payload = beat.payload
    return WorkerInfo(
        id=str(payload.get("id", "")),
        host=str(payload.get("host", "")),
        pid=int(payload.get("pid", 0)),
        queues=tuple(payload.get("queues", ())),
        threads=int(payload.get("threads", 0)),
        busy=int(payload.get("busy", 0)),
        utilization=float(payload.get("utilization", 0.0)),
        cores=int(payload.get("cores", 1)),
        age_ms=max(0, now - beat.at),
    )


def build_stats(
    queue: str, kind: str, at: int, window: int, parts: Sequence[Mapping[str, Any]]
) -> QueueStats:
    """``QueueStats`` from the fields of each part (later parts win)."""
    fields: dict[str, Any] = {}
    for part in parts:
        fields.update(part)
    return QueueStats(queue=queue, broker=kind, at=at, window_ms=window, **fields)
