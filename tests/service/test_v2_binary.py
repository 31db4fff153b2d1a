"""The binary tensor data codec: header lengths, splitting, exact sizes, BYTES elements."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest
from tritonclient.http import InferResult
from tritonclient.utils import deserialize_bytes_tensor

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.v2.binary import (
    BinarySection,
    binary_data_size,
    decompress_body,
    encode_bytes_elements,
    join_body,
    parse_header_length,
    split_body,
)


def test_absent_header_length_means_all_json() -> None:
    assert parse_header_length(None, 100) is None


@pytest.mark.parametrize("value, body_size, expected", [("12", 40, 12), (" 40 ", 40, 40)])
def test_header_length_is_read(value: str, body_size: int, expected: int) -> None:
    assert parse_header_length(value, body_size) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("-5", "non-negative integer"),
        ("abc", "non-negative integer"),
        ("1.5", "non-negative integer"),
        ("", "non-negative integer"),
        ("+7", "non-negative integer"),
        ("\u00b2", "non-negative integer"),  # a unicode digit that str.isdigit accepts
        ("0", "cannot be empty"),
        ("41", "only 40"),  # the header claims more bytes than the body has
        ("9" * 40, "only 40"),
    ],
)
def test_header_length_lies_are_rejected(value: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_header_length(value, 40)


def test_split_body_separates_header_and_binary() -> None:
    header = json.dumps({"inputs": []}).encode()
    body = header + b"\x01\x02\x03"
    parsed, binary = split_body(body, len(header))
    assert parsed == {"inputs": []}
    assert len(binary) == 3
    assert bytes(binary.take(3, "x")) == b"\x01\x02\x03"
    binary.finish()


def test_split_body_without_header_length_is_whole_json() -> None:
    parsed, binary = split_body(b'{"id": "7"}', None)
    assert parsed == {"id": "7"}
    assert len(binary) == 0


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b'{"id": "7"}', 5, "first 5 bytes"),  # the length cuts the JSON short
        (b"[1, 2]", None, "JSON object"),
        (b"not json", None, "not a valid JSON"),
        (b'{"id": "\xff\xfe"}', None, "not a valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, None, "not a valid JSON"),  # hostile nesting depth
        (b"", None, "the body is empty"),
    ],
)
def test_split_body_rejects_bad_headers(
    body: bytes, header_length: int | None, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        split_body(body, header_length)


def test_take_reads_in_place_without_copying() -> None:
    body = b'{"a":1}' + bytes(range(16))
    _, binary = split_body(body, 7)
    chunk = binary.take(16, "input")
    array = np.frombuffer(chunk, dtype=np.uint8)
    assert array.tolist() == list(range(16))
    assert np.shares_memory(array, np.frombuffer(body, dtype=np.uint8))


def test_take_past_the_end_is_a_truncated_body() -> None:
    binary = BinarySection(memoryview(b"\x00" * 10))
    binary.take(4, "first")
    with pytest.raises(BadRequest, match="only 6 bytes"):
        binary.take(7, "second")


def test_leftover_bytes_mean_sizes_do_not_add_up() -> None:
    binary = BinarySection(memoryview(b"\x00" * 10))
    binary.take(8, "input")
    with pytest.raises(BadRequest, match="2 bytes of binary data after the last tensor"):
        binary.finish()


@pytest.mark.parametrize("size", [-1, -3136, 1.5, "8", True, [8]])
def test_binary_data_size_must_be_a_non_negative_integer(size: object) -> None:
    with pytest.raises(BadRequest, match="binary_data_size"):
        binary_data_size({"binary_data_size": size}, "input")


def test_binary_data_size_absent_or_given() -> None:
    assert binary_data_size({}, "input") is None
    assert binary_data_size({"binary_data_size": 0}, "input") == 0
    assert binary_data_size({"binary_data_size": 3136}, "input") == 3136


def test_bytes_elements_round_trip_through_the_triton_client() -> None:
    elements = [b"0.981234:7", b"", b"0.000001:3", "\u00e9".encode()]
    decoded = deserialize_bytes_tensor(encode_bytes_elements(elements))
    assert [bytes(item) for item in decoded] == elements


def test_join_body_all_json_has_no_header_length() -> None:
    body, header_length = join_body({"outputs": []}, [])
    assert header_length is None
    assert json.loads(body) == {"outputs": []}


def test_join_body_with_binary_decodes_in_the_triton_client() -> None:
    probabilities = np.arange(20, dtype="<f4").reshape(2, 10) / 20
    labels = np.array([9, 4], dtype="<i8")
    header = {
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [2, 10],
                "parameters": {"binary_data_size": probabilities.nbytes},
            },
            {
                "name": "label",
                "datatype": "INT64",
                "shape": [2],
                "parameters": {"binary_data_size": labels.nbytes},
            },
        ]
    }
    body, header_length = join_body(header, [probabilities.tobytes(), labels.tobytes()])
    assert header_length is not None
    assert len(body) == header_length + probabilities.nbytes + labels.nbytes
    result = InferResult.from_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", gzip.compress),
        (
            "deflate",
            zlib.compress,
        ),  # "deflate" on the wire is zlib framing (tritonclient, RFC 9110)
        (" GZIP ", gzip.compress),
    ],
)
def test_compressed_bodies_are_inflated(encoding: str, compress: Any) -> None:
    body = b'{"inputs": []}' + bytes(range(256)) * 10
    assert decompress_body(compress(body), encoding, limit=len(body)) == body


@pytest.mark.parametrize("encoding", [None, "identity"])
def test_plain_bodies_pass_through(encoding: str | None) -> None:
    assert decompress_body(b"{}", encoding, limit=1) == b"{}"


def test_a_decompression_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(bytes(16 * 1024 * 1024))  # 16 MiB of zeros in about 16 KiB
    assert len(bomb) < 40_000
    with pytest.raises(PayloadTooLarge, match="more than the limit of 1048576"):
        decompress_body(bomb, "gzip", limit=1024 * 1024)


@pytest.mark.parametrize(
    "body, encoding, error, message",
    [
        (b"not gzip at all", "gzip", BadRequest, "cannot be decompressed"),
        (gzip.compress(b"{}" * 1000)[:-12], "gzip", BadRequest, "truncated"),
        (zlib.compress(b"{}") + b"tail", "deflate", BadRequest, "bytes after its end"),
        (b"{}", "br", UnsupportedMediaType, "'br' is not supported"),
    ],
)
def test_broken_or_unknown_encodings_are_rejected(
    body: bytes, encoding: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        decompress_body(body, encoding, limit=1 << 20)
