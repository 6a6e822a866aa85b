"""The PDF-notes demo: ``python3 run.py demo`` (or ``python -m examples.pdf_notes.demo``).

Everything runs on this machine, no server to install: sample PDFs made on
the spot and served over HTTP on 127.0.0.1, the bundled offline notes model
(an OpenAI-compatible server with a latency per call, like a real one), an
in-process Dramatiq worker with the whole dramatiq_turbo stack installed,
and SQLite for the notes.  It prints each PDF's notes and step table, runs
the same jobs again (served from the cache), runs the naive twin on the same
PDFs, and ends with a before/after table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .app import size_pools
from .embedded import Embedded, Outcome, format_notes
from .fileserver import FileServer
from .pdfgen import make_sample_pdfs
from .pipeline import Settings, naive_notes


def _first_pass(embedded: Embedded, urls: Sequence[str]) -> list[Outcome]:
    print(f"\n-- 1. generate_notes for {len(urls)} PDFs (whole stack, cache empty)\n", flush=True)
    outcomes = embedded.run(urls)
    for outcome in outcomes:
        print(f"== {outcome.source.rsplit('/', 1)[-1]}")
        print(format_notes(outcome.result) if outcome.result else f"FAILED: {outcome.error}")
        print(flush=True)
    return outcomes


def _second_pass(embedded: Embedded, urls: Sequence[str]) -> list[Outcome]:
    print("-- 2. the same PDFs again (a duplicate job is a cache hit)\n", flush=True)
    outcomes = embedded.run(urls)
    for outcome in outcomes:
        name = outcome.source.rsplit("/", 1)[-1]
        if outcome.result is None:
            print(f"{name}: FAILED: {outcome.error}")
            continue
        level = outcome.result["cached"] or "not cached"
        print(f"{name}: {outcome.result['elapsed_ms']:.1f} ms (cache: {level})")
    return outcomes


def _naive_pass(urls: Sequence[str], model_url: str, db: str, settings: Settings) -> list[float]:
    print("\n-- 3. the naive twin on the same PDFs (new session per job, no cache, chunks one by one)\n")
    times = []
    for index, url in enumerate(urls, 1):
        result = naive_notes(url, model_url=model_url, db=db, settings=settings)
        times.append(result["elapsed_ms"])
        print(f"[{index}/{len(urls)}] {url.rsplit('/', 1)[-1]}: {result['elapsed_ms']:.0f} ms", flush=True)
    return times


def _table(
    names: Sequence[str], naive: Sequence[float], first: Sequence[Outcome], again: Sequence[Outcome]
) -> None:
    print("\n-- before / after (job time, ms)\n")
    print(f"{'PDF':<34} {'naive':>9} {'turbo':>9} {'faster':>7} {'duplicate':>10} {'faster':>9}")
    for name, before, one, two in zip(names, naive, first, again, strict=True):
        if one.result is None or two.result is None:
            print(f"{name:<34} {before:>9.0f} {'failed':>9}")
            continue
        after, hit = one.result["elapsed_ms"], two.result["elapsed_ms"]
        gains = f"{before / after:>6.1f}x {hit:>10.2f} {before / hit:>8.0f}x"
        print(f"{name:<34} {before:>9.0f} {after:>9.0f} {gains}")
    done = [o.result["elapsed_ms"] for o in first if o.result]
    if done:
        print(f"\nmean job: naive {statistics.mean(naive):.0f} ms, turbo {statistics.mean(done):.0f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=int, default=150, help="the notes model's latency per call, ms")
    parser.add_argument("--chunk-tokens", type=int, default=400, help="tokens per chunk (default 400)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    settings = Settings(chunk_tokens=args.chunk_tokens, overlap=50)
    size_pools(settings)
    with tempfile.TemporaryDirectory(prefix="pdf-notes-demo-") as folder:
        work = Path(folder)
        pdfs = make_sample_pdfs(work / "pdfs")
        with (
            FileServer(work / "pdfs") as files,
            Embedded(db=str(work / "notes.sqlite3"), latency=args.latency, settings=settings) as embedded,
        ):
            urls = [f"{files.url}/{pdf.name}" for pdf in pdfs]
            print(f"sample PDFs served at {files.url}; notes model at {embedded.model_url}")
            first = _first_pass(embedded, urls)
            again = _second_pass(embedded, urls)
            assert embedded.model_url is not None
            naive = _naive_pass(urls, embedded.model_url, str(work / "naive.sqlite3"), settings)
        _table([pdf.name for pdf in pdfs], naive, first, again)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return 0 if all(o.result is not None for o in (*first, *again)) else 1


if __name__ == "__main__":
    sys.exit(main())
