"""The README's demo command works on the embedded broker."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import ROOT


def test_quickstart_pipeline_runs_twice_and_serves_the_slow_step_from_the_cache():
    run = subprocess.run(
        [sys.executable, "examples/quickstart.py"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if "run" in line]
    assert len(lines) == 2
    assert all("{'paragraphs': 3, 'words': 40, 'longest': 18}" in line for line in lines)
    first_ms, second_ms = (float(line.rsplit("(", 1)[1].split(" ms")[0]) for line in lines)
    computed_once = "count_words' body computed 1 time(s) for 2 pipelines"
    assert computed_once in run.stdout, "the second run was served from the cache"
    assert second_ms < first_ms, "the cached step makes the second run faster"
    assert "Telemetry, QueueStatsRecorder, AgeLimit" in run.stdout and "Backoff" in run.stdout
