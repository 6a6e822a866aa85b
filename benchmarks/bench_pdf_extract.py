"""PDF text extraction: pages per second with pypdfium2 against pypdf, and peak memory.

    python benchmarks/bench_pdf_extract.py [DIR]

Both engines run through ``examples.pdf_notes.extract.extract_text`` (OCR
off), on the same files: those in DIR (default ``$TURBO_BENCH_PDF_DIR`` or
``../shared/corpus/real`` next to the repository), or PDFs made on the spot
from the demo's samples when there is none.  The target is pypdfium2 at ten
times pypdf's pages per second or more.

Peak memory: the largest file (``gnuplot.pdf``, 311 pages, when present;
else a generated 300-page PDF) is extracted in a fresh process, whose peak
RSS is compared with that of a process that only imports the modules.
The target is growth within three times the file's size plus 150 MB.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _cache_common import table  # noqa: E402

from examples.pdf_notes.extract import PdfError, extract_text  # noqa: E402
from examples.pdf_notes.pdfgen import SAMPLES, make_text_pdf, sample_pages  # noqa: E402

SPEED_TARGET = 10.0
MEMORY_SLACK_MB = 150
LARGEST = "gnuplot.pdf"

# The child processes for peak memory: the baseline stops after the imports.
# Linux carries ru_maxrss over exec(), so a child started by this (larger)
# process would report our peak, not its own: VmHWM, the peak RSS of the
# child's own address space, is the same measure without that flaw.  Where
# /proc is missing, ru_maxrss it is (in bytes on macOS, KiB elsewhere).
CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
import pypdf, pypdfium2
from examples.pdf_notes.extract import extract_text
if len(sys.argv) > 2:
    with open(sys.argv[1], "rb") as file:
        extract_text(file.read(), ocr=False, engine=sys.argv[2])
try:
    with open("/proc/self/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(peak // 1024 if sys.platform == "darwin" else peak)
"""


def best_time(fn: Callable[[], object], budget: float = 1.0, most: int = 5) -> float:
    """The fastest of several runs: as many as fit in ``budget`` seconds, at least one, at most ``most``."""
    best, spent, runs = float("inf"), 0.0, 0
    while runs < most and (runs == 0 or spent < budget):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return best


def sample_texts() -> list[str]:
    return [sample_pages(p.read_text(encoding="utf-8"))[1][0] for p in sorted(SAMPLES.glob("*.txt"))]


def generated(directory: Path) -> list[Path]:
    """PDFs made from the demo's samples, one per sample."""
    paths = []
    for index, text in enumerate(sample_texts(), 1):
        paths.append(directory / f"sample{index}.pdf")
        paths[-1].write_bytes(make_text_pdf([text]))
    return paths


def generated_300(directory: Path) -> Path:
    """All the samples, repeated until they fill 300 pages or more."""
    texts = sample_texts()
    per_round = extract_text(make_text_pdf(texts), ocr=False).pages
    path = directory / "generated-300-pages.pdf"
    path.write_bytes(make_text_pdf(texts * -(-300 // per_round)))
    return path


def speed(paths: list[Path]) -> None:
    rows: list[tuple[object, ...]] = []
    totals = {"pages": 0, "pdfium": 0.0, "pypdf": 0.0}
    for path in paths:
        data = path.read_bytes()
        try:
            pages = extract_text(data, ocr=False).pages
        except PdfError as error:  # pixel.pdf has no text at all: nothing to time
            rows.append((path.name, "-", f"{len(data) / 2**20:.2f}", "-", "-", f"skipped: {error.kind}"))
            continue
        fast = best_time(partial(extract_text, data, ocr=False))
        slow = best_time(partial(extract_text, data, ocr=False, engine="pypdf"))
        totals["pages"] += pages
        totals["pdfium"] += fast
        totals["pypdf"] += slow
        rates = (f"{pages / fast:,.0f}", f"{pages / slow:,.0f}", f"{slow / fast:.1f}x")
        rows.append((path.name, pages, f"{len(data) / 2**20:.2f}", *rates))
    if totals["pages"]:
        ratio = totals["pypdf"] / totals["pdfium"]
        rows.append(
            (
                "total",
                totals["pages"],
                "",
                f"{totals['pages'] / totals['pdfium']:,.0f}",
                f"{totals['pages'] / totals['pypdf']:,.0f}",
                f"{ratio:.1f}x",
            )
        )
    table(
        "Text extraction, OCR off (best of up to 5 runs per file and engine)",
        ("file", "pages", "MB", "pypdfium2 pages/s", "pypdf pages/s", "pdfium/pypdf"),
        rows,
    )
    if totals["pages"]:
        verdict = "met" if ratio >= SPEED_TARGET else "NOT met"
        print(f"\ntarget: pypdfium2 >= {SPEED_TARGET:.0f}x pypdf's pages/s: {ratio:.1f}x, {verdict}")


def peak_kib(*args: str) -> int:
    """The peak RSS of a fresh Python that imports extract and, given a file and an engine, extracts it."""
    code = CHILD.format(root=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def memory(path: Path) -> None:
    size_mb = path.stat().st_size / 2**20
    budget = 3 * size_mb + MEMORY_SLACK_MB
    baseline = min(peak_kib() for _ in range(2)) / 1024
    rows, verdicts = [], []
    for engine in ("pdfium", "pypdf"):
        peak = peak_kib(str(path), engine) / 1024
        growth = peak - baseline
        verdict = "met" if growth <= budget else "NOT met"
        verdicts.append(f"{engine} {verdict}")
        figures = (f"{baseline:.0f} MB", f"{peak:.0f} MB", f"{growth:.0f} MB", f"{budget:.0f} MB")
        rows.append((engine, *figures, verdict))
    table(
        f"Peak memory extracting {path.name} ({size_mb:.1f} MB) in a fresh process (peak RSS)",
        ("engine", "baseline (imports only)", "peak", "growth", "target: 3x size + 150 MB", "verdict"),
        rows,
    )
    print(f"\ntarget: growth within 3x the PDF's size + {MEMORY_SLACK_MB} MB: {', '.join(verdicts)}")


def main(argv: list[str]) -> None:
    # pypdf logs every oddity it works around ("Ignoring wrong pointing object"), which would bury the tables.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    default = os.environ.get("TURBO_BENCH_PDF_DIR", str(ROOT.parent / "shared" / "corpus" / "real"))
    directory = Path(argv[0] if argv else default)
    with tempfile.TemporaryDirectory() as scratch:
        paths = sorted(directory.glob("*.pdf")) if directory.is_dir() else []
        if paths:
            print(f"PDFs: {len(paths)} files in {directory}")
        else:
            print(f"PDFs: none in {directory}; generated from examples/pdf_notes/samples")
            # A standard font without embedded font programs or Unicode maps is
            # pypdf's best case: the gap to pdfium is smaller than on real files.
            print("(simple generated files flatter pypdf: point DIR at real PDFs for the real comparison)")
            paths = generated(Path(scratch))
        speed(paths)
        named = [p for p in paths if p.name == LARGEST]
        memory(named[0] if named else generated_300(Path(scratch)))


if __name__ == "__main__":
    main(sys.argv[1:])
