"""A TCP proxy for tests and benchmarks: counts round trips at the socket and can add latency.

A *round trip* is a burst of bytes from the client after the server last
answered on that connection: a pipeline of 20 commands written at once is
one, 20 commands each waiting for its reply are 20.  Latency is added per
direction: each chunk is forwarded ``delay_ms`` after it arrived (chunks keep
their order and their spacing), which is what a network between two hosts
does; the kernel here has no ``netem``.

    proxy = TcpProxy("127.0.0.1", 6379, delay_ms=0.5)
    port = proxy.start()            # connect to 127.0.0.1:<port> instead
    ...
    proxy.round_trips               # client bursts so far, all connections
    proxy.stop()

``serve_in_process`` runs one in a child process, so that its threads do not
take the measured process's interpreter lock.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import socket
import threading
import time
from typing import Any

__all__ = ["ProxyProcess", "TcpProxy"]


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self.lock = threading.Lock()

    def add(self) -> None:
        with self.lock:
            self.value += 1


class TcpProxy:
    """Forward connections on a local port to ``host:port``.

    Parameters:
      host(str), port(int): The server to forward to.
      delay_ms(float): Latency added to each direction.  With a delay above
        0 the ``delay`` attribute (seconds) may be changed while it runs: a
        network that turns slow and fast again.
      counter: An object with ``add()`` counting round trips (a fresh one by default).
    """

    def __init__(self, host: str, port: int, *, delay_ms: float = 0.0, counter: Any = None) -> None:
        self.target = (host, port)
        self.delay = delay_ms / 1000
        self.counter = counter if counter is not None else _Counter()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []

    @property
    def round_trips(self) -> int:
        return int(self.counter.value)

    def start(self, port: int = 0) -> int:
        """Listen on ``port`` (a free one by default) and return it."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()
        return int(listener.getsockname()[1])

    def cut(self) -> None:
        """Drop every connection at once (both ends see it closed) and stop listening, like a dead host."""
        self._stopped.set()
        for sock in [self._listener, *self._sockets]:
            if sock is not None:
                # shutdown() wakes the threads blocked on the socket and sends the FIN; close() does not.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def stop(self) -> None:
        self._stopped.set()
        for sock in [self._listener, *self._sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            awaiting = [False]  # a request burst is out, its reply not yet back
            self._pump(client, server, awaiting, request=True)
            self._pump(server, client, awaiting, request=False)

    def _pump(
        self, source: socket.socket, sink: socket.socket, awaiting: list[bool], *, request: bool
    ) -> None:
        # Without latency the reading thread forwards at once (no queue hop).
        chunks: Any = queue.SimpleQueue() if self.delay else _Direct(sink)

        def read() -> None:
            while True:
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                if request and data and not awaiting[0]:
                    awaiting[0] = True
                    self.counter.add()
                elif not request and data:
                    awaiting[0] = False
                chunks.put((time.monotonic() + self.delay, data))
                if not data:
                    return

        def write() -> None:
            while True:
                due, data = chunks.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                try:
                    sink.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        if self.delay:
            threading.Thread(target=write, daemon=True).start()


class _Direct:
    """Stands in for the queue when there is no delay: sends at once."""

    def __init__(self, sink: socket.socket) -> None:
        self.sink = sink

    def put(self, item: tuple[float, bytes]) -> None:
        data = item[1]
        with contextlib.suppress(OSError):
            if data:
                self.sink.sendall(data)
            else:
                self.sink.shutdown(socket.SHUT_WR)


def _serve(host: str, port: int, delay_ms: float, counter: Any, ready: Any, listen_port: Any) -> None:
    proxy = TcpProxy(host, port, delay_ms=delay_ms, counter=counter)
    listen_port.value = proxy.start()
    ready.set()
    threading.Event().wait()


class ProxyProcess:
    """A ``TcpProxy`` in a child process; ``round_trips`` reads its counter."""

    def __init__(self, host: str, port: int, *, delay_ms: float = 0.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._counter = context.Value("q", 0)
        self._port = context.Value("i", 0)
        self._ready = context.Event()
        self._process = context.Process(
            target=_serve,
            args=(host, port, delay_ms, _SharedCounter(self._counter), self._ready, self._port),
            daemon=True,
        )

    def start(self) -> int:
        self._process.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy process did not start")
        return int(self._port.value)

    @property
    def round_trips(self) -> int:
        return int(self._counter.value)

    def stop(self) -> None:
        self._process.kill()
        self._process.join(5)


class _SharedCounter:
    """``add()`` on a ``multiprocessing.Value``."""

    def __init__(self, value: Any) -> None:
        self._value = value

    @property
    def value(self) -> int:
        return int(self._value.value)

    def add(self) -> None:
        with self._value.get_lock():
            self._value.value += 1
