"""RequestReading: when the bytes a client sent so far make one whole HTTP/1.x request."""

from __future__ import annotations

import pytest

from service.request_buffering import ReadDeadlines, RequestReading

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
    ],
)
def test_complete_when_the_request_is(pieces: list[bytes], verdicts: list[bool | None]) -> None:
    assert _feed(pieces) == verdicts


def test_chunked_body_over_the_limit_goes_to_the_parser() -> None:
    big = b"".join(b"64\r\n" + b"a" * 100 + b"\r\n" for _ in range(11))
    assert _feed([HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + big]) == [True]


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
