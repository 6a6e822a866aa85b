"""The tables ``dramatiq-turbo stats`` and ``report`` print: ``rich`` when installed, plain text otherwise."""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from .rules import format_duration, format_rate
from .stats import PerformanceReport, QueueStats, Recommendation

__all__ = ["print_report", "print_stats", "stats_renderable"]

_STATS_COLUMNS = (
    "queue",
    "waiting",
    "delayed",
    "dead",
    "in progress",
    "done/min",
    "failed/min",
    "fail %",
    "wait p50/p95",
    "oldest",
    "run p50/p95",
    "workers",
    "busy",
)
_WORKER_COLUMNS = ("worker", "queues", "threads", "busy", "utilization", "last beat")
_STYLES = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _ms(value: float | None) -> str:
    return "-" if value is None else format_duration(value)


def _pair(first: int | None, second: int | None) -> str:
    return "-" if first is None else f"{_ms(first)} / {_ms(second)}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def stats_row(stats: QueueStats) -> list[str]:
    """One queue's cells, in the order of the stats table's columns."""
    counters = stats.counters
    workers = "-" if stats.workers is None else f"{stats.workers} ({stats.worker_threads} thr)"
    return [
        stats.queue,
        str(stats.waiting),
        str(stats.delayed),
        str(stats.dead),
        "-" if stats.in_progress is None else str(stats.in_progress),
        format_rate(stats.completed_per_min) if counters else "-",
        format_rate(stats.failed_per_min) if counters else "-",
        f"{stats.failure_rate:.1%}" if counters and stats.processed else "-",
        _pair(stats.wait_p50_ms, stats.wait_p95_ms),
        _ms(stats.oldest_age_ms),
        _pair(stats.processing_p50_ms, stats.processing_p95_ms),
        workers,
        _pct(stats.utilization),
    ]


def _title(source: str, at: int, window: int) -> str:
    when = datetime.datetime.fromtimestamp(at / 1000).strftime("%Y-%m-%d %H:%M:%S")
    return f"Queues of {source} at {when} (rates over the last {format_duration(window)})"


def _advice_lines(stats_list: Sequence[QueueStats]) -> list[tuple[str, Recommendation]]:
    return [(stats.queue, advice) for stats in stats_list for advice in stats.recommendations]


def stats_renderable(stats_list: Sequence[QueueStats], source: str) -> Any:
    """The stats table with every queue's recommendations under it, as a ``rich`` renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    at = stats_list[0].at if stats_list else 0
    window = stats_list[0].window_ms if stats_list else 0
    table = Table(title=_title(source, at, window), title_justify="left")
    for index, column in enumerate(_STATS_COLUMNS):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for stats in stats_list:
        table.add_row(*stats_row(stats))
    parts: list[Any] = [table]
    for stats in stats_list:
        if not stats.recommendations:
            continue
        parts.append(Text(f"{stats.queue}:", style="bold"))
        # A grid, so that a long piece of advice wraps under its own text.
        advice = Table.grid(padding=(0, 1))
        advice.add_column(no_wrap=True)
        advice.add_column(no_wrap=True, min_width=8)
        advice.add_column()
        for item in stats.recommendations:
            advice.add_row("", Text(item.severity, style=_STYLES[item.severity]), item.text)
        parts.append(advice)
    if not _advice_lines(stats_list) and stats_list:
        parts.append(Text("No recommendations: every queue is healthy.", style="green"))
    return Group(*parts)


def _console(out: IO[str]) -> Any:
    from rich.console import Console

    width = None if out.isatty() else int(os.environ.get("COLUMNS", "200"))
    return Console(file=out, width=width, highlight=False)


def print_stats(stats_list: Sequence[QueueStats], source: str, out: IO[str] | None = None) -> None:
    """Print the stats table of ``stats_list`` to ``out`` (stdout)."""
    out = out or sys.stdout
    try:
        console = _console(out)
    except ImportError:
        _plain_stats(stats_list, source, out)
        return
    console.print(stats_renderable(stats_list, source))


def print_report(report: PerformanceReport, source: str, out: IO[str] | None = None) -> None:
    """Print the performance report: the stats table, the totals and the live workers."""
    out = out or sys.stdout
    totals = report.totals()
    summary = (
        f"Totals: {totals['waiting']} waiting, {totals['delayed']} delayed, {totals['dead']} dead; "
        f"{totals['completed']} completed and {totals['failed']} failed in the last "
        f"{format_duration(report.window_ms)} ({totals['failure_rate']:.1%} failed); "
        f"{totals['workers']} worker process(es), {totals['worker_threads']} threads, "
        f"{_pct(totals['utilization'])} busy."
    )
    rows = [_worker_row(report, w) for w in report.workers]
    try:
        console = _console(out)
    except ImportError:
        _plain_stats(report.queues, source, out)
        print(summary, file=out)
        print(_plain_table(_WORKER_COLUMNS, rows), file=out)
        return
    from rich.table import Table

    console.print(stats_renderable(report.queues, source))
    console.print(summary)
    if rows:
        table = Table(title="Live workers", title_justify="left")
        for index, column in enumerate(_WORKER_COLUMNS):
            table.add_column(column, justify="left" if index < 2 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _worker_row(report: PerformanceReport, worker: Any) -> list[str]:
    return [
        worker.id,
        ", ".join(worker.queues),
        str(worker.threads),
        str(worker.busy),
        _pct(worker.utilization),
        f"{_ms(worker.age_ms)} ago",
    ]


def _plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded)

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _plain_stats(stats_list: Sequence[QueueStats], source: str, out: IO[str]) -> None:
    at = stats_list[0].at if stats_list else 0
    window = stats_list[0].window_ms if stats_list else 0
    print(_title(source, at, window), file=out)
    print(_plain_table(_STATS_COLUMNS, [stats_row(s) for s in stats_list]), file=out)
    current = None
    for queue, advice in _advice_lines(stats_list):
        if queue != current:
            print(f"{queue}:", file=out)
            current = queue
        print(f"  {advice.severity:<8} {advice.text}", file=out)
