"""Worker presets and sizing: how many processes, threads and which poll settings to run.

Three presets port the three worker types of BullMQ deployments to Dramatiq
terms:

* ``IO_BOUND``: jobs mostly wait (downloads, API calls); many threads per
  process, a short idle poll so a new job is picked up at once.
* ``CPU_BOUND``: jobs compute (parsing, hashing); one process per core, one
  thread each, no prefetch hoarding, so work spreads over the cores.
* ``MIXED``: a balance of both.

BullMQ's ``concurrency`` becomes ``processes x threads`` (Python threads
overlap waiting, not computing: CPU work needs processes); its ``drainDelay``
(seconds) becomes Dramatiq's ``worker_timeout`` (ms), the longest idle poll
of an empty queue; its ``limiter`` becomes a ``RateLimiter`` limit.

``recommend`` sizes a worker from measured load with Little's law.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CPU_BOUND", "IO_BOUND", "MIXED", "PRESETS", "Preset", "Sizing", "recommend", "register"]


@dataclass(frozen=True)
class Preset:
    """One way to run a ``dramatiq`` worker.

    Parameters:
      name(str): Its name on the command line (``"io-bound"``).
      processes(int): Worker processes; 0 means one per CPU core.
      threads(int): Worker threads per process.
      worker_timeout(int): Longest idle poll of an empty queue (ms), the
        analogue of BullMQ's ``drainDelay``: lower picks jobs up sooner when
        they trickle in, at the price of more polling of an idle broker.
      prefetch(int): Messages each process takes ahead from each queue
        (Dramatiq's ``queue_prefetch``).
      rate_limit(tuple): ``(max, duration)`` for ``RateLimiter``, or ``None``.
      description(str): What the preset is for.
    """

    name: str
    processes: int
    threads: int
    worker_timeout: int
    prefetch: int
    rate_limit: tuple[int, int] | None
    description: str = ""

    def for_cores(self, cores: int | None = None) -> Preset:
        """This preset with ``processes`` resolved for ``cores`` CPU cores (this machine's by default)."""
        if self.processes:
            return self
        if cores is not None:
            _check_cores(cores)
        return dataclasses.replace(self, processes=cores or os.cpu_count() or 1)

    @property
    def concurrency(self) -> int:
        """Messages running at once: processes x threads (BullMQ's ``concurrency``)."""
        return self.processes * self.threads

    def worker_options(self) -> dict[str, int]:
        """Keyword arguments for ``dramatiq.Worker`` (for workers started in code).

        Dramatiq reads the prefetch only from ``dramatiq_queue_prefetch`` in
        the environment, when ``dramatiq.worker`` is imported: see ``environment``.
        """
        return {"worker_threads": self.threads, "worker_timeout": self.worker_timeout}

    def environment(self) -> dict[str, str]:
        """The variables through which Dramatiq reads the idle poll and prefetch settings."""
        return {
            "dramatiq_worker_timeout": str(self.worker_timeout),
            "dramatiq_queue_prefetch": str(self.prefetch),
        }

    def command(self, module: str = "app", *, cores: int | None = None) -> str:
        """The shell command that runs ``module``'s actors with this preset."""
        preset = self.for_cores(cores)
        variables = " ".join(f"{k}={v}" for k, v in preset.environment().items())
        return f"{variables} dramatiq {module} --processes {preset.processes} --threads {preset.threads}"

    def middleware_settings(self) -> str:
        """Python showing the middleware settings that go with the preset."""
        lines = ["from dramatiq_turbo import RateLimiter, install", ""]
        if self.rate_limit is None:
            lines += ["install(broker)  # no rate limit for this preset"]
        else:
            limit = f"({self.rate_limit[0]:_}, {self.rate_limit[1]:_})"
            lines += [
                "install(broker)",
                "",
                f"@dramatiq.actor(rate_limit={limit})  # at most {self.rate_limit[0]} starts per "
                f"{self.rate_limit[1]} ms, across all workers",
                "def job(...): ...",
                "",
                "# or per queue (a RateLimiter given to install() needs its own Redis to count globally):",
                "install(",
                "    broker,",
                '    rate_limit=RateLimiter(redis="redis://127.0.0.1:6379/0", '
                f'limits={{"default": {limit}}}),',
                ")",
            ]
        return "\n".join(lines)

    def as_dict(self, cores: int | None = None) -> dict[str, Any]:
        preset = self.for_cores(cores)
        data = dataclasses.asdict(preset)
        data["concurrency"] = preset.concurrency
        return data


IO_BOUND = Preset(
    name="io-bound",
    processes=2,
    threads=20,
    worker_timeout=100,
    prefetch=40,
    rate_limit=(30, 1_000),
    description="Jobs that mostly wait on the network or disk (downloads, API calls).",
)
CPU_BOUND = Preset(
    name="cpu-bound",
    processes=0,
    threads=1,
    worker_timeout=200,
    prefetch=1,
    rate_limit=(10, 1_000),
    description="Jobs that compute (parsing, hashing, rendering): one process per core.",
)
MIXED = Preset(
    name="mixed",
    processes=2,
    threads=6,
    worker_timeout=150,
    prefetch=12,
    rate_limit=(20, 1_000),
    description="Jobs that compute and wait in similar measure.",
)

#: The presets by name.
PRESETS: dict[str, Preset] = {preset.name: preset for preset in (IO_BOUND, CPU_BOUND, MIXED)}

# Headroom over the busy slots Little's law gives, so a burst does not queue at once.
DEFAULT_HEADROOM = 1.5
# More threads than this per process mostly add contention.
MAX_THREADS = 64
#: Messages per second above which ``recommend`` refuses to size (its arithmetic would overflow).
MAX_ARRIVAL_RATE = 1_000_000_000


def _check_cores(cores: Any) -> None:
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be a positive int, got {cores!r}")


@dataclass(frozen=True)
class Sizing:
    """What ``recommend`` found.

    Parameters:
      preset(Preset): The recommended worker settings (``name="recommended"``).
      busy_slots(float): Messages running at once on average (arrival rate x service time).
      cpu_busy(float): Cores kept busy on average (busy slots x CPU share).
      utilization(float): ``cpu_busy`` over the cores: above 1 the work cannot keep up.
      notes(list): Warnings and the reasoning, in plain words.
    """

    preset: Preset
    busy_slots: float
    cpu_busy: float
    utilization: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.preset.as_dict(),
            "busy_slots": round(self.busy_slots, 2),
            "cpu_busy": round(self.cpu_busy, 2),
            "utilization": round(self.utilization, 3),
            "notes": self.notes,
        }


def recommend(
    arrival_rate: float,
    service_time: int,
    cpu_share: float,
    cores: int,
    *,
    headroom: float = DEFAULT_HEADROOM,
) -> Sizing:
    """Size a worker for a measured load, with Little's law.

    Busy slots (messages running at once on average) are arrival rate x
    service time; ``headroom`` times that many slots are provided.  The CPU
    part of the work needs processes (one per core it keeps busy, the GIL
    lets one thread per process compute); the waiting part needs threads.

    Parameters:
      arrival_rate(float): Messages per second arriving at the queue.
      service_time(int): Milliseconds one message takes on average.
      cpu_share(float): The fraction of ``service_time`` spent computing (0 to 1).
      cores(int): CPU cores available to the workers.
      headroom(float): Slots provided per busy slot (default 1.5).

    Raises:
      ValueError: naming the bad argument.
    """
    if (
        isinstance(arrival_rate, bool)
        or not isinstance(arrival_rate, int | float)
        or not 0 < arrival_rate < MAX_ARRIVAL_RATE
    ):
        raise ValueError(
            f"arrival_rate must be a positive number of messages per second below {MAX_ARRIVAL_RATE:,}, "
            f"got {arrival_rate!r}"
        )
    if isinstance(service_time, bool) or not isinstance(service_time, int) or service_time <= 0:
        raise ValueError(f"service_time must be a positive int of milliseconds, got {service_time!r}")
    if isinstance(cpu_share, bool) or not isinstance(cpu_share, int | float) or not 0 <= cpu_share <= 1:
        raise ValueError(f"cpu_share must be between 0 and 1, got {cpu_share!r}")
    _check_cores(cores)
    if not 1 <= headroom <= 100:
        raise ValueError(f"headroom must be between 1 and 100, got {headroom!r}")

    busy = arrival_rate * service_time / 1000
    cpu_busy = busy * cpu_share
    utilization = cpu_busy / cores
    slots = max(1, math.ceil(busy * headroom))
    processes = min(cores, max(1, math.ceil(cpu_busy * headroom)))
    threads = min(MAX_THREADS, max(1, math.ceil(slots / processes)))
    notes = [
        f"Little's law: {arrival_rate:g}/s x {service_time} ms = {busy:.2f} messages running at once; "
        f"x{headroom:g} headroom = {slots} slots.",
        f"CPU: {busy:.2f} x {cpu_share:g} = {cpu_busy:.2f} cores busy -> {processes} process(es); "
        f"waiting is covered by {threads} thread(s) each.",
    ]
    if utilization >= 1:
        notes.append(
            f"The CPU part alone needs {cpu_busy:.1f} cores but {cores} are available: "
            "the queue will grow whatever the threads; add cores or hosts."
        )
    elif utilization > 0.8:
        notes.append(f"CPU utilization {utilization:.0%}: little room for bursts.")
    if threads * processes < slots:
        notes.append(f"Capped at {MAX_THREADS} threads per process: run more hosts for {slots} slots.")
    # Poll an empty queue no longer than the average gap between arrivals,
    # within 100 ms (busy) to 1,000 ms (Dramatiq's default).
    worker_timeout = int(min(1_000, max(100, 1_000 / arrival_rate)))
    preset = Preset(
        name="recommended",
        processes=processes,
        threads=threads,
        worker_timeout=worker_timeout,
        prefetch=threads * 2 if cpu_share < 0.5 else threads,
        rate_limit=None,
        description=f"Sized for {arrival_rate:g} messages/s of {service_time} ms ({cpu_share:.0%} CPU).",
    )
    return Sizing(preset=preset, busy_slots=busy, cpu_busy=cpu_busy, utilization=utilization, notes=notes)


def register(subparsers: Any) -> None:
    """Add ``dramatiq-turbo preset`` to the command."""
    parser = subparsers.add_parser(
        "preset",
        help="print the dramatiq command line and middleware settings of a worker preset, or a sizing",
        description=(
            "Print a worker preset (io-bound, cpu-bound, mixed) as a dramatiq command line and "
            "middleware settings, or size a worker from its load with --recommend."
        ),
    )
    parser.add_argument("name", nargs="?", choices=sorted(PRESETS), help="the preset to print")
    parser.add_argument("--module", default="app", help="the module declaring your actors (default: app)")
    parser.add_argument("--cores", type=int, default=None, help="CPU cores (default: this machine's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--recommend", action="store_true", help="size a worker from its load")
    parser.add_argument("--arrival-rate", type=float, help="messages per second (with --recommend)")
    parser.add_argument("--service-time", type=int, help="ms per message (with --recommend)")
    parser.add_argument(
        "--cpu-share", type=float, help="fraction of the time computing, 0-1 (with --recommend)"
    )
    parser.set_defaults(handler=_main, parser=parser)


def _main(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.recommend:
        missing = [
            flag
            for flag, value in (
                ("--arrival-rate", args.arrival_rate),
                ("--service-time", args.service_time),
                ("--cpu-share", args.cpu_share),
            )
            if value is None
        ]
        if missing:
            parser.error(f"--recommend needs {', '.join(missing)}")
        try:
            sizing = recommend(
                args.arrival_rate,
                args.service_time,
                args.cpu_share,
                (os.cpu_count() or 1) if args.cores is None else args.cores,
            )
        except ValueError as error:
            parser.error(str(error))
        if args.json:
            print(json.dumps(sizing.as_dict(), indent=2))
            return 0
        _print_preset(sizing.preset, args.module, None)
        print()
        for note in sizing.notes:
            print(f"# {note}")
        return 0
    if args.name is None:
        parser.error("name a preset (io-bound, cpu-bound, mixed) or use --recommend")
    preset = PRESETS[args.name]
    try:
        preset.for_cores(args.cores)
    except ValueError as error:
        parser.error(str(error))
    if args.json:
        print(json.dumps(preset.as_dict(args.cores), indent=2))
        return 0
    _print_preset(preset, args.module, args.cores)
    return 0


def _print_preset(preset: Preset, module: str, cores: int | None) -> None:
    concrete = preset.for_cores(cores)
    print(f"# {concrete.name}: {concrete.description}")
    print(
        f"# {concrete.processes} process(es) x {concrete.threads} thread(s) = "
        f"{concrete.concurrency} at once; idle poll up to {concrete.worker_timeout} ms; "
        f"prefetch {concrete.prefetch}"
    )
    print(concrete.command(module))
    print()
    print(concrete.middleware_settings())
