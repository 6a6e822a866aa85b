"""The PDF-notes pipeline end to end on an embedded broker: notes, the cache, bad input, a failing model.

Each job goes through the real stack: ``install()`` on a ``StubBroker``, an
in-process worker, PDFs downloaded over HTTP from 127.0.0.1, the bundled
notes model over HTTP, SQLite.  Tests make their own small PDFs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dramatiq_turbo.breaker import CircuitBreaker
from examples.pdf_notes.embedded import Embedded, Outcome
from examples.pdf_notes.fileserver import FileServer
from examples.pdf_notes.model_server import ModelServer
from examples.pdf_notes.pdfgen import encrypt_pdf, make_image_pdf, make_text_pdf
from examples.pdf_notes.pipeline import Settings
from examples.pdf_notes.storage import SqliteStore

TOPICS = {
    "queues": "A message queue holds work until a worker is free. Workers acknowledge each message "
    "after it is done. A message that is not acknowledged returns to the queue. Retries use backoff. "
    "Dead letters keep the messages that failed too often.",
    "caches": "A cache keeps answers close to where they are needed. The first level lives in memory. "
    "The second level lives in a shared server. Entries expire after their time to live. "
    "Invalidation removes entries that are no longer true.",
    "rivers": "Rivers carry water from mountains to the sea. Rain and melting snow feed them. "
    "Their valleys are shaped by erosion over many years. Deltas form where rivers slow down.",
}


def _document(pages: int = 6) -> list[str]:
    names = list(TOPICS)
    return [
        f"Chapter {index + 1}: {names[index % 3]}\n\n"
        + "\n\n".join(TOPICS[names[(index + k) % 3]] for k in range(4))
        for index in range(pages)
    ]


SETTINGS = Settings(
    chunk_tokens=200,
    overlap=20,
    chunk_concurrency=4,
    ocr=False,
    max_bytes=100_000,
    retry_min_backoff=50,
    breaker_fail_max=3,
    breaker_reset=400,
    max_retries=20,
)


@pytest.fixture
def pdfs(tmp_path: Path) -> Path:
    folder = tmp_path / "pdfs"
    folder.mkdir()
    good = make_text_pdf(_document(), title="Study guide")
    (folder / "good.pdf").write_bytes(good)
    (folder / "same-bytes.pdf").write_bytes(good)
    (folder / "encrypted.pdf").write_bytes(encrypt_pdf(good, user_password="secret"))
    (folder / "not_a_pdf.pdf").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "image.pdf").write_bytes(make_image_pdf(["Nothing but a picture of text."]))
    (folder / "huge.pdf").write_bytes(make_text_pdf(_document(6) * 40))
    assert (folder / "huge.pdf").stat().st_size > SETTINGS.max_bytes
    return folder


@pytest.fixture
def files(pdfs: Path) -> Iterator[FileServer]:
    with FileServer(pdfs) as server:
        yield server


@pytest.fixture
def model() -> Iterator[ModelServer]:
    with ModelServer(latency=5) as server:
        yield server


@pytest.fixture
def embedded(tmp_path: Path, model: ModelServer) -> Iterator[Embedded]:
    with Embedded(db=str(tmp_path / "notes.sqlite3"), model_url=model.url, settings=SETTINGS) as running:
        yield running


def _one(embedded: Embedded, source: str) -> Outcome:
    (outcome,) = embedded.run([source])
    return outcome


def test_a_pdf_gets_notes_with_its_step_table_and_one_row_in_the_database(embedded, files, model, tmp_path):
    outcome = _one(embedded, f"{files.url}/good.pdf")
    assert outcome.error is None, outcome.error
    result = outcome.result
    assert result is not None and result["cached"] is None
    assert result["pages"] >= 6 and result["chunks"] >= 3
    assert result["title"] and len(result["key_points"]) >= 3 and result["key_terms"]
    assert any("queue" in point.lower() or "cache" in point.lower() for point in result["key_points"])
    steps = [name for name, _, _ in result["steps"]]
    assert steps == ["download", "hash", "cache", "extract", "chunk", "notes", "merge", "save"]
    assert result["bottleneck"] in steps
    assert model.stats()["calls"] == result["chunks"], "one model request per chunk"
    saved = SqliteStore(tmp_path / "notes.sqlite3").get(result["content_hash"])
    assert saved is not None and saved["key_points"] == result["key_points"]


def test_a_duplicate_pdf_is_served_from_the_cache_without_asking_the_model(embedded, files, model):
    first = _one(embedded, f"{files.url}/good.pdf").result
    assert first is not None
    calls = model.stats()["calls"]
    again = _one(embedded, f"{files.url}/good.pdf").result
    other_url = _one(embedded, f"{files.url}/same-bytes.pdf").result
    assert again is not None and other_url is not None
    assert again["cached"] == "l1" and other_url["cached"] == "l1", "keyed by content, not by URL"
    assert model.stats()["calls"] == calls, "a hit asks the model nothing"
    assert again["key_points"] == first["key_points"]
    assert [name for name, _, _ in again["steps"]] == ["download", "hash", "cache"]
    assert again["elapsed_ms"] < first["elapsed_ms"]


BAD_INPUTS = [
    ("encrypted.pdf", "EncryptedPdf", "password"),
    ("not_a_pdf.pdf", "NotAPdf", "not a PDF"),
    ("empty.pdf", "EmptyPdf", "empty"),
    ("image.pdf", "NoExtractableText", "no extractable text"),
    ("huge.pdf", "DownloadTooLarge", "byte limit"),
    ("missing.pdf", "DownloadError", "404"),
]


@pytest.mark.parametrize(("name", "error", "phrase"), BAD_INPUTS)
def test_bad_input_fails_at_once_naming_the_problem_in_the_failure_the_log_and_the_dead_letter(
    embedded, files, model, caplog, name, error, phrase
):
    caplog.set_level(logging.INFO)
    outcome = _one(embedded, f"{files.url}/{name}")
    assert outcome.result is None
    assert outcome.error is not None and error in outcome.error and phrase.lower() in outcome.error.lower()
    assert model.stats()["calls"] == 0
    assert embedded.app is not None
    (dead,) = embedded.app.broker.dead_letters  # type: ignore[attr-defined]
    failure = dead.options["turbo_failure"]
    assert failure["retries"] == 0, "never retried"
    assert failure["error"] == error and phrase.lower() in failure["detail"].lower()
    assert phrase.lower() in caplog.text.lower()


def test_a_truncated_pdf_fails_as_corrupt_or_says_which_pages_it_read(embedded, files, pdfs):
    whole = (pdfs / "good.pdf").read_bytes()
    (pdfs / "truncated.pdf").write_bytes(whole[: int(len(whole) * 0.6)])
    outcome = _one(embedded, f"{files.url}/truncated.pdf")
    if outcome.result is None:
        assert outcome.error is not None and "CorruptPdf" in outcome.error
    else:
        assert any("truncated" in w or "damaged" in w for w in outcome.result["warnings"]), outcome.result


def test_an_unknown_file_path_fails_at_once(embedded, tmp_path):
    outcome = _one(embedded, str(tmp_path / "nowhere.pdf"))
    assert outcome.error is not None and "SourceError" in outcome.error and "no such file" in outcome.error


def test_a_model_outage_opens_the_breaker_and_the_job_completes_when_it_is_back(embedded, files, model):
    model.outage(True)
    assert embedded.app is not None
    message = embedded.app.actor.send(f"{files.url}/good.pdf")
    breaker = next(m for m in embedded.app.broker.middleware if isinstance(m, CircuitBreaker)).get("llm")
    deadline = time.monotonic() + 20
    while breaker.counts["open"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert breaker.counts["open"] >= 1, "the breaker opened during the outage"
    failed_calls = model.stats()["failed"]
    time.sleep(0.5)
    # While open, requests are refused locally: the model is not hammered.
    assert model.stats()["failed"] - failed_calls <= SETTINGS.breaker_fail_max * 2
    model.outage(False)
    result = message.get_result(backend=embedded.app.backend, block=True, timeout=30_000)
    assert result["chunks"] >= 3 and result["key_points"], "no job is lost to an outage"
    assert not embedded.app.broker.dead_letters  # type: ignore[attr-defined]


def test_the_limit_holds_per_request_not_per_job(tmp_path, files, model):
    # One job asks many chunks at once; the limit is on the requests.
    limits = {"llm_max": 6, "llm_duration": 1_000, "chunk_concurrency": 8, "chunk_tokens": 100, "overlap": 10}
    settings = Settings(**{**SETTINGS.__dict__, **limits})
    with Embedded(db=str(tmp_path / "limit.sqlite3"), model_url=model.url, settings=settings) as running:
        outcome = _one(running, f"{files.url}/good.pdf")
    assert outcome.result is not None, outcome.error
    times = model.call_times()
    assert len(times) == outcome.result["chunks"] >= 8
    # The server sees a request a little after the limiter admits it; 100 ms covers that skew under load.
    window = (settings.llm_duration - 100) / 1000
    busiest = max(sum(1 for t in times if start <= t < start + window) for start in times)
    assert busiest <= settings.llm_max, f"{busiest} requests within {window:.2f} s"
    assert times[-1] - times[0] >= (len(times) - settings.llm_max) / settings.llm_max * 0.9
