"""Paths in another form than a route's, and the 404/405 answers of every route, on the real app.

A path is matched as sent: repeated slashes (leading or anywhere), '.' and '..' segments, a
trailing slash, sent as they are or percent-encoded, are a JSON 404 that names the path and its
canonical form, never a 500, an HTML redirect, or an answer without the API token. Flask's own
404 and 405 are worded as the /v2 ones are ("GET /predict is not allowed; use POST").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import Client, TestResponse

from service.app import create_app
from service.config import ServiceConfig
from service.observability.wsgi import RequestObservability
from service.store.config import StoreConfig
from tests.service.conftest import DIGITS, publish_copy

TOKEN = "route-paths-token"
ADMIN = "route-paths-admin"
PREDICT_BODY = json.dumps({"images": [DIGITS[7].tolist()]}).encode()
INFER_BODY = json.dumps(
    {
        "inputs": [
            {"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": DIGITS[7].tolist()}
        ]
    }
).encode()
JSON_TYPE = {"Content-Type": "application/json"}
#: the inference routes and a body each answers 200 to
CANONICAL = {
    "/predict": PREDICT_BODY,
    "/v2/models/mnist/infer": INFER_BODY,
    "/v2/models/mnist/versions/1/infer": INFER_BODY,
    "/v2/models/mnist/explain": PREDICT_BODY,
}
HINT = "Paths are matched as sent"

#: (method, path as sent in PATH_INFO, the canonical path a route takes)
OTHER_FORMS = [
    ("POST", "//predict", "/predict"),
    ("POST", "///predict", "/predict"),
    ("POST", "/predict/", "/predict"),
    ("POST", "/predict//", "/predict"),
    ("POST", "/./predict", "/predict"),
    ("POST", "/v2/../predict", "/predict"),
    ("POST", "//v2/models/mnist/infer", "/v2/models/mnist/infer"),
    ("POST", "/v2//models/mnist/infer", "/v2/models/mnist/infer"),
    ("POST", "/v2/models//mnist/infer", "/v2/models/mnist/infer"),
    ("POST", "/v2/models/mnist//infer", "/v2/models/mnist/infer"),
    ("POST", "/v2/models/mnist/infer/", "/v2/models/mnist/infer"),
    ("POST", "/v2/models/mnist/./infer", "/v2/models/mnist/infer"),
    ("POST", "/v2/models/mnist/versions/1//infer", "/v2/models/mnist/versions/1/infer"),
    ("POST", "//v2/models/mnist/explain", "/v2/models/mnist/explain"),
    ("POST", "/v2/models/mnist/explain/", "/v2/models/mnist/explain"),
    ("GET", "//v2/models/mnist/explain/weights", "/v2/models/mnist/explain/weights"),
    ("GET", "/v2//models/mnist/explain/weights", "/v2/models/mnist/explain/weights"),
    ("GET", "/v2//health/ready", "/v2/health/ready"),
    ("GET", "//v2/health/ready", "/v2/health/ready"),
    ("GET", "/v2/health/ready/", "/v2/health/ready"),
    ("GET", "/v2/", "/v2"),
    ("GET", "//metrics", "/metrics"),
    ("GET", "/metrics/", "/metrics"),
    ("POST", "//feedback", "/feedback"),
    ("DELETE", "//feedback/some-id", "/feedback/some-id"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root: Path = tmp_path_factory.mktemp("route-paths")
    publish_copy(root)
    return root


@pytest.fixture(scope="module")
def app(models: Path) -> Flask:
    store = StoreConfig(sqlite_path=models / "store.sqlite3", feedback_wait_seconds=0.0)
    return create_app(ServiceConfig(model_dir=models, admin_token=ADMIN, store=store))


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def guarded(models: Path) -> FlaskClient:
    """The app with API_TOKENS set: inference needs the bearer token."""
    return create_app(ServiceConfig(model_dir=models, api_tokens=frozenset({TOKEN}))).test_client()


def send(client: Client, method: str, path: str, body: bytes = b"", **headers: str) -> TestResponse:
    """``method path`` with the path in PATH_INFO exactly as given (the test client would read
    a leading ``//`` as a host name), as gunicorn passes a request line on."""
    environ = {"PATH_INFO": path, "RAW_URI": path, "REQUEST_URI": path}
    return client.open("/", method=method, data=body, headers=headers, environ_overrides=environ)


def error_message(response: TestResponse, path: str) -> str:
    """The message of a JSON error answer, in the shape its path asks for."""
    assert response.headers["Content-Type"] == "application/json"
    payload: Any = response.get_json()
    if path == "/v2" or path.startswith("/v2/"):
        assert isinstance(payload["error"], str)
        return str(payload["error"])
    assert isinstance(payload["error"], dict)
    return str(payload["error"]["message"])


def body_for(canonical: str) -> bytes:
    return CANONICAL.get(canonical, b"{}")


# -- paths in another form ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "canonical"), OTHER_FORMS)
def test_a_path_in_another_form_is_a_json_404_naming_the_canonical_path(
    client: FlaskClient, method: str, path: str, canonical: str
) -> None:
    response = send(client, method, path, body_for(canonical), **JSON_TYPE)
    assert response.status_code == 404, response.get_data(as_text=True)
    assert "Location" not in response.headers
    message = error_message(response, path)
    assert f" {path}; did you mean {canonical}? {HINT}" in message
    if path.startswith("/v2/"):
        assert message.startswith(f"no Open Inference Protocol endpoint {method} {path};")
    else:
        assert message.startswith(f"no route {path};")


@pytest.mark.parametrize(
    ("sent", "decoded", "canonical"),
    [
        ("/%2Fpredict", "//predict", "/predict"),
        ("/predict%2F", "/predict/", "/predict"),
        ("/%2E/predict", "/./predict", "/predict"),
        ("/v2/%2E%2E/predict", "/v2/../predict", "/predict"),
        ("/v2%2F%2Fmodels/mnist/infer", "/v2//models/mnist/infer", "/v2/models/mnist/infer"),
        ("/v2/models/mnist%2F/infer", "/v2/models/mnist//infer", "/v2/models/mnist/infer"),
    ],
)
def test_a_percent_encoded_slash_or_dot_is_the_same_404(
    client: FlaskClient, sent: str, decoded: str, canonical: str
) -> None:
    response = client.post(sent, data=body_for(canonical), headers=JSON_TYPE)
    assert response.status_code == 404
    assert f" {decoded}; did you mean {canonical}? " in error_message(response, decoded)


def test_the_canonical_path_is_named_only_when_a_route_takes_it(client: FlaskClient) -> None:
    response = send(client, "GET", "//nowhere/")
    assert response.status_code == 404
    assert error_message(response, "//nowhere/") == "no route //nowhere/"
    response = send(client, "GET", "/v2//logging")
    assert error_message(response, "/v2/") == "no Open Inference Protocol endpoint GET /v2//logging"


@pytest.mark.parametrize("path", list(CANONICAL))
def test_every_inference_route_answers_its_canonical_path(client: FlaskClient, path: str) -> None:
    response = send(client, "POST", path, CANONICAL[path], **JSON_TYPE)
    assert response.status_code == 200, response.get_data(as_text=True)


# -- API_TOKENS: no form of a path answers without the token --------------------------------------

INFERENCE_FORMS = [
    (path, canonical)
    for method, path, canonical in OTHER_FORMS
    if method == "POST" and canonical in CANONICAL
] + [("/v2/models/mnist/explain/weights/", "/v2/models/mnist/explain/weights")]


@pytest.mark.parametrize(("path", "canonical"), INFERENCE_FORMS)
@pytest.mark.parametrize("authorization", [None, f"Bearer {TOKEN}"])
def test_no_form_of_an_inference_path_is_a_second_entrance(
    guarded: FlaskClient, path: str, canonical: str, authorization: str | None
) -> None:
    method = "GET" if canonical.endswith("/weights") else "POST"
    headers = dict(JSON_TYPE, **({"Authorization": authorization} if authorization else {}))
    response = send(guarded, method, path, body_for(canonical), **headers)
    assert response.status_code == 404  # with the token or without: never answered there
    assert "predictions" not in response.get_data(as_text=True)
    assert "outputs" not in response.get_data(as_text=True)


@pytest.mark.parametrize("method", ["POST", "post", "Post"])
def test_a_method_in_any_case_is_answered_by_the_inference_route_with_its_token_check(
    guarded: FlaskClient, method: str
) -> None:
    refused = send(guarded, method, "/predict", PREDICT_BODY, **JSON_TYPE)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    headers = dict(JSON_TYPE, Authorization=f"Bearer {TOKEN}")
    answered = send(guarded, method, "/predict", PREDICT_BODY, **headers)
    assert answered.status_code == 200
    assert answered.get_json()["predictions"][0]["digit"] == 7


# -- below the dispatcher: Flask alone never reaches a view-less rule -----------------------------


def flask_alone(app: Flask) -> Client:
    """The Flask app in its outer layer (request id, log line), without the dispatcher."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return Flask.wsgi_app(app, environ, start_response)

    return Client(RequestObservability(wsgi))


def test_only_the_inference_rules_lack_a_view(app: Flask) -> None:
    viewless = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in app.view_functions
    }
    assert viewless == {"api.predict", "api.explain", "v2.infer"}


@pytest.mark.parametrize(
    "path", ["/predict", "//predict", "/v2/models/mnist/infer", "/v2/models/mnist/explain"]
)
def test_flask_answers_a_view_less_rule_with_a_404_not_a_500(app: Flask, path: str) -> None:
    response = send(flask_alone(app), "POST", path, CANONICAL.get(path, PREDICT_BODY), **JSON_TYPE)
    assert response.status_code == 404
    assert error_message(response, path).endswith(path.lstrip("/"))


@pytest.mark.parametrize("path", ["/v2//health/ready", "/v2//models/mnist"])
def test_flask_never_merges_slashes_into_an_html_redirect(app: Flask, path: str) -> None:
    response = send(flask_alone(app), "GET", path)
    assert response.status_code == 404
    assert "Location" not in response.headers
    assert error_message(response, path) == f"no Open Inference Protocol endpoint GET {path}"


# -- a route that takes the rest of the path as it is ---------------------------------------------


@pytest.mark.parametrize("request_id", ["a//b", "/lead", "trail/", "..", "a/../b", "./x"])
def test_a_feedback_id_in_any_form_reaches_its_route(client: FlaskClient, request_id: str) -> None:
    # the route itself answers: its admin check (401), then the store's "no such id" (404)
    path = "/feedback/" + request_id
    unauthorized = send(client, "DELETE", path)
    assert unauthorized.status_code == 401
    answered = send(client, "DELETE", path, Authorization=f"Bearer {ADMIN}")
    assert answered.status_code == 404
    assert answered.get_json()["error"]["code"] == "unknown_request_id"
    assert repr(request_id) in answered.get_json()["error"]["message"]


def test_only_paths_below_the_feedback_route_are_taken_as_sent(client: FlaskClient) -> None:
    response = send(client, "DELETE", "/feedback/", Authorization=f"Bearer {ADMIN}")
    assert response.status_code == 404
    assert error_message(response, "/feedback/").startswith("no route /feedback/; did you mean")
    response = send(client, "POST", "/feedback/a//b", b"{}", **JSON_TYPE)
    assert response.status_code == 405
    assert error_message(response, "/") == "POST /feedback/a//b is not allowed; use DELETE"


# -- 404 and 405 in the service's words, every route --------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed", "allow"),
    [
        ("GET", "/predict", "POST", "OPTIONS, POST"),
        ("PUT", "/predict", "POST", "OPTIONS, POST"),
        ("DELETE", "/predict", "POST", "OPTIONS, POST"),
        ("POST", "/metrics", "GET", "GET, HEAD, OPTIONS"),
        ("PUT", "/", "GET", "GET, HEAD, OPTIONS"),
        ("GET", "/feedback", "POST", "OPTIONS, POST"),
        ("POST", "/v2/models/mnist/explain/weights", "GET", "GET, HEAD, OPTIONS"),
        ("GET", "/v2/models/mnist/infer", "POST", "OPTIONS, POST"),
        ("POST", "/v2/health/ready", "GET", "GET, HEAD, OPTIONS"),
    ],
)
def test_a_wrong_method_is_a_405_naming_the_methods_in_both_shapes(
    client: FlaskClient, method: str, path: str, allowed: str, allow: str
) -> None:
    response = send(client, method, path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert error_message(response, path) == f"{method} {path} is not allowed; use {allowed}"


@pytest.mark.parametrize("path", ["/foo", "/predict/extra", "/static/app.js", "/v2x"])
@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_no_such_route_is_a_404_naming_the_path(
    client: FlaskClient, method: str, path: str
) -> None:
    response = send(client, method, path, b"{}", **JSON_TYPE)
    assert response.status_code == 404
    assert error_message(response, path) == f"no route {path}"
