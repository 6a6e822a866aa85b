"""A small HTTP server for PDFs on 127.0.0.1, so the demo and the load test download over real HTTP.

``GET /<name>`` serves a file of the directory; ``GET /<name>?v=<n>``
serves it with a PDF comment naming variant ``n`` appended after its end,
which is still the same valid document but has other bytes, so it is a
different document to a content-keyed cache.  Keep-alive (HTTP/1.1) and
``Content-Length`` as a real file server would.

``rtt`` makes the server behave as if it were that many milliseconds away:
a new connection first waits two round trips (the TCP and TLS handshakes of
an ``https`` server), and every request one more.  On loopback a new
connection costs almost nothing, so this is how the load test shows what
connection pooling saves against a remote store.
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FileServer", "variant_bytes"]


def variant_bytes(data: bytes, variant: int | None) -> bytes:
    """``data`` itself, or with a comment line for ``variant`` after the end (other bytes, same PDF)."""
    return data if variant is None else data + b"\n%variant " + str(variant).encode() + b"\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's
    # algorithm holds the body back until the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.handshake_pending = True

    def do_GET(self) -> None:
        rtt = self.server.rtt / 1000
        if rtt:
            time.sleep(rtt * (3 if self.handshake_pending else 1))
        self.handshake_pending = False
        parts = urlsplit(self.path)
        body = self.server.body(unquote(parts.path.lstrip("/")), parse_qs(parts.query).get("v"))
        if body is None:
            self._send(404, b"not found\n", "text/plain")
            return
        self._send(200, body, "application/pdf")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: a load test makes thousands of requests


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], directory: Path, rtt: int) -> None:
        super().__init__(address, _Handler)
        self.directory = directory.resolve()
        self.rtt = rtt
        self.read = lru_cache(maxsize=64)(self._read)

    def _read(self, name: str) -> bytes | None:
        path = (self.directory / name).resolve()
        if path.parent != self.directory or not path.is_file():
            return None  # nothing outside the directory, no sub-folders
        return path.read_bytes()

    def body(self, name: str, variant: list[str] | None) -> bytes | None:
        data = self.read(name)
        if data is None:
            return None
        return variant_bytes(data, int(variant[0]) if variant and variant[0].isdigit() else None)


class FileServer:
    """Serves the files of ``directory`` at ``url`` (``http://127.0.0.1:<port>``) until ``stop()``.

    Parameters:
      directory(Path): The folder whose files are served (not its sub-folders).
      port(int): 0 picks a free port.
      rtt(int): Simulated round-trip time in ms (see the module's docstring); 0 for none.
    """

    def __init__(self, directory: str | Path, *, port: int = 0, rtt: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port), Path(directory), rtt)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="pdf-files", daemon=True)

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
