"""http_session and download_file against a local server on 127.0.0.1."""

from __future__ import annotations

import gzip
import os
import pickle
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
import requests
from requests.adapters import HTTPAdapter

import dramatiq_turbo
from dramatiq_turbo import http
from dramatiq_turbo.http import (
    DownloadError,
    DownloadRefused,
    DownloadTimeout,
    DownloadTooLarge,
    download_file,
    http_session,
)

from .conftest import LocalServer, in_forked_child, send_body, send_chunked


@pytest.fixture(autouse=True)
def fresh_session() -> Iterator[None]:
    # Each test builds its own per-process session (and sees its own connections).
    http._state.reset()
    yield
    http._state.reset()


def test_public_names() -> None:
    assert dramatiq_turbo.http_session is http_session
    assert dramatiq_turbo.download_file is download_file
    assert issubclass(dramatiq_turbo.DownloadTooLarge, dramatiq_turbo.DownloadError)
    assert issubclass(DownloadTimeout, TimeoutError)


def test_one_session_per_process_shared_by_threads() -> None:
    seen: list[requests.Session] = []
    threads = [threading.Thread(target=lambda: seen.append(http_session())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(session) for session in seen}) == 1
    assert seen[0] is http_session()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_builds_its_own_session() -> None:
    parent = http_session()

    def child_has_its_own() -> bool:
        child = http_session()
        state = http._state.peek()
        return child is not parent and state is not None and state.pid == os.getpid()

    assert in_forked_child(child_has_its_own)
    assert http_session() is parent


def test_pool_is_sized_from_env_and_blocks_when_full(
    http_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    @http_server.route("/slow")
    def slow(request: BaseHTTPRequestHandler) -> None:
        time.sleep(0.01)
        send_body(request, b"ok")

    def hammer(session: requests.Session) -> None:
        def run() -> None:
            for _ in range(5):
                assert session.get(f"{http_server.url}/slow", timeout=10).content == b"ok"

        threads = [threading.Thread(target=run) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # The failure mode being prevented: a small non-blocking pool opens extra connections.
    naive = requests.Session()
    naive.mount("http://", HTTPAdapter(pool_maxsize=2, pool_block=False))
    hammer(naive)
    naive.close()
    naive_connections = http_server.connections
    assert naive_connections > 2

    http_server.connections = 0
    monkeypatch.setenv("TURBO_HTTP_POOL_SIZE", "2")
    assert http.pool_size() == 2
    hammer(http_session())
    assert http_server.hits["/slow"] == 160
    assert http_server.connections <= 2


def test_pool_size_default_counts_worker_and_pool_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURBO_HTTP_POOL_SIZE", raising=False)
    monkeypatch.setenv("TURBO_POOL_THREADS", "4")
    assert http.pool_size() == http.DEFAULT_THREADS + 4
    monkeypatch.setenv("TURBO_HTTP_POOL_SIZE", "many")
    with pytest.raises(ValueError, match="TURBO_HTTP_POOL_SIZE"):
        http.pool_size()


def test_session_retries_idempotent_requests_and_honours_retry_after(http_server: LocalServer) -> None:
    @http_server.route("/flaky")
    def flaky(request: BaseHTTPRequestHandler) -> None:
        if http_server.hits["/flaky"] <= 2:
            send_body(request, b"busy", status=503, Retry_After="1")
        else:
            send_body(request, b"fine")

    started = time.monotonic()
    response = http_session().get(f"{http_server.url}/flaky", timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.content == b"fine"
    assert http_server.hits["/flaky"] == 3
    assert elapsed >= 2.0  # two Retry-After: 1 waits
    retry = http_session().get_adapter("http://x").max_retries
    assert "POST" not in retry.allowed_methods and "GET" in retry.allowed_methods


def test_download_streams_with_progress(http_server: LocalServer) -> None:
    body = os.urandom(1_000_000)

    @http_server.route("/file")
    def file(request: BaseHTTPRequestHandler) -> None:
        send_body(request, body)

    progress: list[tuple[int, int | None]] = []
    data = download_file(
        f"{http_server.url}/file", on_progress=lambda done, total: progress.append((done, total))
    )
    assert data == body and isinstance(data, bytes)
    assert len(progress) >= 2
    assert all(total == len(body) for _, total in progress)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert progress[-1][0] == len(body)


def test_download_without_length_reports_unknown_total(http_server: LocalServer) -> None:
    @http_server.route("/chunked")
    def chunked(request: BaseHTTPRequestHandler) -> None:
        send_chunked(request, [b"a" * 1000, b"b" * 1000])

    progress: list[tuple[int, int | None]] = []
    data = download_file(f"{http_server.url}/chunked", on_progress=lambda d, t: progress.append((d, t)))
    assert data == b"a" * 1000 + b"b" * 1000
    assert progress[-1] == (2000, None)


def test_compressed_body_is_decoded_and_capped_decoded(http_server: LocalServer) -> None:
    plain = b"all work and no play " * 50_000  # 1 MB, compresses to a few KB

    @http_server.route("/gz")
    def gz(request: BaseHTTPRequestHandler) -> None:
        send_body(request, gzip.compress(plain), Content_Encoding="gzip")

    assert download_file(f"{http_server.url}/gz") == plain
    # The cap applies to what the body becomes, not to its compressed size.
    with pytest.raises(DownloadTooLarge, match="aborted"):
        download_file(f"{http_server.url}/gz", max_bytes=100_000)


def test_downloads_do_not_share_cookies(http_server: LocalServer) -> None:
    @http_server.route("/login")
    def login(request: BaseHTTPRequestHandler) -> None:
        send_body(request, b"hi", Set_Cookie="session=secret; Path=/")

    @http_server.route("/echo")
    def echo(request: BaseHTTPRequestHandler) -> None:
        send_body(request, (request.headers.get("Cookie") or "none").encode())

    assert download_file(f"{http_server.url}/login") == b"hi"
    assert download_file(f"{http_server.url}/echo") == b"none"


def test_download_follows_redirects(http_server: LocalServer) -> None:
    @http_server.route("/old")
    def old(request: BaseHTTPRequestHandler) -> None:
        send_body(request, b"", status=302, Location="/new")

    @http_server.route("/new")
    def new(request: BaseHTTPRequestHandler) -> None:
        send_body(request, b"moved here")

    assert download_file(f"{http_server.url}/old") == b"moved here"


def test_too_large_by_content_length_is_refused_before_reading(http_server: LocalServer) -> None:
    @http_server.route("/big")
    def big(request: BaseHTTPRequestHandler) -> None:
        send_body(request, b"x" * 10_000)

    with pytest.raises(DownloadTooLarge, match="Content-Length") as caught:
        download_file(f"{http_server.url}/big", max_bytes=1000)
    assert caught.value.retryable is False
    assert caught.value.url == f"{http_server.url}/big"
    assert http_server.hits["/big"] == 1  # not retried


def test_too_large_stream_is_aborted_as_soon_as_the_cap_is_passed(http_server: LocalServer) -> None:
    part = b"z" * 65536
    sent_parts = 200  # 12.5 MB over 2 s if read to the end

    @http_server.route("/endless")
    def endless(request: BaseHTTPRequestHandler) -> None:
        send_chunked(request, [part] * sent_parts, pause=0.01)

    progress: list[int] = []
    started = time.monotonic()
    with pytest.raises(DownloadTooLarge, match="aborted") as caught:
        download_file(
            f"{http_server.url}/endless", max_bytes=300_000, on_progress=lambda d, t: progress.append(d)
        )
    assert time.monotonic() - started < 1.0
    assert max(progress) <= 300_000
    assert "300000 byte limit" in str(caught.value)
    assert http_server.hits["/endless"] == 1


@pytest.mark.parametrize(("status", "retryable"), [(404, False), (403, False), (400, False)])
def test_client_errors_are_not_retried(http_server: LocalServer, status: int, retryable: bool) -> None:
    @http_server.route("/gone")
    def gone(request: BaseHTTPRequestHandler) -> None:
        send_body(request, b"no", status=status)

    with pytest.raises(DownloadError) as caught:
        download_file(f"{http_server.url}/gone", max_retries=3)
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert http_server.hits["/gone"] == 1


@pytest.mark.parametrize("status", [500, 503, 408])
def test_server_errors_are_retried_then_reported_retryable(http_server: LocalServer, status: int) -> None:
    @http_server.route("/broken")
    def broken(request: BaseHTTPRequestHandler) -> None:
        send_body(request, b"oops", status=status)

    with pytest.raises(DownloadError) as caught:
        download_file(f"{http_server.url}/broken", max_retries=2)
    assert caught.value.status == status and caught.value.retryable is True
    assert http_server.hits["/broken"] == 3


def test_transient_failure_recovers(http_server: LocalServer) -> None:
    @http_server.route("/once")
    def once(request: BaseHTTPRequestHandler) -> None:
        if http_server.hits["/once"] == 1:
            send_body(request, b"later", status=502)
        else:
            send_body(request, b"done")

    assert download_file(f"{http_server.url}/once") == b"done"
    assert http_server.hits["/once"] == 2


def test_retry_after_beyond_the_deadline_is_handed_to_backoff(http_server: LocalServer) -> None:
    @http_server.route("/limited")
    def limited(request: BaseHTTPRequestHandler) -> None:
        send_body(request, b"slow down", status=429, Retry_After="120")

    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        download_file(f"{http_server.url}/limited", timeout=5_000)
    assert time.monotonic() - started < 1.0  # did not sleep on a wait it cannot afford
    assert caught.value.status == 429
    assert caught.value.retryable is True
    assert caught.value.retry_after == 120_000
    assert http_server.hits["/limited"] == 1


def test_total_deadline_holds_against_a_dripping_server(http_server: LocalServer) -> None:
    @http_server.route("/drip")
    def drip(request: BaseHTTPRequestHandler) -> None:
        send_chunked(request, [b"."] * 100, pause=0.1)  # 10 s in all

    started = time.monotonic()
    with pytest.raises(DownloadTimeout, match="800 ms") as caught:
        download_file(f"{http_server.url}/drip", timeout=800)
    elapsed = time.monotonic() - started
    assert 0.7 < elapsed < 1.5
    assert caught.value.retryable is True


def test_network_errors_are_retryable() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError) as caught:
        download_file(f"http://127.0.0.1:{port}/x", max_retries=1, timeout=5_000)
    assert caught.value.retryable is True and caught.value.status is None


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "127.0.0.1/x", "http:///x"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(DownloadRefused) as caught:
        download_file(url)
    assert caught.value.retryable is False
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.1", "169.254.169.254"])
def test_private_addresses_refused_when_asked(http_server: LocalServer, host: str) -> None:
    with pytest.raises(DownloadRefused, match="non-public address"):
        download_file(f"http://{host}:1/x", block_private=True)
    assert http_server.hits == {}


def test_redirect_to_a_private_address_is_refused_when_asked(
    http_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the first host is public; the redirect target (loopback) is checked on its own.
    real_check = http._check_url

    def check(url: str, block_private: bool) -> None:
        real_check(url, block_private and "/hop" not in url)

    monkeypatch.setattr(http, "_check_url", check)

    @http_server.route("/hop")
    def hop(request: BaseHTTPRequestHandler) -> None:
        send_body(request, b"", status=302, Location=f"{http_server.url}/internal")

    with pytest.raises(DownloadRefused, match="non-public"):
        download_file(f"{http_server.url}/hop", block_private=True)
    assert "/internal" not in http_server.hits


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="timeout"):
        download_file("http://127.0.0.1/x", timeout=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes"):
        download_file("http://127.0.0.1/x", max_bytes=0)
    with pytest.raises(ValueError, match="max_retries"):
        download_file("http://127.0.0.1/x", max_retries=-1)


def test_errors_keep_their_attributes_through_pickle() -> None:
    error = DownloadError("boom", url="http://h/x", status=503, retryable=True, retry_after=2000)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.url, copy.status, copy.retryable, copy.retry_after) == ("http://h/x", 503, True, 2000)
    big = pickle.loads(pickle.dumps(DownloadTooLarge("big", url="u")))
    assert isinstance(big, DownloadTooLarge) and big.retryable is False


@pytest.mark.slow
def test_50_mb_download_is_held_once_in_memory(http_server: LocalServer) -> None:
    size = 50 * 1024 * 1024
    body = os.urandom(size)

    @http_server.route("/large")
    def large(request: BaseHTTPRequestHandler) -> None:
        send_body(request, body)

    tracemalloc.start()
    try:
        data = download_file(f"{http_server.url}/large")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) == size and data == body
    assert peak <= 2 * size, f"peak {peak / size:.2f}x the body"
    assert peak <= 1.2 * size, f"peak {peak / size:.2f}x: the body was copied"


def test_credentials_follow_a_redirect_only_within_the_same_origin(http_server: LocalServer) -> None:
    seen: dict[str, str | None] = {}
    other_origin = http_server.url.replace("127.0.0.1", "localhost")

    @http_server.route("/start")
    def start(request: BaseHTTPRequestHandler) -> None:
        seen["start"] = request.headers.get("Authorization")
        send_body(request, b"", status=302, Location="/same")

    @http_server.route("/same")
    def same(request: BaseHTTPRequestHandler) -> None:
        seen["same"] = request.headers.get("Authorization")
        send_body(request, b"", status=302, Location=f"{other_origin}/elsewhere")

    @http_server.route("/elsewhere")
    def elsewhere(request: BaseHTTPRequestHandler) -> None:
        seen["elsewhere"] = request.headers.get("Authorization")
        seen["cookie"] = request.headers.get("Cookie")
        send_body(request, b"arrived")

    body = download_file(
        f"{http_server.url}/start",
        headers={"Authorization": "Bearer SECRET", "Cookie": "s=1", "X-Trace": "t"},
    )
    assert body == b"arrived"
    assert seen == {"start": "Bearer SECRET", "same": "Bearer SECRET", "elsewhere": None, "cookie": None}


def test_waiting_for_a_pooled_connection_keeps_the_deadline(
    http_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the only pooled connection busy on a slow transfer, a download gives up at its deadline."""

    @http_server.route("/drip")
    def drip(request: BaseHTTPRequestHandler) -> None:
        send_chunked(request, [b"."] * 30, pause=0.1)  # 3 s in all

    monkeypatch.setenv("TURBO_HTTP_POOL_SIZE", "1")
    url = f"{http_server.url}/drip"
    slow = threading.Thread(target=download_file, args=(url,), kwargs={"timeout": 10_000})
    slow.start()
    try:
        time.sleep(0.3)  # the slow download holds the pool's one connection
        started = time.monotonic()
        with pytest.raises(DownloadTimeout, match="600 ms"):
            download_file(f"{http_server.url}/drip", timeout=600, max_retries=0)
        assert time.monotonic() - started < 1.2
    finally:
        slow.join()
    # Once the connection is free again, the pool serves the next download.
    assert download_file(f"{http_server.url}/drip", timeout=10_000) == b"." * 30


def test_session_reports_a_full_pool_as_a_requests_timeout(
    http_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    @http_server.route("/hold")
    def hold(request: BaseHTTPRequestHandler) -> None:
        send_chunked(request, [b"."] * 10, pause=0.1)

    monkeypatch.setenv("TURBO_HTTP_POOL_SIZE", "1")
    session = http_session()
    held = session.get(f"{http_server.url}/hold", stream=True, timeout=5)
    try:
        with pytest.raises(requests.ConnectTimeout, match="no pooled connection"):
            session.get(f"{http_server.url}/hold", timeout=(0.3, 0.3))
    finally:
        held.close()


def test_connections_through_a_proxy_also_bound_their_wait() -> None:
    adapter = http._adapter(2, 0)
    for manager in (adapter.poolmanager, adapter.proxy_manager_for("http://127.0.0.1:3128")):
        assert manager.pool_classes_by_scheme["http"] is http._BoundedWaitHTTPPool
        assert manager.pool_classes_by_scheme["https"] is http._BoundedWaitHTTPSPool
