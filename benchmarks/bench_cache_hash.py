"""content_hash throughput (SHA-256) against other hashes one could key a cache with.

xxhash and blake3 are measured when installed (``pip install xxhash blake3``);
they are not dependencies of the suite.

    python benchmarks/bench_cache_hash.py
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cache_common import table

from dramatiq_turbo import content_hash

SIZE = 16 * 1024 * 1024  # a large PDF


def throughput(fn: Callable[[bytes], object], data: bytes) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - start)
    return len(data) / best / 1e6


def main() -> None:
    data = os.urandom(SIZE)
    candidates: dict[str, tuple[Callable[[bytes], object] | None, str]] = {
        "content_hash (SHA-256, chosen)": (content_hash, "yes"),
        "hashlib.blake2b": (lambda d: hashlib.blake2b(d, digest_size=32).hexdigest(), "yes"),
        "hashlib.md5 (for reference)": (lambda d: hashlib.md5(d).hexdigest(), "no"),
    }
    try:
        import blake3

        candidates["blake3 (package)"] = (lambda d: blake3.blake3(d).hexdigest(), "yes")
    except ImportError:
        candidates["blake3 (package)"] = (None, "yes")
    try:
        import xxhash

        candidates["xxhash xxh3_128 (package)"] = (xxhash.xxh3_128_hexdigest, "no")
    except ImportError:
        candidates["xxhash xxh3_128 (package)"] = (None, "no")
    base = throughput(content_hash, data)
    rows = []
    for name, (fn, resistant) in candidates.items():
        if fn is None:
            rows.append((name, "not installed", "-", resistant, "-"))
            continue
        mbs = base if fn is content_hash else throughput(fn, data)
        rows.append((name, f"{mbs:,.0f} MB/s", f"{mbs / base:.2f}x", resistant, f"{SIZE / mbs / 1e3:.1f} ms"))
    table(
        f"Hashing a {SIZE // 2**20} MiB document (best of 5)",
        ("hash", "throughput", "vs content_hash", "collision-resistant", "time for 16 MiB"),
        rows,
    )


if __name__ == "__main__":
    main()
