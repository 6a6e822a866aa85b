"""Fixtures of the fault suite: a private Redis for the suite, the PDF pipeline's model and files, runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dramatiq_turbo.redis import connect_redis
from examples.pdf_notes.model_server import ModelServer
from examples.pdf_notes.pdfgen import make_text_pdf
from tests import harness
from tests.faults.workload import FaultRun
from tests.pdf_notes.test_pipeline import _document


@pytest.fixture
def fault_store(spare_redis: harness.RedisServer) -> Iterator[harness.RedisServer]:
    """A durable private ``redis-server``: the suite's store (and a ``RedisBroker``'s), which tests fault.

    ``spare_redis`` is asked first for its check that ``redis-server`` exists
    (a failure under ``CI=true``); this one keeps an append-only file, so a
    crash and a restart lose no message, as for a Redis a broker runs on.
    """
    server = harness.RedisServer(durable=True)
    server.start()
    yield server
    server.remove_data()


@pytest.fixture
def pdfs(tmp_path: Path) -> list[Path]:
    """Two small PDFs with a text layer, for the PDF-notes part of the workload."""
    paths = [tmp_path / "guide.pdf", tmp_path / "other.pdf"]
    paths[0].write_bytes(make_text_pdf(_document(4), title="Guide"))
    paths[1].write_bytes(make_text_pdf(_document(3)[::-1], title="Other"))
    return paths


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    with ModelServer(latency=20) as server:
        yield server


@pytest.fixture
def fault_run(
    request: pytest.FixtureRequest,
    spare_redis: harness.RedisServer,
    fault_store: harness.RedisServer,
    worker_processes: Callable[..., harness.WorkerProcesses],
    model_server: ModelServer,
    tmp_path: Path,
) -> Iterator[Callable[..., FaultRun]]:
    """``fault_run(kind, broker_url=None, **env)``: a ``FaultRun`` of the app on ``kind``'s broker.

    Records and results go to ``spare_redis``, a private server that no test
    faults (the shared test database is emptied by other tests at any time);
    the servers go with the test.
    """
    redis_url = spare_redis.url
    records = connect_redis(redis_url, socket_timeout=10_000)
    runs: list[FaultRun] = []

    def factory(kind: str, *, broker_url: str | None = None, **env: str) -> FaultRun:
        if kind == "rabbitmq":
            request.getfixturevalue("rabbitmq_url")
        namespace = harness.unique("fault")
        default_url = harness.RABBITMQ_URL if kind == "rabbitmq" else fault_store.url
        url = broker_url or default_url
        run = FaultRun(
            namespace=namespace,
            kind=kind,
            store=fault_store,
            records=records,
            records_url=redis_url,
            worker_processes=worker_processes,
            broker_url=url,
            env={
                "TURBO_FAULT_NS": namespace,
                "TURBO_FAULT_BROKER": kind,
                "TURBO_FAULT_BROKER_URL": url,
                "TURBO_FAULT_STORE_URL": fault_store.url,
                "TURBO_FAULT_RECORDS_URL": redis_url,
                "TURBO_FAULT_MODEL_URL": model_server.url,
                "TURBO_FAULT_NOTES_DB": str(tmp_path / f"{namespace}.sqlite3"),
                **env,
            },
        )
        runs.append(run)
        return run

    yield factory
    for run in runs:
        for group in run.groups:
            group.stop()  # before the records go: the fixture of the workers checks their logs after
        run.close()
    records.close()
