"""JSON request bodies of the routes answered by Flask (admin, feedback), and echoing client
input in error messages.

One parser, so that every such route tells the same things the same way: ``malformed JSON: ...``
(NaN and Infinity included: they are not JSON), :data:`service.errors.TOO_DEEP` for a hostile
nesting depth, and a field outside the route's own refused by name. Echoes of client values are
cut at :data:`MAX_ECHO` characters with an ellipsis, and never recurse into a deep value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from typing import Any

import orjson

from service.errors import TOO_DEEP, BadRequest, InvalidInput, ServiceError

#: the longest echo of a client's value in an error message (characters, before the ellipsis)
MAX_ECHO = 60
#: orjson's own nesting limit is 1024; the standard parser's recursion limit is about 1000:
#: this depth (and more) is refused the one way, whichever parser met it
MAX_DEPTH = 1000


#: the longest run of characters without a space an error message keeps (client input echoed
#: anywhere: a 400-digit number, a 3000-character method); longer runs are cut with an ellipsis
MAX_RUN = 80
_LONG_RUN = re.compile(rf"\S{{{MAX_RUN + 1},}}")


def cut_long_runs(message: str) -> str:
    """``message`` with every run of more than :data:`MAX_RUN` non-space characters cut to its
    first MAX_RUN and an ellipsis: the error renderer's guard for echoes of client input."""
    if len(message) <= MAX_RUN:
        return message
    return _LONG_RUN.sub(lambda found: found.group()[:MAX_RUN] + "…", message)


def shorten(text: str, limit: int = MAX_ECHO) -> str:
    """``text``, or its first ``limit`` characters and an ellipsis when it is longer."""
    return text if len(text) <= limit else text[:limit] + "…"


class WrittenNumber(float):
    """A JSON number too large for a float (``1e999``), or an integer of more digits than Python
    converts: infinite, but echoed as written."""

    text: str

    def __new__(cls, text: str) -> WrittenNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def echo(value: Any, limit: int = MAX_ECHO) -> str:
    """A client's JSON value as it would be written, for an error message (at most ``limit``
    characters and an ellipsis); a value too deep to write is named by its kind."""
    if isinstance(value, WrittenNumber):
        text = value.text
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)  # orjson writes no integer beyond 64 bits
    else:
        try:
            text = orjson.dumps(value).decode()
        except (orjson.JSONEncodeError, TypeError):  # nested deeper than orjson writes
            text = "a list" if isinstance(value, list) else "an object"
    return shorten(text, limit)


def shown(value: Any, limit: int = MAX_ECHO) -> str:
    """``value`` as Python writes it (``'x'``, ``True``) when it is flat, as :func:`echo` when it
    is a list or object (never recursing into a hostile depth); cut at ``limit`` characters."""
    if isinstance(value, list | dict):
        return echo(value, limit)
    return shorten(repr(value), limit)


def unaccepted_type(mimetype: str, sent: str, accepted: str) -> str:
    """The message for a Content-Type a route does not take (``sent``, its media type
    ``mimetype``): it names the media type, says none was sent, or quotes a header that names no
    media type (``;;;===``); ``accepted`` ends it, as in ``send {accepted}``."""
    if mimetype or not sent.strip():
        return f"{shorten(mimetype) or 'no Content-Type'} is not accepted; send {accepted}"
    return (
        f"Content-Type {shorten(sent)!r} is not accepted: it names no media type; send {accepted}"
    )


#: a run of digits as long as the shortest integer beyond 64 bits (or longer)
_LONG_DIGITS = re.compile(rb"\d{19}")


def _no_constant(name: str) -> Any:
    raise BadRequest(f"malformed JSON: {name} is not JSON (a number must be finite)")


def parse_json(body: bytes) -> Any:
    """The JSON document of ``body``; BadRequest (400) says what is wrong with a malformed one.

    Strict JSON (RFC 8259): NaN, Infinity and -Infinity are refused. A number too large for a
    float (``1e999``) is read as a :class:`WrittenNumber` and an integer beyond 64 bits as the
    int written, so that the route's range check names it as written.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        orjson_error = exc
    else:
        if not _LONG_DIGITS.search(body):
            return document
        # orjson reads an integer beyond 64 bits as a float (99999999999999999999999 as 1e+23):
        # the standard parser keeps it the integer written, for the route's check to name
        return parse_json_slowly(body)
    if "depth limit" in str(orjson_error):
        raise BadRequest(f"malformed JSON: {TOO_DEEP}")
    return parse_json_slowly(body)


def parse_json_slowly(body: bytes, on_constant: Callable[[str], Any] = _no_constant) -> Any:
    """``body`` read by the standard parser, which says where a bad document breaks and reads
    ``1e999`` as a :class:`WrittenNumber`; ``on_constant`` raises for NaN and Infinity (by
    default a 400). BadRequest (400) for a malformed or too deeply nested document; InvalidInput
    (422) for a string that is not valid text (:func:`check_text`)."""
    try:
        document = json.loads(
            body, parse_constant=on_constant, parse_float=written_float, parse_int=written_int
        )
    except RecursionError:
        raise BadRequest(f"malformed JSON: {TOO_DEEP}") from None
    except ValueError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    check_text(document, body)  # the standard parser keeps lone surrogates; orjson refuses them
    return document


def written_int(text: str) -> int | float:
    """A JSON integer's int, a :class:`WrittenNumber` when it has more digits than Python converts
    (``sys.get_int_max_str_digits()``, 4300 by default): out of every range, named as written,
    never the conversion's own advice (the standard parser's ``parse_int``)."""
    try:
        return int(text)
    except ValueError:
        return WrittenNumber(text)


def written_float(text: str) -> float:
    """A JSON number's float, a :class:`WrittenNumber` when it is too large for one (the
    standard parser's ``parse_float``)."""
    number = float(text)
    return number if number not in (float("inf"), float("-inf")) else WrittenNumber(text)


def depth(value: Any) -> int:
    """How many lists and objects are inside each other in ``value`` (0 for a number)."""
    deepest = 0
    level = [value]
    while level:
        containers = [item for item in level if isinstance(item, list | dict)]
        if not containers:
            break
        deepest += 1
        level = [
            child
            for item in containers
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return deepest


def check_depth(document: Any, body: bytes | memoryview) -> None:
    """BadRequest with :data:`TOO_DEEP` when ``document`` (parsed from ``body``) holds lists and
    objects :data:`MAX_DEPTH` deep; a body with fewer opening brackets is passed at once."""
    data = bytes(body) if isinstance(body, memoryview) else body
    if data.count(b"[") + data.count(b"{") >= MAX_DEPTH and depth(document) >= MAX_DEPTH:
        raise BadRequest(f"malformed JSON: {TOO_DEEP}")


#: a lone half of a UTF-16 surrogate pair: a Python string holds it, UTF-8 cannot encode it (the
#: store, orjson and every answer would fail on it)
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _not_text(text: str) -> re.Match[str] | None:
    return None if text.isascii() else _SURROGATE.search(text)


def _path(steps: tuple[Any, ...] | None) -> str:
    """The steps from the document to a value, as ``inputs[0].name``: ``steps`` is
    ``("name", (0, ("inputs", None)))``, each step with its parent's (a linked list, so that the
    walk copies nothing per level)."""
    parts: list[str] = []
    while steps is not None:
        step, steps = steps
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _NAME.fullmatch(step):
            parts.append(f".{step}")
        else:
            parts.append(f"[{echo(step)}]")
    return "".join(reversed(parts)).removeprefix(".")


def not_text(document: Any) -> str | None:
    """What in ``document`` (parsed JSON) is a string that is not valid Unicode text (it holds a
    lone UTF-16 surrogate, ``"\\ud800"``), said for an error message; None when there is none.
    The first such string in the document is named, a field's name before its value."""
    pending: list[tuple[Any, tuple[Any, ...] | None]] = [(document, None)]
    while pending:
        value, steps = pending.pop()
        if isinstance(value, str):
            found = _not_text(value)
            if found is None:
                continue
            where = f"field {_path(steps)}" if steps else "the JSON document"
            if steps is not None and isinstance(steps[0], int):
                where = f"item {_path(steps)}"
        elif isinstance(value, dict):
            bad_key = next((key for key in value if _not_text(key)), None)
            if bad_key is None:
                pending.extend((value[key], (key, steps)) for key in reversed(value))
                continue
            value, found = bad_key, _not_text(bad_key)
            where = f"a field name in {_path(steps) if steps else 'the JSON document'}"
        elif isinstance(value, list):
            pending.extend((value[index], (index, steps)) for index in reversed(range(len(value))))
            continue
        else:
            continue
        assert found is not None
        return (
            f"{where} is not valid text: {shown(value)} holds U+{ord(found.group()):04X}, a lone "
            "UTF-16 surrogate that UTF-8 cannot encode"
        )
    return None


def check_text(
    document: Any, body: bytes | memoryview, error: type[ServiceError] = InvalidInput
) -> None:
    """``error`` (by default InvalidInput, 422) naming the first string in ``document`` (parsed
    from ``body`` by the standard parser) that is not valid text: a lone surrogate, from a
    ``\\ud800`` escape or bytes decoded with ``surrogatepass``. orjson refuses such a body; the
    standard parser, which reads what orjson refused, keeps them. A body in ASCII without a
    ``\\u`` escape holds none, and is passed at once."""
    data = bytes(body) if isinstance(body, memoryview) else body
    if data.isascii() and b"\\u" not in data:
        return
    problem = not_text(document)
    if problem is not None:
        raise error(problem)


def json_object(body: bytes, fields: Collection[str], route: str) -> dict[str, Any]:
    """The JSON object of ``body`` (``{}`` for an empty body), holding only ``fields``.

    BadRequest for malformed or too deeply nested JSON; InvalidInput (422) for a body that is
    not an object, or holds a field outside ``fields`` (named, with the accepted ones).
    """
    if not body.strip():
        return {}
    document = parse_json(body)
    check_depth(document, body)
    if not isinstance(document, dict):
        raise InvalidInput(f"the body of {route} must be a JSON object, not {echo(document)}")
    unknown = sorted(set(document) - set(fields))
    if unknown:
        accepted = ", ".join(sorted(fields)) or "none"
        raise InvalidInput(
            f"unknown field(s) {shorten(str(unknown))} in the body of {route}; accepted: {accepted}"
        )
    return document
