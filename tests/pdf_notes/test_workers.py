"""The pipeline in real ``dramatiq`` worker processes on a real Redis, saving to a real PostgreSQL.

One proof per guarantee that takes more than one process: identical PDFs
are computed once across processes (single-flight), the limit on requests
to the model holds across processes, notes are saved once per document,
and bad input is dead-lettered with its reason.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from dramatiq.results import ResultFailure

from examples.pdf_notes.app import create_app
from examples.pdf_notes.embedded import wait_result
from examples.pdf_notes.fileserver import FileServer
from examples.pdf_notes.model_server import ModelServer
from examples.pdf_notes.pdfgen import make_text_pdf
from examples.pdf_notes.storage import PostgresStore
from tests import harness
from tests.pdf_notes.test_pipeline import _document

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

LLM_MAX = 10


@pytest.fixture
def database(postgres_dsn: str) -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards."""
    import psycopg

    name = f"notes_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    folder = tmp_path / "pdfs"
    folder.mkdir()
    (folder / "guide.pdf").write_bytes(make_text_pdf(_document(16), title="Guide"))
    (folder / "other.pdf").write_bytes(make_text_pdf(_document(3)[::-1], title="Other"))
    (folder / "page.pdf").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    with FileServer(folder) as server:
        yield server


def test_identical_pdfs_compute_once_across_processes_under_one_request_limit(
    redis_url, worker_processes, files, database
):
    namespace = harness.unique("notes")
    with ModelServer(latency=40) as model:
        env = {
            "TURBO_BROKER_URL": redis_url,
            "TURBO_NOTES_DB": database,
            "TURBO_NOTES_NAMESPACE": namespace,
            "TURBO_NOTES_QUEUE": namespace,
            "OPENAI_BASE_URL": model.url,
            "TURBO_NOTES_CHUNK_TOKENS": "120",
            "TURBO_NOTES_OVERLAP": "12",
            "TURBO_NOTES_LLM_MAX": str(LLM_MAX),
            "TURBO_NOTES_OCR": "0",
        }
        workers = worker_processes("examples.pdf_notes.worker", processes=2, threads=4, env=env)
        workers.expected_tracebacks = ("NotAPdf: not a PDF",)
        workers.start()
        app = create_app(broker_url=redis_url, namespace=namespace, queue=namespace, db=database)
        try:
            guide = [app.actor.send(f"{files.url}/guide.pdf") for _ in range(10)]
            other = app.actor.send(f"{files.url}/other.pdf")
            bad = app.actor.send(f"{files.url}/page.pdf")
            results = [wait_result(app, m, timeout=90_000) for m in guide]
            second = wait_result(app, other, timeout=90_000)
            with pytest.raises(ResultFailure, match="not a PDF"):
                wait_result(app, bad, timeout=30_000)
            _assert_computed_once(results, second, model)
            _assert_both_processes_took_part(workers.output())
            _assert_request_limit(model.call_times())
            _assert_saved_once(database, results[0]["content_hash"], second["content_hash"])
            _assert_dead_letter(redis_url, namespace, bad.message_id)
            _assert_only_expected_tracebacks(workers.output())
        finally:
            app.broker.close()
            _clean(redis_url, namespace)


def _assert_computed_once(results: list[dict], second: dict, model: ModelServer) -> None:
    computed = [r for r in results if r["cached"] is None]
    assert len(computed) == 1, f"one computation of guide.pdf, got {len(computed)}"
    assert {r["cached"] for r in results} - {None} <= {"l1", "l2", "wait"}
    assert all(r["key_points"] == computed[0]["key_points"] for r in results)
    assert model.stats()["calls"] == computed[0]["chunks"] + second["chunks"], "no chunk asked twice"


def _assert_both_processes_took_part(output: str) -> None:
    # Computed once must hold across processes, not only across threads of one.
    pids = set(
        re.findall(
            r"\[PID (\d+)\] \[[^]]+\] \[dramatiq_turbo.telemetry\] \[INFO\] Steps of generate_notes", output
        )
    )
    assert len(pids) == 2, f"jobs ran in {len(pids)} worker process(es)"


def _assert_request_limit(times: list[float]) -> None:
    assert len(times) > 2 * LLM_MAX, "enough requests to test the limit"
    # Admission is by Redis time; a request reaches the server a few ms later.
    window = 0.9  # 100 ms of skew between admission and arrival: worker threads wait for a core here
    busiest = max(sum(1 for t in times if start <= t < start + window) for start in times)
    assert LLM_MAX - 2 <= busiest <= LLM_MAX, f"{busiest} requests within {window} s (limit {LLM_MAX}/s)"


def _assert_saved_once(database: str, *hashes: str) -> None:
    store = PostgresStore(database)
    try:
        assert store.count() == 2
        for content_hash in hashes:
            saved = store.get(content_hash)
            assert saved is not None and saved["saves"] == 1, "a hit saves nothing again"
    finally:
        store.close()


def _assert_dead_letter(redis_url: str, namespace: str, message_id: str) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    try:
        stored = client.hvals(f"{namespace}:{namespace}.XQ.msgs")
    finally:
        client.close()
    found = [m for m in map(json.loads, stored) if m["message_id"] == message_id]
    assert found, f"the bad PDF is in the dead-letter queue (it holds {len(stored)})"
    failure = found[0]["options"]["turbo_failure"]
    assert failure["error"] == "NotAPdf" and failure["retries"] == 0 and "not a PDF" in failure["detail"]


def _assert_only_expected_tracebacks(output: str) -> None:
    # Dramatiq logs the bad PDF's failure with its traceback; nothing else may fail.
    blocks = [block.split("\n[", 1)[0] for block in output.split("Traceback (most recent call last):")[1:]]
    unexpected = [block for block in blocks if "NotAPdf: not a PDF" not in block]
    assert not unexpected, unexpected[0][-2000:]


def _clean(redis_url: str, namespace: str) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"*{namespace}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
