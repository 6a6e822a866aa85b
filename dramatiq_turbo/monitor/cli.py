"""``dramatiq-turbo stats`` and ``dramatiq-turbo report``: queue health from the command line.

Exit codes of ``stats --check``, for health probes and autoscalers: 0 when
every queue is healthy, 1 when any has a recommendation of severity
``warning`` or worse, 2 when the broker (or the counters' Redis) cannot be
reached.  Without ``--check`` the command exits 0 whatever the advice, and
2 when unreachable.  No output (tables, JSON, errors, logs) ever shows the
password of a URL.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .redact import Redactor, redact_url

__all__ = ["EXIT_HEALTHY", "EXIT_UNHEALTHY", "EXIT_UNREACHABLE", "register"]

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 2

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_AMQP_SCHEMES = ("amqp://", "amqps://")


def register(subparsers: Any) -> None:
    """Add ``dramatiq-turbo stats`` and ``dramatiq-turbo report`` to the command."""
    stats = subparsers.add_parser(
        "stats",
        help="print every queue's statistics and recommendations",
        description="Print a table of the broker's queues (waiting, delayed, dead, rates, latencies, "
        "workers) with the recommendations for each; --check exits 0 healthy, 1 unhealthy, 2 unreachable.",
    )
    _common_arguments(stats)
    stats.add_argument(
        "--watch", type=float, default=None, metavar="SECONDS", help="refresh every SECONDS, in place"
    )
    stats.add_argument("--check", action="store_true", help="exit 1 when any queue is unhealthy")
    stats.set_defaults(handler=_stats, parser=stats)

    report = subparsers.add_parser(
        "report",
        help="print the performance report of every queue and worker",
        description="Print every queue's statistics, the totals and the live workers.",
    )
    _common_arguments(report)
    report.set_defaults(handler=_report, parser=report)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default=os.environ.get("TURBO_BROKER_URL"),
        metavar="URL",
        help="redis://, rediss://, unix:// or amqp:// URL of the broker (default: $TURBO_BROKER_URL)",
    )
    parser.add_argument(
        "--namespace", default="dramatiq", help="RedisBroker's key namespace (default: dramatiq)"
    )
    parser.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="Redis of the workers' counters (default: the broker's, for a Redis broker)",
    )
    parser.add_argument(
        "--monitor-namespace", default="turbo:monitor", help="the counters' key prefix (turbo:monitor)"
    )
    parser.add_argument("--queue", action="append", default=[], metavar="Q", help="a queue (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


class _Session:
    """One command's broker, monitor and redactor; every error it reports is stripped of secrets."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.redactor = Redactor(args.broker, args.redis)
        self.source = redact_url(args.broker)
        self.monitor: Any = None

    def open(self) -> None:
        from .monitor import QueueMonitor

        self.monitor = QueueMonitor(
            _broker_from_url(self.args.broker, self.args.namespace),
            redis=self.args.redis,
            namespace=self.args.monitor_namespace,
        )

    def describe(self, error: BaseException) -> str:
        # Some errors say nothing in str() (pika's AMQPConnectionError): then their repr.
        name = type(error).__name__
        detail = (str(error) or repr(error)).removeprefix(f"{name}: ")
        return self.redactor(f"cannot reach {self.source}: {type(error).__name__}: {detail}")

    def error(self, error: BaseException) -> int:
        text = self.describe(error)
        if self.args.json:
            print(json.dumps({"broker": self.source, "reachable": False, "error": text}))
        else:
            print(f"dramatiq-turbo: {text}", file=sys.stderr)
        return EXIT_UNREACHABLE

    def close(self) -> None:
        if self.monitor is not None:
            try:
                self.monitor.close()
                self.monitor.broker.close()
            except Exception:
                logging.getLogger(__name__).debug("closing the broker failed", exc_info=True)


def _broker_from_url(url: str, namespace: str) -> Any:
    if url.startswith(_REDIS_SCHEMES):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, namespace=namespace)  # type: ignore[no-untyped-call]
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=url)


def _prepare(args: argparse.Namespace) -> _Session:
    parser: argparse.ArgumentParser = args.parser
    if not args.broker:
        parser.error("--broker URL is required (or set TURBO_BROKER_URL)")
    if not args.broker.startswith(_REDIS_SCHEMES + _AMQP_SCHEMES):
        parser.error(
            f"--broker must be a redis://, rediss://, unix:// or amqp:// URL, got {redact_url(args.broker)}"
        )
    if getattr(args, "watch", None) is not None and (args.watch <= 0 or args.check):
        parser.error("--watch needs a positive number of seconds, and cannot be combined with --check")
    return _Session(args)


class _QuietLogs:
    """While a command runs: library logs only from ERROR up, on stderr, without secrets.

    Errors are reported once, by the command; libraries' own connection logs
    (pika logs every failed attempt) would repeat them, secrets and all.
    """

    _NAMES = ("pika", "dramatiq", "dramatiq_turbo")

    def __init__(self, redactor: Redactor) -> None:
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.addFilter(redactor)
        self.handler.setLevel(logging.ERROR)
        self.levels: dict[str, int] = {}

    def __enter__(self) -> None:
        logging.getLogger().addHandler(self.handler)
        for name in self._NAMES:
            logger = logging.getLogger(name)
            self.levels[name] = logger.level
            logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self.handler)
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def _stats(args: argparse.Namespace) -> int:
    session = _prepare(args)
    with _QuietLogs(session.redactor):
        return _run_stats(session, args)


def _run_stats(session: _Session, args: argparse.Namespace) -> int:
    try:
        try:
            session.open()
            if args.watch is not None:
                return _watch(session, args.queue or None, args.watch)
            stats = session.monitor.get_stats(args.queue or None)
        except Exception as error:
            return session.error(error)
        _print_stats(session, stats)
        if args.check:
            return EXIT_HEALTHY if all(s.healthy for s in stats) else EXIT_UNHEALTHY
        return EXIT_HEALTHY
    finally:
        session.close()


def _print_stats(session: _Session, stats: Sequence[Any]) -> None:
    if session.args.json:
        at = stats[0].at if stats else int(time.time() * 1000)
        document = {
            "broker": session.source,
            "reachable": True,
            "at": at,
            "healthy": all(s.healthy for s in stats),
            "queues": [s.as_dict() for s in stats],
        }
        print(json.dumps(document))
        return
    if not stats:
        print(f"No queues found on {session.source}: name them with --queue.", file=sys.stderr)
        return
    from .render import print_stats

    print_stats(stats, session.source)


def _watch(session: _Session, queues: Sequence[str] | None, seconds: float) -> int:
    """Refresh until interrupted: in place on a terminal, one snapshot after another otherwise."""

    def snapshot() -> Any:
        try:
            return session.monitor.get_stats(queues)
        except Exception as error:
            return session.describe(error)

    try:
        if sys.stdout.isatty() and not session.args.json:
            _watch_live(session, snapshot, seconds)
        else:
            while True:
                result = snapshot()
                if isinstance(result, str):
                    print(json.dumps({"reachable": False, "error": result}) if session.args.json else result)
                else:
                    _print_stats(session, result)
                sys.stdout.flush()
                time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    return EXIT_HEALTHY


def _watch_live(session: _Session, snapshot: Callable[[], Any], seconds: float) -> None:
    from rich.live import Live
    from rich.text import Text

    from .render import stats_renderable

    def view() -> Any:
        result = snapshot()
        return (
            Text(result, style="red") if isinstance(result, str) else stats_renderable(result, session.source)
        )

    with Live(view(), auto_refresh=False) as live:
        while True:
            time.sleep(seconds)
            live.update(view(), refresh=True)


def _report(args: argparse.Namespace) -> int:
    session = _prepare(args)
    with _QuietLogs(session.redactor):
        return _run_report(session, args)


def _run_report(session: _Session, args: argparse.Namespace) -> int:
    try:
        try:
            session.open()
            for queue in args.queue:
                session.monitor.register_queue(queue)
            report = session.monitor.get_performance_report()
        except Exception as error:
            return session.error(error)
        if args.json:
            print(json.dumps({"broker": session.source, **report.as_dict()}))
        else:
            from .render import print_report

            print_report(report, session.source)
        return EXIT_HEALTHY
    finally:
        session.close()
