"""The admin routes (Triton's model-repository extension, promote, rollback, trials), tokens,
the served card and the statistics, on the real app over a copy of the committed model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from service.app import create_app
from service.config import ServiceConfig
from service.model.repository import ModelRepository, ServingState, Trial
from service.v2.statistics import version_stats
from tests.conftest import COMMITTED_MODELS
from tests.service.conftest import DIGITS, RecordingMetrics, publish_copy

TOKEN = "s3cret-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    shutil.copytree(COMMITTED_MODELS, tmp_path / "models")
    publish_copy(tmp_path / "models")  # 2: an equal copy, a candidate
    return tmp_path / "models"


def make_client(models: Path, mnist_data_dir: Path | None = None, **settings: Any) -> FlaskClient:
    from service.model.predictor import Predictor

    config = ServiceConfig(model_dir=models, mnist_data_dir=mnist_data_dir, **settings)
    predictor = Predictor(config, metrics=RecordingMetrics())
    predictor.load()
    return create_app(config, predictor=predictor).test_client()


@pytest.fixture
def admin(models: Path, mnist_data_dir: Path) -> Iterator[FlaskClient]:
    yield make_client(models, mnist_data_dir, admin_token=TOKEN)


def test_without_admin_token_every_admin_route_is_403_and_says_how_to_enable(
    models: Path,
) -> None:
    client = make_client(models)
    for path in ("/v2/repository/index", "/v2/repository/models/mnist/promote"):
        response = client.post(path, json={"version": 2}, headers=ADMIN)
        assert response.status_code == 403
        assert "ADMIN_TOKEN" in response.get_json()["error"]
    assert ModelRepository(models).read_state() == ServingState(stable=1)


def test_a_wrong_or_missing_token_is_401(admin: FlaskClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        response = admin.post("/v2/repository/index", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_index_lists_every_version_with_its_state(admin: FlaskClient) -> None:
    rows = admin.post("/v2/repository/index", headers=ADMIN).get_json()
    assert rows == [
        {"name": "mnist", "version": "1", "state": "READY"},
        {
            "name": "mnist",
            "version": "2",
            "state": "UNAVAILABLE",
            "reason": "a candidate: not promoted, not in a trial",
        },
    ]
    ready = admin.post("/v2/repository/index", json={"ready": True}, headers=ADMIN).get_json()
    assert [row["version"] for row in ready] == ["1"]


def test_promote_rollback_and_trials_over_http(admin: FlaskClient, models: Path) -> None:
    promoted = admin.post("/v2/repository/models/mnist/promote", json={"version": 2}, headers=ADMIN)
    assert promoted.status_code == 200, promoted.get_json()
    body = promoted.get_json()
    assert body["state"]["stable"] == 2 and body["gate"]["passed"]
    assert body["gate"]["test_images"] == 10_000
    assert admin.post("/predict", json={"images": [DIGITS[0].tolist()]}).status_code == 200
    answer = admin.post("/predict", json={"images": [DIGITS[0].tolist()]}).get_json()
    assert answer["model"]["version"] == 2  # this worker converged before answering
    back = admin.post("/v2/repository/models/mnist/rollback", headers=ADMIN).get_json()
    assert back["state"]["stable"] == 1
    shadow = admin.post(
        "/v2/repository/models/mnist/shadow", json={"version": 2, "sample": 1.0}, headers=ADMIN
    )
    assert shadow.status_code == 200
    assert ModelRepository(models).read_state().trial == Trial("shadow", 2, 1.0)
    index = admin.post("/v2/repository/index", headers=ADMIN).get_json()
    assert [row["state"] for row in index] == ["READY", "READY"]
    canary = admin.post(
        "/v2/repository/models/mnist/canary", json={"version": 2, "percent": 20}, headers=ADMIN
    )
    assert canary.get_json()["state"]["trial"] == {"mode": "canary", "version": 2, "percent": 20.0}
    ended = admin.post("/v2/repository/models/mnist/end-trial", headers=ADMIN)
    assert ended.get_json()["state"]["trial"] is None


def test_bad_admin_bodies_are_422_and_refusals_409(admin: FlaskClient, models: Path) -> None:
    for body in ({"version": "2"}, {"version": 0}, {"version": 2, "force": "yes"}):
        response = admin.post("/v2/repository/models/mnist/promote", json=body, headers=ADMIN)
        assert response.status_code == 422, body
    missing = admin.post("/v2/repository/models/mnist/promote", json={"version": 9}, headers=ADMIN)
    assert missing.status_code == 404
    nothing = admin.post("/v2/repository/models/mnist/rollback", headers=ADMIN)
    assert nothing.status_code == 409 and "no earlier stable" in nothing.get_json()["error"]
    assert admin.post("/v2/repository/models/fashion/load", headers=ADMIN).status_code == 404


def test_unload_and_load_over_http(admin: FlaskClient) -> None:
    assert admin.post("/v2/repository/models/mnist/unload", headers=ADMIN).status_code == 200
    assert admin.get("/v2/health/ready").status_code == 503
    digit = {"images": [DIGITS[0].tolist()]}
    assert admin.post("/predict", json=digit).status_code == 503
    assert admin.post("/v2/repository/models/mnist/load", headers=ADMIN).status_code == 200
    assert admin.get("/v2/health/ready").status_code == 200


def test_api_tokens_close_inference_and_nothing_else(models: Path) -> None:
    client = make_client(models, api_tokens=frozenset({"alpha", "beta"}))
    body = {"images": [DIGITS[0].tolist()]}
    assert client.post("/predict", json=body).status_code == 401
    assert (
        client.post("/predict", json=body, headers={"Authorization": "Bearer x"}).status_code == 401
    )
    ok = client.post("/predict", json=body, headers={"Authorization": "Bearer beta"})
    assert ok.status_code == 200
    infer = {
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]
    }
    assert client.post("/v2/models/mnist/infer", json=infer).status_code == 401
    # the routes that run the model or show its weights, whatever the body
    assert client.post("/v2/models/mnist/explain", json=body).status_code == 401
    png = client.post("/v2/models/mnist/explain", data=b"\x89PNG", content_type="image/png")
    assert png.status_code == 401
    assert client.get("/v2/models/mnist/explain/weights").status_code == 401
    token = {"Authorization": "Bearer alpha"}
    assert client.post("/v2/models/mnist/explain", json=body, headers=token).status_code == 200
    assert client.get("/v2/models/mnist/explain/weights", headers=token).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/mnist/versions/1/card").status_code == 200
    open_client = make_client(models)
    assert open_client.post("/predict", json=body).status_code == 200


def test_card_stats_and_versioned_routes(models: Path) -> None:
    with ModelRepository(models).changing_state() as change:
        change.state = ServingState(stable=1, trial=Trial("shadow", 2, 1.0))
    client = make_client(models)
    card = client.get("/v2/models/mnist/versions/2/card").get_json()
    assert card["version"] == 2 and card["sha256"]
    assert client.get("/v2/models/mnist/versions/3/card").status_code == 404
    metadata = client.get("/v2/models/mnist").get_json()
    assert metadata["versions"] == ["1", "2"]
    config = client.get("/v2/models/mnist/config").get_json()
    assert config["version_policy"] == {"specific": {"versions": [1, 2]}}
    infer = {
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]
    }
    answer = client.post("/v2/models/mnist/versions/2/infer", json=infer).get_json()
    assert answer["model_version"] == "2"
    stats = client.get("/v2/models/mnist/versions/2/stats").get_json()
    (entry,) = stats["model_stats"]
    assert entry["name"] == "mnist" and entry["version"] == "2"
    assert set(entry["inference_stats"]) >= {"success", "fail", "queue", "compute_infer"}
    assert client.get("/v2/models/mnist/versions/987654/stats").status_code == 404


def test_last_inference_is_the_latest_run_of_any_worker_in_milliseconds() -> None:
    samples = {
        "mnist_last_inference_timestamp_seconds": [
            ({"version": "1", "pid": "11"}, 1_700_000_000.25),
            ({"version": "1", "pid": "12"}, 1_700_000_003.5),
            ({"version": "2", "pid": "12"}, 1_700_000_009.0),
        ]
    }
    assert version_stats("mnist", 1, samples)["last_inference"] == 1_700_000_003_500
    assert version_stats("mnist", 3, samples)["last_inference"] == 0  # never ran


@pytest.mark.parametrize(
    ("content_type", "said"),
    [
        (";;;===", "Content-Type ';;;===' is not accepted: it names no media type; send "),
        ("text/plain", "text/plain is not accepted; send "),
        ("x/" + "y" * 3000, "x/" + "y" * 50),
    ],
)
def test_an_admin_body_of_another_media_type_is_415_and_quoted(
    admin: FlaskClient, content_type: str, said: str
) -> None:
    """No Content-Type is taken as JSON; one that names another media type, or none at all, is
    refused and quoted (cut when long)."""
    headers = {**ADMIN, "Content-Type": content_type}
    response = admin.post(
        "/v2/repository/models/mnist/promote", data=b'{"version": 2}', headers=headers
    )
    assert response.status_code == 415
    message = response.get_json()["error"]
    message = message if isinstance(message, str) else message["message"]
    assert message.startswith(said), message
    assert message.endswith("application/json (or no Content-Type)"), message
    assert len(message) < 400
    untyped = admin.post("/v2/repository/index", data=b"{}", headers=ADMIN)
    assert untyped.status_code == 200
