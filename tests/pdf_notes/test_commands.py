"""The README's demo and the notes command, run as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from examples.pdf_notes.pdfgen import make_text_pdf
from tests.harness import ROOT
from tests.pdf_notes.test_pipeline import _document


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_the_demo_prints_notes_then_serves_duplicates_from_the_cache_and_compares_with_the_naive_twin():
    run = _run("examples.pdf_notes.demo", "--latency", "60")
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert out.count("<- Bottleneck!") >= 3, "a step table per PDF"
    hits = re.findall(r"^(\S+\.pdf): ([\d.]+) ms \(cache: l1\)$", out, re.MULTILINE)
    assert len(hits) == 3, out
    rows = re.findall(r"^(\S+\.pdf)\s+(\d+)\s+(\d+)\s+([\d.]+)x\s+([\d.]+)\s+(\d+)x$", out, re.MULTILINE)
    assert len(rows) == 3, out
    for _, naive, turbo, _, duplicate, _ in rows:
        assert float(turbo) < float(naive), "parallel chunks beat one after another"
        assert float(duplicate) * 20 < float(naive), "a duplicate is served from the cache"


def test_the_notes_command_prints_json_and_fails_with_the_reason_of_a_bad_file(tmp_path):
    good = tmp_path / "guide.pdf"
    good.write_bytes(make_text_pdf(_document(3), title="Guide"))
    bad = tmp_path / "page.pdf"
    bad.write_bytes(b"<html><body>not a pdf</body></html>")
    db = tmp_path / "notes.sqlite3"
    run = _run("examples.pdf_notes", str(good), str(bad), "--json", "--db", str(db))
    assert run.returncode == 1, "one of the two failed"
    results = json.loads(run.stdout)
    assert results[0]["error"] is None and results[0]["result"]["key_points"]
    assert results[1]["result"] is None and "not a PDF" in results[1]["error"]
    assert db.exists()
