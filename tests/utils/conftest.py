"""A local HTTP server for the utilities' tests: 127.0.0.1 only, on a free port."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

Route = Callable[[BaseHTTPRequestHandler], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        super().server_bind()
        # Without TCP_NODELAY, keep-alive requests wait for delayed ACKs.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class LocalServer:
    """Routes ``path -> handler(request)``; counts requests and TCP connections."""

    routes: dict[str, Route] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, path: str) -> Callable[[Route], Route]:
        def register(handler: Route) -> Route:
            self.routes[path] = handler
            return handler

        return register


def make_handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with server.lock:
                server.connections += 1

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with server.lock:
                server.hits[path] = server.hits.get(path, 0) + 1
            handler = server.routes.get(path)
            if handler is None:
                self.send_error(404)
                return
            handler(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def send_body(request: BaseHTTPRequestHandler, body: bytes, status: int = 200, **headers: str) -> None:
    request.send_response(status)
    request.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        request.send_header(name.replace("_", "-"), value)
    request.end_headers()
    request.wfile.write(body)


def send_chunked(request: BaseHTTPRequestHandler, parts: list[bytes], pause: float = 0.0) -> None:
    """A body without Content-Length (chunked transfer), ``pause`` seconds between parts."""
    request.send_response(200)
    request.send_header("Transfer-Encoding", "chunked")
    request.end_headers()
    try:
        for part in parts:
            request.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            request.wfile.flush()
            if pause:
                time.sleep(pause)
        request.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        request.close_connection = True


def in_forked_child(check: Callable[[], bool]) -> bool:
    """Run ``check`` in a forked child process and return its answer."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child answers, then leaves at once (no atexit, no pytest teardown)
        try:
            os.write(write, b"1" if check() else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    state = LocalServer()
    server = _Server(("127.0.0.1", 0), make_handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
