"""Peak memory of one whole PDF-notes job on a 300-page PDF, against "3x the PDF's size + 150 MB".

    python benchmarks/bench_pdf_job_memory.py [PDF]

The job runs in a fresh process (download from a file server on 127.0.0.1,
hash, extract, chunk, notes from the bundled model in another process,
merge, save to SQLite, cache).  Its peak resident memory (``VmHWM``) is
read before the job, once the process has imported and warmed up what every
job uses, and after it; the baseline is a process that only imports and
warms up.  Default PDF: ``../shared/corpus/real/gnuplot.pdf`` (311 pages),
else a generated 300-page PDF.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cache_common import table  # noqa: E402

CORPUS_PDF = ROOT.parent / "shared" / "corpus" / "real" / "gnuplot.pdf"

# Runs in the child: prints {"before": kB, "after": kB, "pages": n, "chunks": n}.
_CHILD = r"""
import json, sys, tempfile
from pathlib import Path
from examples.pdf_notes.fileserver import FileServer
from examples.pdf_notes.model import ChatModel
from examples.pdf_notes.pipeline import NotesPipeline, Settings, llm_gate
from examples.pdf_notes.storage import SqliteStore
from dramatiq_turbo import MultiLevelCache

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

pdf, model_url, run = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "job"
settings = Settings(ocr=False)
with tempfile.TemporaryDirectory() as folder, FileServer(pdf.parent) as files:
    pipeline = NotesPipeline(
        model=ChatModel(base_url=model_url, around_request=llm_gate(settings)),
        store=SqliteStore(Path(folder) / "notes.sqlite3"),
        cache=MultiLevelCache(),
        settings=settings,
    )
    pipeline.warm_up()
    before = hwm()
    result = pipeline.run(f"{files.url}/{pdf.name}") if run else {"pages": 0, "chunks": 0}
    found = {"pages": result["pages"], "chunks": result["chunks"]}
    print(json.dumps({"before": before, "after": hwm(), **found}))
"""


def _pdf(argument: str | None, folder: Path) -> Path:
    if argument:
        return Path(argument)
    if CORPUS_PDF.exists():
        return CORPUS_PDF
    from examples.pdf_notes.pdfgen import make_text_pdf

    words = " ".join(f"word{index % 500}" for index in range(450))
    path = folder / "generated-300-pages.pdf"
    path.write_bytes(make_text_pdf([f"Page {n}. {words}." for n in range(300)]))
    return path


def _measure(pdf: Path, model_url: str, mode: str) -> dict[str, int]:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(pdf), model_url, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    measured: dict[str, int] = json.loads(child.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    from examples.pdf_notes.model_server import ModelServer

    with tempfile.TemporaryDirectory() as folder, ModelServer(latency=0) as model:
        pdf = _pdf(sys.argv[1] if len(sys.argv) > 1 else None, Path(folder))
        idle = _measure(pdf, model.url, "idle")
        job = _measure(pdf, model.url, "job")
    size_mb = pdf.stat().st_size / 1e6
    target = 3 * size_mb + 150
    peak, grown = job["after"] / 1024, (job["after"] - job["before"]) / 1024
    rows = [
        ("process after imports and warm-up (no job)", f"{idle['after'] / 1024:.1f} MB", "-"),
        (
            f"peak of the job's process ({job['pages']} pages, {job['chunks']} chunks)",
            f"{peak:.1f} MB",
            "met" if peak <= target else "NOT met",
        ),
        ("growth during the job", f"{grown:.1f} MB", "met" if grown <= target else "NOT met"),
    ]
    title = (
        f"Peak memory of one job: {pdf.name} ({size_mb:.2f} MB); target 3 x size + 150 MB = {target:.1f} MB"
    )
    table(title, ["measure", "peak resident memory", "within target"], rows)


if __name__ == "__main__":
    main()
