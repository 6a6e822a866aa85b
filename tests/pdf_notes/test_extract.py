"""extract_text: one test per outcome, on PDFs made on the spot by pdfgen.

Every failure must be a PdfError subclass with ``retryable = False`` and a
message naming the problem; every success must carry the document's words.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pypdfium2  # type: ignore[import-untyped]
import pytest

from examples.pdf_notes import extract
from examples.pdf_notes.extract import (
    CorruptPdf,
    EmptyPdf,
    EncryptedPdf,
    NoExtractableText,
    NotAPdf,
    PdfError,
    extract_text,
    iter_pages,
)
from examples.pdf_notes.pdfgen import encrypt_pdf, make_image_pdf, make_sample_pdfs, make_text_pdf
from tests.harness import IN_CI, ROOT

PAGES = [
    "Page 1 talks about the red queue and its workers.",
    "Page 2 talks about the green queue and its workers.",
    "Page 3 talks about the blue queue and its workers.",
]


def _ten_pages() -> list[str]:
    return [f"Section {n} begins here. " + f"marker{n} " * 150 for n in range(1, 11)]


def _assert_permanent(error: PdfError, kind: str, *words: str) -> None:
    assert error.retryable is False
    assert error.kind == kind
    for word in words:
        assert word in str(error)


@pytest.mark.parametrize("engine", ["pdfium", "pypdf"])
def test_a_text_pdf_gives_its_words_back(engine: str) -> None:
    text = "Evaporation, condensation (and) precipitation: caf\u00e9 back\\slash"
    result = extract_text(make_text_pdf([text], title="Water"), engine=engine, ocr=False)
    assert result.engine == engine
    assert (result.pages, result.text_pages, result.ocr_pages) == (1, 1, 0)
    assert result.text == text
    assert result.warnings == ()


@pytest.mark.parametrize("engine", ["pdfium", "pypdf"])
def test_pages_come_back_in_order_one_per_string(engine: str) -> None:
    result = extract_text(make_text_pdf(PAGES), engine=engine, ocr=False)
    assert (result.pages, result.text_pages) == (3, 3)
    assert result.text.split("\n\n") == PAGES
    assert list(iter_pages(make_text_pdf(PAGES), engine=engine)) == PAGES


def test_a_long_page_flows_onto_more_pages_and_is_wrapped() -> None:
    words = [f"word{n}" for n in range(1500)]
    result = extract_text(make_text_pdf([" ".join(words)]), ocr=False)
    assert result.pages > 1
    assert result.text.split() == words
    assert all(len(line) < 120 for line in result.text.splitlines())


@pytest.mark.parametrize("engine", ["pdfium", "pypdf"])
def test_an_encrypted_pdf_needs_its_password(engine: str) -> None:
    pdf = encrypt_pdf(make_text_pdf(PAGES), user_password="s3cret")
    with pytest.raises(EncryptedPdf) as missing:
        extract_text(pdf, engine=engine)
    _assert_permanent(missing.value, "encrypted", "encrypted PDF", "a password is needed")
    with pytest.raises(EncryptedPdf) as wrong:
        extract_text(pdf, engine=engine, password="guess")
    _assert_permanent(wrong.value, "encrypted", "the password given does not open it")
    assert extract_text(pdf, engine=engine, password="s3cret", ocr=False).text.split("\n\n") == PAGES


@pytest.mark.parametrize("engine", ["pdfium", "pypdf"])
def test_an_empty_user_password_opens_without_one(engine: str) -> None:
    pdf = encrypt_pdf(make_text_pdf(PAGES), user_password="")
    assert b"/Encrypt" in pdf
    assert extract_text(pdf, engine=engine, ocr=False).text.split("\n\n") == PAGES
    # A password meant for other files is no reason to refuse it.
    assert extract_text(pdf, engine=engine, password="unrelated", ocr=False).pages == 3


def test_a_truncated_pdf_gives_the_pages_it_still_has_and_says_so() -> None:
    pdf = make_text_pdf(_ten_pages())
    result = extract_text(pdf[: int(len(pdf) * 0.6)], ocr=False)
    assert result.pages == 10
    assert 0 < result.text_pages < 10
    assert "marker1 " in result.text and "marker10" not in result.text
    assert result.warnings == (f"read {result.text_pages} of 10 pages: the file is truncated",)


def test_a_pdf_truncated_before_any_page_is_corrupt() -> None:
    pdf = make_text_pdf(_ten_pages())
    with pytest.raises(CorruptPdf) as caught:
        extract_text(pdf[:300], ocr=False)
    _assert_permanent(caught.value, "corrupt", "corrupt PDF: the file is truncated", "can be read")


def test_an_html_page_is_not_a_pdf() -> None:
    html = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in</body></html>"
    with pytest.raises(NotAPdf) as caught:
        extract_text(html)
    _assert_permanent(caught.value, "not_a_pdf", "not a PDF: the data starts with b'<!DOCTYPE html>'", "HTML")


@pytest.mark.parametrize("data", [b"", b" \r\n\t  \n"], ids=["0 bytes", "whitespace"])
def test_an_empty_file_is_empty(data: bytes) -> None:
    with pytest.raises(EmptyPdf) as caught:
        extract_text(data)
    _assert_permanent(caught.value, "empty", "empty PDF")


def test_image_only_pages_without_ocr_have_no_extractable_text() -> None:
    with pytest.raises(NoExtractableText) as caught:
        extract_text(make_image_pdf(["Nothing to read here but pixels."]), ocr=False)
    _assert_permanent(caught.value, "no_text", "no extractable text: 1 page(s), none has a text layer")


def test_image_only_pages_are_read_by_ocr() -> None:
    if not extract.tesseract_available():
        if IN_CI:
            pytest.fail("tesseract is not on PATH, and CI must prove OCR: apt-get install tesseract-ocr")
        pytest.skip("tesseract is not on PATH (apt-get install tesseract-ocr)")
    pages = ["Clouds form when water vapour condenses.", "Rain returns the water to rivers and seas."]
    result = extract_text(make_image_pdf(pages))
    assert (result.pages, result.text_pages, result.ocr_pages) == (2, 0, 2)
    for word in ("Clouds", "condenses", "water", "Rain", "rivers", "seas"):
        assert word in result.text


def test_ocr_true_without_tesseract_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install tesseract-ocr"):
        extract_text(make_text_pdf(PAGES), ocr=True)
    # ocr=None only OCRs when it can, and says what was missed.
    with pytest.raises(NoExtractableText, match="install tesseract-ocr to OCR them"):
        extract_text(make_image_pdf(["pixels"]))


def _extract_in_eight_threads(repeats: int) -> list[bool]:
    """Eight threads extract eight PDFs at once, ``repeats`` times each: whether each got its own text."""
    documents = [make_text_pdf([f"thread{t} page{p} " * 60 for p in range(10)]) for t in range(8)]
    expected = [extract_text(document, ocr=False).text for document in documents]
    assert all(set(expected[t].split()) == {f"thread{t}"} | {f"page{p}" for p in range(10)} for t in range(8))
    start = threading.Barrier(8)
    correct: list[bool] = []

    def work(t: int) -> None:
        start.wait()
        for _ in range(repeats):
            try:
                correct.append(extract_text(documents[t], ocr=False).text == expected[t])
            except Exception:
                correct.append(False)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return correct


def test_eight_threads_at_once_each_get_their_own_text() -> None:
    # In a child process: without the lock, pdfium does not only mix up
    # texts, it usually crashes the process, and it must not take pytest along.
    code = (
        "from tests.pdf_notes.test_extract import _extract_in_eight_threads as run\n"
        "print(run(40).count(True))"
    )
    command = [sys.executable, "-c", code]
    child = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert child.returncode == 0, f"pdfium crashed the process ({child.returncode}): {child.stderr[-999:]}"
    assert child.stdout.split()[-1] == "320", "some threads got another document's text, or an error"


def test_pypdf_takes_over_when_pdfium_refuses_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise pypdfium2.PdfiumError("Failed to load document (PDFium: Data format error).", err_code=3)

    monkeypatch.setattr(pypdfium2, "PdfDocument", refuse)
    result = extract_text(make_text_pdf(PAGES), ocr=False)
    assert result.engine == "pypdf"
    assert result.text.split("\n\n") == PAGES


def test_pypdf_takes_over_when_pypdfium2_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "pypdfium2", None)
    result = extract_text(make_text_pdf(PAGES), ocr=False)
    assert (result.engine, result.pages) == ("pypdf", 3)


def test_on_page_is_called_once_per_page() -> None:
    calls: list[tuple[int, int]] = []
    extract_text(make_text_pdf(PAGES), ocr=False, on_page=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("error_type", [EmptyPdf, NotAPdf, EncryptedPdf, CorruptPdf, NoExtractableText])
def test_errors_pickle_and_are_never_retried(error_type: type[PdfError]) -> None:
    copy = pickle.loads(pickle.dumps(error_type("what went wrong")))
    assert type(copy) is error_type
    assert str(copy) == "what went wrong"
    assert copy.retryable is False


def test_the_sample_pdfs_are_long_documents_written_once(tmp_path: Path) -> None:
    paths = make_sample_pdfs(tmp_path)
    assert len(paths) == 3
    stamps = [path.stat().st_mtime_ns for path in paths]
    assert make_sample_pdfs(tmp_path) == paths
    assert [path.stat().st_mtime_ns for path in paths] == stamps
    for path in paths:
        result = extract_text(path.read_bytes(), ocr=False)
        assert 2500 <= len(result.text.split()) <= 5200
        assert result.pages == result.text_pages > 5
