"""A gunicorn gthread worker that reads each request whole before a thread sees it.

gunicorn's own gthread worker hands a connection to a worker thread as soon as its first bytes
arrive, and the thread then blocks in ``recv`` until the request line, the headers and the body
are complete, with no deadline: a few clients that send one byte a second hold every thread and
nobody else is answered. ``BufferingThreadWorker`` reads in the worker's event loop instead
(non-blocking ``recv`` into a per-connection buffer, as nginx does in front of an upstream) and
submits the connection to the thread pool only when the request is complete, so a slow or idle
client costs a file descriptor and its buffer, never a thread. Each request must arrive within a
deadline (``ReadDeadlines``); past it the client gets a JSON 408 and the connection is closed.

Every answer the server gives itself, outside the app (this worker's 408 and 413, gunicorn's
own 400/414/431 to malformed HTTP through :func:`write_error`), is rendered by
service.error_render, carries an X-Request-ID (the client's, when sane) and writes the request
log line and count, as the app's answers do (:func:`server_answer`).

A large body read whole this way reaches the app as it arrived (:class:`HeldBody`), not through
gunicorn's parser, which copies a body a dozen times on its way (unread into its buffer, read
back for the head, pushed back, read again per step): about 1.4 ms of memory copies for each
800 KB batch of 256 images.

An answer leaves in one write (:class:`WholeResponse`): gunicorn writes the status line and
headers, then the body, in two; a replica killed between the two leaves a proxy in front holding
a head it has already passed on, so it can neither retry the request elsewhere nor finish the
answer, and the client gets a response cut after its headers.

gunicorn offers no read deadline of its own; a proxy in front (deploy/haproxy) does the same job
for the compose stack and Kubernetes ingresses, but ``mnist-serve`` alone must survive too.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import InvalidHeader
from gunicorn.workers.gthread import TConn, ThreadWorker

from service import draining
from service.error_render import render_server_error
from service.errors import body_over_limit
from service.observability.request_log import request_id_from
from service.observability.wsgi import observe_server_answer

#: the request head ends at the first empty line (RFC 9112 section 2.1)
_HEAD_END = b"\r\n\r\n"
_HEX_SIZE = re.compile(rb"[0-9A-Fa-f]+")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]+)[ \t]*(?=\r\n)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r\n]*chunked", re.I)
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.I)
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect[ \t]*:[ \t]*100-continue[ \t]*(?=\r\n)", re.I)
_REQUEST_ID = re.compile(rb"\r\nx-request-id[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r\n", re.I)
_RECV_BYTES = 256 * 1024
#: bodies from this size on are handed to the app as received (HeldBody); smaller ones take
#: gunicorn's own path, whose copies cost nothing measurable at that size
HELD_BODY_MIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class ReadDeadlines:
    """How long a client may take to send one request, and how much of it is buffered.

    ``head_seconds``: from the connection becoming readable (a new connection, or a kept-alive
    one receiving its next request) to the end of the headers. ``body_seconds``: from then to the
    last body byte. ``max_body_bytes``: larger bodies are not buffered; the request goes to a
    thread at once, where the app refuses it (413) without reading it.
    """

    head_seconds: float = 10.0
    body_seconds: float = 60.0
    max_body_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ReadDeadlines:
        """REQUEST_HEAD_TIMEOUT, REQUEST_BODY_TIMEOUT (seconds) and MAX_BODY_BYTES, or defaults."""
        defaults = cls()

        def number(name: str, default: float, highest: float) -> float:
            text = environ.get(name, "").strip()
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                raise SystemExit(f"{name}={text!r} is not a number") from None
            if not 0 < value <= highest:
                raise SystemExit(f"{name}={text} must be above 0 and at most {highest:g}")
            return value

        return cls(
            head_seconds=number("REQUEST_HEAD_TIMEOUT", defaults.head_seconds, MAX_READ_SECONDS),
            body_seconds=number("REQUEST_BODY_TIMEOUT", defaults.body_seconds, MAX_READ_SECONDS),
            max_body_bytes=int(number("MAX_BODY_BYTES", defaults.max_body_bytes, 2**31)),
        )


#: the longest REQUEST_HEAD_TIMEOUT and REQUEST_BODY_TIMEOUT, in seconds: an hour, far beyond
#: any upload within MAX_BODY_BYTES; a larger value is a typo, bounded as every other setting
MAX_READ_SECONDS = 3600.0


class RequestReading:
    """The bytes one client sent so far for its next request, and whether they make a whole one.

    Scans only the bytes that arrived since the last call, so a large body read in many pieces
    costs linear time.
    """

    def __init__(self, max_head_bytes: int, max_body_bytes: int) -> None:
        self.buffer = bytearray()
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.body_start: int | None = None  # offset of the body once the head is complete
        self.expected_end: int | None = None  # offset past the body when its length is known
        self.chunk_cursor = 0  # where the next chunk-size line starts (chunked bodies)
        self.chunked = False
        self.continue_sent = False
        # answer 413 from the worker: a chunk announced larger than the whole body may be, or
        # a Content-Length over the limit whose client waits for 100 Continue
        self.refused_as_too_large = False
        # one Content-Length and no Transfer-Encoding field at all: the body's end is certain
        self.plain_length = False

    def held_body_span(self) -> tuple[int, int] | None:
        """Where the body of a complete request lies in ``buffer`` (start, end), when it may go
        to the app as it is (:class:`HeldBody`): one plain Content-Length of at least
        HELD_BODY_MIN_BYTES, no Transfer-Encoding, not refused; None otherwise."""
        start, end = self.body_start, self.expected_end
        if (
            start is None
            or end is None
            or not self.plain_length
            or self.refused_as_too_large
            or end - start < HELD_BODY_MIN_BYTES
            or len(self.buffer) < end
        ):
            return None
        return start, end

    def add(self, data: bytes) -> bool | None:
        """Append ``data``; True when the request is complete (or gunicorn's parser must see it
        now: a malformed or oversized head, a body over the limit), False when more bytes are due,
        None when the client waits for ``100 Continue`` before it sends the body."""
        previous = len(self.buffer)
        self.buffer += data
        if self.body_start is None:
            head_end = self.buffer.find(_HEAD_END, max(0, previous - len(_HEAD_END) + 1))
            if head_end < 0:
                # lines ended by a bare LF never make the CRLF CRLF end of a head: gunicorn's
                # parser answers them now (400), not the head deadline (408)
                bare_lf = self.buffer.find(b"\n\n", max(0, previous - 1)) >= 0
                return bare_lf or len(self.buffer) > self.max_head_bytes
            verdict = self._read_head(head_end)
            if verdict is not False:
                return verdict
        if self.chunked:
            return self._chunked_body_complete()
        assert self.expected_end is not None
        return len(self.buffer) >= self.expected_end

    def _read_head(self, head_end: int) -> bool | None:
        # search from the request line's CRLF on, so every field starts with CRLF
        head = bytes(self.buffer[: head_end + 2])
        self.body_start = head_end + len(_HEAD_END)
        if _CHUNKED.search(head):
            self.chunked = True
            self.chunk_cursor = self.body_start
            return False
        lengths = set(_CONTENT_LENGTH.findall(head))
        if not lengths:
            self.expected_end = self.body_start
            return True
        if len(lengths) > 1:
            return True  # ambiguous: gunicorn's parser answers 400
        digits = lengths.pop().lstrip(b"0") or b"0"
        # more digits than the limit has is over it: never int() them (a length of 5,000 digits
        # is more than int() converts, and would end the worker)
        too_long = len(digits) > len(str(self.max_body_bytes))
        length = self.max_body_bytes + 1 if too_long else int(digits)
        if length > self.max_body_bytes:
            # the app refuses it (413) without reading it; a client that waits for 100 Continue
            # is refused at once, before it sends a body nobody reads
            self.refused_as_too_large = _EXPECT_CONTINUE.search(head) is not None
            return True
        self.expected_end = self.body_start + length
        self.plain_length = _TRANSFER_ENCODING.search(head) is None
        if len(self.buffer) >= self.expected_end:
            return True
        if len(self.buffer) == self.body_start and _EXPECT_CONTINUE.search(head):
            return None
        return False

    def _chunked_body_complete(self) -> bool:
        assert self.body_start is not None
        buffer = self.buffer
        while True:
            if self.chunk_cursor - self.body_start > self.max_body_bytes:
                return True
            line_end = buffer.find(b"\r\n", self.chunk_cursor)
            if line_end < 0:
                return len(buffer) - self.chunk_cursor > self.max_head_bytes
            size_text = bytes(buffer[self.chunk_cursor : line_end]).split(b";", 1)[0].strip()
            if not _HEX_SIZE.fullmatch(size_text):
                return True  # malformed (not hex, negative): the app answers 400
            size = int(size_text, 16)
            if size > self.max_body_bytes:
                # waiting for it would hold the connection until the body deadline: refuse now
                self.refused_as_too_large = True
                return True
            if size == 0:
                # optional trailer fields, then an empty line
                return buffer.startswith(b"\r\n", line_end + 2) or (
                    buffer.find(_HEAD_END, line_end) >= 0
                )
            following = line_end + 2 + size + 2
            if following > len(buffer):
                return False
            self.chunk_cursor = following


@dataclass(frozen=True)
class RequestStart:
    """What is known of a request the server answers itself: its method, its path (without the
    query) and the X-Request-ID its client sent; empty when they never arrived or are garbled."""

    method: str = ""
    path: str = ""
    sent_request_id: str | None = None

    @classmethod
    def from_bytes(cls, received: bytes) -> RequestStart:
        """From the raw bytes of the request (its head, or the part of it that arrived)."""
        line_end = received.find(b"\r\n")
        words = (received if line_end < 0 else received[:line_end]).split(b" ")
        head_end = received.find(_HEAD_END)
        found = _REQUEST_ID.search(received[: None if head_end < 0 else head_end + 2])
        return cls(
            method=words[0][:32].decode("latin-1") if len(words) > 1 else "",
            path=words[1].split(b"?", 1)[0].decode("latin-1") if len(words) > 1 else "",
            sent_request_id=found.group(1).decode("latin-1") if found else None,
        )

    @classmethod
    def from_parsed(cls, req: Any) -> RequestStart:
        """From gunicorn's parsed request (``method``, ``path``, ``headers`` as (NAME, value))."""
        sent = [value for name, value in req.headers if name == "X-REQUEST-ID"]
        return cls(str(req.method or ""), str(req.path or ""), sent[0] if sent else None)


def server_answer(status: int, reason: str, message: str, start: RequestStart) -> bytes:
    """The whole HTTP answer the server gives itself (``status``, e.g. 408 with ``reason``
    "Request Timeout"): the service's JSON error with an X-Request-ID, after writing its
    request log line and counting it (route ``<unmatched>``)."""
    request_id = request_id_from(start.sent_request_id)
    observe_server_answer(
        request_id=request_id,
        method=start.method,
        path=start.path,
        status=status,
        request_bytes=None,
    )
    return render_server_error(
        status, reason, message or reason, request_id=request_id, path=start.path
    )


#: what the thread answering a request works on, for gunicorn's error answers (write_error)
_in_thread = threading.local()


def write_error(sock: socket.socket, status: int, reason: str, message: object) -> None:
    """gunicorn's own error answers (malformed request line or headers, a request line or
    headers too large) as the service's: JSON, X-Request-ID, a log line. Installed as
    ``gunicorn.util.write_error``, the one function gunicorn's ``handle_error`` writes with."""
    start = getattr(_in_thread, "start", None) or RequestStart()
    util.write_nonblock(sock, server_answer(status, reason, str(message), start))


def _timeout_answer(reading: RequestReading) -> bytes:
    message = "the request did not arrive in time; send it faster or in one go"
    start = RequestStart.from_bytes(bytes(reading.buffer[: reading.max_head_bytes]))
    return server_answer(408, "Request Timeout", message, start)


def _too_large_answer(reading: RequestReading) -> bytes:
    start = RequestStart.from_bytes(bytes(reading.buffer[: reading.max_head_bytes]))
    message = body_over_limit(reading.max_body_bytes).message
    return server_answer(413, "Request Entity Too Large", message, start)


#: the signals that stop a worker: SIGTERM gracefully, SIGINT (Ctrl-C) and SIGQUIT at once
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGTERM})


def hold_stop_signals_across_fork() -> None:
    """In gunicorn's master, once: every worker is born with the stop signals blocked, and they
    wait, pending, until its own handlers are in place (BufferingThreadWorker.init_signals).

    Without it a stop signal that reaches a worker between fork() and gunicorn's init_signals()
    runs the handler inherited from the master, which only queues the signal in the worker's
    copy of the master's queue: the signal is lost, the worker boots and serves on until
    graceful_timeout, and the master SIGKILLs it ("Perhaps out of memory?").
    """
    master = os.getpid()

    def block() -> None:
        if os.getpid() == master:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def unblock() -> None:
        if os.getpid() == master:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    os.register_at_fork(before=block, after_in_parent=unblock)


def leave_now(signum: int, frame: Any) -> None:
    """A worker's quick shutdown (Ctrl-C, or the master's SIGQUIT): exit now, nothing to finish.

    gunicorn's gthread handler first calls ThreadPoolExecutor.shutdown(), which takes the pool's
    lock; when the signal lands while the main thread is inside submit() (holding that lock) the
    handler waits for itself, the worker hangs until graceful_timeout and the master SIGKILLs it,
    logging "Perhaps out of memory?". This handler takes no lock.
    """
    for stream in (sys.stdout, sys.stderr):
        # a flush from a handler that interrupted a write raises "reentrant call": never let an
        # exception out of here, it would land in the interrupted code and the worker live on
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            stream.flush()
    os._exit(0)


class HeldBody(io.BytesIO):
    """A request body read whole before a thread saw it: the app's ``wsgi.input``.

    It is what gunicorn's ``Body`` offers (``read``, ``readline``, ``readlines``, iteration,
    and the drain after the answer), over the bytes as received: ``read()`` of the whole body
    returns them without a copy (io.BytesIO shares its initial bytes until written to).
    """

    #: gunicorn's parser asks a body whether reading it failed (then the connection closes)
    failed = False


def _rejoined(buffered: bytes, held: bytes, head_length: int) -> bytes:
    """The request's bytes in their order again: ``buffered`` is its head (``head_length``
    bytes), then whatever came after the body; ``held`` its body."""
    return buffered[:head_length] + held + buffered[head_length:]


class _HeadHeldSocket:
    """The socket a :class:`WholeResponse` writes to: the head it is given while ``holding`` waits
    and leaves with the next bytes written, in the same ``sendall``."""

    __slots__ = ("held", "holding", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.held = b""
        self.holding = False

    def sendall(self, data: bytes) -> None:
        if self.holding:
            self.held += data
            return
        if self.held:
            data, self.held = self.held + data, b""
        self.sock.sendall(data)

    def flush(self) -> None:
        if self.held:
            data, self.held = self.held, b""
            self.sock.sendall(data)

    def send(self, data: bytes) -> int:
        self.flush()
        return self.sock.send(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        self.flush()
        return self.sock.sendfile(file, offset, count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class WholeResponse(wsgi.Response):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's HTTP/1 response, but its head leaves with the first body bytes, in one write.

    A worker killed mid-answer (SIGKILL, out of memory) has then sent either nothing, which a
    proxy in front retries on another replica (HAProxy's ``retry-on empty-response``, nginx's
    ``proxy_next_upstream``), or the whole of a single-piece body, as every answer of the
    service is; never a head without its body. Installed by :class:`BufferingThreadWorker` as
    the response class of its process.
    """

    def __init__(self, req: Any, sock: socket.socket, cfg: Any) -> None:
        super().__init__(req, _HeadHeldSocket(sock), cfg)

    def send_headers(self) -> None:
        self.sock.holding = True
        try:
            super().send_headers()
        finally:
            self.sock.holding = False

    def close(self) -> None:
        """The end of the answer: a head still held (no body, or an empty one) leaves now."""
        super().close()
        self.sock.flush()


class BufferingThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gthread, but a request is read whole in the event loop before a thread handles it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadlines = ReadDeadlines.from_env(os.environ)
        cfg = self.cfg
        if cfg.limit_request_line and cfg.limit_request_fields and cfg.limit_request_field_size:
            self.max_head_bytes = (
                cfg.limit_request_line
                + cfg.limit_request_fields * (cfg.limit_request_field_size + 2)
                + 4
            )
        else:
            self.max_head_bytes = 1024 * 1024
        # connections still sending a request, with what they sent so far
        self.reading: dict[TConn, RequestReading] = {}

    def init_process(self) -> None:
        """Every HTTP/1 answer of this process is a :class:`WholeResponse` (gunicorn's
        ``wsgi.create`` builds the module's ``Response``); then gunicorn's start."""
        wsgi.Response = WholeResponse
        super().init_process()

    def init_signals(self) -> None:
        """gunicorn's handlers, SIGINT and SIGQUIT replaced by :func:`leave_now`; then the stop
        signals that arrived since the fork (held by :func:`hold_stop_signals_across_fork`)."""
        super().init_signals()
        signal.signal(signal.SIGINT, leave_now)
        signal.signal(signal.SIGQUIT, leave_now)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: readiness turns false at once (service.draining), then gunicorn's graceful
        stop: no new connection, the requests held are answered."""
        draining.begin()
        super().handle_exit(sig, frame)

    # --- connections enter reading from accept() and from keep-alive ---------------------------

    def accept(self, listener: socket.socket) -> None:
        """Accept a connection and start reading its request in the event loop."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        self._start_reading(conn)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        """A kept-alive connection has bytes of its next request: read them in the loop."""
        self.keepalived_conns.remove(conn)
        self.poller.unregister(client)
        self._start_reading(conn)
        # bytes are waiting: read them now, so the connection is never seen with an empty
        # buffer (a stopping worker drops those)
        self._on_bytes(conn, client)

    def _start_reading(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.deadlines.head_seconds
        self.reading[conn] = RequestReading(self.max_head_bytes, self.deadlines.max_body_bytes)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_bytes, conn))

    # --- the loop's part: receive, check completeness, hand over -------------------------------

    def _on_bytes(self, conn: TConn, client: socket.socket) -> None:
        reading = self.reading[conn]
        try:
            data = client.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        had_head = reading.body_start is not None
        state = reading.add(data)
        if state and reading.refused_as_too_large:
            with contextlib.suppress(OSError):
                client.send(_too_large_answer(reading))
            self._drop(conn)
            return
        if state:
            self.poller.unregister(client)
            del self.reading[conn]
            span = reading.held_body_span()
            if span is None:
                conn.buffered = bytes(reading.buffer)
                conn.held_body = None
            else:  # the head and any pipelined bytes for the parser, the body apart
                start, end = span
                view = memoryview(reading.buffer)
                conn.buffered = bytes(view[:start]) + bytes(view[end:])
                conn.held_body = bytes(view[start:end])
                conn.held_at = start
                view.release()
            conn.data_ready = True
            self.enqueue_req(conn)
            return
        if not had_head and reading.body_start is not None:
            conn.timeout = time.monotonic() + self.deadlines.body_seconds
        if state is None and not reading.continue_sent:
            reading.continue_sent = True
            try:
                client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                self._drop(conn)

    def handle(self, conn: TConn) -> Any:
        """In a worker thread: give the buffered request to gunicorn's parser, then serve it."""
        buffered = getattr(conn, "buffered", b"")
        held: bytes | None = getattr(conn, "held_body", None)
        conn.held_body = None
        if buffered:
            conn.buffered = b""
            conn.sock.setblocking(True)
            conn.init()
            unreader = conn.parser.unreader
            earlier = unreader.take_buffered()
            if held is not None and earlier:
                # bytes the parser read ahead come first: the held body's place in the stream
                # is no longer the one measured, so it goes back where it was
                buffered = _rejoined(buffered, held, conn.held_at)
                held = None
            unreader.unread(earlier + buffered)
        else:
            held = None  # a request read from the stream (pipelined) has its body there
        _in_thread.received = buffered  # for handle_error, when gunicorn could not parse them
        _in_thread.held_body = held
        try:
            return super().handle(conn)
        finally:
            _in_thread.received = b""
            _in_thread.held_body = None

    def handle_request(self, req: Any, conn: TConn) -> Any:
        """gunicorn's, the request's body replaced by the one held (:class:`HeldBody`) when it
        was read whole in the loop; InvalidHeader (gunicorn's 400) should gunicorn's parser
        read another body length from the head than the loop did."""
        held: bytes | None = getattr(_in_thread, "held_body", None)
        if held is not None:
            _in_thread.held_body = None
            reader = getattr(req.body, "reader", None)
            if not isinstance(reader, LengthReader) or reader.length != len(held):
                raise InvalidHeader("CONTENT-LENGTH")
            req.body = HeldBody(held)
        return super().handle_request(req, conn)

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """gunicorn's answer to a request it (or the app) failed on, written by
        :func:`write_error` with what is known of the request."""
        received: bytes = getattr(_in_thread, "received", b"")
        if received:  # what the client sent, even when gunicorn could not parse it
            start = RequestStart.from_bytes(received[: self.max_head_bytes])
        elif req is not None:
            start = RequestStart.from_parsed(req)
        else:
            start = RequestStart()
        _in_thread.start = start
        try:
            super().handle_error(req, client, addr, exc)
        finally:
            _in_thread.start = None

    # --- deadlines: called by ThreadWorker.run() once per loop turn ----------------------------

    def murder_pending(self) -> None:
        """Close connections past their read deadline (408 when they sent anything)."""
        super().murder_pending()
        now = time.monotonic()
        expired = [
            conn
            for conn, reading in self.reading.items()
            # a stopping worker does not wait for requests nobody has started to send
            if conn.timeout <= now or (not self.alive and not reading.buffer)
        ]
        for conn in expired:
            if self.reading[conn].buffer:
                with contextlib.suppress(OSError):
                    conn.sock.send(_timeout_answer(self.reading[conn]))
            self._drop(conn)

    def _drop(self, conn: TConn) -> None:
        self.reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()
