"""``download_file`` against hostile servers: bounded time, bounded memory, errors that name the problem.

Every server here is real: a thread of this test listening on a spare port
of 127.0.0.1 (or 127.0.0.2, the "public" host of the tests that refuse
private addresses: ``_public`` is patched to count that one address as
public, since a test cannot own a public one).  Each test states its time
bound, and the memory tests their bound on the peak of traced allocations.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from dramatiq_turbo import http
from dramatiq_turbo.http import DownloadRefused, DownloadTimeout, DownloadTooLarge, download_file

MiB = 1024 * 1024


@dataclass
class RawServer:
    """A TCP server whose every connection is handled by ``behaviour(conn, request)`` in its own thread."""

    behaviour: Callable[[socket.socket, bytes], None]
    host: str = "127.0.0.1"
    requests: list[bytes] = field(default_factory=list)
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, 0))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            self.requests.append(request)
            self.behaviour(conn, request)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def factory(behaviour: Callable[[socket.socket, bytes], None], host: str = "127.0.0.1") -> RawServer:
        server = RawServer(behaviour, host)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


def respond(
    body: bytes = b"ok", status: str = "200 OK", **headers: str
) -> Callable[[socket.socket, bytes], None]:
    def behaviour(conn: socket.socket, request: bytes) -> None:
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        head += "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
        conn.sendall(head.encode() + b"\r\n" + body)

    return behaviour


def redirect(location: str) -> Callable[[socket.socket, bytes], None]:
    return respond(b"", "302 Found", Location=location)


def drip(prefix: bytes, byte: bytes, interval: float = 1.0) -> Callable[[socket.socket, bytes], None]:
    """Send ``prefix``, then ``byte`` every ``interval`` seconds, for ever (until the client leaves)."""

    def behaviour(conn: socket.socket, request: bytes) -> None:
        conn.sendall(prefix)
        while True:
            time.sleep(interval)
            conn.sendall(byte)

    return behaviour


def endless(piece: bytes = b"x" * 65536, interval: float = 0.0) -> Callable[[socket.socket, bytes], None]:
    """A body without length that never ends."""

    def behaviour(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        while True:
            conn.sendall(piece)
            if interval:
                time.sleep(interval)

    return behaviour


def gzip_bomb(gib: int) -> bytes:
    """A gzip body of about ``gib`` MB that inflates to ``gib`` GiB of zeros, built in milliseconds."""
    chunk = bytes(MiB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    body = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    return head + body * (gib * 1024 - 1)


@contextlib.contextmanager
def timed(at_most: float) -> Iterator[None]:
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    assert took < at_most, f"took {took:.2f} s, the bound is {at_most} s"


@contextlib.contextmanager
def peak_memory(at_most: int) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < at_most, f"peak of {peak:,} bytes, the bound is {at_most:,}"


@pytest.fixture
def public_127_0_0_2(monkeypatch: pytest.MonkeyPatch) -> str:
    """Count 127.0.0.2 as a public address (a test cannot own one), every other address as it is."""
    real = http._public
    stand_in = ipaddress.ip_address("127.0.0.2")
    monkeypatch.setattr(http, "_public", lambda address: address == stand_in or real(address))
    return "127.0.0.2"


# -- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "file:/etc/hostname", "ftp://127.0.0.1/x", "gopher://h/"]
)
def test_a_redirect_to_another_scheme_is_refused(serve, location: str) -> None:
    server = serve(redirect(location))
    with (
        timed(2),
        pytest.raises(DownloadRefused, match="only http and https URLs can be downloaded") as error,
    ):
        download_file(f"{server.url}/hop")
    assert error.value.retryable is False


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "[::1]:{port}",
        "[::ffff:127.0.0.1]:{port}",
        "0.0.0.0:{port}",
        "2130706433:{port}",  # 127.0.0.1 written as a number
        "169.254.169.254",  # a cloud metadata service
        "10.0.0.1",
        "192.168.1.1",
    ],
)
def test_a_redirect_to_a_private_address_is_refused_when_blocking_them(
    serve, public_127_0_0_2: str, target: str
) -> None:
    private = serve(respond(b"secret of the internal service"))
    port = private.sock.getsockname()[1]
    public = serve(redirect(f"http://{target.format(port=port)}/internal"), host=public_127_0_0_2)
    with timed(3), pytest.raises(DownloadRefused, match="non-public address") as error:
        download_file(f"{public.url}/hop", block_private=True, max_retries=0)
    assert error.value.retryable is False
    assert len(public.requests) == 1
    assert private.requests == [], "a request reached the private address"


def test_the_public_host_itself_is_downloaded_when_blocking_private_ones(
    serve, public_127_0_0_2: str
) -> None:
    public = serve(respond(b"public body"), host=public_127_0_0_2)
    assert download_file(f"{public.url}/x", block_private=True) == b"public body"


def test_private_addresses_are_allowed_by_default(serve) -> None:
    """``block_private`` is off by default: tests and many deployments download from their own hosts."""
    private = serve(respond(b"internal"))
    hop = serve(redirect(f"{private.url}/internal"))
    assert download_file(f"{hop.url}/hop") == b"internal"


def test_a_name_that_rebinds_to_a_private_address_is_refused(
    serve, public_127_0_0_2: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name is public when checked and private when connected to."""
    private = serve(respond(b"secret of the internal service"))
    port = private.sock.getsockname()[1]
    real = socket.getaddrinfo
    answers = iter(["127.0.0.2"])  # the first lookup (the check) sees the "public" address

    def rebinding(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "rebind.test":
            host = next(answers, "127.0.0.1")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with timed(3), pytest.raises(DownloadRefused, match=r"non-public address 127\.0\.0\.1"):
        download_file(f"http://rebind.test:{port}/internal", block_private=True, max_retries=0)
    assert private.requests == [], "a request reached the private address"


# -- slow and endless servers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "prefix", "byte"),
    [
        ("headers", b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
        ("status line", b"HTTP/1.1 2", b"0"),
        ("chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1"),
        ("body", b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", b"."),
    ],
)
def test_a_server_sending_one_byte_per_second_meets_the_total_deadline(
    serve, what: str, prefix: bytes, byte: bytes
) -> None:
    """Each byte comes well within the socket timeout: only the total deadline can stop this."""
    server = serve(drip(prefix, byte, interval=1.0))
    started = time.monotonic()
    with timed(3.5), pytest.raises(DownloadTimeout, match="exceeded its 2000 ms deadline") as error:
        download_file(f"{server.url}/slow", timeout=2_000)
    assert time.monotonic() - started >= 2.0
    assert error.value.retryable is True, what


def test_the_pool_works_after_a_download_was_cut_off(serve) -> None:
    slow = serve(drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a", interval=0.2))
    with pytest.raises(DownloadTimeout):
        download_file(f"{slow.url}/slow", timeout=500)
    fine = serve(respond(b"fine"))
    assert download_file(f"{fine.url}/x", timeout=2_000) == b"fine"


def test_an_endless_fast_body_stops_at_max_bytes_in_bounded_memory(serve) -> None:
    server = serve(endless())
    with (
        timed(5),
        peak_memory(4 * MiB),
        pytest.raises(DownloadTooLarge, match="passed the 1048576 byte limit"),
    ):
        download_file(f"{server.url}/endless", max_bytes=MiB)


def test_an_endless_slow_body_stops_at_the_deadline(serve) -> None:
    server = serve(endless(b"x" * 1024, interval=0.05))
    with timed(2.5), pytest.raises(DownloadTimeout, match="exceeded its 1000 ms deadline"):
        download_file(f"{server.url}/endless", timeout=1_000)


# -- compression bombs ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip", "deflate"])
def test_a_compression_bomb_is_refused_in_bounded_memory(serve, encoding: str) -> None:
    """4 GiB of zeros behind 4 MB: refused once ``max_bytes`` are decompressed, within 3 x ``max_bytes``."""
    body = gzip_bomb(4)
    if encoding == "gzip, gzip":
        outer = zlib.compressobj(9, zlib.DEFLATED, 31)
        body = outer.compress(body) + outer.flush()
    elif encoding == "deflate":
        raw = zlib.compressobj(9, zlib.DEFLATED, 15)
        chunk = bytes(MiB)
        head = raw.compress(chunk) + raw.flush(zlib.Z_FULL_FLUSH)
        body = head + (raw.compress(chunk) + raw.flush(zlib.Z_FULL_FLUSH)) * 4095
    server = serve(respond(body, Content_Encoding=encoding))
    with (
        timed(10),
        peak_memory(3 * 8 * MiB + len(body)),
        pytest.raises(DownloadTooLarge, match=r"passed the 8388608 byte limit .* decompressed") as error,
    ):
        download_file(f"{server.url}/bomb", max_bytes=8 * MiB)
    assert error.value.retryable is False
