"""A small OpenAI-compatible chat-completions server whose "model" is ``textrank.extract_notes``.

It lets the PDF-notes pipeline and its load test run offline against a real
HTTP endpoint that behaves like a provider: every call takes ``latency`` ms
(a sleep, so calls overlap), a share of calls fails with a 5xx, calls beyond
``max_concurrency`` at once get ``429`` with ``Retry-After``, and an outage
can be switched on and off while it runs::

    with ModelServer(latency=100, max_concurrency=8) as server:
        model = ChatModel(base_url=server.url, api_key="anything")
        ...
        server.outage(True)   # every call answers 503 now
        print(server.stats())

or from a shell (then ``OPENAI_BASE_URL`` is the printed URL)::

    python -m examples.pdf_notes.model_server --port 8000 --latency 200 --failure-rate 0

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``,
``GET /stats`` (the counters of ``ModelServer.stats``).
The notes come back as a JSON string in ``choices[0].message.content``, as
a model asked for ``response_format={"type": "json_object"}`` would answer.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hmac
import json
import logging
import random
import re
import socket
import socketserver
import threading
import time
import uuid
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from dramatiq_turbo.options import require_ms

from .textrank import extract_notes

__all__ = ["MODEL_ID", "ModelServer", "main"]

logger = logging.getLogger(__name__)

#: The model this server lists; a request may name any model, and the answer echoes it.
MODEL_ID = "textrank-notes"
#: Requests larger than this are refused (413) before they are parsed.
MAX_BODY = 16 * 1024 * 1024
#: The system prompt may ask for a number of points and terms ("at most 5 key points").
_POINTS = re.compile(r"(\d{1,3})\s+key\s+points", re.IGNORECASE)
_TERMS = re.compile(r"(\d{1,3})\s+key\s+terms", re.IGNORECASE)

Reply = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, extra headers


@dataclass(frozen=True)
class _Behaviour:
    """How the server answers; replaced as a whole by ``configure`` so each call sees one consistent set."""

    latency: int
    jitter: int
    failure_rate: float
    failure_status: int
    max_concurrency: int
    retry_after: int
    outage: bool = False


def _check(behaviour: _Behaviour) -> _Behaviour:
    require_ms("latency", behaviour.latency)
    require_ms("jitter", behaviour.jitter)
    if not 0.0 <= behaviour.failure_rate <= 1.0:
        raise ValueError(f"failure_rate must be between 0 and 1, got {behaviour.failure_rate!r}")
    if not 500 <= behaviour.failure_status <= 599:
        raise ValueError(f"failure_status must be a 5xx status, got {behaviour.failure_status!r}")
    if isinstance(behaviour.max_concurrency, bool) or not isinstance(behaviour.max_concurrency, int):
        raise ValueError(f"max_concurrency must be an int, got {behaviour.max_concurrency!r}")
    if behaviour.max_concurrency < 0 or behaviour.retry_after < 0:
        raise ValueError("max_concurrency and retry_after must be >= 0")
    return behaviour


def _error(status: int, message: str, kind: str, code: str | None = None) -> Reply:
    """An OpenAI-style error answer."""
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, {}


def _tokens(text: str) -> int:
    """A rough token count (about 4 characters a token), for ``usage``."""
    return max(1, (len(text) + 3) // 4)


def _masked(key: str) -> str:
    # As OpenAI does: enough of a wrong key to recognise it, never all of it.
    return f"{key[:3]}***{key[-4:]}" if len(key) > 12 else "***"


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP layer: reads the request, lets the ``ModelServer`` decide, writes the answer."""

    protocol_version = "HTTP/1.1"  # keep-alive, so a pooled client reuses its connections
    server_version = "NotesModel/1.0"
    timeout = 60  # seconds an idle keep-alive connection may hold its thread
    # Headers and body leave in two writes; with Nagle's algorithm the body would wait for the
    # client's delayed ACK, 40 ms on Linux, on every call of a keep-alive connection.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: hundreds of calls a second would flood stderr.
        return

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        owner = self.server.owner
        if path == "/health":
            self._send((200, {"status": "ok"}, {}))
        elif path == "/v1/models":
            self._send(owner._auth_error(self.headers.get("Authorization")) or owner._models())
        elif path == "/stats":
            self._send((200, owner.stats(), {}))
        else:
            self._send(_error(404, f"Unknown path {path!r}.", "invalid_request_error", "not_found"))

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            self.close_connection = True  # the body cannot be skipped safely
            message = "The request needs a Content-Length of at most 16 MiB."
            self._send(_error(413, message, "invalid_request_error"))
            return
        body = self.rfile.read(int(length))
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            self._send(_error(404, f"Unknown path {path!r}.", "invalid_request_error", "not_found"))
            return
        self._send(self.server.owner._complete(self.headers.get("Authorization"), body))

    def _send(self, reply: Reply) -> None:
        status, payload, headers = reply
        data = json.dumps(payload, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout, closed pool): nothing to answer
            self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck connection never keeps the process alive
    request_queue_size = 512  # listen backlog: hundreds of clients may connect at once
    allow_reuse_address = True
    owner: ModelServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds on some networks.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that vanish mid-request are normal under load; keep stderr quiet.
        logger.debug("Error while serving %s.", client_address, exc_info=True)


class _Server6(_HTTPServer):
    address_family = socket.AF_INET6


class ModelServer:
    """An OpenAI-compatible notes model on a background thread.

    Parameters:
      host(str): The address to listen on.
      port(int): The port; 0 picks a free one (read ``url`` after ``start()``).
      latency(int): Milliseconds every admitted call takes.
      jitter(int): Up to this many more milliseconds, at random, per call.
      failure_rate(float): The share of calls (0 to 1) answered with
        ``failure_status`` after their latency.
      failure_status(int): The 5xx status of failed calls.
      max_concurrency(int): When > 0, calls beyond this many at once get
        ``429`` with ``Retry-After: <retry_after>``, as a provider's limit does.
      retry_after(int): Seconds in the ``Retry-After`` header of a 429.
      seed(int): Seeds the random source of failures and jitter, so the same
        sequence of calls fails the same way.
      api_key(str): When set, calls need ``Authorization: Bearer <api_key>``
        (401 otherwise); when ``None`` any or no key is accepted.
      context_window(int): Prompts (all messages) estimated above this many
        tokens are refused with 400 ``context_length_exceeded``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: int = 200,
        jitter: int = 0,
        failure_rate: float = 0.0,
        failure_status: int = 503,
        max_concurrency: int = 0,
        retry_after: int = 1,
        seed: int | None = None,
        api_key: str | None = None,
        context_window: int = 128_000,
    ) -> None:
        self.host = host
        self.port = port
        self._behaviour = _check(
            _Behaviour(latency, jitter, float(failure_rate), failure_status, max_concurrency, retry_after)
        )
        self._api_key = api_key
        self.context_window = context_window
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("calls", "ok", "failed", "throttled", "rejected", "in_flight", "max_in_flight", "connections"), 0
        )
        self._connections: set[socket.socket] = set()
        self._arrivals: list[float] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ModelServer(url={self.url!r}, running={self._httpd is not None})"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> ModelServer:
        """Bind and serve on a daemon thread; returns ``self``.  Starting twice does nothing."""
        if self._httpd is not None:
            return self
        server_class = _Server6 if ":" in self.host else _HTTPServer
        httpd = server_class((self.host, self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="model-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            # Wakes the threads waiting on idle keep-alive connections.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, ending in ``/v1`` (what ``OPENAI_BASE_URL`` would be)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = "[::1]" if host == "::" else f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    # -- control and counters -----------------------------------------------------------

    def configure(
        self,
        *,
        latency: int | None = None,
        jitter: int | None = None,
        failure_rate: float | None = None,
        failure_status: int | None = None,
        max_concurrency: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Change how the server answers from the next call on; arguments left ``None`` stay.

        Parameters:
          latency(int): See the constructor; so are the others.
        """
        changes = {
            name: value
            for name, value in (
                ("latency", latency),
                ("jitter", jitter),
                ("failure_rate", None if failure_rate is None else float(failure_rate)),
                ("failure_status", failure_status),
                ("max_concurrency", max_concurrency),
                ("retry_after", retry_after),
            )
            if value is not None
        }
        with self._lock:
            self._behaviour = _check(replace(self._behaviour, **changes))

    def outage(self, on: bool = True) -> None:
        """While on, every chat completion answers 503 at once.

        Parameters:
          on(bool): Start (``True``) or end (``False``) the outage.
        """
        with self._lock:
            self._behaviour = replace(self._behaviour, outage=bool(on))

    def stats(self) -> dict[str, int]:
        """Counters since start (or ``reset_stats``): ``calls`` (chat completions received), ``ok``,
        ``failed`` (5xx), ``throttled`` (429), ``rejected`` (other 4xx), ``in_flight``,
        ``max_in_flight`` and ``connections`` (TCP connections accepted)."""
        with self._lock:
            return dict(self._counts)

    def reset_stats(self) -> None:
        """Zero the counters (``in_flight`` keeps counting the calls still running)."""
        with self._lock:
            in_flight = self._counts["in_flight"]
            self._counts = dict.fromkeys(self._counts, 0)
            self._counts["in_flight"] = in_flight
            self._arrivals.clear()

    # -- what the handler calls ---------------------------------------------------------

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)
            self._counts["connections"] += 1

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _auth_error(self, header: str | None) -> Reply | None:
        if self._api_key is None:
            return None
        scheme, _, given = (header or "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return _error(401, "You didn't provide an API key.", "invalid_request_error", "invalid_api_key")
        if not hmac.compare_digest(given.encode(), self._api_key.encode()):
            message = f"Incorrect API key provided: {_masked(given)}."
            return _error(401, message, "invalid_request_error", "invalid_api_key")
        return None

    def _models(self) -> Reply:
        model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "dramatiq_turbo"}
        return 200, {"object": "list", "data": [model]}, {}

    def call_times(self) -> list[float]:
        """When each chat completion arrived (``time.monotonic()``), oldest first: for limit proofs."""
        with self._lock:
            return list(self._arrivals)

    def _complete(self, authorization: str | None, body: bytes) -> Reply:
        """Answer one chat completion, counting it."""
        with self._lock:
            self._counts["calls"] += 1
            self._arrivals.append(time.monotonic())
        request = self._auth_error(authorization) or _parse_request(body, self.context_window)
        if isinstance(request, tuple):
            self._count("rejected")
            return request
        with self._lock:
            behaviour = self._behaviour
            if behaviour.outage:
                self._counts["failed"] += 1
                return _error(503, "The service is temporarily unavailable.", "server_error")
            if behaviour.max_concurrency and self._counts["in_flight"] >= behaviour.max_concurrency:
                self._counts["throttled"] += 1
                message = f"Rate limit reached: at most {behaviour.max_concurrency} concurrent requests."
                status, payload, _ = _error(429, message, "rate_limit_error", "rate_limit_exceeded")
                return status, payload, {"Retry-After": str(behaviour.retry_after)}
            self._counts["in_flight"] += 1
            self._counts["max_in_flight"] = max(self._counts["max_in_flight"], self._counts["in_flight"])
            fail = self._random.random() < behaviour.failure_rate
            extra = self._random.randint(0, behaviour.jitter) if behaviour.jitter else 0
        try:
            time.sleep((behaviour.latency + extra) / 1000)
            return self._answer(request, behaviour.failure_status if fail else 200)
        finally:
            # Released before the answer is written, so a client that sends its next call
            # the moment it reads this answer is not throttled by its own previous call.
            with self._lock:
                self._counts["in_flight"] -= 1

    def _answer(self, request: _Request, status: int) -> Reply:
        if status != 200:
            self._count("failed")
            return _error(status, "The server had an error while processing your request.", "server_error")
        notes = _notes(request.text, request.max_points, request.max_terms)
        content = json.dumps(notes, ensure_ascii=False)
        self._count("ok")
        completion = _tokens(content)
        return 200, _completion(request.model, content, request.prompt_tokens, completion), {}


@functools.lru_cache(maxsize=4_096)
def _notes(text: str, max_points: int, max_terms: int) -> dict[str, Any]:
    # The same chunk asked again (the naive twin and the pipeline ask the
    # same chunks in a load test) is answered from memory, so the server's own
    # CPU does not become what is measured; every call still takes ``latency``.
    return extract_notes(text, max_points=max_points, max_terms=max_terms)


@dataclass(frozen=True)
class _Request:
    model: str
    text: str
    max_points: int
    max_terms: int
    prompt_tokens: int


def _message_text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    return None


def _parse_request(body: bytes, context_window: int) -> _Request | Reply:
    """The request's notes parameters, or the 400 answer saying what is wrong with it."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        message = f"We could not parse the JSON body of your request ({error})."
        return _error(400, message, "invalid_request_error")
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return _error(400, "'messages' must be a list of message objects.", "invalid_request_error")
    texts = [(m.get("role"), _message_text(m.get("content"))) for m in messages]
    user = [text for role, text in texts if role == "user" and text is not None]
    if not user:
        message = "'messages' must contain a user message with text content."
        return _error(400, message, "invalid_request_error")
    prompt_tokens = sum(_tokens(text or "") for _, text in texts)
    if prompt_tokens > context_window:
        message = (
            f"This model's maximum context length is {context_window} tokens. "
            f"However, your messages resulted in {prompt_tokens} tokens."
        )
        return _error(400, message, "invalid_request_error", "context_length_exceeded")
    system = " ".join(text or "" for role, text in texts if role in ("system", "developer"))
    points, terms = _POINTS.search(system), _TERMS.search(system)
    return _Request(
        model=str(data.get("model") or MODEL_ID),
        text=user[-1],
        max_points=min(50, int(points.group(1))) if points else 5,
        max_terms=min(50, int(terms.group(1))) if terms else 8,
        prompt_tokens=prompt_tokens,
    )


def _completion(model: str, content: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The OpenAI chat-completion response shape."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted.

    Parameters:
      argv(list): Command-line arguments (``sys.argv[1:]`` when ``None``).
    """
    parser = argparse.ArgumentParser(description="An offline OpenAI-compatible notes model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=int, default=200, help="ms per call")
    parser.add_argument("--jitter", type=int, default=0, help="up to this many extra ms per call")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="share of calls that fail (0-1)")
    parser.add_argument("--failure-status", type=int, default=503)
    parser.add_argument("--max-concurrency", type=int, default=0, help="429 beyond this many calls at once")
    parser.add_argument("--retry-after", type=int, default=1, help="seconds, in the Retry-After of a 429")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    server = ModelServer(
        host=args.host,
        port=args.port,
        latency=args.latency,
        jitter=args.jitter,
        failure_rate=args.failure_rate,
        failure_status=args.failure_status,
        max_concurrency=args.max_concurrency,
        retry_after=args.retry_after,
        seed=args.seed,
    ).start()
    print(f"Notes model serving at {server.url}  (export OPENAI_BASE_URL={server.url})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
