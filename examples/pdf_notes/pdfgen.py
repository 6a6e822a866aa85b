"""Small PDFs made on the spot, for the tests and the demo.

:func:`make_text_pdf` writes a real PDF by hand (no dependency): Helvetica,
one of the 14 standard fonts every reader has, so nothing is embedded and the
file stays tiny.  :func:`make_image_pdf` makes the same pages as pictures with
no text layer, the way a scanner would, to exercise OCR.
:func:`encrypt_pdf` and :func:`make_sample_pdfs` build on them.

    python -m examples.pdf_notes.pdfgen DIR    # write the demo's sample PDFs to DIR
"""

from __future__ import annotations

import importlib.util
import io
import sys
import textwrap
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

__all__ = ["encrypt_pdf", "make_image_pdf", "make_sample_pdfs", "make_text_pdf"]

#: US Letter, in points (1/72 inch).
PAGE_WIDTH, PAGE_HEIGHT = 612, 792
MARGIN = 72
SAMPLES = Path(__file__).resolve().parent / "samples"

# Advance widths of Helvetica (in 1/1000 of the font size) for the WinAnsi
# codes 32..255, from Adobe's Core 14 AFM files.  They let us wrap lines to
# the page without a font library; 0 marks codes WinAnsi leaves undefined.
# fmt: off
_HELVETICA_WIDTHS = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, 0,
    556, 0, 222, 556, 333, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0,
    0, 222, 222, 333, 333, 350, 556, 1000, 333, 1000, 500, 333, 944, 0, 500, 667,
    278, 333, 556, 556, 556, 556, 260, 556, 333, 737, 370, 556, 584, 333, 737, 333,
    400, 584, 333, 333, 333, 556, 537, 278, 333, 333, 365, 556, 834, 834, 834, 611,
    667, 667, 667, 667, 667, 667, 1000, 722, 667, 667, 667, 667, 278, 278, 278, 278,
    722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667, 611,
    556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556, 278, 278, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556, 500,
)
# fmt: on


def _encode(text: str) -> bytes:
    """``text`` in WinAnsi (cp1252), the encoding the page's font declares; other characters become "?"."""
    return text.encode("cp1252", errors="replace")


def _width(line: bytes, font_size: int) -> float:
    return sum(_HELVETICA_WIDTHS[c - 32] if c >= 32 else 0 for c in line) * font_size / 1000


def _wrap(paragraph: str, font_size: int) -> list[bytes]:
    """Break one paragraph into encoded lines that fit between the margins.

    Greedy, word by word; a word wider than a whole line is cut by characters.
    """
    limit = PAGE_WIDTH - 2 * MARGIN
    lines: list[bytes] = []
    current = b""
    for word in (_encode(w) for w in paragraph.split()):
        candidate = current + b" " + word if current else word
        if _width(candidate, font_size) <= limit:
            current = candidate
            continue
        if current:
            lines.append(current)
        while _width(word, font_size) > limit:
            cut = next(i for i in range(len(word), 0, -1) if _width(word[:i], font_size) <= limit)
            lines.append(word[: max(cut, 1)])
            word = word[max(cut, 1) :]
        current = word
    lines.append(current)
    return lines


def _layout(text: str, font_size: int) -> list[list[bytes]]:
    """The lines of ``text`` cut into pages; a text longer than one page gets as many as it needs."""
    per_page = int((PAGE_HEIGHT - 2 * MARGIN) // (font_size * 1.35))
    lines: list[bytes] = []
    for paragraph in text.replace("\r\n", "\n").split("\n"):
        # A blank input line stays a blank line: it is how paragraphs stay apart.
        lines.extend(_wrap(paragraph, font_size) if paragraph.strip() else [b""])
    while lines and not lines[-1]:
        lines.pop()
    return [lines[i : i + per_page] for i in range(0, len(lines), per_page)] or [[]]


def _literal(line: bytes) -> bytes:
    """A PDF string literal; bytes outside printable ASCII are written as octal so the file stays ASCII."""
    out = bytearray(b"(")
    for c in line:
        if c in b"()\\":
            out += b"\\" + bytes([c])
        elif 32 <= c < 127:
            out.append(c)
        else:
            out += b"\\%03o" % c
    return bytes(out + b")")


def _content(lines: Sequence[bytes], font_size: int) -> bytes:
    leading = round(font_size * 1.35, 2)
    top = PAGE_HEIGHT - MARGIN - font_size
    ops = [b"BT", b"/F1 %d Tf" % font_size, b"%g TL" % leading, b"%d %d Td" % (MARGIN, top)]
    for line in lines:
        ops.append(_literal(line) + b" Tj T*" if line else b"T*")
    ops.append(b"ET")
    return b"\n".join(ops)


def _stream(dictionary: bytes, payload: bytes) -> bytes:
    data = zlib.compress(payload, 6)
    return b"<< %s /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream" % (dictionary, len(data), data)


def _pdf_string(text: str) -> bytes:
    """A text string for the document information dictionary (PDFDocEncoding is close enough to latin-1)."""
    return _literal(text.encode("latin-1", errors="replace"))


def _assemble(objects: Sequence[bytes], *, info: bytes | None = None) -> bytes:
    """Write a PDF file from its objects; object ``n`` is ``objects[n - 1]``, object 1 the catalog.

    The cross-reference table must give each object's exact byte offset, so
    the file is built in one buffer and the offsets read from it as it grows.
    """
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    trailer = b"/Size %d /Root 1 0 R" % (len(objects) + 1)
    if info is not None:
        trailer += b" /Info %s" % info
    out += b"trailer\n<< %s >>\nstartxref\n%d\n%%%%EOF\n" % (trailer, xref)
    return bytes(out)


def _document(pages: Iterable[tuple[bytes, bytes | None]], *, title: str | None = None) -> bytes:
    """A PDF with one page per ``(content stream, image stream or None)`` pair.

    Objects: 1 catalog, 2 page tree, 3 the font, 4 the information
    dictionary, then per page its page object, its content stream and its
    image (streams must be indirect objects, so the image gets a number too).
    A page with an image shows it as ``/Im1``; one without gets the font.
    """
    objects: list[bytes] = [
        b"",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    objects.append(
        b"<< /Producer (dramatiq_turbo pdfgen)%s >>" % (b" /Title " + _pdf_string(title) if title else b"")
    )
    kids = []
    for content, image in pages:
        page = len(objects) + 1
        kids.append(b"%d 0 R" % page)
        resources = (
            b"<< /Font << /F1 3 0 R >> >>"
            if image is None
            else b"<< /XObject << /Im1 %d 0 R >> >>" % (page + 2)
        )
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources %s /Contents %d 0 R >>"
            % (PAGE_WIDTH, PAGE_HEIGHT, resources, page + 1)
        )
        objects.append(_stream(b"", content))
        if image is not None:
            objects.append(image)
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    return _assemble(objects, info=b"4 0 R")


def make_text_pdf(pages: Sequence[str], *, title: str | None = None, font_size: int = 11) -> bytes:
    """A PDF with a real text layer, one input string per page.

    The text is set in Helvetica, encoded as WinAnsi (characters outside it
    become "?"), wrapped to the page width at word boundaries; each line of
    the input starts a new line and blank lines stay blank.  Each string
    starts a new page; a string too long for one page flows onto as many
    following pages as it needs, so the PDF can have more pages than
    ``pages`` has strings.  The output is deterministic (no dates).

    Parameters:
      pages(Sequence[str]): The text of each page (an empty string makes a blank page).
      title(str): The document's title, stored in its information dictionary.
      font_size(int): In points; the line spacing is 1.35 times it.

    Returns:
      bytes: The PDF file.
    """
    if isinstance(pages, str):
        raise TypeError("pages must be a sequence of strings, one per page, not a single string")
    contents = ((_content(lines, font_size), None) for text in pages for lines in _layout(text, font_size))
    return _document(contents, title=title)


def _render_pages(pdf: bytes, dpi: int) -> Iterator[tuple[int, int, bytes]]:
    """Each page of ``pdf`` as ``(width, height, 8-bit gray pixels)``, rendered by pypdfium2 one by one."""
    import pypdfium2  # type: ignore[import-untyped]

    from .extract import PDFIUM_LOCK

    # pdfium is not thread-safe: every call takes extract's process-wide lock.
    with PDFIUM_LOCK:
        document = pypdfium2.PdfDocument(pdf)
        count = len(document)
    try:
        for index in range(count):
            with PDFIUM_LOCK:
                page = document[index]
                try:
                    image = page.render(scale=dpi / 72, grayscale=True).to_pil().convert("L")
                finally:
                    page.close()
            yield image.width, image.height, image.tobytes()
    finally:
        with PDFIUM_LOCK:
            document.close()


def make_image_pdf(pages: Sequence[str], *, dpi: int = 150) -> bytes:
    """A PDF of pictures of text: what a scanner makes, with no text layer at all.

    The pages of :func:`make_text_pdf` (at 16 pt, so OCR reads them
    reliably) are rendered to grayscale bitmaps and each bitmap becomes the
    only thing on a new page, an image XObject.  Needs pypdfium2.

    Parameters:
      pages(Sequence[str]): The text each page shows; a long one flows onto extra pages as in make_text_pdf.
      dpi(int): The resolution of the embedded images.

    Returns:
      bytes: The PDF file.
    """
    source = make_text_pdf(pages, font_size=16)

    def image_pages() -> Iterable[tuple[bytes, bytes | None]]:
        for width, height, pixels in _render_pages(source, dpi):
            image = _stream(
                b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray"
                b" /BitsPerComponent 8" % (width, height),
                pixels,
            )
            # Scale the unit square the image is drawn in to the whole page.
            yield b"q %d 0 0 %d 0 0 cm /Im1 Do Q" % (PAGE_WIDTH, PAGE_HEIGHT), image

    return _document(image_pages())


def _encryption_algorithm() -> str:
    """AES-256 when pypdf has a crypto library to do it with, else RC4-128, which pypdf does by itself."""
    for module in ("cryptography", "Crypto", "Cryptodome"):
        if importlib.util.find_spec(module) is not None:
            return "AES-256"
    return "RC4-128"


def encrypt_pdf(data: bytes, *, user_password: str, owner_password: str = "owner") -> bytes:
    """``data`` encrypted with pypdf, AES-256 if a crypto package is installed, else RC4-128.

    Parameters:
      data(bytes): A PDF file.
      user_password(str): The password needed to open it; "" makes a PDF
        any reader opens without asking (it is still encrypted).
      owner_password(str): The password for changing permissions.

    Returns:
      bytes: The encrypted PDF file.
    """
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, owner_password, algorithm=_encryption_algorithm())
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def sample_pages(text: str) -> tuple[str, list[str]]:
    """Split a sample document into its title (the first line) and the pages to give make_text_pdf.

    The whole document is one string that flows onto as many pages as it
    needs, the title repeated at its head.
    """
    title, _, body = text.strip().partition("\n")
    return title.strip(), [title.strip() + "\n\n" + textwrap.dedent(body).strip()]


def make_sample_pdfs(directory: Path) -> list[Path]:
    """Write the demo's sample PDFs, one per text file in ``samples/``.

    A PDF already there with the same bytes is left alone, so its mtime
    (and anything keyed on it) does not change from run to run.

    Parameters:
      directory(Path): Where to write them; created if missing.

    Returns:
      list[Path]: The PDFs, in the order of the sample names.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(SAMPLES.glob("*.txt")):
        title, pages = sample_pages(source.read_text(encoding="utf-8"))
        pdf = make_text_pdf(pages, title=title)
        target = directory / (source.stem + ".pdf")
        if not target.exists() or target.read_bytes() != pdf:
            target.write_bytes(pdf)
        written.append(target)
    return written


if __name__ == "__main__":
    for path in make_sample_pdfs(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(path)
