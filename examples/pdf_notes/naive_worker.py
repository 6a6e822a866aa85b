"""The worker module of the naive twin: ``dramatiq examples.pdf_notes.naive_worker``.

The same environment as ``examples.pdf_notes.worker`` (``TURBO_BROKER_URL``,
``TURBO_REDIS_URL`` for results, ``TURBO_NOTES_DB``, ``OPENAI_BASE_URL``, ...),
on a plain Dramatiq broker without the suite.
"""

from __future__ import annotations

from .app import app_from_env, create_naive_app

app = app_from_env(
    create_naive_app,
    module="examples.pdf_notes.naive_worker",
    db="pdf_notes_naive.sqlite3",
    namespace="pdf-notes-naive",
)
broker = app.broker
generate_notes_naive = app.actor
