"""Strings that are not valid text: a lone UTF-16 surrogate (``"\\ud800"``) that Python holds but
UTF-8 (the store's SQLite, orjson, every answer) cannot encode. orjson refuses such a body; the
standard parser, which reads what orjson refused, keeps them, so every JSON body it reads is
checked (service.json_body.check_text): a 4xx naming the string, never a 500 further on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.config import ServiceConfig
from service.errors import BadRequest, InvalidInput
from service.feedback import parse_feedback
from service.json_body import check_text, not_text, parse_json, parse_json_slowly
from service.store.config import StoreConfig
from service.v2.binary import split_body
from tests.conftest import COMMITTED_MODELS, REPO_ROOT

SEVEN = (REPO_ROOT / "docs" / "examples" / "v2-seven.json").read_bytes().strip()
ADMIN = "not-text-admin"
LONE = "a lone UTF-16 surrogate that UTF-8 cannot encode"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (rb'{"request_id":"\ud800","label":1}', "field request_id"),
        (rb'[{"request_id":"ok"},{"request_id":"\udc00"}]', "field [1].request_id"),
        (rb'{"inputs":[{"name":"in\ud800put"}]}', "field inputs[0].name"),
        (rb'{"a b":{"c":"\udfff"}}', 'field ["a b"].c'),
        (rb'{"images":[[0],"\ud800"]}', "item images[1]"),
        (rb'"\ud800"', "the JSON document"),
        (rb'{"\udc00":1}', "a field name in the JSON document"),
        (rb'{"outputs":[{"\ud800x":1}]}', "a field name in outputs[0]"),
        (b'{"x":"\xed\xa0\x80"}', "field x"),  # surrogate bytes, read with "surrogatepass"
        ('{"x":"\ud800"}'.encode("utf-16-le", "surrogatepass"), "field x"),  # UTF-16 JSON
    ],
)
def test_the_first_string_that_is_not_text_is_named(body: bytes, named: str) -> None:
    document = json.loads(body)
    problem = not_text(document)
    assert problem is not None and problem.startswith(f"{named} is not valid text: ")
    assert LONE in problem
    with pytest.raises(InvalidInput, match="is not valid text"):
        check_text(document, body)
    with pytest.raises(BadRequest, match="is not valid text"):
        check_text(document, body, BadRequest)


def test_the_message_names_the_code_point_and_echoes_it_escaped() -> None:
    problem = not_text({"id": "ab\udc01"})
    assert problem == f"field id is not valid text: 'ab\\udc01' holds U+DC01, {LONE}"
    assert problem.isascii()


@pytest.mark.parametrize(
    "body",
    [
        rb'{"x":"\ud83d\ude00"}',  # a pair: one character (U+1F600)
        '{"x":"café ☃ 😀","ü":1}'.encode(),
        rb'{"x":"\u00e9\\ud800"}',  # an escaped backslash: the text \ud800, not a surrogate
        b'{"images":[[0,1,2]],"n":1e999}',
    ],
)
def test_valid_text_passes(body: bytes) -> None:
    document = json.loads(body)
    assert not_text(document) is None
    check_text(document, body)


def test_a_body_in_ascii_without_escapes_is_not_walked() -> None:
    # the document is what the check is told it was parsed from: it trusts the body's bytes
    check_text({"x": "\ud800"}, b'{"x": "a"}')
    with pytest.raises(InvalidInput):
        check_text({"x": "\ud800"}, b'{"x": "\\ud800"}')


def test_a_hostile_depth_is_walked_without_recursion() -> None:
    deep: Any = "\ud800"
    for _ in range(50_000):
        deep = [deep]
    problem = not_text(deep)
    assert problem is not None and problem.startswith("item [0][0][0]")


@pytest.mark.parametrize("parse", [parse_json, parse_json_slowly])
def test_the_json_parsers_of_the_flask_routes_refuse_it(parse: Any) -> None:
    with pytest.raises(InvalidInput, match=r"^field x is not valid text: '\\ud800'"):
        parse(rb'{"x":"\ud800"}')
    assert parse(rb'{"x":"\ud83d\ude00"}') == {"x": "\U0001f600"}


def test_feedback_names_the_request_id_of_the_item() -> None:
    with pytest.raises(InvalidInput, match=r"^field request_id is not valid text"):
        parse_feedback(rb'{"request_id":"\ud800","label":1}')
    with pytest.raises(InvalidInput, match=r"^field \[1\]\.request_id is not valid text"):
        parse_feedback(rb'[{"request_id":"ok","label":1},{"request_id":"\udc00","label":2}]')


@pytest.mark.parametrize("header_length", [None, "whole"])
def test_a_v2_header_that_is_not_text_is_a_400(header_length: str | None) -> None:
    body = SEVEN[:-1] + rb',"id":"\ud800"}'
    with pytest.raises(BadRequest, match=r"^field id is not valid text: '\\ud800'"):
        split_body(body, None if header_length is None else len(body))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real app with its store on (SQLite in a temporary folder) and the admin routes on, on
    a repository of its own (an admin request that got through would change it)."""
    folder: Path = tmp_path_factory.mktemp("not-text")
    shutil.copytree(COMMITTED_MODELS, folder / "models")
    store = StoreConfig(sqlite_path=folder / "store.sqlite3", feedback_wait_seconds=0.05)
    config = ServiceConfig(model_dir=folder / "models", admin_token=ADMIN, store=store)
    return create_app(config).test_client()


#: (path, body, status): every route that parses a JSON body
ROUTES = [
    ("/feedback", rb'{"request_id":"\ud800","label":1}', 422),
    ("/feedback", rb'[{"request_id":"ok","label":1},{"request_id":"\udc00","label":2}]', 422),
    ("/v2/models/mnist/infer", SEVEN[:-1] + rb',"id":"\ud800"}', 400),
    ("/v2/models/mnist/versions/1/infer", SEVEN[:-1] + rb',"id":"\ud800"}', 400),
    ("/v2/models/mnist/infer", SEVEN[:-1] + rb',"parameters":{"\udbff":1}}', 400),
    ("/predict", rb'{"images":["\ud800"]}', 422),
    ("/v2/models/mnist/explain", rb'{"images":[[1e999]],"\udc00":1}', 422),
    ("/v2/repository/index", rb'{"\ud800":true}', 422),
    ("/v2/repository/models/mnist/unload", rb'{"reason":"\ud800"}', 422),
]


@pytest.mark.parametrize(("path", "body", "status"), ROUTES)
def test_every_json_route_answers_a_4xx_naming_the_string(
    client: Any, path: str, body: bytes, status: int
) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN}"}
    answer = client.post(path, data=body, headers=headers)
    assert answer.status_code == status, answer.get_data(as_text=True)
    error = answer.get_json()["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert "is not valid text" in message and LONE in message
    if not path.startswith("/v2"):
        assert error["code"] == "invalid_input"


@pytest.mark.parametrize(
    ("request_id", "words"),
    [('""', '"request_id" is empty'), ('"  "', '"request_id" is empty'), ("7", "(a string)")],
)
def test_feedback_says_whether_the_request_id_is_empty_or_not_a_string(
    request_id: str, words: str
) -> None:
    body = f'{{"request_id":{request_id},"label":1}}'.encode()
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_feedback(body)
