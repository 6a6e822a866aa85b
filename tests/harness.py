"""Real services and real workers for the test suite.

Brokers for the three transports, in-process ``Worker``s, and whole
``dramatiq`` worker processes that a test can kill.  Every helper cleans up
after itself, and every wait has a deadline, so a hang fails one test instead
of the CI run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.stub import StubBroker

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
REDIS_URL = os.environ.get("TURBO_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("TURBO_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")

BROKER_KINDS = ("stub", "redis", "rabbitmq")

#: Where child processes find the test services, whether or not this process got them from its environment.
SERVICE_ENV = {"TURBO_TEST_REDIS_URL": REDIS_URL, "TURBO_TEST_RABBITMQ_URL": RABBITMQ_URL}


def probe_redis(url: str = REDIS_URL) -> str | None:
    """``None`` when Redis answers at ``url``, else why not."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()
    if client.connection_pool.connection_kwargs.get("db", 0) == 0:
        return "tests refuse Redis database 0; point TURBO_TEST_REDIS_URL at another database"
    return None


def probe_rabbitmq(url: str = RABBITMQ_URL) -> str | None:
    """``None`` when RabbitMQ answers at ``url``, else why not."""
    import pika

    try:
        params = pika.URLParameters(url)
        params.socket_timeout = 3
        params.blocked_connection_timeout = 3
        pika.BlockingConnection(params).close()
    except Exception as error:
        return f"{type(error).__name__}: {error!r}"
    return None


def wait_for(condition: Callable[[], Any], *, timeout: float, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition!r}")
        time.sleep(interval)


def unique(prefix: str = "t") -> str:
    """A name no other test (or earlier run) uses: for queues and namespaces."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_broker(kind: str, *, middleware: list[Any] | None = None, **options: Any) -> dramatiq.Broker:
    """A broker of ``kind`` (``stub``, ``redis`` or ``rabbitmq``) on the test services."""
    if kind == "stub":
        return StubBroker(middleware=middleware, **options)
    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        options.setdefault("namespace", unique("dq"))
        return RedisBroker(url=REDIS_URL, middleware=middleware, **options)
    if kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=RABBITMQ_URL, middleware=middleware, **options)
    raise ValueError(f"unknown broker kind {kind!r}; expected one of {BROKER_KINDS}")


def send_by_name(
    broker: dramatiq.Broker, actor_name: str, *args: Any, queue: str = "default"
) -> dramatiq.Message:
    """Enqueue a message for an actor that only the worker processes declare."""
    broker.declare_queue(queue)
    message: dramatiq.Message = dramatiq.Message(
        queue_name=queue, actor_name=actor_name, args=args, kwargs={}, options={}
    )
    return broker.enqueue(message)


def dispose_broker(broker: dramatiq.Broker) -> None:
    """Remove every queue ``broker`` declared, then close it."""
    queues = broker.get_declared_queues() | broker.get_declared_delay_queues()
    kind = type(broker).__name__
    try:
        if kind == "RabbitmqBroker":
            channel = broker.channel  # type: ignore[attr-defined]
            for queue in queues:
                for name in (queue, f"{queue}.XQ") if not queue.endswith(".DQ") else (queue,):
                    channel.queue_delete(name)
        elif kind == "RedisBroker":
            client = broker.client  # type: ignore[attr-defined]
            keys = list(client.scan_iter(f"{broker.namespace}:*"))  # type: ignore[attr-defined]
            if keys:
                client.delete(*keys)
        else:
            broker.flush_all()
    finally:
        broker.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A throwaway ``redis-server`` on a spare port, for tests that stop Redis mid-run."""

    def __init__(self, port: int | None = None, *, durable: bool = False) -> None:
        self.port = port or free_port()
        #: With ``durable=True`` every write is in an append-only file (fsynced
        #: before the reply) that survives ``stop()``: a crash and a restart
        #: lose nothing, as for a Redis that a broker is run on.
        self.durable = durable
        self.data_dir = tempfile.mkdtemp(prefix=f"turbo-redis-{self.port}-") if durable else None
        self.url = f"redis://127.0.0.1:{self.port}/1"
        #: The same server through a unix socket.
        self.socket_path = os.path.join(tempfile.gettempdir(), f"turbo-redis-{self.port}.sock")
        self.unix_url = f"unix://{self.socket_path}?db=1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 10) -> None:
        """Start the server (again) on the same port and wait until it answers."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
                self.socket_path,
                *self._durable_args(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: probe_redis(self.url) is None, timeout=timeout, what=f"redis-server on {self.port}")

    def stop(self) -> None:
        """Stop the server at once, as a crash or a network cut would look to clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def _durable_args(self) -> list[str]:
        if not self.durable:
            return []
        # Later options win: these override "--appendonly no" above.
        return ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, commands wait unanswered."""
        assert self.process is not None and self.process.poll() is None, "the server is not running"
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT): it answers the commands that waited."""
        assert self.process is not None and self.process.poll() is None, "the server is not running"
        self.process.send_signal(signal.SIGCONT)

    def remove_data(self) -> None:
        """Stop the server and delete a durable server's files."""
        self.stop()
        if self.data_dir is not None:
            import shutil

            shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class WorkerProcesses:
    """``dramatiq`` CLI processes running one app module; see ``start``."""

    module: str
    processes: int
    threads: int
    env: dict[str, str]
    popen: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    #: Text that marks a traceback the test expects (a failure it provokes); any other fails it.
    expected_tracebacks: tuple[str, ...] = ()

    def start(self, count: int = 1, *, ready_timeout: float = 30) -> list[subprocess.Popen[bytes]]:
        """Start ``count`` more ``dramatiq`` commands and wait until all their workers are ready."""
        started = []
        for _ in range(count):
            log = Path(tempfile.mkstemp(prefix="dramatiq-", suffix=".log")[1])
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dramatiq",
                        self.module,
                        "--processes",
                        str(self.processes),
                        "--threads",
                        str(self.threads),
                    ],
                    cwd=ROOT,
                    env={**os.environ, **SERVICE_ENV, **self.env, "PYTHONPATH": str(ROOT)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # Its own process group, so the whole tree can be killed at once.
                    start_new_session=True,
                )
            self.popen.append(proc)
            self.logs.append(log)
            started.append(proc)
        for proc in started:
            index = self.popen.index(proc)
            wait_for(
                lambda i=index, p=proc: self._ready(i, p),
                timeout=ready_timeout,
                interval=0.05,
                what=f"{self.processes} worker process(es) of {self.module} to be ready",
            )
        return started

    def _ready(self, index: int, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early with {proc.returncode}:\n{self.output(index)}")
        return self.output(index).count("is ready for action") >= self.processes

    def output(self, index: int | None = None) -> str:
        """What one command (or all of them) printed so far."""
        logs = self.logs if index is None else [self.logs[index]]
        return "\n".join(log.read_text(errors="replace") for log in logs)

    def unexpected_tracebacks(self) -> list[str]:
        """The tracebacks the processes printed that contain none of ``expected_tracebacks``."""
        blocks = [
            block.split("\n[", 1)[0]
            for block in self.output().split("Traceback (most recent call last):")[1:]
        ]
        return [block for block in blocks if not any(text in block for text in self.expected_tracebacks)]

    def worker_pids(self, proc: subprocess.Popen[bytes] | None = None) -> list[int]:
        """The pids of the worker processes (a ``dramatiq`` command's children) of one command, or of all."""
        commands = self.popen if proc is None else [proc]
        pids: list[int] = []
        for command in commands:
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{command.pid}/task/{command.pid}/children").read_text()
                pids += [int(pid) for pid in children.split()]
        return pids

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process tree of one command, as a host crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    def stop(self, *, timeout: float = 15) -> None:
        """Stop every command: SIGTERM for a clean shutdown, SIGKILL if it hangs."""
        for proc in self.popen:
            if proc.poll() is None:
                # Only the main process: it forwards SIGTERM to its workers,
                # and a second SIGTERM would cut their graceful shutdown short.
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.popen:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        for log in self.logs:
            log.unlink(missing_ok=True)
