"""Triton's ``parameters`` on /v2/repository/models/<model>/load and unload, on the real app over a
copy of the committed model: the bodies tritonclient sends are taken, an override this service
cannot honour (``config``, ``file:<path>``) is refused saying so, and a wrong type is named. A
refused call changes nothing (labels.json is read to see). The same calls through tritonclient on
a real gunicorn: tests/integration/test_v2_tritonclient.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from service.app import create_app
from service.config import ServiceConfig
from service.model.repository import ModelRepository
from tests.conftest import COMMITTED_MODELS

TOKEN = "parameters-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
LOAD = "/v2/repository/models/mnist/load"
UNLOAD = "/v2/repository/models/mnist/unload"


@pytest.fixture
def models(tmp_path: Path) -> Path:
    shutil.copytree(COMMITTED_MODELS, tmp_path / "models")
    return tmp_path / "models"


@pytest.fixture
def admin(models: Path) -> FlaskClient:
    return create_app(ServiceConfig(model_dir=models, admin_token=TOKEN)).test_client()


def loaded(models: Path) -> bool:
    return ModelRepository(models).read_state().loaded


def post(client: FlaskClient, path: str, body: Any) -> tuple[int, Any]:
    """POST ``body`` written as tritonclient writes it (json.dumps, application/json)."""
    answer = client.post(path, data=json.dumps(body), headers=ADMIN)
    return answer.status_code, answer.get_json()


@pytest.mark.parametrize("dependents", [False, True])
def test_tritonclients_unload_and_load_bodies_are_taken(
    admin: FlaskClient, models: Path, dependents: bool
) -> None:
    # unload_model() always sends unload_dependents; load_model() without config sends {}
    status, answer = post(admin, UNLOAD, {"parameters": {"unload_dependents": dependents}})
    assert status == 200, answer
    assert answer["state"]["loaded"] is False
    assert not loaded(models)
    assert admin.get("/v2/models/mnist/ready").status_code != 200
    status, answer = post(admin, LOAD, {})
    assert status == 200, answer
    assert loaded(models)
    assert admin.get("/v2/models/mnist/ready").status_code == 200


def test_empty_parameters_and_an_empty_body_are_plain_calls(
    admin: FlaskClient, models: Path
) -> None:
    assert post(admin, UNLOAD, {"parameters": {}})[0] == 200 and not loaded(models)
    assert post(admin, LOAD, {"parameters": {}})[0] == 200 and loaded(models)
    assert admin.post(UNLOAD, headers=ADMIN).status_code == 200 and not loaded(models)
    assert admin.post(LOAD, headers=ADMIN).status_code == 200 and loaded(models)


NOT_AN_OBJECT = "'parameters' of unload must be an object of named parameters, not"
NOT_A_FLAG = "'unload_dependents' must be true or false, not"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"parameters": [1]}, f"{NOT_AN_OBJECT} [1]"),
        ({"parameters": None}, f"{NOT_AN_OBJECT} null"),
        ({"parameters": "x"}, f'{NOT_AN_OBJECT} "x"'),
        ({"parameters": {"unload_dependents": "false"}}, f'{NOT_A_FLAG} "false"'),
        ({"parameters": {"unload_dependents": 0}}, f"{NOT_A_FLAG} 0"),
        ({"parameters": {"unload_dependents": None}}, f"{NOT_A_FLAG} null"),
        (
            {"parameters": {"unload_dependent": True}},
            "unknown unload parameter(s) ['unload_dependent']; accepted: unload_dependents",
        ),
        ({"unload_dependents": False}, "unknown field(s) ['unload_dependents']"),
    ],
)
def test_a_bad_unload_is_a_422_naming_what_is_wrong_and_unloads_nothing(
    admin: FlaskClient, models: Path, body: Any, words: str
) -> None:
    status, answer = post(admin, UNLOAD, body)
    assert status == 422
    assert words in answer["error"]
    assert loaded(models)


CONFIG = json.dumps({"name": "mnist", "platform": "onnxruntime_onnx", "max_batch_size": 8})


NOT_HONOURED = "load parameter 'config' cannot be honoured"
FILE = "file:1/model.onnx"


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"config": CONFIG}, NOT_HONOURED),
        ({"config": "{}"}, NOT_HONOURED),
        ({"config": CONFIG, FILE: "AAEC"}, NOT_HONOURED),
        ({FILE: "AAEC"}, f"load parameter(s) [{FILE!r}] cannot be honoured"),
        (
            {"config": {"name": "mnist"}},
            "load parameter 'config' must be a string (a model config as JSON text), "
            'not {"name":"mnist"}',
        ),
        (
            {FILE: 5},
            f"load parameter {FILE!r} must be a string (the file's contents in base64), not 5",
        ),
        (
            {"poll": True},
            "unknown load parameter(s) ['poll']; Triton's load takes 'config' and 'file:<path>'",
        ),
        ({"unload_dependents": False}, "unknown load parameter(s) ['unload_dependents']"),
    ],
)
def test_a_load_override_is_refused_saying_so_and_loads_nothing(
    admin: FlaskClient, models: Path, parameters: dict[str, Any], words: str
) -> None:
    assert post(admin, UNLOAD, {"parameters": {"unload_dependents": False}})[0] == 200
    status, answer = post(admin, LOAD, {"parameters": parameters})
    assert status == 422
    assert words in answer["error"]
    assert not loaded(models)  # not loaded as if the override had been honoured
    assert post(admin, LOAD, {})[0] == 200 and loaded(models)


def test_the_refusal_of_an_override_says_why_and_what_to_do(admin: FlaskClient) -> None:
    status, answer = post(admin, LOAD, {"parameters": {"config": CONFIG}})
    assert status == 422
    message = answer["error"]
    assert "only from the versions published to its repository" in message
    assert "mnist-models publish" in message and "load without it" in message
    status, answer = post(admin, LOAD, {"parameters": {"file:config.pbtxt": "eA=="}})
    assert "never from files sent with the load" in answer["error"]
    assert "publish the model, then load without them" in answer["error"]


def test_a_hostile_parameter_name_is_echoed_cut_short(admin: FlaskClient, models: Path) -> None:
    name = "k" * 5000
    for path in (LOAD, UNLOAD):
        status, answer = post(admin, path, {"parameters": {name: True}})
        assert status == 422
        assert len(answer["error"]) < 400 and "k" * 50 in answer["error"]
    assert loaded(models)


def test_the_parameters_come_after_the_admin_rule_and_the_model_name(admin: FlaskClient) -> None:
    body = json.dumps({"parameters": {"unload_dependents": False}})
    refused = admin.post(UNLOAD, data=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 401
    unknown = admin.post("/v2/repository/models/fashion/unload", data=body, headers=ADMIN)
    assert unknown.status_code == 404 and "'fashion'" in unknown.get_json()["error"]
