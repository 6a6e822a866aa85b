"""The notes model: the TextRank notes, the bundled OpenAI-compatible server, and the client.

Every HTTP test talks to a real ``ModelServer`` on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from dramatiq_turbo.backoff import is_retryable, retry_hint
from examples.pdf_notes.model import ChatModel, ChunkNotes, ModelError, merge_notes
from examples.pdf_notes.model_server import ModelServer
from examples.pdf_notes.textrank import extract_notes, split_sentences

ROOT = Path(__file__).resolve().parents[2]

# One topic (honey bees) dominates; four sentences are asides that share no words with it.
BEES = [
    "Honey bees collect nectar and pollen from flowers to feed the colony.",
    "The city council approved a new parking garage near the train station.",
    "Worker bees turn the nectar into honey and store the honey in wax cells of the hive.",
    "A colony of honey bees depends on worker bees that collect nectar, pollen and water for the hive.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "The queen bee lays eggs in the wax cells while worker bees feed the larvae with pollen and honey.",
    "Football fans waited for hours in the rain outside the stadium.",
    "In winter the bees of the colony cluster in the hive and live on the stored honey.",
]
ASIDES = {BEES[1], BEES[4], BEES[6]}

# PDF-extracted text: a numbered heading, a word hyphenated across lines, lines broken
# mid-sentence, a page number, a running footer, bullets, and a sentence running over a page break.
PDF_TEXT = """3.1 Photosynthesis

Photosynthesis is the process by which green plants use light energy to
make sugar from carbon dioxide and water. The chloro-
phyll in the leaves absorbs the light energy that drives photosynthesis.

Biology 101

12

• Light reactions take place in the thylakoid membranes of the chloroplast
• The Calvin cycle uses the energy made by the light reactions to fix carbon dioxide.
Plants store the sugar made by photosynthesis as starch in their roots and in their

Biology 101

13

leaves. Without light energy photosynthesis stops and the plant lives on its stored starch.
Biology 101
"""


def _words(count: int, seed: int = 7) -> str:
    """Made-up prose of about ``count`` words: Zipf-like vocabulary, sentences of 8-25 words."""
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))
        for _ in range(900)
    ]
    fillers = ["the", "of", "and", "to", "in", "is", "that", "for", "with", "as", "on", "by"]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    sentences, total = [], 0
    while total < count:
        size = rng.randint(8, 25)
        words = [
            rng.choice(fillers) if rng.random() < 0.4 else rng.choices(vocabulary, weights)[0]
            for _ in range(size)
        ]
        sentences.append(" ".join(words).capitalize() + ".")
        total += size
    lines, line = [], []
    for word in " ".join(sentences).split():  # about 12 words a line, as a PDF page has
        line.append(word)
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    return "\n".join([*lines, " ".join(line)])


# -- textrank --------------------------------------------------------------------------------


def test_key_points_are_the_central_sentences_and_terms_name_the_topic() -> None:
    notes = extract_notes(" ".join(BEES), max_points=3)

    assert len(notes["key_points"]) == 3
    assert not set(notes["key_points"]) & ASIDES
    assert set(notes["key_points"]) <= set(BEES)
    # The sentence sharing the most words with the others is the most central one.
    assert BEES[3] in notes["key_points"]
    terms = " ".join(notes["key_terms"])
    for word in ("honey", "bees", "pollen", "hive"):
        assert word in terms
    for word in ("parking", "flour", "football", "stadium"):
        assert word not in terms


def test_key_points_come_in_document_order() -> None:
    # The most central sentence comes last, so ranking order and document order differ.
    text = " ".join([*BEES[4:], *BEES[:4]])
    points = extract_notes(text, max_points=4)["key_points"]

    assert len(points) == 4
    positions = [text.index(point) for point in points]
    assert positions == sorted(positions)
    assert points[-1] == BEES[3]


def test_extract_notes_is_deterministic_across_processes() -> None:
    text = PDF_TEXT + "\n\n" + " ".join(BEES)
    here = extract_notes(text)
    assert extract_notes(text) == here
    # String hashing differs between processes: the notes must not depend on it.
    program = (
        "import json, sys; from examples.pdf_notes.textrank import extract_notes; "
        "print(json.dumps(extract_notes(sys.stdin.read())))"
    )
    for seed in ("1", "4242"):
        run = subprocess.run(
            [sys.executable, "-c", program],
            input=text,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
            timeout=30,
        )
        assert json.loads(run.stdout) == here


def test_pdf_text_is_cleaned_before_sentences_are_split() -> None:
    sentences = split_sentences(PDF_TEXT)

    assert sentences == [
        "Photosynthesis is the process by which green plants use light energy to make sugar "
        "from carbon dioxide and water.",
        "The chlorophyll in the leaves absorbs the light energy that drives photosynthesis.",
        "Light reactions take place in the thylakoid membranes of the chloroplast",
        "The Calvin cycle uses the energy made by the light reactions to fix carbon dioxide.",
        "Plants store the sugar made by photosynthesis as starch in their roots and in their leaves.",
        "Without light energy photosynthesis stops and the plant lives on its stored starch.",
    ]
    notes = extract_notes(PDF_TEXT, max_points=3)
    assert notes["title"] == "3.1 Photosynthesis"
    assert all(point in sentences for point in notes["key_points"])
    assert "light energy" in notes["key_terms"]
    assert "photosynthesis" in notes["key_terms"]


def test_title_falls_back_to_the_top_key_term() -> None:
    notes = extract_notes(" ".join(BEES))
    top = notes["key_terms"][0]
    assert notes["title"] == top[0].upper() + top[1:]


def test_junk_is_not_a_key_point() -> None:
    text = " ".join(
        [
            *BEES[:4],
            "Table 2: 1990 1995 2000 2005 2010 2015 2020 12.5 13.1 14.8 15.2 16.0 17.3.",
            "See above.",
            "Bees " * 70 + "make honey.",
        ]
    )
    points = extract_notes(text, max_points=10)["key_points"]
    assert points == BEES[:4]


def test_empty_and_tiny_texts() -> None:
    assert extract_notes("") == {"title": "", "key_points": [], "key_terms": []}
    assert extract_notes("12\n\n13\n")["key_points"] == []
    one = "Bees make honey from the nectar of flowers."
    assert extract_notes(one)["key_points"] == [one]


def test_extract_notes_is_fast() -> None:
    short, long = _words(1_100), _words(6_000)  # ~1,500 and ~8,000 tokens
    extract_notes(short)  # warm the stem cache, as a running server has

    def best(text: str) -> float:
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            extract_notes(text)
            timings.append(time.perf_counter() - start)
        return min(timings)

    # Generous bounds (the targets are 5 and 50 ms): they catch a quadratic blow-up, not noise.
    assert best(short) < 0.025
    assert best(long) < 0.25


# -- merging ---------------------------------------------------------------------------------


def test_merge_drops_duplicate_points_from_overlapping_chunks() -> None:
    first = ChunkNotes("Bees", (BEES[0], BEES[2], BEES[3]), ("honey bees", "nectar"))
    second = ChunkNotes(
        "",
        (
            BEES[3].upper(),  # the overlap: the same sentence again, differently spaced or cased
            "  " + BEES[2].replace(" ", "  "),
            "worker bees turn the nectar into honey, and store the honey in the wax cells of their hive",
            "A colony of honey bees depends on worker bees that collect nectar",  # cut at the chunk edge
            BEES[5],
        ),
        ("nectar", "Honey bee", "queen"),
    )
    merged = merge_notes([first, second])

    assert merged.key_points == (BEES[0], BEES[2], BEES[3], BEES[5])
    assert merged.title == "Bees"
    # Named by both chunks first; "Honey bee" is "honey bees"; then by first appearance.
    assert merged.key_terms == ("honey bees", "nectar", "queen")


def test_merge_keeps_the_whole_sentence_and_spreads_a_limited_number_of_points() -> None:
    cut = "A colony of honey bees depends on worker bees that collect nectar"
    merged = merge_notes([ChunkNotes("", (cut,), ()), ChunkNotes("Later title", (BEES[3],), ())])
    assert merged.key_points == (BEES[3],)
    assert merged.title == "Later title"

    # Three chunks of two different points each; a limit of 4 takes each chunk's first point first.
    points = [[BEES[0], BEES[1]], [BEES[2], BEES[4]], [BEES[5], BEES[6]]]
    parts = [ChunkNotes("", tuple(pair), ()) for pair in points]
    assert merge_notes(parts).key_points == tuple(p for pair in points for p in pair)
    limited = merge_notes(parts, max_points=4)
    assert limited.key_points == (points[0][0], points[0][1], points[1][0], points[2][0])


def test_chunk_notes_round_trip_and_tolerant_parsing() -> None:
    notes = ChunkNotes("T", ("a point.",), ("term",))
    assert ChunkNotes.from_dict(json.loads(json.dumps(notes.to_dict()))) == notes
    loose = ChunkNotes.from_dict({"Title": None, "keyPoints": ("one", "", "two"), "Key terms": "solo"})
    assert loose == ChunkNotes("", ("one", "two"), ("solo",))
    text = ChunkNotes.from_text("# Bees\n\n- Bees make honey.\n2. They live in hives.\n")
    assert text == ChunkNotes("Bees", ("Bees make honey.", "They live in hives."), ())


# -- the server and the client -----------------------------------------------------------------


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start ``ModelServer``s for a test (``serve(**options)``); all are stopped afterwards."""
    servers: list[ModelServer] = []

    def start(**options: Any) -> ModelServer:
        options.setdefault("latency", 0)
        server = ModelServer(**options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _client(server: ModelServer, **options: Any) -> ChatModel:
    options.setdefault("session", requests.Session())
    options.setdefault("min_backoff", 10)
    options.setdefault("api_key", "sk-test")
    return ChatModel(base_url=server.url, **options)


def test_notes_round_trip_through_the_server(serve: Any) -> None:
    server = serve(latency=20)
    text = " ".join(BEES)
    # session=None: the pooled per-process session of dramatiq_turbo.
    notes = ChatModel(base_url=server.url, api_key="sk-test").notes(text)

    assert notes == ChunkNotes.from_dict(extract_notes(text))
    assert _client(server, max_points=2, max_terms=3).notes(text) == ChunkNotes.from_dict(
        extract_notes(text, max_points=2, max_terms=3)
    )
    assert server.stats()["ok"] == 2


def test_client_defaults_come_from_the_openai_environment(serve: Any, monkeypatch: Any) -> None:
    server = serve(api_key="sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_MODEL", "notes-1")
    model = ChatModel(session=requests.Session())

    assert (model.base_url, model.model) == (server.url, "notes-1")
    assert model.notes(" ".join(BEES)).key_points
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_MODEL")
    assert (ChatModel().base_url, ChatModel().model) == ("https://api.openai.com/v1", "gpt-4o-mini")


def test_server_speaks_the_openai_shapes(serve: Any) -> None:
    server = serve(api_key="sk-right")
    root = server.url.removesuffix("/v1")
    auth = {"Authorization": "Bearer sk-right"}
    body = {"model": "any-model", "messages": [{"role": "user", "content": " ".join(BEES)}]}

    answer = requests.post(server.url + "/chat/completions", json=body, headers=auth, timeout=5)
    data = answer.json()
    assert answer.status_code == 200
    assert data["object"] == "chat.completion" and data["model"] == "any-model"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["choices"][0]["finish_reason"] == "stop"
    assert json.loads(data["choices"][0]["message"]["content"]) == extract_notes(" ".join(BEES))
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0

    assert requests.get(root + "/health", timeout=5).json() == {"status": "ok"}
    assert requests.get(server.url + "/models", headers=auth, timeout=5).json()["data"][0]["id"]
    bad = requests.post(server.url + "/chat/completions", data=b"{not json", headers=auth, timeout=5)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    assert requests.post(server.url + "/chat/completions", json=body, timeout=5).status_code == 401
    assert requests.get(root + "/nothing", timeout=5).status_code == 404


def test_server_keeps_connections_alive(serve: Any) -> None:
    server = serve()
    model = _client(server)
    for _ in range(10):
        model.notes(BEES[0])
    assert server.stats()["calls"] == 10
    assert server.stats()["connections"] == 1


def test_api_key_is_never_logged_or_shown(serve: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    key = "sk-very-secret-0123456789abcdef"
    good = serve(api_key=key)
    model = _client(good, api_key=key)
    assert model.notes(" ".join(BEES)).key_points  # the key travelled, as a Bearer token

    errors = []
    for server in (serve(api_key="sk-another-key-000000000000"), serve(failure_rate=1.0, failure_status=500)):
        with pytest.raises(ModelError) as caught:
            _client(server, api_key=key, max_retries=1).notes(BEES[0])
        errors.append(caught.value)

    assert [e.status for e in errors] == [401, 500]
    texts = [caplog.text, repr(model), *map(str, errors), *map(repr, errors)]
    assert all(key not in text and key[-12:] not in text for text in texts)
    assert "api_key=<set>" in repr(model)


def test_throttled_call_waits_for_retry_after_then_succeeds(serve: Any) -> None:
    server = serve(latency=400, max_concurrency=1, retry_after=1)
    model = _client(server, session=None)
    start = threading.Barrier(2)
    elapsed: list[float] = []

    failures: list[BaseException] = []

    def call() -> None:
        start.wait()
        began = time.monotonic()
        try:
            model.notes(" ".join(BEES))
        except BaseException as error:  # reported below
            failures.append(error)
        elapsed.append(time.monotonic() - began)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert not failures
    stats = server.stats()
    assert stats["ok"] == 2 and stats["throttled"] >= 1
    assert sorted(elapsed)[0] < 1.0  # the first call was admitted at once
    assert sorted(elapsed)[1] >= 1.0  # the other waited the Retry-After second before its retry


def test_retry_after_beyond_the_timeout_raises_at_once_with_the_hint(serve: Any) -> None:
    server = serve(latency=600, max_concurrency=1, retry_after=5)
    blocker = threading.Thread(target=_client(server).notes, args=(BEES[0],))
    blocker.start()
    time.sleep(0.2)
    began = time.monotonic()
    with pytest.raises(ModelError) as caught:
        _client(server, timeout=2_000).notes(BEES[0])
    blocker.join()

    assert time.monotonic() - began < 1.0  # no 5 s sleep that the timeout would cut short anyway
    assert (caught.value.status, caught.value.retryable, caught.value.retry_after) == (429, True, 5_000)
    assert retry_hint(caught.value) == 5_000 and is_retryable(caught.value) == (True, "")


def test_server_error_is_retried_then_succeeds(serve: Any) -> None:
    server = serve(failure_rate=1.0, failure_status=502)
    attempts = 0

    @contextlib.contextmanager
    def heal_after_first_attempt() -> Iterator[None]:
        nonlocal attempts
        attempts += 1
        try:
            yield
        finally:
            server.configure(failure_rate=0.0)

    notes = _client(server, around_request=heal_after_first_attempt).notes(" ".join(BEES))

    assert notes.key_points
    assert attempts == 2
    assert (server.stats()["failed"], server.stats()["ok"]) == (1, 1)


def test_persistent_outage_raises_retryable_error_after_all_retries(serve: Any) -> None:
    server = serve()
    server.outage(True)
    entered = 0

    @contextlib.contextmanager
    def counting() -> Iterator[None]:
        nonlocal entered
        entered += 1
        yield

    with pytest.raises(ModelError) as caught:
        _client(server, max_retries=3, around_request=counting).notes(BEES[0])

    error = caught.value
    assert (error.status, error.retryable) == (503, True)
    assert server.url + "/chat/completions" in str(error) and "503" in str(error)
    assert server.stats()["calls"] == 4 == entered  # max_retries + 1 attempts, each inside around_request
    server.outage(False)
    assert _client(server).notes(BEES[0]).key_points


def test_connection_errors_are_retried_then_raised_retryable(serve: Any) -> None:
    server = serve()
    url = server.url
    server.stop()
    with pytest.raises(ModelError) as caught:
        ChatModel(base_url=url, max_retries=2, min_backoff=10, session=requests.Session()).notes(BEES[0])
    assert (caught.value.status, caught.value.retryable) == (None, True)
    assert "3 attempts" in str(caught.value)


def test_client_errors_are_not_retried(serve: Any) -> None:
    small = serve(context_window=50)
    with pytest.raises(ModelError) as too_long:
        _client(small).notes(" ".join(BEES))
    locked = serve(api_key="sk-right")
    with pytest.raises(ModelError) as unauthorised:
        _client(locked, api_key="sk-wrong").notes(BEES[0])

    assert (too_long.value.status, too_long.value.retryable) == (400, False)
    assert "maximum context length" in str(too_long.value)
    assert (unauthorised.value.status, unauthorised.value.retryable) == (401, False)
    assert is_retryable(unauthorised.value)[0] is False
    assert small.stats()["calls"] == 1 and locked.stats()["calls"] == 1


def test_error_from_around_request_propagates_without_a_request(serve: Any) -> None:
    server = serve(failure_rate=1.0)

    class Refused(Exception):
        pass

    @contextlib.contextmanager
    def refuse() -> Iterator[None]:
        raise Refused("circuit open")
        yield

    with pytest.raises(Refused):
        _client(server, around_request=refuse).notes(BEES[0])
    assert server.stats()["calls"] == 0

    entries = 0

    @contextlib.contextmanager
    def refuse_second() -> Iterator[None]:
        nonlocal entries
        entries += 1
        if entries == 2:
            raise Refused("rate limit timeout")
        yield

    with pytest.raises(Refused):
        _client(server, around_request=refuse_second).notes(BEES[0])
    assert server.stats()["calls"] == 1  # the 5xx was retried; the refusal was not


def test_model_error_survives_pickling() -> None:
    error = ModelError("boom", status=503, retryable=True, retry_after=1_500, url="http://x/v1")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.status, copy.retryable, copy.retry_after, copy.url) == (
        "boom",
        503,
        True,
        1_500,
        "http://x/v1",
    )


def test_server_answers_many_concurrent_calls(serve: Any) -> None:
    server = serve(latency=100)
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=20))
    model = _client(server, session=session, timeout=5_000, max_retries=0)
    failures: list[BaseException] = []

    def work() -> None:
        for _ in range(5):
            try:
                model.notes(BEES[0])
            except BaseException as error:  # reported below
                failures.append(error)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(20)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, began + 15 - time.monotonic()))
    elapsed = time.monotonic() - began

    assert not failures
    assert server.stats()["ok"] == 100
    assert server.stats()["max_in_flight"] > 10
    assert elapsed < 3.0  # one after another they would take 10 s
