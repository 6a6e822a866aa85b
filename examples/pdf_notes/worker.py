"""The worker module of the optimized pipeline: ``dramatiq examples.pdf_notes.worker``.

Configured by the environment, so every worker process on every host gets
the same pipeline:

* ``TURBO_BROKER_URL``: ``redis://...`` or ``amqp://...`` (required: an
  in-process ``StubBroker`` cannot be shared with a worker process).
* ``TURBO_REDIS_URL``: the shared store (cache, limits, breakers, results);
  defaults to a Redis broker's own server.
* ``TURBO_NOTES_DB``: an SQLite path or a ``postgresql://`` DSN
  (default ``pdf_notes.sqlite3``).
* ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_MODEL``: the notes model
  (any OpenAI-compatible endpoint; ``python -m examples.pdf_notes.model_server``
  serves an offline one).
* ``TURBO_NOTES_NAMESPACE``, ``TURBO_NOTES_QUEUE`` and the ``TURBO_NOTES_*``
  settings of ``examples.pdf_notes.pipeline.Settings``.
"""

from __future__ import annotations

from .app import app_from_env, create_app

app = app_from_env(
    create_app, module="examples.pdf_notes.worker", db="pdf_notes.sqlite3", namespace="pdf-notes"
)
broker = app.broker
generate_notes = app.actor
