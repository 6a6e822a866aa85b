"""Worker presets, Little's-law sizing and the ``dramatiq-turbo preset`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dramatiq_turbo import cli, presets
from tests.harness import ROOT


def test_presets_port_the_three_worker_types() -> None:
    assert presets.PRESETS == {
        "io-bound": presets.IO_BOUND,
        "cpu-bound": presets.CPU_BOUND,
        "mixed": presets.MIXED,
    }
    io, cpu, mixed = presets.IO_BOUND, presets.CPU_BOUND.for_cores(4), presets.MIXED
    assert io.concurrency == 40 and io.rate_limit == (30, 1_000)
    assert (cpu.processes, cpu.threads, cpu.prefetch, cpu.rate_limit) == (4, 1, 1, (10, 1_000))
    assert mixed.concurrency == 12 and mixed.rate_limit == (20, 1_000)
    # Waiting work polls sooner than computing work, like BullMQ's drainDelay.
    assert io.worker_timeout < mixed.worker_timeout < cpu.worker_timeout <= 1_000
    assert io.worker_options() == {"worker_threads": 20, "worker_timeout": 100}
    assert io.command("tasks") == (
        "dramatiq_worker_timeout=100 dramatiq_queue_prefetch=40 dramatiq tasks --processes 2 --threads 20"
    )


def test_dramatiq_honours_the_preset_environment() -> None:
    probe = (
        "import dramatiq.worker as w; from dramatiq.brokers.stub import StubBroker; "
        "worker = w.Worker(StubBroker(), worker_threads=3); "
        "print(worker.worker_timeout, worker.queue_prefetch)"
    )
    env = {**os.environ, **presets.IO_BOUND.environment()}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["100", "40"]


def test_recommend_applies_littles_law() -> None:
    # 12 messages/s of 2.5 s, 10% CPU, on 2 cores: 30 running at once.
    sizing = presets.recommend(12, 2_500, 0.1, 2)
    assert sizing.busy_slots == pytest.approx(30) and sizing.cpu_busy == pytest.approx(3)
    assert (sizing.preset.processes, sizing.preset.threads) == (2, 23), "45 slots over 2 processes"
    assert sizing.utilization == pytest.approx(1.5) and any("add cores" in n for n in sizing.notes)
    assert sizing.preset.worker_timeout == 100

    waiting = presets.recommend(10, 200, 0.0, 4)
    assert (waiting.preset.processes, waiting.preset.threads) == (1, 3), "I/O work: threads, not processes"
    assert waiting.preset.prefetch == 6

    computing = presets.recommend(4, 500, 1.0, 4)
    assert (computing.preset.processes, computing.preset.threads) == (3, 1), "CPU work: processes"
    assert computing.preset.prefetch == 1 and computing.preset.worker_timeout == 250

    assert presets.recommend(0.1, 100, 0.5, 1).preset.concurrency == 1, "never less than one slot"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((0, 100, 0.5, 2), "arrival_rate must be a positive number"),
        ((5, 1.5, 0.5, 2), "service_time must be a positive int of milliseconds"),
        ((5, 100, 1.5, 2), "cpu_share must be between 0 and 1"),
        ((5, 100, 0.5, 0), "cores must be a positive int"),
    ],
)
def test_recommend_names_bad_input(args, complaint) -> None:
    with pytest.raises(ValueError, match=complaint):
        presets.recommend(*args)


def test_cli_prints_a_preset(capsys) -> None:
    assert cli.main(["preset", "io-bound", "--module", "tasks"]) == 0
    out = capsys.readouterr().out
    assert (
        "dramatiq_worker_timeout=100 dramatiq_queue_prefetch=40 dramatiq tasks --processes 2 --threads 20"
        in out
    )
    assert "rate_limit=(30, 1_000)" in out and "install(broker)" in out


def test_cli_prints_a_sizing(capsys) -> None:
    argv = ["preset", "--recommend", "--arrival-rate", "12", "--service-time", "2500", "--cpu-share", "0.1"]
    assert cli.main([*argv, "--cores", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["processes"], data["threads"], data["busy_slots"]) == (2, 23, 30.0)
    assert cli.main([*argv, "--cores", "2"]) == 0
    assert "--processes 2 --threads 23" in capsys.readouterr().out


def test_cli_rejects_incomplete_requests(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["preset", "--recommend", "--arrival-rate", "12"])
    assert exit_.value.code == 2 and "--service-time, --cpu-share" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["preset"])
    with pytest.raises(SystemExit):
        cli.main(["preset", "--recommend", "--arrival-rate", "-1", "--service-time", "5", "--cpu-share", "0"])
    assert "arrival_rate must be a positive number" in capsys.readouterr().err


def test_the_installed_command_runs() -> None:
    command = [sys.executable, "-m", "dramatiq_turbo.cli", "preset", "mixed"]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--processes 2 --threads 6" in out


def test_public_names() -> None:
    import dramatiq_turbo

    assert dramatiq_turbo.presets is presets
    assert dramatiq_turbo.RateLimiter.__module__ == "dramatiq_turbo.ratelimit.middleware"
    assert {"presets", "RateLimiter"} <= set(dir(dramatiq_turbo))


@pytest.mark.parametrize(
    "argv",
    [
        ["preset", "cpu-bound", "--cores", "0"],
        ["preset", "cpu-bound", "--cores", "-4", "--json"],
        ["preset", "--recommend", "--arrival-rate", "inf", "--service-time", "100", "--cpu-share", "0.5"],
        ["preset", "--recommend", "--arrival-rate", "1e308", "--service-time", "100", "--cpu-share", "0.5"],
        [
            "preset",
            "--recommend",
            "--arrival-rate",
            "5",
            "--service-time",
            "100",
            "--cpu-share",
            "0.5",
            "--cores",
            "0",
        ],
    ],
)
def test_cli_refuses_impossible_sizes_with_a_usage_error(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_the_per_queue_snippet_counts_globally(capsys) -> None:
    assert cli.main(["preset", "io-bound"]) == 0
    assert 'RateLimiter(redis="redis://' in capsys.readouterr().out
