"""The binary tensor data extension of the Open Inference Protocol, as bytes in and bytes out.

A body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensors
(little-endian, row-major, no padding) in the order the header lists them. Pure functions on
bytes, no Flask: the HTTP layer lives in service/v2.py.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from service.errors import TOO_DEEP, BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.json_body import check_depth, check_text, written_float, written_int

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES_LENGTH_PREFIX = struct.Struct("<I")
#: zlib window bits per Content-Encoding: gzip framing; "deflate" is zlib framing (tritonclient)
CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before Content-Encoding, never inflating past ``limit`` bytes."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in CONTENT_ENCODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none"
        )
    inflater = zlib.decompressobj(CONTENT_ENCODINGS[name])
    try:
        # max_length stops a decompression bomb after limit + 1 bytes, whatever it would become
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the {name} body cannot be decompressed: {exc}") from exc
    if len(plain) > limit:
        raise PayloadTooLarge(f"the {name} body inflates to more than the limit of {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise BadRequest(f"the {name} body is truncated or has bytes after its end")
    return plain


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """The JSON header's length in bytes from the header's value (None when absent)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}")
    digits = text.lstrip("0")
    if len(digits) > len(str(body_size)):
        # more than the body has, and maybe more digits than int() converts: never convert
        raise BadRequest(
            f"{HEADER_LENGTH} says {digits} bytes but the whole body has only {body_size}"
        )
    length = int(text)
    if length == 0:
        raise BadRequest(f"{HEADER_LENGTH} is 0: the JSON inference header cannot be empty")
    if length > body_size:
        raise BadRequest(
            f"{HEADER_LENGTH} says {length} bytes but the whole body has only {body_size}"
        )
    return length


def _parse_header(text: memoryview) -> Any:
    try:
        header = orjson.loads(text)  # fast and strict: the common path
    except orjson.JSONDecodeError:
        pass
    else:
        if not _integers_read_as_floats(header):
            return header
    # the standard parser, on this rare path, gives the precise message, and reads NaN so that
    # the range check can name it ("values must be finite"); a number too large for a float
    # (1e400) or an integer of more digits than Python converts is a WrittenNumber, out of
    # every range and named as written (never int()'s advice, never "NaN"); an integer beyond
    # 64 bits, which orjson reads as a float, is the int written
    return json.loads(bytes(text), parse_int=written_int, parse_float=written_float)


def _integers_read_as_floats(header: Any) -> bool:
    """Whether an input's shape or parameters (the numbers messages name) hold a whole float
    beyond 64 bits: orjson's reading of an integer that large (or of a float written so)."""
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(inputs, list):
        return False
    for tensor in inputs:
        if not isinstance(tensor, dict):
            continue
        shape, parameters = tensor.get("shape"), tensor.get("parameters")
        values = [*(shape if isinstance(shape, list) else ())]
        values += parameters.values() if isinstance(parameters, dict) else ()
        if any(type(value) is float and abs(value) >= 2**63 for value in values):
            return True
    return False


def split_body(body: bytes, header_length: int | None) -> tuple[dict[str, Any], BinarySection]:
    """The parsed JSON header and the binary section that follows it (empty when there is none)."""
    end = len(body) if header_length is None else header_length
    if not body:
        raise BadRequest('the body is empty; send a JSON inference request {"inputs": [...]}')
    try:
        header = _parse_header(memoryview(body)[:end])
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON and bad UTF-8; RecursionError a hostile nesting depth
        if header_length is None:
            hint = ""
            if _json_then_more(body):
                hint = f" (binary tensors after the JSON need the {HEADER_LENGTH} header)"
            where = "the body"
        else:
            hint = ""
            where = f"the first {end} bytes of the body ({HEADER_LENGTH})"
        reason = TOO_DEEP if isinstance(exc, RecursionError) else str(exc)
        raise BadRequest(f"{where} is not a valid JSON inference request: {reason}{hint}") from exc
    check_depth(header, memoryview(body)[:end])
    check_text(header, memoryview(body)[:end], BadRequest)  # a lone surrogate: no UTF-8 answer
    if not isinstance(header, dict):
        raise BadRequest("the inference request must be a JSON object")
    return header, BinarySection(memoryview(body)[end:])


def _json_then_more(body: bytes) -> bool:
    """Whether ``body`` starts with a whole JSON object and holds more after it: JSON followed
    by binary tensors, sent without the header that says where the JSON ends."""
    text = body.decode("utf-8", "replace").lstrip()
    if not text.startswith("{"):
        return False
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return False
    return bool(text[end:].strip())


def binary_data_size(parameters: Mapping[str, Any], tensor: str) -> int | None:
    """The ``binary_data_size`` parameter of a tensor, validated (None when absent)."""
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(
            f"tensor {tensor!r}: binary_data_size must be a non-negative integer, got {size!r}"
        )
    return size


class BinarySection:
    """The raw bytes after the JSON header, handed out tensor by tensor without copying."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def __len__(self) -> int:
        return len(self._data)

    def take(self, size: int, tensor: str) -> memoryview:
        """The next ``size`` bytes, for ``tensor``; BadRequest when the body ends before them."""
        left = len(self._data) - self._offset
        if size > left:
            raise BadRequest(
                f"tensor {tensor!r}: binary_data_size is {size} but only {left} bytes of binary "
                "data follow the JSON header (truncated body or wrong size)"
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def finish(self) -> None:
        """Check that the tensors used every byte: extra bytes mean the sizes do not add up."""
        left = len(self._data) - self._offset
        if left:
            raise BadRequest(
                f"{left} bytes of binary data after the last tensor: the binary_data_size "
                f"values and {HEADER_LENGTH} do not add up to the body length"
            )


def encode_bytes_elements(elements: Iterable[bytes]) -> bytes:
    """A BYTES tensor as binary data: each element is a 4-byte little-endian length + the bytes."""
    return b"".join(BYTES_LENGTH_PREFIX.pack(len(item)) + item for item in elements)


def join_body(header: Mapping[str, Any], chunks: Sequence[bytes]) -> tuple[bytes, int | None]:
    """The response body and the header length to announce (None when it is all JSON)."""
    # NaN can never reach here (inputs are range-checked, softmax outputs are finite)
    text = orjson.dumps(header)
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)
