"""Text out of PDFs, page by page, with OCR for pages that are only pictures.

pypdfium2 (Chrome's PDF engine, permissive licence) does the work; pypdf is
the fallback when pypdfium2 is missing or cannot open a file, and a full
alternative with ``engine="pypdf"``.  Pages are opened, read and closed one
at a time, so memory stays flat whatever the number of pages.

Whatever can never give notes raises a :class:`PdfError` subclass, whose
``retryable = False`` tells the Backoff middleware to fail the job at once:
retrying an encrypted or empty file only wastes the queue's time.  A file
that is damaged but partly readable gives what it can, with a warning.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image

try:
    import pypdfium2  # type: ignore[import-untyped]
    import pypdfium2.raw as pdfium_c  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - the fallback is exercised by monkeypatching
    pypdfium2 = None
    pdfium_c = None

__all__ = [
    "PDFIUM_LOCK",
    "CorruptPdf",
    "EmptyPdf",
    "EncryptedPdf",
    "Extracted",
    "NoExtractableText",
    "NotAPdf",
    "PdfError",
    "extract_text",
    "iter_pages",
    "tesseract_available",
]

#: Every pdfium call in the process runs under this lock.  pdfium keeps
#: process-wide state (font caches, the last-error code) and is not
#: thread-safe, not even for different documents: without the lock, eight
#: threads extracting at once crash the process in most runs (the test
#: suite shows it) and mix up texts in others.  Dramatiq runs
#: actors in threads, so the lock is process-wide; it is re-entrant because
#: the garbage collector may close an abandoned :func:`iter_pages` while this
#: thread holds it.  Work outside pdfium (OCR, text clean-up) runs unlocked.
PDFIUM_LOCK = threading.RLock()

#: Where ``%PDF-`` must appear (readers accept junk before it, up to 1 KiB).
HEADER_WINDOW = 1024
#: A page with fewer visible characters than this has no usable text layer.
MIN_VISIBLE_CHARS = 3
OCR_DPI = 300
#: The longest side of a page rendered for OCR, in pixels; a poster at 300 dpi would need gigabytes.
OCR_MAX_PIXELS = 7000
OCR_TIMEOUT = 120.0
TESSERACT_HINT = "install tesseract-ocr to OCR them (apt-get install tesseract-ocr)"


class PdfError(Exception):
    """A document that can never yield notes, whatever the number of tries.

    ``retryable = False`` is what the Backoff middleware reads to fail the
    job at once.  Subclasses keep the plain one-argument ``Exception``
    constructor, so they pickle, as result backends need.
    """

    retryable: ClassVar[bool] = False
    kind: ClassVar[str] = "pdf"


class EmptyPdf(PdfError):
    """The file has no bytes, or only whitespace."""

    kind = "empty"


class NotAPdf(PdfError):
    """The data is something else (an HTML page saved as .pdf is the classic)."""

    kind = "not_a_pdf"


class EncryptedPdf(PdfError):
    """A password is needed, or the one given is wrong."""

    kind = "encrypted"


class CorruptPdf(PdfError):
    """Damaged or truncated, and no page can be read."""

    kind = "corrupt"


class NoExtractableText(PdfError):
    """The pages hold no text: pictures without a text layer that OCR could not (or may not) read."""

    kind = "no_text"


@dataclass(frozen=True)
class Extracted:
    """The text of a document and how it was obtained.

    Attributes:
      text(str): The pages' texts, in order, joined with blank lines; pages without text are left out.
      pages(int): Pages in the document.
      text_pages(int): Pages whose text came from their text layer.
      ocr_pages(int): Pages whose text came from OCR.
      engine(str): "pdfium" or "pypdf".
      warnings(tuple[str, ...]): What the reader should know, e.g. that a damaged file was read in part.
    """

    text: str
    pages: int
    text_pages: int
    ocr_pages: int
    engine: str
    warnings: tuple[str, ...] = ()


def tesseract_available() -> bool:
    """Whether the ``tesseract`` program is on ``PATH``."""
    return shutil.which("tesseract") is not None


# --- checks before parsing -------------------------------------------------------------------------

_BLANK = b" \t\r\n\f\v\x00"


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        # One copy, so the engines (and the caller) can't see the buffer change under them.
        return bytes(data)
    raise TypeError(f"PDF data must be bytes, bytearray or memoryview, not {type(data).__name__}")


def _check_header(data: bytes) -> None:
    """Raise EmptyPdf or NotAPdf before any parser sees the data."""
    # Look at a prefix first so a large file is not copied by strip().
    if not data or (not data[:HEADER_WINDOW].strip(_BLANK) and not data.strip(_BLANK)):
        what = "0 bytes" if not data else f"{len(data)} bytes of nothing but whitespace or zeros"
        raise EmptyPdf(f"empty PDF: the file is {what}, there is no document in it")
    if data.find(b"%PDF-", 0, HEADER_WINDOW) < 0:
        raise NotAPdf(f"not a PDF: the data starts with {_first_bytes(data)!r}{_guess_kind(data)}")


def _first_bytes(data: bytes) -> bytes:
    """The first line of ``data`` (at most 40 bytes), to show what was received instead."""
    head = data.lstrip(_BLANK)[:40]
    return head.split(b"\n", 1)[0].rstrip(b"\r") or head


def _guess_kind(data: bytes) -> str:
    head = data[:HEADER_WINDOW].lstrip(_BLANK).lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return " (an HTML page, e.g. an error or login page saved under a .pdf name)"
    if head.startswith((b"{", b"[")):
        return " (JSON, e.g. an API error response)"
    if head.startswith(b"pk\x03\x04"):
        return " (a ZIP archive, e.g. a .docx or .epub)"
    return ""


def _looks_truncated(data: bytes) -> bool:
    """A complete PDF ends with ``%%EOF`` (some writers add a few bytes after it)."""
    return b"%%EOF" not in data[-HEADER_WINDOW:]


# --- text clean-up ---------------------------------------------------------------------------------

# pdfium marks a hyphen it removed at a line break with U+0002 ("pack\x02ages"):
# the word is whole again without it.  Codes 0x0B, 0x0C, 0x0E and 0x0F come out
# of TeX fonts that lack a Unicode map (OT1 puts ff, fi, ffi and ffl there);
# they are never text, so reading them as the ligatures rescues words like "figure".
_TRANSLATE = str.maketrans({"\x02": "", "\x0b": "ff", "\x0c": "fi", "\x0e": "ffi", "\x0f": "ffl"})
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u200b-\u200d\u2060\ufeff\ufffe\uffff]")
_SPACES = re.compile("[ \t\xa0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def _clean(text: str) -> str:
    """Normalise whitespace line by line: one space between words, no blank runs, no control characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_TRANSLATE)
    text = _INVISIBLE.sub("", text)
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _visible(text: str) -> int:
    """How many characters of ``text`` are not whitespace."""
    return len(text) - sum(text.count(c) for c in " \n")


# --- the engines -----------------------------------------------------------------------------------


class _CannotOpen(Exception):
    """An engine could not open the file (for a reason other than a password): try the next."""


class _Source(Protocol):
    engine: str
    pages: int

    def text(self, index: int) -> str: ...

    def render(self, index: int) -> tuple[Image, float] | None: ...

    def close(self) -> None: ...


class _PdfiumSource:
    """A document open in pdfium; every call takes :data:`PDFIUM_LOCK`, one page at a time."""

    engine = "pdfium"

    def __init__(self, data: bytes, password: str | None) -> None:
        if pypdfium2 is None:
            raise _CannotOpen("pdfium: pypdfium2 is not installed")
        # A password that does not fit a file any reader opens without one
        # (an empty user password) is no reason to refuse it.
        attempts = [password, None] if password else [None]
        with PDFIUM_LOCK:
            for attempt in attempts:
                try:
                    self._document = pypdfium2.PdfDocument(data, password=attempt)
                    break
                except pypdfium2.PdfiumError as error:
                    if error.err_code != pdfium_c.FPDF_ERR_PASSWORD:
                        raise _CannotOpen(f"pdfium: {_pdfium_reason(error)}") from None
            else:
                raise EncryptedPdf(_password_problem(password))
            self.pages = len(self._document)

    def text(self, index: int) -> str:
        with PDFIUM_LOCK:
            page = self._document[index]
            try:
                textpage = page.get_textpage()
                try:
                    return str(textpage.get_text_bounded())
                finally:
                    textpage.close()
            finally:
                page.close()

    def render(self, index: int) -> tuple[Image, float] | None:
        """The page as a grayscale image for OCR and its resolution, or None when nothing is drawn on it."""
        with PDFIUM_LOCK:
            page = self._document[index]
            try:
                if pdfium_c.FPDFPage_CountObjects(page.raw) == 0:
                    return None
                width, height = page.get_size()
                scale = min(OCR_DPI / 72, OCR_MAX_PIXELS / max(width, height, 1))
                bitmap = page.render(scale=scale, grayscale=True)
                # The bitmap's buffer is allocated by Python (pypdfium2's
                # default), so the image keeps it alive after close().
                image = bitmap.to_pil()
                bitmap.close()
                return image, scale * 72
            finally:
                page.close()

    def close(self) -> None:
        with PDFIUM_LOCK:
            self._document.close()


def _pdfium_reason(error: Any) -> str:
    """pdfium's reason in words (its message is "Failed to load document (PDFium: Data format error).")."""
    match = re.search(r"PDFium: ([^)]*)", str(error))
    return (match.group(1) if match else str(error)).lower()


def _password_problem(password: str | None) -> str:
    if password:
        return "encrypted PDF: the password given does not open it"
    return "encrypted PDF: a password is needed to open it"


class _PypdfSource:
    """A document open in pypdf (pure Python: slower, and it keeps the pages it parsed in memory)."""

    engine = "pypdf"

    def __init__(self, data: bytes, password: str | None) -> None:
        from pypdf import PdfReader
        from pypdf.errors import DependencyError

        self._data, self._password = data, password
        self._renderer: _PdfiumSource | None = None
        try:
            self._reader = PdfReader(io.BytesIO(data), strict=False)
            if self._reader.is_encrypted and not _decrypt(self._reader, password):
                raise EncryptedPdf(_password_problem(password))
            self.pages = len(self._reader.pages)
        except DependencyError:
            raise EncryptedPdf(
                "encrypted PDF: it uses AES, which pypdf can only decrypt with the 'cryptography' package"
                " installed (pypdfium2 opens it without)"
            ) from None
        except PdfError:
            raise
        except Exception as error:  # pypdf raises many types for damaged files
            raise _CannotOpen(f"pypdf: {error}") from None

    def text(self, index: int) -> str:
        return str(self._reader.pages[index].extract_text())

    def render(self, index: int) -> tuple[Image, float] | None:
        # pypdf cannot render: OCR borrows pdfium when it is installed and can open the file.
        if self._renderer is None:
            self._renderer = _PdfiumSource(self._data, self._password)
        return self._renderer.render(index)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()


def _decrypt(reader: Any, password: str | None) -> bool:
    """Whether ``password``, or else the empty user password, opens the pypdf ``reader``."""
    return any(reader.decrypt(attempt) for attempt in dict.fromkeys([password or "", ""]))


def _engines(engine: str) -> list[type[_PdfiumSource] | type[_PypdfSource]]:
    """The engines to try, best first."""
    if engine == "pypdf":
        return [_PypdfSource]
    if engine != "pdfium":
        raise ValueError(f'engine must be "pdfium" or "pypdf", not {engine!r}')
    if pypdfium2 is None:
        return [_PypdfSource]
    return [_PdfiumSource, _PypdfSource]


def _try_engines(data: bytes, password: str | None, engine: str, failures: list[str]) -> _Source | None:
    """Open ``data`` with the first engine that can, recording why the others could not."""
    for source_type in _engines(engine):
        try:
            source: _Source = source_type(data, password)
        except _CannotOpen as error:
            failures.append(str(error))
            continue
        if source.pages:
            return source
        source.close()
        failures.append(f"{source.engine}: the document has no pages")
    return None


# --- salvaging a damaged file ------------------------------------------------------------------------
#
# A truncated download loses the end of the file, where the cross-reference
# table (the index of where each object starts) and often the catalog live;
# neither engine then opens it, though most pages may be intact.  We rebuild
# the index by scanning for "N G obj", including the objects packed inside
# object streams, append it, and let the engine try again.  When the page
# tree was lost too, a new one lists the page objects found, in file order.

_OBJECT = re.compile(rb"(?<![0-9])(\d{1,10})[ \t\r\n\f\x00]+(\d{1,5})[ \t\r\n\f\x00]+obj\b")
_TYPE = re.compile(rb"/Type\s*/(\w+)")
_FIRST = re.compile(rb"/First\s+(\d+)")
#: The most one object stream may inflate to while salvaging, against zip bombs.
_MAX_OBJECT_STREAM = 64 << 20
#: The highest object number a PDF may use (ISO 32000's limit); a larger
#: "number" is noise, and the rebuilt index has one entry per number up to the highest.
_MAX_OBJECT_NUMBER = 8_388_607


@dataclass
class _Index:
    """What a scan found: xref entries (type, field 2, field 3) by object number, the /Type and file order."""

    entries: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    kinds: dict[int, bytes] = field(default_factory=dict)
    order: dict[int, tuple[int, int]] = field(default_factory=dict)


def _scan(data: bytes) -> _Index:
    """Find every object in ``data``; a later definition of a number wins, as incremental updates require."""
    index = _Index()
    for match in _OBJECT.finditer(data):
        number, generation = int(match.group(1)), int(match.group(2))
        if number > _MAX_OBJECT_NUMBER or generation > 65535:
            continue
        head = data[match.end() : match.end() + 4096]
        end = min((i for i in (head.find(b"stream"), head.find(b"endobj")) if i >= 0), default=len(head))
        kind = _TYPE.search(head[:end])
        index.entries[number] = (1, match.start(), generation)
        index.kinds[number] = kind.group(1) if kind else b""
        index.order[number] = (match.start(), 0)
        if index.kinds[number] == b"ObjStm" and head[end : end + 6] == b"stream":
            start = match.end() + end + 6
            start += 2 if data[start : start + 2] == b"\r\n" else 1
            _scan_object_stream(data, number, head[:end], start, index)
    return index


def _scan_object_stream(data: bytes, number: int, dictionary: bytes, start: int, index: _Index) -> None:
    """Add the objects packed in the object stream ``number`` (its data begins at ``start``)."""
    first = _FIRST.search(dictionary)
    if first is None or b"FlateDecode" not in dictionary:
        return
    try:
        # decompressobj, unlike decompress(), gives what it can of a stream cut short.
        body = zlib.decompressobj().decompress(memoryview(data)[start:], _MAX_OBJECT_STREAM)
        offset = int(first.group(1))
        header = [int(n) for n in body[:offset].split()]
    except (zlib.error, ValueError):
        return
    position = index.order[number][0]
    for slot in range(min(len(header) // 2, 65536)):
        packed, begin = header[2 * slot], offset + header[2 * slot + 1]
        if packed > _MAX_OBJECT_NUMBER:
            continue
        end = offset + header[2 * slot + 3] if 2 * slot + 3 < len(header) else len(body)
        kind = _TYPE.search(body[begin : min(end, begin + 4096)])
        index.entries[packed] = (2, number, slot)
        index.kinds[packed] = kind.group(1) if kind else b""
        index.order[packed] = (position, slot + 1)


def _with_index(data: bytes, index: _Index, root: int | None) -> bytes:
    """``data`` followed by a cross-reference stream for ``index``.

    ``root`` is the catalog to keep; None appends a new catalog whose page
    tree lists the page objects found, in the order they appear.
    """
    entries = dict(index.entries)
    tail = bytearray(b"\n")
    number = max(entries, default=0) + 1
    if root is None:
        pages = sorted((n for n, kind in index.kinds.items() if kind == b"Page"), key=index.order.__getitem__)
        kids = b" ".join(b"%d 0 R" % n for n in pages)
        entries[number] = (1, len(data) + len(tail), 0)
        tail += b"%d 0 obj\n<< /Type /Pages /Kids [%s] /Count %d >>\nendobj\n" % (number, kids, len(pages))
        entries[number + 1] = (1, len(data) + len(tail), 0)
        tail += b"%d 0 obj\n<< /Type /Catalog /Pages %d 0 R >>\nendobj\n" % (number + 1, number)
        root, number = number + 1, number + 2
    entries[number] = (1, len(data) + len(tail), 0)
    # Entries of 7 bytes: type (1 byte), offset or object stream (4), generation or slot (2).
    rows = b"".join(struct.pack(">BIH", *entries.get(n, (0, 0, 0))) for n in range(number + 1))
    tail += b"%d 0 obj\n<< /Type /XRef /Size %d /W [1 4 2] /Root %d 0 R /Length %d >>\nstream\n" % (
        number,
        number + 1,
        root,
        len(rows),
    )
    tail += rows + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % entries[number][1]
    return data + bytes(tail)


def _repairs(data: bytes) -> Iterator[tuple[bytes, bool]]:
    """Rebuilt versions of a damaged ``data``, most faithful first, each with "was the page tree rebuilt?"."""
    # The index of an encrypted file would not bring back its key, and
    # offsets past 4 GiB do not fit the 4 bytes used here.
    if b"/Encrypt" in data or len(data) >= 1 << 32:
        return
    index = _scan(data)
    catalogs = sorted((n for n, k in index.kinds.items() if k == b"Catalog"), key=index.order.__getitem__)
    if catalogs:
        yield _with_index(data, index, catalogs[-1]), False
    if b"Page" in index.kinds.values():
        yield _with_index(data, index, None), True


@dataclass(frozen=True)
class _Damage:
    """A damaged file that opened: "truncated" or "damaged", whether we repaired it, and its page tree too."""

    what: str
    repaired: bool
    rebuilt_tree: bool = False


def _open(data: bytes, password: str | None, engine: str) -> tuple[_Source, _Damage | None]:
    """Open ``data`` with the best engine that can, salvaging it if it is damaged.

    Raises:
      EncryptedPdf: The password is missing or wrong.
      CorruptPdf: Neither engine can open it, even repaired.
    """
    failures: list[str] = []
    source = _try_engines(data, password, engine, failures)
    what = "truncated" if _looks_truncated(data) else "damaged"
    if source is not None:
        return source, (_Damage(what, repaired=False) if what == "truncated" else None)
    for repaired, rebuilt_tree in _repairs(data):
        source = _try_engines(repaired, password, engine, [])
        if source is not None:
            return source, _Damage(what, repaired=True, rebuilt_tree=rebuilt_tree)
    if what == "truncated":
        problem = "the file is truncated (it ends before its end-of-file marker) and no page can be read"
    else:
        problem = "the file is damaged and no page can be read"
    raise CorruptPdf(f"corrupt PDF: {problem} ({'; '.join(failures)})")


# --- OCR -----------------------------------------------------------------------------------------------


class _OcrTimeout(Exception):
    """tesseract took longer than OCR_TIMEOUT on one page."""


def _tesseract(image: Image, dpi: float, language: str) -> str:
    """The text tesseract reads in ``image``, run as a program (no Python binding to install).

    Raises:
      RuntimeError: tesseract is missing or failed (a missing language pack, say).
      _OcrTimeout: It took longer than OCR_TIMEOUT.
    """
    picture = io.BytesIO()
    # PGM: uncompressed, so neither side spends time on compression.
    image.save(picture, format="PPM")
    # tesseract spreads one page over every core with OpenMP, and contends
    # with itself when several workers OCR at once: one thread per process is
    # several times faster overall (11.5 s against 1.5 s for one page on 2 cores).
    env = {**os.environ, "OMP_THREAD_LIMIT": os.environ.get("OMP_THREAD_LIMIT", "1")}
    command = ["tesseract", "-", "-", "-l", language, "--dpi", str(round(dpi))]
    try:
        done = subprocess.run(
            command, input=picture.getvalue(), capture_output=True, timeout=OCR_TIMEOUT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise _OcrTimeout from None
    except FileNotFoundError:
        raise RuntimeError(f"tesseract is not installed; {TESSERACT_HINT}") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines() or [""]
        raise RuntimeError(f"tesseract failed (exit status {done.returncode}): {detail[-1]}")
    return done.stdout.decode("utf-8", "replace")


def _ocr_wanted(ocr: bool | None, language: str) -> bool:
    """Resolve the ``ocr`` argument: None means "if tesseract is installed"."""
    if not re.fullmatch(r"[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*", language):
        raise ValueError(f"ocr_language must be tesseract language codes like 'eng+deu', not {language!r}")
    if ocr is None:
        return tesseract_available()
    if ocr and not tesseract_available():
        raise RuntimeError(f"ocr=True needs the tesseract program, which is not on PATH; {TESSERACT_HINT}")
    return bool(ocr)


# --- reading the pages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Page:
    """One page's outcome: its text and where it came from.

    ``origin`` is "text" (its text layer), "ocr", "none" (no text found),
    "blank" (nothing drawn on it, so not worth OCR) or "failed" (unreadable).
    """

    text: str
    origin: str
    note: str = ""


def _read_page(source: _Source, index: int, ocr: bool, language: str) -> _Page:
    """Read one page from its text layer, or by OCR when it has none."""
    try:
        text = _clean(source.text(index))
    except Exception as error:  # a damaged page must not cost the others
        return _Page("", "failed", f"{type(error).__name__}: {error}")
    if text.count("\ufffd") * 2 > _visible(text):
        # Mostly replacement characters: fonts whose codes map to nothing (a
        # repaired file that lost them, say).  Garbage is no text layer.
        text = ""
    if _visible(text) >= MIN_VISIBLE_CHARS:
        return _Page(text, "text")
    return _ocr_page(source, index, text, language) if ocr else _Page(text, "none")


def _ocr_page(source: _Source, index: int, text: str, language: str) -> _Page:
    """OCR one page whose text layer is empty (or almost: ``text`` is kept if OCR finds nothing)."""
    try:
        rendered = source.render(index)
    except Exception as error:  # as for text: one page that cannot be drawn must not cost the others
        return _Page(text, "none", f"cannot render it for OCR ({error})")
    if rendered is None:
        return _Page(text, "blank")
    try:
        found = _clean(_tesseract(*rendered, language))
    except _OcrTimeout:
        return _Page(text, "none", f"OCR gave up after {OCR_TIMEOUT:.0f} s")
    if _visible(found) >= MIN_VISIBLE_CHARS:
        return _Page(found, "ocr")
    return _Page(text, "none")


def _read_pages(
    source: _Source, ocr: bool, language: str, on_page: Callable[[int, int], None] | None
) -> list[_Page]:
    pages = []
    for index in range(source.pages):
        pages.append(_read_page(source, index, ocr, language))
        if on_page is not None:
            on_page(index + 1, source.pages)
    return pages


def _numbers(pages: list[int]) -> str:
    """Page numbers for a message: "3, 4, 9" or "3, 4, 9, ... (12 pages)"."""
    shown = ", ".join(map(str, pages[:8]))
    return shown if len(pages) <= 8 else f"{shown}, ... ({len(pages)} pages)"


def _no_text_reason(ocr: bool, ocr_arg: bool | None) -> str:
    if ocr:
        return "OCR found no text on them"
    if ocr_arg is False:
        return "OCR is turned off (ocr=False)"
    return TESSERACT_HINT


def _warnings(pages: list[_Page], damage: _Damage | None, ocr: bool, ocr_arg: bool | None) -> tuple[str, ...]:
    """What the caller should know about a document that did give text."""
    total, warnings = len(pages), []
    readable = sum(page.origin in ("text", "ocr") for page in pages)
    failed = [n for n, page in enumerate(pages, 1) if page.origin == "failed"]
    if damage is not None and damage.rebuilt_tree:
        warnings.append(
            f"read {readable} pages: the file is {damage.what} and its list of pages was lost; the pages were"
            " found by scanning the file, and any past the damage are missing"
        )
    elif damage is not None and (damage.repaired or readable < total):
        warnings.append(f"read {readable} of {total} pages: the file is {damage.what}")
    elif failed:
        first = pages[failed[0] - 1].note
        warnings.append(f"could not read {len(failed)} of {total} pages ({_numbers(failed)}): {first}")
    empty = [n for n, page in enumerate(pages, 1) if page.origin == "none"]
    # Pages of a damaged file without text are most likely lost, as said above.
    if empty and damage is None:
        reason = _no_text_reason(ocr, ocr_arg)
        warnings.append(f"{len(empty)} of {total} pages have no text layer ({_numbers(empty)}), {reason}")
    warnings += [f"page {n}: {p.note}" for n, p in enumerate(pages, 1) if p.origin == "none" and p.note]
    return tuple(warnings)


def _outcome(
    source: _Source, pages: list[_Page], damage: _Damage | None, ocr: bool, ocr_arg: bool | None
) -> Extracted:
    """The Extracted for ``pages``, or the PdfError that says why there is no text."""
    text = "\n\n".join(page.text for page in pages if page.text)
    if _visible(text) < MIN_VISIBLE_CHARS:
        total = len(pages)
        if damage is not None and (damage.repaired or any(page.origin == "failed" for page in pages)):
            problem = f"the file is {damage.what} and none of its {total} page(s) can be read"
            raise CorruptPdf(f"corrupt PDF: {problem}")
        if all(page.origin == "failed" for page in pages):
            raise CorruptPdf(f"corrupt PDF: none of its {total} page(s) can be read ({pages[0].note})")
        reason = _no_text_reason(ocr, ocr_arg)
        notes = [f" (page {n}: {page.note})" for n, page in enumerate(pages, 1) if page.note]
        reason += notes[0] if notes else ""
        raise NoExtractableText(f"no extractable text: {total} page(s), none has a text layer; {reason}")
    return Extracted(
        text=text,
        pages=len(pages),
        text_pages=sum(page.origin == "text" for page in pages),
        ocr_pages=sum(page.origin == "ocr" for page in pages),
        engine=source.engine,
        warnings=_warnings(pages, damage, ocr, ocr_arg),
    )


def extract_text(
    data: bytes | bytearray | memoryview,
    *,
    password: str | None = None,
    ocr: bool | None = None,
    ocr_language: str = "eng",
    engine: str = "pdfium",
    on_page: Callable[[int, int], None] | None = None,
) -> Extracted:
    """The text of a PDF, page by page, with OCR for the pages that have no text layer.

    Parameters:
      data(bytes | bytearray | memoryview): The PDF file.
      password(str): Opens an encrypted PDF; one with an empty user password needs none.
      ocr(bool): True to OCR pages without a text layer (tesseract must be
        installed), False never to; None (the default) OCRs when tesseract is installed.
      ocr_language(str): Tesseract's language codes, "eng" or "eng+deu".
      engine(str): "pdfium" (fast; pypdf takes over for files it cannot
        open) or "pypdf" (pure Python, much slower).
      on_page(Callable[[int, int], None]): Called after each page as
        ``on_page(pages_done, pages)``, for progress; what it raises stops the extraction.

    Raises:
      PdfError: EmptyPdf, NotAPdf, EncryptedPdf, CorruptPdf or
        NoExtractableText: the document can never give text (not retryable).
      RuntimeError: ``ocr=True`` without tesseract, or tesseract failed.
      ValueError: An unknown ``engine`` or a malformed ``ocr_language``.

    Returns:
      Extracted: The text (never empty) and how it was obtained.
    """
    data = _as_bytes(data)
    _check_header(data)
    use_ocr = _ocr_wanted(ocr, ocr_language)
    source, damage = _open(data, password, engine)
    try:
        pages = _read_pages(source, use_ocr, ocr_language, on_page)
    finally:
        source.close()
    return _outcome(source, pages, damage, use_ocr, ocr)


def iter_pages(
    data: bytes | bytearray | memoryview, *, password: str | None = None, engine: str = "pdfium"
) -> Iterator[str]:
    """The text layer of each page, one page at a time (no OCR); an unreadable page gives "".

    The checks before parsing run at once; the document opens on the first
    ``next()`` and closes when the iterator is exhausted or closed.

    Parameters:
      data(bytes | bytearray | memoryview): The PDF file.
      password(str): Opens an encrypted PDF.
      engine(str): "pdfium" or "pypdf", as for :func:`extract_text`.

    Raises:
      PdfError: EmptyPdf and NotAPdf at once; EncryptedPdf and CorruptPdf on the first ``next()``.
    """
    data = _as_bytes(data)
    _check_header(data)
    _engines(engine)
    return _page_texts(data, password, engine)


def _page_texts(data: bytes, password: str | None, engine: str) -> Iterator[str]:
    source, _ = _open(data, password, engine)
    try:
        for index in range(source.pages):
            try:
                text = source.text(index)
            except Exception:  # as in extract_text, one bad page must not end the others
                text = ""
            yield _clean(text)
    finally:
        source.close()
