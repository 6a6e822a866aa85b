"""Where notes are saved: SQLite by default, PostgreSQL for a ``postgresql://`` DSN.

One row per document, keyed by the SHA-256 of its bytes: saving the same PDF
twice (from two URLs, or two workers at once) keeps one row, updated in
place by an upsert, never a duplicate.

Connections are opened lazily, one per thread and process: a worker's
threads save at the same time, and a forked child never reuses its parent's
socket or file handle.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = ["NotesStore", "PostgresStore", "SqliteStore", "open_store"]

# One table for both engines; only the types of the notes and the time differ.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    content_hash TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    title TEXT NOT NULL,
    pages INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    notes {json} NOT NULL,
    saves INTEGER NOT NULL DEFAULT 1,
    updated_at {seconds} NOT NULL
)
"""

# Both engines speak the same upsert; only the placeholder differs.
_UPSERT = """
INSERT INTO {table} (content_hash, source, title, pages, chunks, notes, updated_at)
VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})
ON CONFLICT (content_hash) DO UPDATE SET
    source = excluded.source, title = excluded.title, pages = excluded.pages,
    chunks = excluded.chunks, notes = excluded.notes, saves = {table}.saves + 1,
    updated_at = excluded.updated_at
"""


_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _table(name: str) -> str:
    # The name is put into SQL text: only plain identifiers are accepted.
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise ValueError(f"table must be a plain SQL identifier, got {name!r}")
    return name


class NotesStore(Protocol):
    """What the pipeline needs from a database."""

    def save(self, record: Mapping[str, Any]) -> None:
        """Insert or update the row of ``record["content_hash"]``."""

    def get(self, content_hash: str) -> dict[str, Any] | None:
        """The saved notes of a document, with ``saves`` (how often it was saved), or ``None``."""

    def count(self) -> int:
        """How many documents have notes."""

    def close(self) -> None:
        """Close this thread's connection."""


def _row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    try:
        content_hash = record["content_hash"]
    except KeyError:
        raise ValueError("a notes record needs its content_hash") from None
    return (
        content_hash,
        str(record.get("source", "")),
        str(record.get("title", "")),
        int(record.get("pages", 0)),
        int(record.get("chunks", 0)),
        json.dumps(dict(record), ensure_ascii=False, sort_keys=True),
        time.time(),
    )


class _SqlStore:
    """The upsert and reads both engines share, on one connection per thread and process.

    Subclasses set ``placeholder`` (their driver's parameter marker) and
    ``table``, and make connections with ``connect``.
    """

    placeholder = "?"
    table = "notes"

    def __init__(self) -> None:
        self._local = threading.local()

    def save(self, record: Mapping[str, Any]) -> None:
        self.connection().execute(_UPSERT.format(p=self.placeholder, table=self.table), _row(record))

    def get(self, content_hash: str) -> dict[str, Any] | None:
        query = f"SELECT notes, saves FROM {self.table} WHERE content_hash = {self.placeholder}"
        found = self.connection().execute(query, (content_hash,)).fetchone()
        if found is None:
            return None
        # PostgreSQL hands JSONB back decoded, SQLite as text.
        notes = found[0] if isinstance(found[0], dict) else json.loads(found[0])
        return {**notes, "saves": found[1]}

    def count(self) -> int:
        return int(self.connection().execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def connection(self) -> Any:
        current = getattr(self._local, "connection", None)
        if current is None or getattr(self._local, "pid", None) != os.getpid():
            current = self._local.connection = self.connect()
            self._local.pid = os.getpid()
        return current

    def connect(self) -> Any:  # pragma: no cover - each store has its own
        raise NotImplementedError

    def close(self) -> None:
        current = getattr(self._local, "connection", None)
        if current is not None and getattr(self._local, "pid", None) == os.getpid():
            current.close()
        self._local.connection = None


class SqliteStore(_SqlStore):
    """Notes in an SQLite file, safe for several threads and processes.

    WAL mode lets readers and one writer work at once; a writer that finds
    the file locked waits up to ``busy_timeout`` ms instead of failing.

    Parameters:
      path(str | Path): The database file (created with its table).
      busy_timeout(int): Milliseconds to wait for another writer's lock.
      table(str): The table's name.
    """

    def __init__(self, path: str | Path, *, busy_timeout: int = 10_000, table: str = "notes") -> None:
        super().__init__()
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.table = _table(table)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection().execute(_SCHEMA.format(table=self.table, json="TEXT", seconds="REAL"))

    def connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout / 1000, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout)}")
        return connection

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"


class PostgresStore(_SqlStore):
    """Notes in PostgreSQL (``psycopg`` 3, autocommit; notes kept as ``JSONB``).

    Parameters:
      dsn(str): A ``postgresql://`` connection string.
      table(str): The table's name.
    """

    placeholder = "%s"

    def __init__(self, dsn: str, *, table: str = "notes") -> None:
        super().__init__()
        try:
            import psycopg  # noqa: F401  (checked here so the error names the extra)
        except ImportError:
            raise RuntimeError(
                'PostgreSQL storage needs psycopg 3: pip install "dramatiq-turbo[examples]"'
            ) from None
        self.dsn = dsn
        self.table = _table(table)
        connection = self.connection()
        # Two workers starting at once would race in CREATE TABLE IF NOT
        # EXISTS (it can fail with a unique violation): one at a time.
        with connection.transaction():
            lock = f"dramatiq_turbo:{self.table}"
            connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            connection.execute(_SCHEMA.format(table=self.table, json="JSONB", seconds="DOUBLE PRECISION"))

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)

    def __repr__(self) -> str:
        # The DSN may hold a password: show only where it points.
        return f"PostgresStore({self.dsn.split('@')[-1]!r})"


def open_store(target: str | Path, *, table: str = "notes") -> NotesStore:
    """The store for ``target``: PostgreSQL for a ``postgresql://`` DSN, else an SQLite file path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text, table=table)
    if "://" in text:
        raise ValueError(f"--db must be an SQLite file path or a postgresql:// DSN, got {text!r}")
    return SqliteStore(text, table=table)
