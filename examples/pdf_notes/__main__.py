"""Study notes for your PDFs: ``python -m examples.pdf_notes FILE_OR_URL...``.

Without ``--broker`` everything runs in this process (an embedded broker and
worker, the bundled offline notes model unless ``--model-url`` or
``OPENAI_BASE_URL`` names one, notes saved to SQLite).  With ``--broker``
the jobs are enqueued to a real Redis or RabbitMQ, where
``dramatiq examples.pdf_notes.worker`` processes run them (configure those
with ``TURBO_BROKER_URL``, ``OPENAI_BASE_URL`` and friends), and this command
waits for their results.

Exit status: 0 when every document got notes, 1 when any failed (each
failure is printed with its reason), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .app import create_app, size_pools
from .embedded import Embedded, Outcome, collect, format_notes
from .pipeline import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.pdf_notes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="FILE_OR_URL", help="PDF files or http(s) URLs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--db", default="pdf_notes.sqlite3", help="SQLite path or postgresql:// DSN")
    parser.add_argument("--broker", help="redis:// or amqp:// URL: enqueue to real workers")
    parser.add_argument("--redis", help="Redis URL for results and shared state (default: the broker's)")
    parser.add_argument("--model-url", help="OpenAI-compatible base URL (overrides OPENAI_BASE_URL)")
    return parser


def _remote(args: argparse.Namespace) -> list[Outcome]:
    app = create_app(broker_url=args.broker, redis_url=args.redis, db=args.db, model_url=args.model_url)
    try:
        messages = [(source, app.actor.send(source)) for source in args.sources]
        return collect(app, messages)
    finally:
        app.broker.close()


def _print(outcomes: Sequence[Outcome], as_json: bool) -> None:
    if as_json:
        payload = [{"source": o.source, "result": o.result, "error": o.error} for o in outcomes]
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    for outcome in outcomes:
        print(f"== {outcome.source}")
        print(format_notes(outcome.result, points=8) if outcome.result else f"FAILED: {outcome.error}")
        print()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    size_pools(Settings.from_env())
    if args.broker:
        outcomes = _remote(args)
    else:
        with Embedded(db=args.db, model_url=args.model_url) as embedded:
            outcomes = embedded.run(args.sources)
    _print(outcomes, args.json)
    return 0 if all(outcome.result is not None for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
