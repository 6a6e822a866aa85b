"""Load test: the naive twin against the optimized pipeline, same jobs, same run.

    python -m examples.pdf_notes.loadtest --pdfs DIR [--jobs N] [--duplicates 0.9] [--workers K]
        [--threads T] [--latency MS] [--broker URL] [--json OUT] [--chart OUT.png]

N jobs over the PDFs of DIR, a share of them duplicates of earlier ones,
run by K real ``dramatiq`` worker processes on a real Redis: first the naive
twin (``examples.pdf_notes.naive_worker``), then the pipeline
(``examples.pdf_notes.worker``).  The PDFs are served over HTTP on
127.0.0.1; a unique job gets its own variant of a PDF (the same document
with other bytes, see ``fileserver``), so "unique" means unique content.
The notes model is the bundled server in its own process, with MS of
latency per call.  Prints the guide's table, throughput, p50/p95 job
latency and the cache hit rate; every job completes or fails with its
reason, and a job that does neither within the deadline fails the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from dramatiq.results import ResultFailure, ResultTimeout

from .app import App, create_app, create_naive_app
from .fileserver import FileServer

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("naive", "turbo")
_MODULES = {"naive": "examples.pdf_notes.naive_worker", "turbo": "examples.pdf_notes.worker"}


@dataclass(frozen=True)
class Job:
    """One job of the plan: which file, which variant of it, and whether it repeats an earlier job."""

    name: str
    variant: int
    duplicate: bool

    def url(self, base: str) -> str:
        return f"{base}/{self.name}?v={self.variant}"


def plan(pdfs: Sequence[str], jobs: int, duplicates: float, seed: int) -> list[Job]:
    """``jobs`` jobs: ``round(jobs * (1 - duplicates))`` distinct documents, the rest repeats of them."""
    if not pdfs:
        raise ValueError("no PDFs to test with")
    if not 0 <= duplicates < 1:
        raise ValueError(f"--duplicates must be in [0, 1), got {duplicates}")
    rng = random.Random(seed)
    distinct = max(1, round(jobs * (1 - duplicates)))
    firsts = [Job(pdfs[i % len(pdfs)], i, False) for i in range(distinct)]
    repeats = [Job(job.name, job.variant, True) for job in rng.choices(firsts, k=jobs - distinct)]
    # Each document's first job comes before its repeats; otherwise the order is random.
    order = firsts + repeats
    rng.shuffle(order)
    seen: set[int] = set()
    fixed = []
    for job in order:
        fixed.append(Job(job.name, job.variant, job.variant in seen))
        seen.add(job.variant)
    return fixed


@dataclass
class Record:
    """How one job went: when it was sent, its result or its failure."""

    job: Job
    sent_at: float
    message: Any
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        assert self.result is not None
        return (self.result["finished_at"] - self.sent_at) * 1000


class Progress:
    """A one-line progress bar on stderr (a line every 10% when stderr is not a terminal)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.started, self.shown = label, total, time.monotonic(), -1
        self.tty = sys.stderr.isatty()

    def update(self, done: int, failed: int) -> None:
        step = done * 10 // max(1, self.total)
        if not self.tty and step == self.shown and done < self.total:
            return
        self.shown = step
        filled = 30 * done // max(1, self.total)
        elapsed = time.monotonic() - self.started
        line = f"{self.label:>6} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}"
        line += f" failed {failed}  {elapsed:5.1f} s"
        sys.stderr.write(("\r" if self.tty else "") + line + ("" if self.tty else "\n"))
        if self.tty and done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


@dataclass
class Services:
    """What every run of the load test shares: the PDFs' server, the model's and the broker."""

    files: FileServer
    model_url: str
    broker_url: str
    workers: int
    threads: int
    folder: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Per variant: the machine's CPU while its jobs ran (see ``_cpu``).
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


def _cpu_jiffies() -> tuple[int, int]:
    """The machine's busy and total CPU time so far, in clock ticks (Linux ``/proc/stat``)."""
    try:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _processes_cpu() -> dict[str, float]:
    """CPU seconds used so far by each kind of process on the machine (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        kind = _kind(cmdline, int(stat.parent.name))
        used[kind] = used.get(kind, 0.0) + seconds
    return used


def _kind(cmdline: str, pid: int) -> str:
    if pid == os.getpid():
        return "load test (PDF server, enqueue, results)"
    for marker, kind in (
        ("dramatiq", "worker processes"),
        ("model_server", "notes model server"),
        ("redis-server", "redis-server"),
    ):
        if marker in cmdline:
            return kind
    return "other"


def _cpu(before: tuple[int, int], after: tuple[int, int]) -> dict[str, float]:
    # Whether a run was bound by the CPUs: on a 2-core machine the pipeline's
    # own work (extraction, HTTP, Redis) is the floor once waiting is gone.
    busy, total = after[0] - before[0], after[1] - before[1]
    return {
        "busy_share": round(busy / total, 3) if total else 0.0,
        "cpu_seconds": round(busy / os.sysconf("SC_CLK_TCK"), 2),
        "cores": os.cpu_count() or 1,
    }


def _start_model_server(latency: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, "-m", "examples.pdf_notes.model_server", "--port", str(port)]
    process = subprocess.Popen([*command, "--latency", str(latency)], cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    _wait(lambda: _answers(f"http://127.0.0.1:{port}/health"), 30, "the notes model server")
    return process, url


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def _start_workers(
    variant: str, services: Services, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    log = services.folder / f"{variant}-workers.log"
    command = [sys.executable, "-m", "dramatiq", _MODULES[variant]]
    command += ["--processes", str(services.workers), "--threads", str(services.threads)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{variant} workers exited:\n{log.read_text(errors='replace')[-3000:]}")
        return log.read_text(errors="replace").count("is ready for action") >= services.workers

    _wait(ready, 120, f"{services.workers} {variant} worker processes")
    return process, log


def _stop_workers(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _poll(app: App, records: Sequence[Record]) -> list[Any]:
    """Each record's stored result (encoded), or ``None``: one pipelined round trip for all of them.

    Asking one message at a time, every 50 ms, for hundreds of jobs costs the
    machine more CPU than the jobs themselves on a small machine.
    """
    backend = app.backend
    with backend.client.pipeline(transaction=False) as pipe:
        for record in records:
            pipe.lindex(backend.build_message_key(record.message), 0)
        return list(pipe.execute())


def _collect(app: App, records: list[Record], label: str, deadline_s: float) -> None:
    progress = Progress(label, len(records))
    pending = list(records)
    deadline = time.monotonic() + deadline_s
    while pending:
        waiting = []
        for record, data in zip(pending, _poll(app, pending), strict=True):
            if data is None:
                waiting.append(record)
                continue
            try:
                record.result = app.backend.unwrap_result(app.backend.encoder.decode(data))
            except ResultFailure as failure:
                record.error = str(failure)
        pending = waiting
        progress.update(len(records) - len(pending), sum(1 for r in records if r.error))
        if pending and time.monotonic() > deadline:
            raise ResultTimeout(
                f"{len(pending)} {label} jobs neither finished nor failed in {deadline_s:.0f} s"
            )
        time.sleep(0.05)


def run_variant(
    variant: str, jobs: Sequence[Job], services: Services, deadline_s: float, *, probes: Sequence[Job] = ()
) -> tuple[list[Record], list[Record]]:
    """Start the variant's workers, send every job, wait for every outcome, stop the workers.

    Then each of ``probes`` is sent alone, one after the other, so its time is
    that of a duplicate job on a quiet system; returns both lists of records.
    """
    namespace = f"lt-{uuid.uuid4().hex[:10]}-{variant}"
    env = {
        "TURBO_BROKER_URL": services.broker_url,
        "TURBO_NOTES_DB": str(services.folder / f"{variant}.sqlite3"),
        "TURBO_NOTES_NAMESPACE": namespace,
        "TURBO_NOTES_QUEUE": namespace,
        "OPENAI_BASE_URL": services.model_url,
        **services.extra_env,
    }
    process, _ = _start_workers(variant, services, env)
    factory = create_naive_app if variant == "naive" else create_app
    app = factory(
        broker_url=services.broker_url, namespace=namespace, queue=namespace, db=env["TURBO_NOTES_DB"]
    )
    try:
        before, processes = _cpu_jiffies(), _processes_cpu()
        records = [Record(job, time.time(), app.actor.send(job.url(services.files.url))) for job in jobs]
        _collect(app, records, variant, deadline_s)
        services.cpu[variant] = _cpu(before, _cpu_jiffies())
        after = _processes_cpu()
        services.cpu[variant]["by_process"] = {  # type: ignore[assignment]
            kind: round(after[kind] - processes.get(kind, 0.0), 2) for kind in sorted(after)
        }
        alone = []
        for job in probes:
            alone.append(Record(job, time.time(), app.actor.send(job.url(services.files.url))))
            _collect(app, alone[-1:], f"{variant} duplicate", deadline_s)
        return records, alone
    finally:
        _stop_workers(process)
        app.broker.close()
        _clean(services.broker_url, namespace)


def _clean(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(f"*{namespace}*", count=1_000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


# -- figures ---------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _step(record: Record, name: str) -> float | None:
    assert record.result is not None
    return next((float(ms) for step, ms, _ in record.result["steps"] if step == name), None)


def _step_means(records: Sequence[Record]) -> dict[str, float]:
    """Mean milliseconds of each step over the jobs that computed their notes."""
    names = dict.fromkeys(name for r in records for name, _, _ in r.result["steps"])  # type: ignore[index]
    return {
        name: round(_mean([ms for r in records if (ms := _step(r, name)) is not None]), 1) for name in names
    }


def summarize(records: Sequence[Record]) -> dict[str, Any]:
    """The figures of one variant's run (the JSON's ``naive`` / ``turbo``)."""
    done = [r for r in records if r.result is not None]
    start = min(r.sent_at for r in records)
    wall = max((r.result["finished_at"] for r in done), default=start) - start  # type: ignore[index]
    latencies = [r.latency_ms for r in done]
    hits = [r for r in done if r.result["cached"]]  # type: ignore[index]
    return {
        "jobs": len(records),
        "completed": len(done),
        "failed": sum(1 for r in records if r.error is not None),
        "wall_s": round(wall, 3),
        "throughput_per_s": round(len(done) / wall, 3) if wall > 0 else 0.0,
        "p50_ms": round(_percentile(latencies, 50), 1),
        "p95_ms": round(_percentile(latencies, 95), 1),
        "cache_hit_rate": round(len(hits) / len(done), 3) if done else 0.0,
        "mean_job_ms": round(_mean([r.result["elapsed_ms"] for r in done]), 1),  # type: ignore[index]
        "steps_ms": _step_means([r for r in done if not r.result["cached"]]),  # type: ignore[index]
        "errors": sorted({r.error for r in records if r.error}),
    }


def _ratio(before: float, after: float) -> float | None:
    # None when there is nothing to compare (no duplicates in an all-unique run).
    return round(before / after, 2) if before > 0 and after > 0 else None


def _done(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r.result is not None]


def _hits(records: Sequence[Record]) -> list[Record]:
    return [r for r in _done(records) if r.result["cached"] in ("l1", "l2")]  # type: ignore[index]


def _elapsed(records: Sequence[Record]) -> list[float]:
    return [r.result["elapsed_ms"] for r in records]  # type: ignore[index]


def rows(
    naive: Sequence[Record], turbo: Sequence[Record], figures: dict[str, Any]
) -> list[tuple[str, float, float, str]]:
    """The guide's table: ``(optimization, before, after, unit)``; before/after are ms, or jobs/s."""
    computed = [r for r in _done(turbo) if r.result["cached"] is None]  # type: ignore[index]
    naive_downloads = [d for r in _done(naive) if (d := _step(r, "download")) is not None]
    turbo_downloads = [d for r in _done(turbo) if (d := _step(r, "download")) is not None]
    naive_notes = [d for r in _done(naive) if (d := _step(r, "notes")) is not None]
    turbo_notes = [d for r in computed if (d := _step(r, "notes")) is not None]
    duplicates = [r for r in _done(naive) if r.job.duplicate]
    return [
        ("Connection pooling (download step)", _mean(naive_downloads), _mean(turbo_downloads), "ms"),
        (
            "Multi-level cache (duplicate job, hit)",
            _mean(_elapsed(duplicates)),
            _mean(_elapsed(_hits(turbo))),
            "ms",
        ),
        ("Parallel chunks (notes step, new PDF)", _mean(naive_notes), _mean(turbo_notes), "ms"),
        # As in the guide's table, every row compares the time of a job.
        ("All combined (mean job time)", _mean(_elapsed(_done(naive))), _mean(_elapsed(_done(turbo))), "ms"),
        (
            "Throughput (jobs/s, whole run)",
            figures["naive"]["throughput_per_s"],
            figures["turbo"]["throughput_per_s"],
            "jobs/s",
        ),
    ]


def per_document(naive: Sequence[Record], probes: Sequence[Record]) -> list[dict[str, Any]]:
    """For each PDF: its naive job time, a lone turbo duplicate's time, the ratio and the target to meet."""
    found = []
    for name in sorted({r.job.name for r in _done(naive)}):
        before = _mean(_elapsed([r for r in _done(naive) if r.job.name == name]))
        hits = _elapsed([r for r in _hits(probes) if r.job.name == name])
        if not hits:
            continue
        after = _mean(hits)
        target = 500 if before >= 10_000 else 100
        ratio = _ratio(before, after) or 0.0
        found.append(
            {
                "pdf": name,
                "naive_ms": round(before, 1),
                "hit_ms": round(after, 3),
                "speedup": ratio,
                "target": target,
                "met": ratio >= target,
            }
        )
    return found


def improvements(
    table: Sequence[tuple[str, float, float, str]], docs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    (_, d0, d1, _), (_, c0, c1, _), (_, p0, p1, _), (_, a0, a1, _), (_, t0, t1, _) = table
    return {
        "pooling": _ratio(d0, d1),
        "cache_hit": _ratio(c0, c1),
        "parallel_chunks": _ratio(p0, p1),
        "all_combined": _ratio(a0, a1),
        "throughput": _ratio(t1, t0),  # after over before
        "duplicate_job_speedup": min((d["speedup"] for d in docs), default=0.0),
    }


def _format(value: float, unit: str) -> str:
    if unit == "jobs/s":
        return f"{value:.2f} jobs/s"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


def report(
    table: Sequence[tuple[str, float, float, str]], figures: dict[str, Any], docs: Sequence[dict[str, Any]]
) -> str:
    """The tables a person reads, as text (markdown)."""
    gains = figures["improvement"]
    keys = ("pooling", "cache_hit", "parallel_chunks", "all_combined", "throughput")
    lines = ["| Optimization | Before | After | Improvement |", "|---|---|---|---|"]
    for (name, before, after, unit), key in zip(table, keys, strict=True):
        if gains[key] is None:
            lines.append(f"| {name} | - | - | - (none in this run) |")
            continue
        lines.append(f"| {name} | {_format(before, unit)} | {_format(after, unit)} | **{gains[key]}x** |")
    lines += [
        "",
        "| run | jobs | completed | failed | wall | throughput | p50 | p95 | cache hits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        m = figures[variant]
        lines.append(
            f"| {variant} | {m['jobs']} | {m['completed']} | {m['failed']} | {m['wall_s']:.1f} s | "
            f"{m['throughput_per_s']:.2f}/s | {m['p50_ms']:.0f} ms | {m['p95_ms']:.0f} ms | "
            f"{m['cache_hit_rate']:.0%} |"
        )
    lines += [
        "",
        "Each PDF again, alone, after the run (a duplicate job on a quiet system):",
        "",
        "| PDF | naive job | turbo duplicate (hit) | faster | target |",
        "|---|---|---|---|---|",
    ]
    for d in docs:
        verdict = "met" if d["met"] else "NOT met"
        lines.append(
            f"| {d['pdf']} | {d['naive_ms'] / 1000:.2f} s | {d['hit_ms']:.2f} ms | {d['speedup']:.0f}x "
            f"| >= {d['target']}x: {verdict} |"
        )
    lines.append("")
    for variant in VARIANTS:
        cpu = figures[variant]["cpu"]
        per_job = cpu["cpu_seconds"] / max(1, figures[variant]["jobs"]) * 1000
        lines.append(
            f"{variant}: the machine's {cpu['cores']} cores were {cpu['busy_share']:.0%} busy while its "
            f"jobs ran ({cpu['cpu_seconds']:.1f} CPU-s, {per_job:.0f} ms per job, all processes included)"
        )
        shares = ", ".join(
            f"{kind} {seconds:.1f} s" for kind, seconds in cpu["by_process"].items() if seconds
        )
        lines.append(f"  CPU by process: {shares}")
    for variant in VARIANTS:
        for error in figures[variant]["errors"]:
            lines.append(f"\n{variant} failure (with its reason): {error}")
    return "\n".join(lines)


def chart(naive: Sequence[Record], turbo: Sequence[Record], figures: dict[str, Any], path: str) -> None:
    """A PNG: job latency (CDF), jobs completed over time, and the improvements, naive beside turbo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"naive": "#c0504d", "turbo": "#2e75b6"}
    figure, (latency, progress, gains) = plt.subplots(1, 3, figsize=(16, 5), constrained_layout=True)
    for variant, records in (("naive", naive), ("turbo", turbo)):
        done = _done(records)
        values = sorted(r.latency_ms / 1000 for r in done)
        shares = [(i + 1) / len(values) for i in range(len(values))]
        latency.step(values, shares, where="post", color=colours[variant], label=variant, linewidth=2)
        start = min(r.sent_at for r in records)
        finished = sorted(r.result["finished_at"] - start for r in done)  # type: ignore[index]
        m = figures[variant]
        progress.step(
            finished,
            range(1, len(finished) + 1),
            where="post",
            color=colours[variant],
            linewidth=2,
            label=f"{variant}: {m['throughput_per_s']:.2f} jobs/s, p95 {m['p95_ms'] / 1000:.1f} s",
        )
    latency.set(
        xscale="log",
        xlabel="job latency, enqueue to result (s, log)",
        ylabel="share of jobs",
        title="Job latency (CDF)",
    )
    progress.set(xlabel="seconds since the first job was sent", ylabel="jobs completed", title="Throughput")
    labels = {
        "pooling": "pooling",
        "cache_hit": "cache hit",
        "parallel_chunks": "parallel\nchunks",
        "all_combined": "all combined\n(job time)",
        "throughput": "throughput",
    }
    shown = {labels[n]: v for n, v in figures["improvement"].items() if n in labels and v}
    bars = gains.bar(list(shown), list(shown.values()), color="#2e75b6")
    gains.bar_label(bars, labels=[f"{v:,.1f}x" for v in shown.values()])
    gains.set(yscale="log", ylabel="turbo vs naive (x, log)", title="Improvement")
    for axes in (latency, progress):
        axes.grid(alpha=0.3)
        axes.legend()
    settings = figures["settings"]
    figure.suptitle(
        f"PDF notes: {settings['jobs']} jobs, {settings['duplicates']:.0%} duplicates, "
        f"{settings['workers']} worker processes x {settings['threads']} threads, "
        f"model latency {settings['latency']} ms"
        + (f", PDF server {settings['rtt']} ms away" if settings["rtt"] else "")
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.pdf_notes.loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pdfs", required=True, type=Path, help="a folder of PDFs")
    parser.add_argument("--jobs", type=int, default=100, help="jobs per run (default 100)")
    parser.add_argument("--duplicates", type=float, default=0.9, help="share of duplicate jobs (default 0.9)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument("--latency", type=int, default=200, help="model latency per call, ms (default 200)")
    parser.add_argument(
        "--rtt",
        type=int,
        default=0,
        help="simulated round trip to the PDFs' server, ms (default 0: loopback)",
    )
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14", help="a Redis URL (default db 14)")
    parser.add_argument(
        "--deadline", type=int, default=1_800, help="seconds each run may take (default 1800)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the job plan")
    parser.add_argument("--json", dest="json_out", help="write the figures as JSON here")
    parser.add_argument("--chart", help="write a PNG chart here")
    return parser


def _pdf_names(folder: Path) -> list[str]:
    names = sorted(path.name for path in folder.glob("*.pdf") if path.is_file())
    if not names:
        raise SystemExit(f"no .pdf files in {folder}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    jobs = plan(_pdf_names(args.pdfs), args.jobs, args.duplicates, args.seed)
    model, model_url = _start_model_server(args.latency)
    results: dict[str, list[Record]] = {}
    # One lone duplicate of each document that has notes, after the run.
    probes = list({job.name: Job(job.name, job.variant, True) for job in jobs if not job.duplicate}.values())
    try:
        with (
            tempfile.TemporaryDirectory(prefix="pdf-notes-load-") as folder,
            FileServer(args.pdfs, rtt=args.rtt) as files,
        ):
            services = Services(files, model_url, args.broker, args.workers, args.threads, Path(folder))
            results["naive"], _ = run_variant("naive", jobs, services, args.deadline)
            results["turbo"], alone = run_variant("turbo", jobs, services, args.deadline, probes=probes)
            cpus = services.cpu
    finally:
        model.terminate()
        model.wait(timeout=10)
    figures: dict[str, Any] = {variant: summarize(records) for variant, records in results.items()}
    for variant in VARIANTS:
        figures[variant]["cpu"] = cpus[variant]
    table = rows(results["naive"], results["turbo"], figures)
    docs = per_document(results["naive"], alone)
    figures["improvement"] = improvements(table, docs)
    figures["duplicate_job_speedup"] = figures["improvement"].pop("duplicate_job_speedup")
    figures["per_document"] = docs
    figures["settings"] = {
        "jobs": args.jobs,
        "duplicates": args.duplicates,
        "workers": args.workers,
        "threads": args.threads,
        "latency": args.latency,
        "rtt": args.rtt,
        "pdfs": str(args.pdfs),
    }
    print(report(table, figures, docs))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    if args.chart:
        chart(results["naive"], results["turbo"], figures, args.chart)
        print(f"\nchart: {args.chart}")
    lost = [v for v in VARIANTS if figures[v]["completed"] + figures[v]["failed"] != figures[v]["jobs"]]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
