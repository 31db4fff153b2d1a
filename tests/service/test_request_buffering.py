"""RequestReading: when the bytes a client sent so far make one whole HTTP/1.x request."""

from __future__ import annotations

import pytest

from service.request_buffering import (
    HELD_BODY_MIN_BYTES,
    HeldBody,
    ReadDeadlines,
    RequestReading,
    RequestStart,
)

HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\n"


def _feed(pieces: list[bytes], max_body: int = 1000) -> list[bool | None]:
    reading = RequestReading(max_head_bytes=200, max_body_bytes=max_body)
    return [reading.add(piece) for piece in pieces]


@pytest.mark.parametrize(
    ("pieces", "verdicts"),
    [
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], [True]),
        ([b"GET / HTTP/1.1\r\nHo", b"st: x\r\n\r", b"\n"], [False, False, True]),
        ([HEAD + b"Content-Length: 4\r\n\r\nab", b"cd"], [False, True]),
        ([HEAD + b"content-length:4\r\n\r\n", b"abcd"], [False, True]),
        ([HEAD + b"Content-Length: 4\r\n\r\nabcdGET / HTTP/1.1\r\n"], [True]),
        ([HEAD + b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n", b"abcd"], [None, True]),
        ([HEAD + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\n"], [True]),
        ([HEAD + b"Content-Length: 5000\r\n\r\n"], [True]),
        (
            [HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\nab", b"cd\r\n0\r", b"\n\r\n"],
            [False, False, True],
        ),
        ([HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;x=y\r\nab\r\n0\r\nT: 1\r\n\r\n"], [True]),
        ([HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"], [True]),
        ([b"GET /" + b"a" * 300], [True]),
        ([b"GET / HTTP/1.1\nHost: x\n", b"\n"], [False, True]),
    ],
    ids=[
        "get",
        "head-in-pieces",
        "length-body-in-pieces",
        "lower-case-no-space",
        "pipelined",
        "expect-continue",
        "two-lengths",
        "body-over-limit",
        "chunked-in-pieces",
        "chunked-extension-trailer",
        "chunked-malformed",
        "head-over-limit",
        "bare-lf",
    ],
)
def test_complete_when_the_request_is(pieces: list[bytes], verdicts: list[bool | None]) -> None:
    assert _feed(pieces) == verdicts


def test_chunked_body_over_the_limit_goes_to_the_parser() -> None:
    big = b"".join(b"64\r\n" + b"a" * 100 + b"\r\n" for _ in range(11))
    assert _feed([HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + big]) == [True]


BIG = HELD_BODY_MIN_BYTES


@pytest.mark.parametrize(
    ("head", "body", "after", "span"),
    [
        (HEAD + f"Content-Length: {BIG}\r\n\r\n".encode(), b"a" * BIG, b"", True),
        (
            HEAD + f"Content-Length: {BIG}\r\n\r\n".encode(),
            b"a" * BIG,
            b"GET / HTTP/1.1\r\n\r\n",
            True,
        ),
        (
            HEAD + f"Content-Length: {BIG}\r\nExpect: 100-continue\r\n\r\n".encode(),
            b"a" * BIG,
            b"",
            True,
        ),
        (HEAD + f"Content-Length: {BIG - 1}\r\n\r\n".encode(), b"a" * (BIG - 1), b"", False),
        (
            HEAD + f"Transfer-Encoding: identity\r\nContent-Length: {BIG}\r\n\r\n".encode(),
            b"a" * BIG,
            b"",
            False,
        ),
        (
            HEAD + f"Content-Length: {BIG}\r\nContent-Length: {BIG}\r\n\r\n".encode(),
            b"a" * BIG,
            b"",
            True,  # the same length twice is one length (gunicorn reads it so too)
        ),
        (HEAD + f"Content-Length: {10 * BIG}\r\n\r\n".encode(), b"", b"", False),
    ],
    ids=[
        "large",
        "large-then-pipelined",
        "large-expecting-continue",
        "under-the-minimum",
        "any-transfer-encoding",
        "one-length-repeated",
        "over-the-limit",
    ],
)
def test_a_large_body_with_one_plain_length_is_held_apart(
    head: bytes, body: bytes, after: bytes, span: bool
) -> None:
    reading = RequestReading(max_head_bytes=400, max_body_bytes=2 * BIG)
    first = reading.add(head)
    if first is not True:  # a head whose client waits for 100 Continue, or more body due
        assert reading.add(body + after) is True
    found = reading.held_body_span()
    if not span:
        assert found is None
        return
    assert found == (len(head), len(head) + len(body))
    start, end = found
    assert bytes(reading.buffer[start:end]) == body
    assert bytes(reading.buffer[end:]) == after


def test_a_held_body_reads_as_gunicorns_body_does() -> None:
    body = b"line one\nline two\n" + b"x" * BIG
    whole = HeldBody(body)
    assert whole.read(len(body)) is body  # the received bytes themselves, no copy
    lines = HeldBody(body)
    assert lines.readline() == b"line one\n"
    assert list(lines) == [b"line two\n", b"x" * BIG]
    steps = HeldBody(body)
    assert b"".join(iter(lambda: steps.read(1024), b"")) == body
    assert HeldBody(body).failed is False


@pytest.mark.parametrize(
    ("head", "refused"),
    [
        (HEAD + b"Content-Length: 5000\r\n\r\n", False),  # the app answers, body drained
        (HEAD + b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n", True),
        (HEAD + b"Content-Length: 500\r\nExpect: 100-continue\r\n\r\n", False),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nFFFFF\r\n", True),
    ],
    ids=["over", "over-expecting-continue", "within-expecting-continue", "one-chunk-over"],
)
def test_the_worker_refuses_itself_only_bodies_nobody_sent_yet(head: bytes, refused: bool) -> None:
    reading = RequestReading(max_head_bytes=200, max_body_bytes=1000)
    reading.add(head)
    assert reading.refused_as_too_large is refused


@pytest.mark.parametrize(
    ("length", "verdict", "refused"),
    [
        (b"9" * 5000, True, False),  # more digits than int() converts: over the limit, to gunicorn
        (b"99999999999999999999", True, False),  # beyond 64 bits
        (b"0" * 4999 + b"4", False, False),  # 4 bytes, written long: waits for them
        (b"0" * 5000, True, False),  # no body
        (b"01001", True, False),  # one digit more than the limit's, and over it
        (b"01000", False, False),
    ],
    ids=["5000-digits", "beyond-64-bits", "leading-zeros", "all-zeros", "over", "at-limit"],
)
def test_a_content_length_of_any_size_is_read_without_int_failing(
    length: bytes, verdict: bool, refused: bool
) -> None:
    reading = RequestReading(max_head_bytes=20_000, max_body_bytes=1000)
    assert reading.add(HEAD + b"Content-Length: " + length + b"\r\n\r\n") is verdict
    assert reading.refused_as_too_large is refused


def test_a_content_length_of_5000_digits_expecting_continue_is_refused_at_once() -> None:
    reading = RequestReading(max_head_bytes=20_000, max_body_bytes=1000)
    head = HEAD + b"Content-Length: " + b"9" * 5000 + b"\r\nExpect: 100-continue\r\n\r\n"
    assert reading.add(head) is True
    assert reading.refused_as_too_large


@pytest.mark.parametrize(
    ("received", "start"),
    [
        (
            b"POST /predict?top_k=3 HTTP/1.1\r\nx-request-id:  mine-1 \r\nHost: x\r\n\r\n",
            RequestStart("POST", "/predict", "mine-1"),
        ),
        (b"GET /v2/health/ready HTTP/1.1\r\nHo", RequestStart("GET", "/v2/health/ready", None)),
        (b"\x00garbage", RequestStart("", "", None)),
        (
            b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nX-Request-ID: next\r\n\r\n",
            RequestStart("GET", "/", None),  # a pipelined request's id is not this one's
        ),
    ],
    ids=["whole-head", "cut-head", "garbage", "pipelined"],
)
def test_what_the_server_knows_of_a_request_it_answers_itself(
    received: bytes, start: RequestStart
) -> None:
    assert RequestStart.from_bytes(received) == start


def test_deadlines_from_the_environment() -> None:
    assert ReadDeadlines.from_env({}) == ReadDeadlines()
    read = ReadDeadlines.from_env(
        {"REQUEST_HEAD_TIMEOUT": "2.5", "REQUEST_BODY_TIMEOUT": "30", "MAX_BODY_BYTES": "1024"}
    )
    assert read == ReadDeadlines(head_seconds=2.5, body_seconds=30.0, max_body_bytes=1024)
    with pytest.raises(SystemExit, match="REQUEST_HEAD_TIMEOUT"):
        ReadDeadlines.from_env({"REQUEST_HEAD_TIMEOUT": "soon"})
    with pytest.raises(SystemExit, match="above 0"):
        ReadDeadlines.from_env({"REQUEST_BODY_TIMEOUT": "0"})
    for value in ("inf", "1e300", "3601"):  # a deadline past any upload: refused at start
        with pytest.raises(SystemExit, match="at most 3600"):
            ReadDeadlines.from_env({"REQUEST_HEAD_TIMEOUT": value})
    assert ReadDeadlines.from_env({"REQUEST_BODY_TIMEOUT": "3600"}).body_seconds == 3600.0


def test_a_worker_is_born_with_the_stop_signals_held_and_its_master_is_not() -> None:
    """hold_stop_signals_across_fork, in a process of its own (the hook stays for its life): the
    child of a fork has SIGINT, SIGQUIT and SIGTERM blocked (pending until its handlers are in
    place), the forking process has them unblocked again, a grandchild's parent is untouched."""
    import json
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import json, os, signal
        from service.request_buffering import STOP_SIGNALS, hold_stop_signals_across_fork

        def held():
            return sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))

        hold_stop_signals_across_fork()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            mine = held()
            os.kill(os.getpid(), signal.SIGTERM)  # held: pending, not fatal
            grandchild = os.fork()  # a fork in the worker is not the master's
            if grandchild == 0:
                os._exit(0)
            os.waitpid(grandchild, 0)
            os.write(write, json.dumps([mine, held()]).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(read, 1000).decode())
        print(json.dumps(held()))
        print(json.dumps(sorted(int(s) for s in STOP_SIGNALS)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    child, parent, stop = (json.loads(line) for line in done.stdout.strip().splitlines())
    child_mask, child_after_own_fork = child
    assert set(stop) <= set(child_mask)
    assert child_after_own_fork == child_mask
    assert not set(stop) & set(parent)


class _CountedWrites:
    """A real socket, with every write to it recorded (which bytes left in which call)."""

    def __init__(self, sock: object) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.sock.sendall(data)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


@pytest.mark.parametrize(
    ("method", "status", "body", "chunked"),
    [
        ("POST", "200 OK", [b'{"digit": 7}'], False),
        ("POST", "422 Unprocessable Entity", [b'{"error": {}}'], False),
        ("GET", "204 No Content", [], False),
        ("HEAD", "200 OK", [b""], False),
        ("GET", "200 OK", [b"abc", b"defg"], True),
    ],
)
def test_an_answer_leaves_in_one_write_with_its_head(
    method: str, status: str, body: list[bytes], chunked: bool
) -> None:
    """WholeResponse, on a real socket pair with a request parsed by gunicorn's own parser: the
    head never leaves alone (a worker killed between head and body would leave a proxy with an
    answer it can neither finish nor retry), and the client reads the very bytes gunicorn's own
    Response writes."""
    import socket

    from gunicorn.config import Config
    from gunicorn.http import wsgi
    from gunicorn.http.parser import RequestParser

    from service.request_buffering import WholeResponse

    def answer(response_class: type) -> tuple[bytes, list[bytes]]:
        server, client = socket.socketpair()
        with server, client:
            client.sendall(f"{method} /x HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            req = next(iter(RequestParser(Config(), server, ("127.0.0.1", 1))))
            counted = _CountedWrites(server)
            resp = response_class(req, counted, Config())
            length = [] if chunked else [("Content-Length", str(sum(map(len, body))))]
            resp.start_response(status, [("Content-Type", "application/json"), *length])
            for piece in body:
                resp.write(piece)
            resp.close()
            server.shutdown(socket.SHUT_WR)
            received = b"".join(iter(lambda: client.recv(65536), b""))
        return received, counted.writes

    theirs, _ = answer(wsgi.Response)
    ours, writes = answer(WholeResponse)
    # the Date header may tick between the two answers
    assert ours.split(b"\r\nDate: ")[0] == theirs.split(b"\r\nDate: ")[0]
    assert ours.split(b"\r\n", 3)[3] == theirs.split(b"\r\n", 3)[3]
    assert b"".join(writes) == ours
    assert writes[0].startswith(b"HTTP/1.1 " + status.encode()) and b"\r\n\r\n" in writes[0]
    first_piece = next((piece for piece in body if piece), b"")
    if not chunked:
        assert len(writes) == 1 or not first_piece, writes
        assert writes[0].endswith(first_piece)
    else:
        assert writes[0].endswith(b"3\r\nabc\r\n"), writes


def test_a_worker_of_gunicorns_own_class_leaves_at_once_on_ctrl_c() -> None:
    """service/gunicorn.conf.py's let_stop_signals_in, in a process of its own, for a worker that
    is not ours: SIGINT and SIGQUIT go to leave_now (gunicorn's gthread handle_quit would first
    take its thread pool's lock, which the interrupted main thread may hold inside submit(): the
    worker then waits for itself), and the held stop signals are let in; for our own worker
    class nothing is changed (its init_signals does both)."""
    import subprocess
    import sys
    import textwrap

    from tests.conftest import REPO_ROOT

    script = textwrap.dedent(
        """
        import runpy, signal
        from service.request_buffering import (
            STOP_SIGNALS, BufferingThreadWorker, leave_now)

        conf = runpy.run_path("service/gunicorn.conf.py")
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        ours = BufferingThreadWorker.__new__(BufferingThreadWorker)
        conf["let_stop_signals_in"](ours)
        untouched = (signal.getsignal(signal.SIGINT) is not leave_now
                     and set(STOP_SIGNALS) <= signal.pthread_sigmask(signal.SIG_BLOCK, []))
        conf["let_stop_signals_in"](object())
        print(untouched, signal.getsignal(signal.SIGINT) is leave_now,
              signal.getsignal(signal.SIGQUIT) is leave_now,
              not set(STOP_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, []))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO_ROOT,
    )
    assert done.stdout.split() == ["True", "True", "True", "True"], done.stdout + done.stderr


def test_a_held_body_whose_length_gunicorn_reads_otherwise_is_a_400() -> None:
    """Should gunicorn's parser find another body length in the head than the loop did, the
    held body is not handed on: InvalidHeader, which gunicorn answers with a 400."""
    from types import SimpleNamespace

    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.errors import InvalidHeader

    from service import request_buffering

    request = SimpleNamespace(body=Body(LengthReader(None, BIG - 1)))
    request_buffering._in_thread.held_body = b"a" * BIG
    try:
        with pytest.raises(InvalidHeader):
            request_buffering.BufferingThreadWorker.handle_request(
                SimpleNamespace(),  # type: ignore[arg-type]  # only its check runs
                request,
                SimpleNamespace(),
            )
        assert isinstance(request.body, Body)  # the held bytes never became the input
    finally:
        request_buffering._in_thread.held_body = None
