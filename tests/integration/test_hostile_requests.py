"""Malformed and hostile HTTP against a real gunicorn: every answer is a 4xx JSON error that says
what was wrong, carries an X-Request-ID and writes a request log line, and the worker lives on.

Requests are written byte for byte on raw sockets (odd framings no HTTP client would send): bodies
over MAX_BODY_BYTES on every route that takes one, in every framing; requests gunicorn or the
buffering worker answer themselves (request line or headers too large, malformed HTTP, a head too
slow to arrive); OPTIONS, HEAD and unknown methods.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import COMMITTED_MODELS, REPO_ROOT
from tests.integration.conftest import RunningServer, start_gunicorn

LIMIT = 100_000
ADMIN = "edge-admin-secret"
API = "edge-api-secret"
HEAD_TIMEOUT = 1.0
JSON = "application/json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One worker (a worker that dies shows as a new request id prefix), small limits, both
    kinds of token on, so every route gets past its token check to the body; a repository of
    its own (the repository API calls among the requests change it)."""
    folder = tmp_path_factory.mktemp("hostile")
    shutil.copytree(COMMITTED_MODELS, folder / "models")
    running = start_gunicorn(
        folder,
        {
            "MODEL_DIR": str(folder / "models"),
            "MAX_BODY_BYTES": str(LIMIT),
            "REQUEST_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
            "REQUEST_BODY_TIMEOUT": "3",
            "ADMIN_TOKEN": ADMIN,
            "API_TOKENS": API,
        },
        workers=1,
        threads=4,
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def worker_prefix(server: RunningServer) -> str:
    """The random per-process prefix of the worker's request ids, taken before any hostility."""
    return requests.get(server.url + "/v2/health/live", timeout=10).headers["X-Request-ID"][:16]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def error_message(self) -> str:
        """The message of a JSON error in either shape (V2's string, or the simple API's)."""
        error = json.loads(self.body)["error"]
        return error if isinstance(error, str) else str(error["message"])


def _address(server: RunningServer) -> tuple[str, int]:
    url = urlsplit(server.url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def _read_answer(sock: socket.socket, method: str = "") -> Answer:
    """One HTTP answer read off ``sock`` (skipping a 100 Continue), by its Content-Length."""
    received = b""
    while True:
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"the server closed without a whole answer: {received!r}")
            received += chunk
        head, _, received = received.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 100 "):
            break
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
    while len(received) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return Answer(status, headers, received[:length])


def exchange(server: RunningServer, request: bytes, method: str = "") -> Answer:
    """Send ``request`` as written; the answer (the connection may stay open: never waited on)."""
    with socket.create_connection(_address(server), timeout=15) as sock:
        sock.sendall(request)
        return _read_answer(sock, method)


def http(
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    length: bool = True,
) -> bytes:
    """A request as bytes: Host, the bearer token the route needs, ``headers``, Content-Length."""
    token = ADMIN if path.startswith("/v2/repository") else API
    fields = {"Host": "127.0.0.1", "Authorization": f"Bearer {token}", **(headers or {})}
    if length and body and "Transfer-Encoding" not in fields:
        fields.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


def chunked(body: bytes, size: int = 0x8000) -> bytes:
    pieces = [body[start : start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def assert_json_error(answer: Answer, status: int) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == JSON, answer
    assert re.fullmatch(r"[!-~]{1,128}", answer.headers.get("x-request-id", "")), answer
    assert answer.error_message()


# -- 413: one answer, naming the limit, whatever route and framing ------------------------------

#: every route that takes a body: (path, Content-Type)
BODY_ROUTES = {
    "predict json": ("/predict", JSON),
    "predict png": ("/predict", "image/png"),
    "predict multipart": ("/predict", "multipart/form-data; boundary=edge"),
    "v2 infer": ("/v2/models/mnist/infer", JSON),
    "v2 infer of a version": ("/v2/models/mnist/versions/1/infer", JSON),
    "v2 infer binary": ("/v2/models/mnist/infer", "application/octet-stream"),
    "v2 explain": ("/v2/models/mnist/explain", JSON),
    "feedback": ("/feedback", JSON),
    "admin load": ("/v2/repository/models/mnist/load", JSON),
    "admin index": ("/v2/repository/index", JSON),
}
OVERSIZED = b" " * (LIMIT + 1)
FRAMINGS = {
    "content-length": lambda path, kind: http("POST", path, {"Content-Type": kind}, OVERSIZED),
    "chunked": lambda path, kind: http(
        "POST", path, {"Content-Type": kind, "Transfer-Encoding": "chunked"}, chunked(OVERSIZED)
    ),
    "expect 100-continue": lambda path, kind: http(
        "POST",
        path,
        {"Content-Type": kind, "Expect": "100-continue", "Content-Length": str(LIMIT + 1)},
    ),
    "HTTP/1.0": lambda path, kind: http(
        "POST", path, {"Content-Type": kind}, OVERSIZED, version="HTTP/1.0"
    ),
    "one chunk over the limit": lambda path, kind: http(
        "POST", path, {"Content-Type": kind, "Transfer-Encoding": "chunked"}, b"ffffffff\r\n{}"
    ),
}


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
@pytest.mark.parametrize("route", sorted(BODY_ROUTES))
def test_a_body_over_the_limit_is_one_json_413_naming_the_limit(
    server: RunningServer, route: str, framing: str
) -> None:
    path, kind = BODY_ROUTES[route]
    answer = exchange(server, FRAMINGS[framing](path, kind))
    assert_json_error(answer, 413)
    assert answer.error_message() == f"the request body is over the limit of {LIMIT} bytes"
    error = json.loads(answer.body)["error"]
    if not path.startswith("/v2"):
        assert error["code"] == "payload_too_large"


def test_a_multipart_form_of_too_many_parts_is_a_413_saying_so(server: RunningServer) -> None:
    parts = b"".join(
        b'--edge\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % number
        for number in range(1100)  # the limit is MAX_BATCH (1,024) + 16 parts
    )
    body = parts + b"--edge--\r\n"
    kind = "multipart/form-data; boundary=edge"
    answer = exchange(server, http("POST", "/predict", {"Content-Type": kind}, body))
    assert_json_error(answer, 413)
    assert "multipart form is over its limits: at most" in answer.error_message()


# -- the server's own answers: X-Request-ID, a log line, the request count -----------------------

#: (request, status): answered by gunicorn or the buffering worker, never by the app
SERVER_ANSWERS = {
    "request line too long": (
        b"GET /v2/health/ready?q=" + b"q" * 5000 + b" HTTP/1.1\r\nX-Request-ID: edge-414\r\n\r\n",
        414,
    ),
    "a header too large": (
        b"GET / HTTP/1.1\r\nX-Request-ID: edge-431\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
        431,
    ),
    "too many headers": (
        b"GET / HTTP/1.1\r\nX-Request-ID: edge-431-many\r\n"
        + b"".join(b"X-H%d: 1\r\n" % n for n in range(100))
        + b"\r\n",
        431,
    ),
    "a header name with a space": (
        b"GET / HTTP/1.1\r\nX-Request-ID: edge-400-name\r\nBad Header: 1\r\n\r\n",
        400,
    ),
    "two Content-Lengths": (
        b"POST /predict HTTP/1.1\r\nX-Request-ID: edge-400-lengths\r\n"
        b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
        400,
    ),
    "a lower-case method": (b"get / HTTP/1.1\r\nX-Request-ID: edge-400-method\r\n\r\n", 400),
    "a chunk over the limit": (
        b"POST /predict HTTP/1.1\r\nX-Request-ID: edge-413-chunk\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nffffffff\r\n{}",
        413,
    ),
    "a body over the limit after Expect": (
        b"POST /v2/models/mnist/infer HTTP/1.1\r\nX-Request-ID: edge-413-expect\r\n"
        b"Expect: 100-continue\r\nContent-Length: 100001\r\n\r\n",
        413,
    ),
}


def _request_lines(server: RunningServer) -> list[dict[str, object]]:
    lines = []
    for text in server.log().splitlines():
        if '"event":"request"' in text:
            lines.append(json.loads(text))
    return lines


def _counted(server: RunningServer, status: int) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("mnist_http_requests_total{") and (
            f'status="{status}"' in line and 'route="<unmatched>"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("case", sorted(SERVER_ANSWERS))
def test_the_servers_own_answers_carry_the_request_id_and_are_logged_and_counted(
    server: RunningServer, case: str
) -> None:
    request, status = SERVER_ANSWERS[case]
    sent_id = re.search(rb"X-Request-ID: (\S+)", request)
    assert sent_id is not None
    counted = _counted(server, status)
    answer = exchange(server, request)
    assert_json_error(answer, status)
    assert answer.headers["x-request-id"] == sent_id.group(1).decode()
    assert answer.headers["connection"] == "close"
    line = _wait_for_line(server, answer.headers["x-request-id"])
    assert line["status"] == status
    assert line["route"] == "<unmatched>"
    assert _counted(server, status) == counted + 1


def _wait_for_line(server: RunningServer, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30  # returns as soon as the line is there
    while time.monotonic() < deadline:
        found = [line for line in _request_lines(server) if line["request_id"] == request_id]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no request line for {request_id}:\n{server.log()[-3000:]}")


def test_garbage_gets_a_fresh_request_id(server: RunningServer) -> None:
    answer = exchange(server, b"\x00\x01\x02 garbage\r\n\r\n")
    assert_json_error(answer, 400)
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    assert _wait_for_line(server, answer.headers["x-request-id"])["status"] == 400


def test_a_head_too_slow_to_arrive_is_a_408_with_the_request_id(server: RunningServer) -> None:
    with socket.create_connection(_address(server), timeout=15) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nX-Request-ID: edge-408\r\nContent-Ty")
        started = time.monotonic()
        answer = _read_answer(sock)
    # HEAD_TIMEOUT, not the 10 s default deadline; slack for a loaded CI machine
    assert time.monotonic() - started < HEAD_TIMEOUT + 6
    assert_json_error(answer, 408)
    assert answer.headers["x-request-id"] == "edge-408"
    line = _wait_for_line(server, "edge-408")
    assert (line["status"], line["method"], line["path"]) == (408, "POST", "/predict")


# -- values Python holds but no encoder takes: a lone surrogate, an integer beyond 64 bits ------

SEVEN = (REPO_ROOT / "docs" / "examples" / "v2-seven.json").read_bytes().strip()
#: (path, body, status): a string holding a lone UTF-16 surrogate, which UTF-8 (the store,
#: orjson, every answer) cannot encode, on every route that parses a JSON body
NOT_TEXT = {
    "feedback request id": ("/feedback", rb'{"request_id":"\ud800","label":1}', 422),
    "feedback list": (
        "/feedback",
        rb'[{"request_id":"ok","label":1},{"request_id":"\udc00","label":2}]',
        422,
    ),
    "feedback as CESU-8 bytes": ("/feedback", b'{"request_id":"\xed\xa0\x80","label":1}', 422),
    "v2 id": ("/v2/models/mnist/infer", SEVEN[:-1] + rb',"id":"\ud800"}', 400),
    "v2 id of a version": ("/v2/models/mnist/versions/1/infer", rb'{"id":"x\udfff"}', 400),
    "v2 output name": (
        "/v2/models/mnist/infer",
        SEVEN[:-1] + rb',"outputs":[{"name":"\udbff"}]}',
        400,
    ),
    "v2 field name": ("/v2/models/mnist/infer", SEVEN[:-1] + rb',"\ud800":1}', 400),
    "predict image": ("/predict", rb'{"images":["\ud800"]}', 422),
    "predict field name": ("/predict", rb'{"images":[[1e999]],"\udc00":1}', 422),
    "explain": ("/v2/models/mnist/explain", rb'{"images":["\ud800"]}', 422),
    "admin index": ("/v2/repository/index", rb'{"ready":true,"\ud800":1}', 422),
    "admin load": ("/v2/repository/models/mnist/load", rb'{"\ud800":1}', 422),
}


@pytest.mark.parametrize("case", sorted(NOT_TEXT))
def test_a_string_that_is_not_text_is_a_4xx_naming_it_and_one_log_line(
    server: RunningServer, case: str
) -> None:
    path, body, status = NOT_TEXT[case]
    request_id = "edge-not-text-" + case.replace(" ", "-")
    headers = {"Content-Type": JSON, "X-Request-ID": request_id}
    answer = exchange(server, http("POST", path, headers, body))
    assert_json_error(answer, status)
    message = answer.error_message()
    assert "is not valid text" in message and "a lone UTF-16 surrogate" in message, message
    if path.startswith("/v2"):
        assert message.isascii()  # the surrogate echoed as an escape
    else:
        assert json.loads(answer.body)["error"]["code"] == "invalid_input"
    assert _wait_for_line(server, request_id)["status"] == status
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("feedback request id", "field request_id"),
        ("feedback list", "field [1].request_id"),
        ("v2 id", "field id"),
        ("v2 output name", "field outputs[0].name"),
    ],
)
def test_the_message_names_the_string_that_is_not_text(
    server: RunningServer, case: str, named: str
) -> None:
    path, body, status = NOT_TEXT[case]
    answer = exchange(server, http("POST", path, {"Content-Type": JSON}, body))
    assert answer.status == status
    assert answer.error_message().startswith(f"{named} is not valid text: '\\u")


#: a Content-Length beyond 64 bits: the app's 413 (or its answer to a route that reads no body)
#: and its log line, the length written as its digits since no 64-bit integer holds it
HUGE_LENGTH = "99999999999999999999"
HUGE_LENGTH_ROUTES = {
    **{name: ("POST", path, 413) for name, (path, _) in BODY_ROUTES.items()},
    "a route without a body": ("GET", "/v2/health/live", 200),
    "no route": ("POST", "/no-such-route", 404),
}


@pytest.mark.parametrize("route", sorted(HUGE_LENGTH_ROUTES))
def test_a_content_length_beyond_64_bits_still_writes_its_log_line(
    server: RunningServer, route: str
) -> None:
    method, path, status = HUGE_LENGTH_ROUTES[route]
    request_id = "edge-huge-length-" + route.replace(" ", "-")
    headers = {"Content-Type": JSON, "Content-Length": HUGE_LENGTH, "X-Request-ID": request_id}
    answer = exchange(server, http(method, path, headers))
    assert answer.status == status, answer
    assert answer.headers["content-type"] == JSON
    if status == 413:
        assert answer.error_message() == f"the request body is over the limit of {LIMIT} bytes"
    line = _wait_for_line(server, request_id)
    assert (line["status"], line["request_bytes"]) == (status, HUGE_LENGTH)
    assert "could not be written" not in server.log()


# -- methods: OPTIONS, HEAD, unknown ones ---------------------------------------------------------

OPTIONS_ALLOW = {
    "/predict": "OPTIONS, POST",
    "/v2/models/mnist/infer": "OPTIONS, POST",
    "/v2/models/mnist/versions/1/infer": "OPTIONS, POST",
    "/v2/health/ready": "GET, HEAD, OPTIONS",
    "/feedback": "OPTIONS, POST",
    "/metrics": "GET, HEAD, OPTIONS",
    "/": "GET, HEAD, OPTIONS",
}


@pytest.mark.parametrize("path", sorted(OPTIONS_ALLOW))
def test_options_is_204_with_the_routes_methods_and_no_body(
    server: RunningServer, path: str
) -> None:
    answer = exchange(server, http("OPTIONS", path))
    assert answer.status == 204, answer
    assert answer.headers["allow"] == OPTIONS_ALLOW[path]
    assert answer.body == b""
    assert "content-type" not in answer.headers
    assert answer.headers["x-request-id"]


def test_options_asterisk_lists_the_methods_of_the_server(server: RunningServer) -> None:
    answer = exchange(server, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 204, answer
    assert answer.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, POST"
    assert answer.body == b""


@pytest.mark.parametrize("path", ["/nowhere", "/v2/nowhere"])
def test_options_on_no_route_is_a_json_404(server: RunningServer, path: str) -> None:
    assert_json_error(exchange(server, http("OPTIONS", path)), 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("FOO", "/predict", "OPTIONS, POST"),
        ("PROPFIND", "/", "GET, HEAD, OPTIONS"),
        ("TRACE", "/metrics", "GET, HEAD, OPTIONS"),
        ("DELETE", "/v2/models/mnist/infer", "OPTIONS, POST"),
        ("POST", "/v2/health/ready", "GET, HEAD, OPTIONS"),
        ("PUT", "/feedback", "OPTIONS, POST"),
    ],
)
def test_an_unknown_or_wrong_method_is_a_json_405_with_allow(
    server: RunningServer, method: str, path: str, allow: str
) -> None:
    answer = exchange(server, http(method, path))
    assert_json_error(answer, 405)
    assert ", ".join(sorted(answer.headers["allow"].split(", "))) == allow


def test_head_answers_like_get_without_a_body(server: RunningServer) -> None:
    answer = exchange(server, http("HEAD", "/v2/health/ready"), method="HEAD")
    assert (answer.status, answer.headers["content-type"]) == (200, JSON)
    wrong = exchange(server, http("HEAD", "/predict"), method="HEAD")
    assert (wrong.status, wrong.headers["content-type"]) == (405, JSON)
    assert wrong.headers["allow"] == "OPTIONS, POST"


# -- odd framings and headers: a 4xx JSON each, and the worker lives on ---------------------------

#: request bytes -> the status they get
HOSTILE = {
    "Content-Length and Transfer-Encoding": (
        http(
            "POST",
            "/predict",
            {"Content-Type": JSON, "Content-Length": "2", "Transfer-Encoding": "chunked"},
            b"2\r\n{}\r\n0\r\n\r\n",
        ),
        400,
    ),
    "Transfer-Encoding gzip": (
        http("POST", "/predict", {"Content-Type": JSON, "Transfer-Encoding": "gzip"}, b"{}"),
        400,
    ),
    "a negative Content-Length": (
        http("POST", "/predict", {"Content-Type": JSON, "Content-Length": "-1"}, b"{}"),
        400,
    ),
    "a chunk size not hex": (
        http(
            "POST",
            "/v2/models/mnist/infer",
            {"Content-Type": JSON, "Transfer-Encoding": "chunked"},
            b"zz\r\n{}\r\n0\r\n\r\n",
        ),
        400,
    ),
    "a chunk without its CRLF": (
        http(
            "POST",
            "/feedback",
            {"Content-Type": JSON, "Transfer-Encoding": "chunked"},
            b"2\r\n{}XX0\r\n\r\n",
        ),
        400,
    ),
    "an unknown expectation": (
        http("POST", "/predict", {"Content-Type": JSON, "Expect": "teapot"}, b"{}"),
        417,
    ),
    "an obsolete folded header": (b"GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
    "a NUL in a header": (b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400),
    "HTTP/0.9": (b"GET /\r\n\r\n", 400),
    "HTTP/9.9": (b"GET / HTTP/9.9\r\n\r\n", 400),
    "an HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "a path that is not ASCII": (b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "lines ended by a bare LF": (b"GET /v2/health/ready HTTP/1.1\nHost: x\n\n", 400),
    "trailer fields too large": (
        http(
            "POST",
            "/predict",
            {"Content-Type": JSON, "Transfer-Encoding": "chunked"},
            b"2\r\n{}\r\n0\r\nT: " + b"t" * 20000 + b"\r\n\r\n",
        ),
        400,
    ),
    "a WebSocket upgrade": (
        http("GET", "/metrics", {"Connection": "Upgrade", "Upgrade": "websocket"}),
        400,
    ),
    # more digits than int() converts (4,300): the buffering worker once died reading it
    "a Content-Length of 5,000 digits": (
        http("POST", "/predict", {"Content-Type": JSON, "Content-Length": "9" * 5000}, b"{}"),
        400,
    ),
    "a Content-Length of 5,000 digits, most of them leading zeros": (
        http(
            "POST", "/feedback", {"Content-Type": JSON, "Content-Length": "0" * 4999 + "2"}, b"{}"
        ),
        400,
    ),
    "a Content-Length of 5,000 digits after Expect": (
        http(
            "POST",
            "/v2/models/mnist/infer",
            {"Content-Type": JSON, "Expect": "100-continue", "Content-Length": "9" * 5000},
        ),
        413,
    ),
    "a Content-Length with a sign": (
        http("POST", "/predict", {"Content-Type": JSON, "Content-Length": "+2"}, b"{}"),
        400,
    ),
    "chunked twice": (
        http(
            "POST",
            "/predict",
            {"Content-Type": JSON, "Transfer-Encoding": "chunked, chunked"},
            b"2\r\n{}\r\n0\r\n\r\n",
        ),
        400,
    ),
    "two Host headers": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "two spaces in the request line": (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "a Content-Type that is not ASCII": (
        http("POST", "/predict", {"Content-Type": "\xff\xfe"}, b"{}"),
        415,
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_odd_framings_and_headers_get_a_json_4xx(
    server: RunningServer, worker_prefix: str, case: str
) -> None:
    request, status = HOSTILE[case]
    assert_json_error(exchange(server, request), status)  # at once: never the deadline's 408
    alive = requests.get(server.url + "/v2/health/live", timeout=10)
    assert alive.status_code == 200
    assert alive.headers["X-Request-ID"][:16] == worker_prefix  # the same worker process


def test_after_all_of_it_the_same_worker_still_predicts(
    server: RunningServer, worker_prefix: str
) -> None:
    answer = requests.post(
        server.url + "/predict",
        json={"images": [[0] * 784]},
        headers={"Authorization": f"Bearer {API}"},
        timeout=30,
    )
    assert answer.status_code in (200, 422), answer.text  # a blank image may be refused
    assert answer.headers["X-Request-ID"][:16] == worker_prefix
    assert "Traceback" not in server.log()


# -- numbers that are not numbers of the accepted range: refused, each named as sent -------------

#: more digits than int() converts (4,300); and beyond 64 bits, but fewer
HUGE_NUMBER = "1" + "0" * 5000
WIDE_NUMBER = "1" + "0" * 400
#: the error renderer cuts a run of more than 80 characters without a space; echoes stop at 60
CUT_RUN = HUGE_NUMBER[:80] + "…"
CUT_ECHO = HUGE_NUMBER[:60] + "…"
ACCEPTED_TYPES = (
    "application/json, image/png, image/jpeg, image/jpg, image/webp, image/bmp, image/gif, "
    "image/tiff, application/octet-stream, multipart/form-data"
)


def _seven_with(position: int, token: str) -> bytes:
    """docs/examples/v2-seven.json (UINT8) with ``data[position]`` written as ``token``."""
    document = json.loads((REPO_ROOT / "docs" / "examples" / "v2-seven.json").read_bytes())
    document["inputs"][0]["data"][position] = "@"
    return json.dumps(document).encode().replace(b'"@"', token.encode())


def _pixels_with(position: int, token: str) -> bytes:
    image: list[object] = [*[0] * 783, 255]
    image[position] = "@"
    return json.dumps({"images": [image]}).encode().replace(b'"@"', token.encode())


V2_INFER = "/v2/models/mnist/infer"
NOT_A_NUMBER = "input 'input': 'data' must hold numbers only (no strings, booleans or null)"
#: (path, headers, body, status, the whole message)
NUMBERS = {
    **{
        f"v2 {token} at {position}": (
            V2_INFER,
            {"Content-Type": JSON},
            _seven_with(position, token),
            400,
            f"{NOT_A_NUMBER}: data[{position}] is {token}",
        )
        for position in (0, 5, 400)
        for token in ("true", "false")
    },
    "v2 an integer of 401 digits": (
        V2_INFER,
        {"Content-Type": JSON},
        _seven_with(3, WIDE_NUMBER),
        400,
        f"input 'input': UINT8 values must be in 0..255, got {CUT_ECHO} at data[3]",
    ),
    "v2 an integer of 5001 digits": (
        V2_INFER,
        {"Content-Type": JSON},
        _seven_with(3, "-" + HUGE_NUMBER),
        400,
        f"input 'input': UINT8 values must be in 0..255, got -{CUT_ECHO[:-2]}… at data[3]",
    ),
    "v2 a header length of 5000 digits": (
        V2_INFER,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "9" * 5000},
        _seven_with(3, "0"),
        400,
        "Inference-Header-Content-Length says "
        + "9" * 80
        + f"… bytes but the whole body has only {len(_seven_with(3, '0'))}",
    ),
    "predict a pixel of 5001 digits": (
        "/predict",
        {"Content-Type": JSON},
        _pixels_with(300, HUGE_NUMBER),
        422,
        f"image 0, pixel 300: {CUT_RUN} is outside 0..255",
    ),
    "explain a pixel of 5001 digits": (
        "/v2/models/mnist/explain",
        {"Content-Type": JSON},
        _pixels_with(300, HUGE_NUMBER),
        422,
        f"image 0, pixel 300: {CUT_RUN} is outside 0..255",
    ),
    "feedback a label of 5001 digits": (
        "/feedback",
        {"Content-Type": JSON},
        b'{"request_id": "r", "label": ' + HUGE_NUMBER.encode() + b"}",
        422,
        f'"label" must be an integer 0..9 (the right digit), not {CUT_ECHO}',
    ),
    "predict a Content-Type of no media type": (
        "/predict",
        {"Content-Type": ";;;==="},
        b"{}",
        415,
        f"Content-Type ';;;===' is not accepted: it names no media type; send one of "
        f"{ACCEPTED_TYPES}",
    ),
    "feedback a Content-Type of no media type": (
        "/feedback",
        {"Content-Type": ";;;==="},
        b"{}",
        415,
        "Content-Type ';;;===' is not accepted: it names no media type; send application/json",
    ),
}


@pytest.mark.parametrize("case", sorted(NUMBERS))
def test_a_value_that_is_no_number_of_the_range_is_a_4xx_naming_it(
    server: RunningServer, worker_prefix: str, case: str
) -> None:
    path, headers, body, status, message = NUMBERS[case]
    answer = exchange(server, http("POST", path, headers, body))
    assert_json_error(answer, status)
    assert answer.error_message() == message
    assert "set_int_max_str_digits" not in answer.error_message()
    alive = requests.get(server.url + "/v2/health/live", timeout=10)
    assert alive.headers["X-Request-ID"][:16] == worker_prefix  # the same worker process


# -- the OpenAPI document declares every status a route really answers ---------------------------

#: path parameters: a value that exists, and one that does not
PARAMETERS = {
    "model": ("mnist", "fashion"),
    "version": ("1", "99"),
    "name": ("app.js", "no-such-file.txt"),
    "request_id": ("edge-no-such-request", "r" * 300),
}
#: routes whose plain (empty or ``{}``) request would change what serves: only bad ones are sent
STATE_CHANGING = "/v2/repository/models/"
BAD_CHUNK = b"zz\r\n{}\r\n0\r\n\r\n"


def _fill(template: str, missing: str = "") -> str:
    """The path of ``template`` with existing values, except ``missing`` (one that does not)."""
    path = template
    for name, (present, absent) in PARAMETERS.items():
        path = path.replace("{" + name + "}", absent if name == missing else present)
    assert "{" not in path, path
    return path


def _bad_requests(template: str, method: str) -> list[bytes]:
    """Every kind of bad request this module knows, as ``method`` on the route ``template``."""
    method = method.upper()
    path = _fill(template)
    json_type = {"Content-Type": JSON}
    sent = [
        http(method, path + "?q=" + "q" * 5000),  # 414
        http(method, path, {"X-Big": "b" * 9000}),  # 431
        http(method, path, {"Bad Header": "1"}),  # 400 from gunicorn
        http(method, path, {"Authorization": "Bearer wrong"}),  # 401 where a token is needed
    ]
    if not template.startswith(STATE_CHANGING):  # a plain request there would do what it says
        sent.append(http(method, path + "?top_k=many&version=x&limit=-1"))  # odd parameters
    sent += [
        http(method, _fill(template, name)) for name in PARAMETERS if "{" + name + "}" in template
    ]
    if method == "POST":
        sent += [
            http(method, path, json_type, b"{"),  # malformed JSON
            http(method, path, {"Content-Type": "text/csv"}, b"1,2"),
            http(method, path, {**json_type, "Content-Encoding": "br"}, b"xx"),
            http(method, path, {**json_type, "Content-Encoding": "gzip"}, b"xx"),
            http(method, path, json_type, OVERSIZED),  # 413
            http(method, path, {**json_type, "Expect": "100-continue", "Content-Length": "100001"}),
            http(
                method,
                path,
                {**json_type, "Transfer-Encoding": "chunked"},
                b"zz\r\n{}\r\n0\r\n\r\n",
            ),
            http(method, _fill(template, "model"), json_type, b"{"),
        ]
        if not template.startswith(STATE_CHANGING):
            sent += [http(method, path, json_type, b"{}"), http(method, path, json_type)]
    else:
        sent.append(http(method, path))
    return sent


def _slow_heads(server: RunningServer, operations: list[tuple[str, str]]) -> dict[str, int]:
    """The status each operation answers to a head that never ends (all at once: one deadline)."""
    sockets = {}
    for template, method in operations:
        sock = socket.create_connection(_address(server), timeout=15)
        sock.sendall(f"{method.upper()} {_fill(template)} HTTP/1.1\r\nHost: x\r\nX-Slo".encode())
        sockets[f"{method} {template}"] = sock
    try:
        return {key: _read_answer(sock).status for key, sock in sockets.items()}
    finally:
        for sock in sockets.values():
            sock.close()


def test_every_status_a_route_answers_is_in_the_openapi_document(server: RunningServer) -> None:
    document = requests.get(server.url + "/openapi.json", timeout=10).json()
    operations = [
        (template, method)
        for template, item in document["paths"].items()
        for method in item
        if method != "parameters"
    ]
    assert len(operations) > 30
    seen: dict[str, set[int]] = {f"{method} {template}": set() for template, method in operations}
    for template, method in operations:
        for request in _bad_requests(template, method):
            answer = exchange(server, request)
            assert answer.status != 500, (template, method, request[:200], answer)
            seen[f"{method} {template}"].add(answer.status)
    for key, status in _slow_heads(server, operations).items():
        seen[key].add(status)
    # only bad requests went to the routes that change what serves: the model still serves
    assert exchange(server, http("GET", "/v2/health/ready")).status == 200
    undeclared = {}
    for template, method in operations:
        declared = {int(status) for status in document["paths"][template][method]["responses"]}
        missing = seen[f"{method} {template}"] - declared
        if missing:
            undeclared[f"{method} {template}"] = sorted(missing)
    assert not undeclared, json.dumps(undeclared, indent=0)
    # the requests reached the routes' own checks, not only the server's
    assert {400, 401, 404, 408, 413, 414, 415, 431} <= set().union(*seen.values())


def test_without_a_model_every_status_a_route_answers_is_declared_too(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """An empty repository: the routes answer 503 (or 404, 409...) where they would serve."""
    models = tmp_path_factory.mktemp("no-model")
    (models / "mnist").mkdir()
    empty = start_gunicorn(
        tmp_path_factory.mktemp("hostile-no-model"),
        {"MODEL_DIR": str(models), "ADMIN_TOKEN": ADMIN, "API_TOKENS": API},
        workers=1,
        wait=False,
    )
    try:
        deadline = time.monotonic() + 60
        while "no valid model in" not in empty.log():
            assert time.monotonic() < deadline and empty.alive(), empty.log()
            time.sleep(0.1)
        document = requests.get(empty.url + "/openapi.json", timeout=10).json()
        pixels = {"images": [[0] * 783 + [255]]}
        tensor = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8"}]}
        tensor["inputs"][0]["data"] = pixels["images"][0]
        undeclared = {}
        for template, item in document["paths"].items():
            for method in (name for name in item if name != "parameters"):
                sent = [http(method.upper(), _fill(template))]
                if method == "post":
                    body = json.dumps(pixels if template == "/predict" else tensor).encode()
                    sent.append(http("POST", _fill(template), {"Content-Type": JSON}, body))
                seen = {exchange(empty, request).status for request in sent}
                declared = {int(status) for status in item[method]["responses"]}
                if seen - declared:
                    undeclared[f"{method} {template}"] = sorted(seen - declared)
        assert not undeclared, json.dumps(undeclared, indent=0)
        answer = exchange(empty, http("GET", "/v2/health/ready"))
        assert answer.status == 503
    finally:
        empty.stop()


def test_every_method_a_path_does_not_take_is_a_declared_405_with_allow(
    server: RunningServer,
) -> None:
    """Every path of the document, with every method it does not document: a JSON 405 whose
    Allow header lists exactly the documented methods, and a 405 each operation declares."""
    document = requests.get(server.url + "/openapi.json", timeout=10).json()
    wrong = {}
    for template, item in document["paths"].items():
        documented = {name.upper() for name in item if name != "parameters"}
        for operation in documented:
            if "405" not in item[operation.lower()]["responses"]:
                wrong[f"{operation} {template}"] = "405 not declared"
        for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - documented):
            answer = exchange(server, http(method, _fill(template)))
            allowed = set(answer.headers.get("allow", "").split(", ")) - {"HEAD", "OPTIONS"}
            if answer.status != 405 or allowed != documented:
                wrong[f"{method} {template}"] = f"{answer.status} allow={sorted(allowed)}"
            else:
                assert_json_error(answer, 405)
    assert not wrong, json.dumps(wrong, indent=0)


@pytest.mark.parametrize(
    ("name", "kind"), [("app.js", "text/javascript"), ("style.css", "text/css")]
)
def test_a_page_asset_has_a_content_type_the_document_declares(
    server: RunningServer, name: str, kind: str
) -> None:
    document = requests.get(server.url + "/openapi.json", timeout=10).json()
    declared = document["paths"]["/page/{name}"]["get"]["responses"]["200"]["content"]
    answer = requests.get(f"{server.url}/page/{name}", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].partition(";")[0] == kind
    assert kind in declared
