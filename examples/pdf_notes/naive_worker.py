"""The worker module of the naive twin: ``dramatiq examples.pdf_notes.naive_worker``.

The same environment as ``examples.pdf_notes.worker`` (``TURBO_BROKER_URL``,
``TURBO_REDIS_URL`` for results, ``TURBO_NOTES_DB``, ``OPENAI_BASE_URL``, ...),
on a plain Dramatiq broker without the suite.
"""

from __future__ import annotations

import os

from .app import QUEUE, create_naive_app

_url = os.environ.get("TURBO_BROKER_URL")
if not _url:
    raise RuntimeError(
        "set TURBO_BROKER_URL (redis:// or amqp://) for dramatiq examples.pdf_notes.naive_worker"
    )

app = create_naive_app(
    broker_url=_url,
    redis_url=os.environ.get("TURBO_REDIS_URL") or None,
    db=os.environ.get("TURBO_NOTES_DB", "pdf_notes_naive.sqlite3"),
    namespace=os.environ.get("TURBO_NOTES_NAMESPACE", "pdf-notes-naive"),
    queue=os.environ.get("TURBO_NOTES_QUEUE", QUEUE),
)
broker = app.broker
generate_notes_naive = app.actor
