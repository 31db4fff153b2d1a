"""JSON arrays of numbers read straight into numpy, for bodies in the shapes clients send.

A batch of 256 MNIST images as JSON holds 200,704 numbers. Parsing them into Python lists and
then converting the lists with numpy costs several times the model's own time, so the two request
forms that carry pixel arrays are read here without any Python list:

- ``pixel_rows``: the simple API's ``{"images": [[784 numbers], ...]}`` (or 28 rows of 28);
- ``infer_request_with_data``: an Open Inference Protocol JSON request whose one input carries
  a flat ``"data"`` array of numbers.

How: simdjson (pysimdjson: a strict, validating JSON parser) parses the body, byte-level checks
prove the shape (how many lists the body opens, the bracket and comma pattern around the data),
and simdjson copies the numbers into one buffer in C, which numpy takes as it is. Anything else,
every malformed body included, returns None: the caller then parses it the ordinary way, which
names what is wrong. So the arrays built here are exactly the ones the ordinary path builds (same
values, same dtype) and no error message changes. Pure functions, no Flask.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import simdjson

from service.model.contract import IMAGE_SIDE, N_PIXELS

#: what a JSON number may be made of, and white space, which may stand between any two tokens
_NUMBER_BYTES = b"0123456789.-+eE"
_SPACE_BYTES = b" \t\r\n"
#: the errors pysimdjson raises on a body it refuses (bad JSON, a number it cannot represent, a
#: value of the wrong type for a buffer); RuntimeError also covers its big-integer error
_PARSE_ERRORS = (ValueError, TypeError, RuntimeError, KeyError, IndexError)


def pixel_rows(body: bytes, max_batch: int) -> np.ndarray | None:
    """float32 [N, 784] of the JSON numbers in ``{"images": [...]}``, unchecked for range.

    The body must be exactly one object whose one key is ``"images"``, holding N (1..max_batch)
    lists of 784 numbers or N lists of 28 lists of 28 numbers. Values are converted to float32 as
    ``np.array(images, dtype=np.float32)`` would (correctly rounded doubles, then float32).
    Returns None for any other body, valid or not: the caller's ordinary parser handles it.
    """
    try:
        document = simdjson.Parser().parse(body)  # strict JSON, numbers' syntax included
        if not isinstance(document, simdjson.Object) or list(document.keys()) != ["images"]:
            return None
        images = document["images"]
        if not isinstance(images, simdjson.Array) or not 0 < len(images) <= max_batch:
            return None
        count = len(images)
        # as_buffer below flattens any nesting and refuses strings, booleans and null, so what
        # is left to prove is the shape. The only string is the key, so every "[" in the body
        # opens a list: N + 1 of them are "images" and N images, and no value is a list.
        lists = body.count(b"[")
        if lists == count + 1:
            for index in range(count):
                image = images[index]
                if not isinstance(image, simdjson.Array) or len(image) != N_PIXELS:
                    return None
        elif lists != count * (IMAGE_SIDE + 1) + 1 or not _square_images(body, count):
            return None
        values = np.frombuffer(images.as_buffer(of_type="d"), dtype=np.float64)
    except _PARSE_ERRORS:
        return None
    if values.size != count * N_PIXELS:
        return None
    with np.errstate(over="ignore"):  # 1e39 becomes inf: the range check names it as sent
        return values.astype(np.float32).reshape(count, N_PIXELS)


def _square_images(body: bytes, count: int) -> bool:
    """True when the lists and commas of ``body`` are those of ``count`` images of 28 x 28."""
    # Without numbers and spaces, such a body is the key's letters and a fixed pattern of
    # brackets and commas: one comparison checks every row's length.
    return body.translate(None, _NUMBER_BYTES + _SPACE_BYTES) == _square_pattern(count)


@functools.lru_cache(maxsize=16)
def _square_pattern(count: int) -> bytes:
    """The brackets and commas of ``{"images": [...]}`` for ``count`` images of 28 rows.

    ``"images"`` keeps only the letters that are not number bytes (the ``e`` goes).
    """
    row = b"[" + b"," * (IMAGE_SIDE - 1) + b"]"
    image = b"[" + b",".join([row] * IMAGE_SIDE) + b"]"
    return b'{"imags":[' + b",".join([image] * count) + b"]}"


def infer_request_with_data(body: bytes) -> dict[str, Any] | None:
    """An all-JSON inference request as Python objects, its input's ``data`` as a 1-D array.

    The body must be a JSON object with no backslash anywhere, ``"inputs"`` a list of one object
    whose ``"data"`` is a flat list of numbers, and ``"data"`` used nowhere else as a key or
    string. ``data`` becomes what ``np.array(data)`` makes of the list: int64 when every number
    is written as an integer, float64 otherwise. Everything else in the request is plain Python,
    as ``orjson.loads`` gives it. Returns None for any other body: the caller parses it as usual.
    """
    if b"\\" in body or body.count(b'"data"') != 1:
        # with no escapes, the bytes "data" can only be that key (or a whole string "data")
        return None
    pattern = body.translate(None, b"0123456789-," + _SPACE_BYTES)
    if pattern.count(b'"data":') != 1:
        return None  # a key such as "d1ata" reads "data" here: then this is not proof enough
    start = pattern.find(b'"data":[')
    if start < 0:
        return None
    start += len(b'"data":[')
    end = pattern.find(b"]", start)
    # What is left of the data list between its brackets: nothing when every number is an
    # integer, only the bytes of fractions and exponents when some are not; a nested list, a
    # string, true, false or null would leave other bytes.
    rest = pattern[start:end]
    if end < 0 or rest.translate(None, b".+eE"):
        return None
    integers = not rest
    try:
        document = simdjson.Parser().parse(body)
        if not isinstance(document, simdjson.Object) or _has_repeated_keys(document):
            return None
        inputs = document["inputs"]
        if not isinstance(inputs, simdjson.Array) or len(inputs) != 1:
            return None
        tensor = inputs[0]
        if not isinstance(tensor, simdjson.Object) or _has_repeated_keys(tensor):
            return None
        data = tensor["data"]
        if not isinstance(data, simdjson.Array):
            return None
        if integers:
            array = np.frombuffer(data.as_buffer(of_type="i"), dtype=np.int64)
        else:
            array = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
        # each key, then its value: items() would convert "data" to Python objects too
        plain_tensor = {key: array if key == "data" else _plain(tensor[key]) for key in tensor}
        return {
            key: [plain_tensor] if key == "inputs" else _plain(document[key]) for key in document
        }
    except _PARSE_ERRORS:
        return None


def _has_repeated_keys(holder: simdjson.Object) -> bool:
    # orjson keeps the last of repeated keys, simdjson's lookup the first: leave them to orjson
    return len(set(holder.keys())) != len(holder)


def _plain(value: Any) -> Any:
    """A simdjson value as the Python object orjson would give (dict, list or a scalar)."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value
