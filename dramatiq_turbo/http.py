"""Pooled HTTP for actors: one session per process and a careful download.

``http_session()`` hands every thread of a worker process the same
``requests.Session``.  Its connection pool is as large as the number of
threads that may use it and *blocks* when full: a non-blocking pool that is
too small opens a fresh connection for every request beyond its size and
throws it away afterwards, which is how 16 threads on a pool of 2 end up
opening over a hundred connections.  Idempotent requests are retried by
urllib3 with exponential backoff, jitter and the server's ``Retry-After``.

``download_file()`` streams a URL into memory under a total deadline and a
size cap, and fails with errors the ``Backoff`` middleware understands:
each carries ``retryable`` and, when the server asked for a pause,
``retry_after`` (milliseconds).  The deadline holds against any server: a
watchdog shuts the download's sockets when it passes, so a server that
drips its headers or its chunk sizes a byte at a time (each read well
within the socket timeout) is cut off too.  The size cap counts the bytes
after decompression, read a bounded piece at a time, so a small gzip body
that inflates to gigabytes costs at most ``max_bytes``.  Error texts never
show a URL's password (``dramatiq_turbo.redact``).

Both are fork-safe: a process forked from one that already used the session
builds its own, since sockets must never be shared between processes.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import http.cookiejar
import io
import ipaddress
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .options import require_ms
from .perprocess import PerProcess, size_from_env
from .redact import redact_text, redact_url

__all__ = [
    "DownloadError",
    "DownloadRefused",
    "DownloadTimeout",
    "DownloadTooLarge",
    "download_file",
    "http_session",
    "pool_size",
]

logger = logging.getLogger(__name__)

#: Dramatiq's default ``--threads``; the pool size when nothing better is known.
DEFAULT_THREADS = 8
#: Statuses worth another try: the server may answer differently later.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: How much ``download_file`` reads per call; also the progress granularity.
CHUNK_SIZE = 256 * 1024
#: ``max_bytes`` default: large enough for documents, small enough to fit in memory.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: The longest ``Retry-After`` urllib3 may sleep inside ``http_session()`` requests.
MAX_RETRY_AFTER = 30_000
_MAX_REDIRECTS = 10
# What a broken transfer raises while the body is read.
_TRANSFER_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


class DownloadError(Exception):
    """A download failed.

    Attributes:
      url(str): The URL that was requested.
      status(int | None): The HTTP status, when the server answered.
      retryable(bool): Whether trying again later may succeed; read by the
        ``Backoff`` middleware.
      retry_after(int | None): The server's requested pause in milliseconds
        (``Retry-After``), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        retryable: bool = True,
        retry_after: int | None = None,
    ) -> None:
        # The text is logged, traced and kept in dead letters: never with a password.
        super().__init__(redact_text(message))
        self.url = url
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after

    def __reduce__(self) -> Any:
        # Keep the attributes when the error crosses a process boundary (results backends).
        return (
            _rebuild_error,
            (type(self), str(self), self.url, self.status, self.retryable, self.retry_after),
        )


def _rebuild_error(
    cls: type[DownloadError], message: str, url: str, status: int | None, retryable: bool, after: int | None
) -> DownloadError:
    error = cls.__new__(cls)
    DownloadError.__init__(error, message, url=url, status=status, retryable=retryable, retry_after=after)
    return error


class DownloadTooLarge(DownloadError):
    """The body is larger than ``max_bytes``; never retryable."""

    def __init__(self, message: str, *, url: str, status: int | None = None, **_: Any) -> None:
        super().__init__(message, url=url, status=status, retryable=False)


class DownloadTimeout(DownloadError, TimeoutError):
    """The download's total deadline passed; retryable."""


class DownloadRefused(DownloadError, ValueError):
    """The URL was refused before any request: bad scheme, or a private address when those are blocked."""

    def __init__(self, message: str, *, url: str, **_: Any) -> None:
        super().__init__(message, url=url, retryable=False)


# -- the per-process session ---------------------------------------------------------------


@dataclass
class _State:
    pid: int
    session: requests.Session
    # Same pool, no urllib3 retries: download_file retries itself, within its deadline.
    raw: requests.Session
    pool_size: int


# Sockets belong to the process that opened them: a forked child builds its own.
_state: PerProcess[_State] = PerProcess(lambda: _build(pool_size()))


class _CappedRetry(Retry):
    """urllib3 ``Retry`` that never sleeps longer than ``MAX_RETRY_AFTER`` for a ``Retry-After``."""

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        if seconds is None:
            return None
        return min(seconds, MAX_RETRY_AFTER / 1000)


def _worker_threads() -> int:
    """The number of Dramatiq worker threads running in this process (0 outside a worker)."""
    try:
        from dramatiq.worker import _WorkerThread
    except ImportError:  # pragma: no cover - Dramatiq renamed its internals
        return 0
    return sum(isinstance(thread, _WorkerThread) for thread in threading.enumerate())


def pool_size() -> int:
    """How many connections per host ``http_session()`` keeps, when not given.

    ``TURBO_HTTP_POOL_SIZE`` if set; otherwise the Dramatiq worker threads of
    this process (``--threads``, found by looking at the running threads; 8,
    Dramatiq's default, when called outside a worker) plus the threads of the
    shared pool that ``process_batch`` and ``parallel`` use, since those
    threads make requests too.
    """
    from .batch import pool_threads

    if os.environ.get("TURBO_HTTP_POOL_SIZE", "").strip():
        return size_from_env("TURBO_HTTP_POOL_SIZE", 1)
    return (_worker_threads() or DEFAULT_THREADS) + pool_threads()


class _Watch:
    """The connections one ``download_file`` call uses, shut down when its deadline passes.

    A socket timeout bounds each read, not their sum: a server that sends
    one byte of its headers (or of a chunk size) per second never lets a
    read time out.  So a timer thread shuts down the sockets the download
    holds at its deadline, which ends any read at once; the download then
    reports ``DownloadTimeout``.  Connections are registered as the pool
    hands them out (``_get_conn``) and let go as they return to it, so a
    timer that fires late never touches a connection another download uses.

    Parameters:
      deadline(_Deadline): The download's deadline.
      block_private(bool): Whether connections must reach public addresses.
    """

    def __init__(self, deadline: _Deadline, *, block_private: bool) -> None:
        self.deadline = deadline
        self.block_private = block_private
        self.expired = False
        self._lock = threading.Lock()
        self._connections: set[Any] = set()
        self._timer = threading.Timer(max(0.0, deadline.end - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._previous: _Watch | None = None

    def __enter__(self) -> _Watch:
        self._previous = _current_watch()
        _watching.watch = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for connection in self._connections:
                connection._turbo_watch = None
            self._connections.clear()
            self.expired = True  # nothing may register after the download
        _watching.watch = self._previous

    def add(self, connection: Any) -> None:
        with self._lock:
            connection._turbo_watch = self
            self._connections.add(connection)
            if self.expired:
                _shut(connection)

    def discard(self, connection: Any) -> None:
        with self._lock:
            self._connections.discard(connection)
            connection._turbo_watch = None

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for connection in self._connections:
                _shut(connection)


_watching = threading.local()


def _current_watch() -> _Watch | None:
    watch: _Watch | None = getattr(_watching, "watch", None)
    return watch


def _shut(connection: Any) -> None:
    # shutdown, not close: it wakes a read blocked in another thread.
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _check_peer(connection: Any, sock: socket.socket) -> None:
    """Refuse a connection to a non-public address when the download blocks private ones.

    Checked on the connected socket itself: a name that resolved to a
    public address for ``_check_url`` and to a private one for the
    connection (DNS rebinding) is caught here.  Connections to a proxy are
    the proxy's business (it resolves the target).
    """
    watch = _current_watch()
    if watch is None or not watch.block_private:
        return
    if getattr(connection, "proxy", None) is not None or getattr(connection, "_tunnel_host", None):
        return
    try:
        address = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
    except (OSError, ValueError):
        return  # not an IP socket
    if not _public(address):
        host = getattr(connection, "host", "?")
        with contextlib.suppress(OSError):
            sock.close()
        raise DownloadRefused(
            f"refusing the connection to {host}: it reached the non-public address {address}",
            url=f"//{host}",
        )


class _CheckedConnectionMixin:
    """A connection whose socket is checked against ``block_private`` as soon as it connects."""

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        _check_peer(self, sock)
        return sock


class _CheckedHTTPConnection(_CheckedConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _BoundedWaitMixin:
    """A connection pool on which a request waits for a free connection at most its read timeout.

    urllib3 lets a blocking pool wait forever (``pool_timeout=None``) and
    requests gives no way to set it, so a download with a 5 s deadline could
    wait minutes behind slow transfers on every pooled connection.  It also
    tells a download's ``_Watch`` which connections the download holds.
    """

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        timeout = kwargs.get("timeout")
        if kwargs.get("pool_timeout") is None and isinstance(timeout, urllib3.Timeout):
            kwargs["pool_timeout"] = timeout.read_timeout
        return super().urlopen(method, url, *args, **kwargs)  # type: ignore[misc]

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        watch = _current_watch()
        if watch is not None:
            watch.add(connection)
            sock = getattr(connection, "sock", None)
            if sock is not None:
                # A pooled connection, opened by a download that did not block private addresses.
                try:
                    _check_peer(connection, sock)
                except DownloadRefused:
                    watch.discard(connection)
                    connection.close()
                    super()._put_conn(connection)  # type: ignore[misc]
                    raise
        return connection

    def _put_conn(self, connection: Any) -> None:
        watch = getattr(connection, "_turbo_watch", None)
        if watch is not None:
            watch.discard(connection)
        super()._put_conn(connection)  # type: ignore[misc]


class _BoundedWaitHTTPPool(_BoundedWaitMixin, urllib3.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _BoundedWaitHTTPSPool(_BoundedWaitMixin, urllib3.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


_BOUNDED_WAIT_POOLS = {"http": _BoundedWaitHTTPPool, "https": _BoundedWaitHTTPSPool}


class _PooledAdapter(HTTPAdapter):
    """``HTTPAdapter`` whose pools bound the wait for a connection, reported as ``ConnectTimeout``."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _BOUNDED_WAIT_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # (a SOCKS manager keeps its own pool classes)
            manager.pool_classes_by_scheme = _BOUNDED_WAIT_POOLS
        return manager

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        try:
            return super().send(request, *args, **kwargs)
        except urllib3.exceptions.EmptyPoolError as error:
            # requests lets urllib3's own error through here; callers expect its timeouts.
            raise requests.ConnectTimeout(
                f"no pooled connection to {request.url} came free in time ({error})", request=request
            ) from error


def _adapter(size: int, retries: Retry | int) -> HTTPAdapter:
    return _PooledAdapter(pool_connections=16, pool_maxsize=size, pool_block=True, max_retries=retries)


def _build(size: int) -> _State:
    retry = _CappedRetry(
        total=3,
        connect=3,
        read=3,
        status=3,
        backoff_factor=0.25,
        backoff_jitter=0.25,
        backoff_max=10.0,
        status_forcelist=RETRYABLE_STATUSES,
        allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,  # idempotent methods only
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = _adapter(size, retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    raw = requests.Session()
    # Downloads for different jobs must not share cookies through the process-wide session.
    raw.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    raw_adapter = _adapter(size, 0)
    # Share the connections: one pool per process, whatever the retry policy.
    raw_adapter.poolmanager = adapter.poolmanager
    raw.mount("http://", raw_adapter)
    raw.mount("https://", raw_adapter)
    return _State(pid=os.getpid(), session=session, raw=raw, pool_size=size)


def _current(size: int | None) -> _State:
    if size is not None and size < 1:
        raise ValueError(f"pool_size must be at least 1, got {size}")
    state = _state.peek()
    if state is not None:
        return state
    state = _state.get(lambda: _build(size or pool_size()))
    logger.debug("HTTP session for process %d with %d connections per host.", state.pid, state.pool_size)
    return state


def http_session(*, pool_size: int | None = None) -> requests.Session:
    """This process's pooled ``requests.Session``.

    The first call in a process builds it; later calls (from any thread)
    return the same session, and a forked child builds its own.  Requests
    with idempotent methods are retried up to 3 times on connection errors
    and on statuses 408, 425, 429, 500, 502, 503 and 504, waiting
    ``0.25 s * 2^n`` (plus up to 0.25 s of jitter, at most 10 s) or the
    server's ``Retry-After`` (at most 30 s).  ``POST`` and ``PATCH`` are never
    retried.  Pass a ``timeout`` with every request: requests has none.

    Parameters:
      pool_size(int): Connections kept per host; when the pool is exhausted a
        thread waits for a free connection instead of opening an extra one.
        Only the first call in a process uses it.  Defaults to
        :func:`pool_size` (``TURBO_HTTP_POOL_SIZE`` or the worker's threads).
    """
    return _current(pool_size).session


# -- downloads -----------------------------------------------------------------------------


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``block_private`` lets a download reach ``address``: a global unicast address."""
    # An IPv4-mapped IPv6 address is the IPv4 address it maps.
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast


def _check_url(url: str, block_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DownloadRefused(
            f"only http and https URLs can be downloaded, "
            f"not {parts.scheme or 'a URL without scheme'!r}: {url}",
            url=url,
        )
    if not parts.hostname:
        raise DownloadRefused(f"URL has no host: {url}", url=url)
    if not block_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except OSError as error:
        raise DownloadError(f"cannot resolve {parts.hostname!r}: {error}", url=url, retryable=True) from error
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not _public(address):
            raise DownloadRefused(
                f"refusing {url}: {parts.hostname} resolves to the non-public address {address}", url=url
            )


_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _retry_after_ms(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value) * 1000
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, int((when.timestamp() - time.time()) * 1000))


def _status_error(response: requests.Response, url: str) -> DownloadError:
    status = response.status_code
    retryable = status in RETRYABLE_STATUSES or status >= 500
    return DownloadError(
        f"GET {url} answered {status} {response.reason or ''}".rstrip(),
        url=url,
        status=status,
        retryable=retryable,
        retry_after=_retry_after_ms(response.headers) if retryable else None,
    )


class _Deadline:
    def __init__(self, timeout_ms: int, url: str) -> None:
        self.timeout_ms = timeout_ms
        self.url = url
        self.end = time.monotonic() + timeout_ms / 1000

    def remaining(self) -> float:
        """Seconds left; raises ``DownloadTimeout`` when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise DownloadTimeout(
                f"download of {self.url} exceeded its {self.timeout_ms} ms deadline", url=self.url
            )
        return left


def _set_socket_timeout(response: requests.Response, seconds: float) -> None:
    # requests' timeout applies per socket operation; tightening it before each
    # read makes the total deadline hold even against a server that drips bytes.
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # closed under us: the read will say so
            sock.settimeout(max(seconds, 0.001))


def _read_body(
    response: requests.Response,
    url: str,
    max_bytes: int,
    deadline: _Deadline,
    on_progress: Callable[[int, int | None], None] | None,
) -> bytes:
    encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    length_header = response.headers.get("Content-Length")
    total: int | None = None
    if length_header and length_header.isdigit() and not encoded:
        total = int(length_header)
        if total > max_bytes:
            raise DownloadTooLarge(
                f"{url} is {total} bytes (Content-Length), over the {max_bytes} byte limit; not downloaded",
                url=url,
                status=response.status_code,
            )
    if total is not None:
        # Preallocate and let BytesIO own the only reference: writes then fill
        # it in place and getvalue() hands the same object back, so the body is
        # held once, never copied.
        initial = bytes(total)
        buffer = io.BytesIO(initial)
        del initial
    else:
        buffer = io.BytesIO()
    downloaded = 0
    raw = response.raw
    while True:
        _set_socket_timeout(response, deadline.remaining())
        data = raw.read1(CHUNK_SIZE, decode_content=True) if hasattr(raw, "read1") else raw.read(CHUNK_SIZE)
        if not data:
            break
        downloaded += len(data)
        if downloaded > max_bytes:
            # With a Content-Encoding the count is of decompressed bytes: say so, a
            # small body that inflates past the limit (a gzip bomb) looks odd otherwise.
            how = f" decompressed ({response.headers.get('Content-Encoding')})" if encoded else ""
            raise DownloadTooLarge(
                f"{url} passed the {max_bytes} byte limit after {downloaded} bytes{how}; download aborted",
                url=url,
                status=response.status_code,
            )
        buffer.write(data)
        if on_progress is not None:
            on_progress(downloaded, total)
    deadline.remaining()
    if total is not None and downloaded != total:
        raise DownloadError(
            f"{url} ended after {downloaded} of {total} bytes", url=url, status=response.status_code
        )
    body = buffer.getvalue()
    buffer.close()
    return body


def _backoff_ms(attempt: int) -> float:
    # Full jitter on 250 ms * 2^attempt: retries of many jobs do not line up.
    return random.uniform(0, 250 * 2**attempt)


def download_file(
    url: str,
    *,
    timeout: int = 120_000,
    max_retries: int = 3,
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_progress: Callable[[int, int | None], None] | None = None,
    headers: Mapping[str, str] | None = None,
    block_private: bool = False,
) -> bytes:
    """Download ``url`` into memory and return its body.

    The body is streamed in chunks over the process's pooled connections.
    When the server sends ``Content-Length`` the buffer is allocated once and
    returned without a copy, so a download needs about its own size in memory.
    Connection errors, broken transfers and statuses 408, 425, 429 and 5xx are
    retried (backoff with jitter, or the server's ``Retry-After``) as long as
    the deadline allows; redirects are followed.

    Parameters:
      url(str): An ``http`` or ``https`` URL.
      timeout(int): Total deadline in milliseconds for all attempts together,
        including waits between them.  Defaults to 120,000 (2 minutes).
      max_retries(int): Further attempts after the first.  Defaults to 3.
      max_bytes(int): Size cap.  Refused up front when ``Content-Length`` is
        larger; otherwise the transfer is aborted as soon as the cap is passed.
        Defaults to 512 MiB.
      on_progress(callable): Called as ``on_progress(downloaded, total)`` after
        each chunk; ``total`` is ``None`` when the size is unknown.
      headers(Mapping[str, str]): Extra request headers.
      block_private(bool): Refuse hosts that resolve to a loopback, private,
        link-local or otherwise non-public address (and such redirects), for
        URLs that come from users.  Defaults to ``False``.

    Raises:
      DownloadRefused: Bad scheme, or a blocked address (not retryable).
      DownloadTooLarge: Over ``max_bytes`` (not retryable).
      DownloadTimeout: The deadline passed (retryable).
      DownloadError: Any other failure; ``retryable`` is false for 4xx other
        than 408, 425 and 429.
    """
    require_ms("timeout", timeout, allow_zero=False)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be an int >= 1, got {max_bytes!r}")
    _check_url(url, block_private)
    deadline = _Deadline(timeout, url)
    session = _current(None).raw
    with _Watch(deadline, block_private=block_private):
        attempt = 0
        while True:
            try:
                return _attempt(session, url, max_bytes, deadline, on_progress, headers, block_private)
            except DownloadError as error:
                if not error.retryable or isinstance(error, DownloadTimeout) or attempt >= max_retries:
                    raise
                wait_ms = error.retry_after if error.retry_after is not None else _backoff_ms(attempt)
                left_ms = (deadline.end - time.monotonic()) * 1000
                if wait_ms >= left_ms:
                    # Waiting would blow the deadline: let the job be retried later instead.
                    raise
                logger.debug("Retrying %s in %d ms after: %s", redact_url(url), wait_ms, error)
                time.sleep(wait_ms / 1000)
                attempt += 1


def _attempt(
    session: requests.Session,
    url: str,
    max_bytes: int,
    deadline: _Deadline,
    on_progress: Callable[[int, int | None], None] | None,
    headers: Mapping[str, str] | None,
    block_private: bool,
) -> bytes:
    current = url
    request_headers = dict(headers or {})
    for _ in range(_MAX_REDIRECTS + 1):
        left = deadline.remaining()
        try:
            response = session.get(
                current,
                headers=request_headers,
                stream=True,
                timeout=(min(left, 30.0), left),
                allow_redirects=False,
            )
        except requests.Timeout as error:
            deadline.remaining()
            raise DownloadError(f"GET {current} timed out: {error}", url=url) from error
        except requests.RequestException as error:
            # The watchdog shut the socket at the deadline: that is a timeout.
            deadline.remaining()
            raise DownloadError(f"GET {current} failed: {error}", url=url) from error
        with response:
            if response.is_redirect:
                location = response.headers.get("Location", "")
                previous, current = current, urljoin(current, location)
                _check_url(current, block_private)
                if _origin(previous) != _origin(current):
                    # As requests does: credentials never follow a redirect to another origin.
                    request_headers = {
                        name: value
                        for name, value in request_headers.items()
                        if name.lower() not in _CREDENTIAL_HEADERS
                    }
                continue
            if response.status_code >= 400:
                raise _status_error(response, url)
            try:
                return _read_body(response, url, max_bytes, deadline, on_progress)
            except _TRANSFER_ERRORS as error:
                # A read cut off by the watchdog at the deadline, or timed out near it: a timeout.
                deadline.remaining()
                raise DownloadError(
                    f"reading {url} failed after a partial transfer: {type(error).__name__}: {error}", url=url
                ) from error
    raise DownloadError(f"{url} redirected more than {_MAX_REDIRECTS} times", url=url, retryable=False)
