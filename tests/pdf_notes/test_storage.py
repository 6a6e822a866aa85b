"""Notes storage: one row per document (upsert on the content hash), SQLite and a real PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator

import pytest

from examples.pdf_notes.storage import NotesStore, PostgresStore, SqliteStore, open_store


def _record(key: str, title: str, **extra: object) -> dict[str, object]:
    return {
        "content_hash": key,
        "source": f"http://x/{title}.pdf",
        "title": title,
        "pages": 3,
        "chunks": 2,
        "key_points": [f"{title} point"],
        **extra,
    }


@pytest.fixture
def postgres_store(postgres_dsn: str) -> Iterator[PostgresStore]:
    table = f"notes_test_{uuid.uuid4().hex[:10]}"
    store = PostgresStore(postgres_dsn, table=table)
    yield store
    store.connection().execute(f"DROP TABLE IF EXISTS {table}")
    store.close()


def _saves_twice_keeps_one_row(store: NotesStore) -> None:
    store.save(_record("a" * 64, "first"))
    store.save(_record("a" * 64, "second"))
    store.save(_record("b" * 64, "other"))
    assert store.count() == 2
    saved = store.get("a" * 64)
    assert saved is not None
    assert saved["title"] == "second" and saved["saves"] == 2
    assert saved["key_points"] == ["second point"]
    assert store.get("c" * 64) is None


def test_sqlite_upsert_keeps_one_row_per_content_hash(tmp_path):
    _saves_twice_keeps_one_row(SqliteStore(tmp_path / "notes.sqlite3"))


@pytest.mark.integration
def test_postgres_upsert_keeps_one_row_per_content_hash(postgres_store):
    _saves_twice_keeps_one_row(postgres_store)


def _hammer(store: NotesStore, key: str, times: int) -> None:
    for index in range(times):
        store.save(_record(key, f"t{index}"))
    store.close()


@pytest.mark.integration
def test_postgres_concurrent_saves_of_one_document_from_threads(postgres_store):
    threads = [threading.Thread(target=_hammer, args=(postgres_store, "d" * 64, 10)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert postgres_store.count() == 1
    saved = postgres_store.get("d" * 64)
    assert saved is not None and saved["saves"] == 80


def _save_in_child(path: str, key: str) -> None:
    _hammer(SqliteStore(path), key, 20)


def test_sqlite_concurrent_saves_from_processes_and_threads(tmp_path):
    path = str(tmp_path / "notes.sqlite3")
    SqliteStore(path)  # creates the table before the writers race
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_save_in_child, args=(path, "e" * 64)) for _ in range(3)]
    for process in processes:
        process.start()
    store = SqliteStore(path)
    threads = [threading.Thread(target=_hammer, args=(store, "e" * 64, 20)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert store.count() == 1
    saved = store.get("e" * 64)
    assert saved is not None and saved["saves"] == 120, "no save was lost to a lock"


def test_open_store_picks_the_engine_and_refuses_other_urls(tmp_path):
    assert isinstance(open_store(tmp_path / "x.sqlite3"), SqliteStore)
    with pytest.raises(ValueError, match="SQLite file path or a postgresql:// DSN"):
        open_store("mysql://localhost/db")
    with pytest.raises(ValueError, match="plain SQL identifier"):
        SqliteStore(tmp_path / "y.sqlite3", table="notes; DROP TABLE x")


def test_a_record_without_its_content_hash_is_refused(tmp_path):
    with pytest.raises(ValueError, match="content_hash"):
        SqliteStore(tmp_path / "z.sqlite3").save({"title": "no key"})


def test_postgres_repr_hides_the_password():
    store = PostgresStore.__new__(PostgresStore)
    store.dsn = "postgresql://user:s3cret@db.example:5432/notes"
    assert "s3cret" not in repr(store)
