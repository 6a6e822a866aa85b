"""process_batch against a plain loop: I/O-bound items, and 500 saves to PostgreSQL.

    .venv/bin/python benchmarks/bench_utils_batch.py

PostgreSQL comes from ``TURBO_BENCH_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); the benchmark creates a table
with a unique name and drops it at the end.  Each save is its own
transaction, as an ORM's ``save()`` is; the guide promises "5-10x faster for
bulk operations" from batching them.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dramatiq_turbo import process_batch

PG_URL = os.environ.get("TURBO_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SAVES = 500


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def io_bound() -> list[tuple[str, float]]:
    items = range(200)

    def call(n: int) -> int:
        time.sleep(0.01)  # a 10 ms remote call
        return n

    loop = timed(lambda: [call(n) for n in items])
    rows = [("loop", loop)]
    for concurrency in (5, 10, 20):
        rows.append(
            (
                f"process_batch(concurrency={concurrency})",
                timed(lambda c=concurrency: process_batch(items, call, concurrency=c)),
            )
        )
    return rows


class Connections:
    """A tiny pool: one psycopg connection per concurrent saver."""

    def __init__(self, size: int) -> None:
        import psycopg

        self._free: queue.Queue[Any] = queue.Queue()
        for _ in range(size):
            self._free.put(psycopg.connect(PG_URL, autocommit=True))

    @contextmanager
    def get(self) -> Iterator[Any]:
        connection = self._free.get()
        try:
            yield connection
        finally:
            self._free.put(connection)

    def close(self) -> None:
        while not self._free.empty():
            self._free.get().close()


def postgres() -> list[tuple[str, float]]:
    import psycopg

    table = f"turbo_bench_{uuid.uuid4().hex[:10]}"
    rows_data = [(n, f"note {n}", "x" * 200) for n in range(SAVES)]
    admin = psycopg.connect(PG_URL, autocommit=True)
    pool = Connections(5)
    try:
        admin.execute(f"CREATE TABLE {table} (id int, title text, body text)")

        def reset() -> None:
            admin.execute(f"TRUNCATE {table}")

        def save(connection: Any, row: tuple[int, str, str]) -> None:
            connection.execute(f"INSERT INTO {table} (id, title, body) VALUES (%s, %s, %s)", row)

        results = []
        reset()
        with pool.get() as connection:
            results.append(("one by one (loop)", timed(lambda: [save(connection, row) for row in rows_data])))

        def pooled_save(row: tuple[int, str, str]) -> None:
            with pool.get() as connection:
                save(connection, row)

        for concurrency in (5,):
            reset()
            elapsed = timed(
                lambda c=concurrency: process_batch(rows_data, pooled_save, concurrency=c).raise_errors()
            )
            results.append((f"process_batch(concurrency={concurrency})", elapsed))

        reset()
        with pool.get() as connection:

            def many() -> None:
                with connection.transaction(), connection.cursor() as cursor:
                    cursor.executemany(
                        f"INSERT INTO {table} (id, title, body) VALUES (%s, %s, %s)", rows_data
                    )

            results.append(("executemany, one transaction", timed(many)))

        reset()
        with pool.get() as connection:

            def copy() -> None:
                with (
                    connection.transaction(),
                    connection.cursor() as cursor,
                    cursor.copy(f"COPY {table} (id, title, body) FROM STDIN") as stream,
                ):
                    for row in rows_data:
                        stream.write_row(row)

            results.append(("COPY, one transaction", timed(copy)))
        count = admin.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert count is not None and count[0] == SAVES, count
        return results
    finally:
        admin.execute(f"DROP TABLE IF EXISTS {table}")
        admin.close()
        pool.close()


def table(title: str, rows: list[tuple[str, float]], per: int) -> None:
    base = rows[0][1]
    print(f"\n{title}")
    print(f"{'method':<34} {'total ms':>9} {'ms/item':>8} {'speed-up':>9}")
    print("-" * 63)
    for name, seconds in rows:
        print(f"{name:<34} {seconds * 1000:9.1f} {seconds * 1000 / per:8.3f} {base / seconds:8.1f}x")


def main() -> None:
    threading.current_thread().name = "bench"
    table("200 I/O-bound items (10 ms each)", io_bound(), 200)
    try:
        rows = postgres()
    except Exception as error:  # PostgreSQL not running: say so, do not fail the others
        print(f"\nPostgreSQL at {PG_URL} unavailable: {type(error).__name__}: {error}")
        return
    table(f"{SAVES} saves to PostgreSQL (each its own transaction unless stated)", rows, SAVES)
    print("\nThe guide's claim for batching bulk operations: 5-10x.")


if __name__ == "__main__":
    main()
