"""DELETE /feedback/<request_id> takes every id X-Request-ID accepts (1..128 visible ASCII
characters): ``/`` anywhere (first, last, doubled), ``%``, ``?``, ``#``, dot segments. Each id is
answered, given feedback and deleted over HTTP on the real app and a real SQLite store, and the
store is read to see that its records are gone."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from service.app import create_app
from service.config import ServiceConfig
from service.observability.request_log import valid_request_id
from service.store.config import StoreConfig
from service.store.database import PredictionStore
from tests.conftest import COMMITTED_MODELS
from tests.service.conftest import DIGITS

TOKEN = "delete-ids-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
#: every character X-Request-ID accepts, in one id
EVERY_CHARACTER = "".join(chr(code) for code in range(0x21, 0x7F))
IDS = [
    "user/42",
    "/leading",
    "trailing/",
    "a//b",
    "/",
    "//",
    "50%off",
    "%2F",  # a literal percent sign, 2 and F: sent as %252F
    "%zz",
    "what?x=1#frag",
    "..",
    "a/../b",
    "./x",
    "back\\slash",
    "plus+and;semi&amp=1",
    "x" * 128,
    EVERY_CHARACTER,
]
DIGIT = {"images": [DIGITS[0].tolist()]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder: Path = tmp_path_factory.mktemp("delete-ids")
    shutil.copytree(COMMITTED_MODELS, folder / "models")
    return folder


@pytest.fixture(scope="module")
def client(folder: Path) -> FlaskClient:
    store = StoreConfig(
        sqlite_path=folder / "store.sqlite3", flush_seconds=0.05, feedback_wait_seconds=2.0
    )
    config = ServiceConfig(model_dir=folder / "models", admin_token=TOKEN, store=store)
    return create_app(config).test_client()


@pytest.fixture(scope="module")
def store(folder: Path, client: FlaskClient) -> Iterator[PredictionStore]:
    opened = PredictionStore.open(f"sqlite:///{folder / 'store.sqlite3'}")
    yield opened
    opened.close()


def answer_and_label(client: FlaskClient, request_id: str) -> None:
    """An answer under ``request_id`` and feedback on it: both in the store."""
    answered = client.post("/predict", json=DIGIT, headers={"X-Request-ID": request_id})
    assert answered.status_code == 200
    assert answered.headers["X-Request-ID"] == request_id  # accepted as it is
    labelled = client.post("/feedback", json={"request_id": request_id, "label": 7})
    assert labelled.status_code == 202, labelled.get_data(as_text=True)


def test_the_ids_cover_every_character_the_header_accepts() -> None:
    assert all(valid_request_id(request_id) for request_id in IDS)
    assert set(EVERY_CHARACTER) <= set("".join(IDS))
    # a space, a control byte, a non-ASCII letter, an empty or 129-character id: never accepted,
    # so never stored under that id (the request gets a fresh one)
    for refused in ("a b", "tab\there", "café", "", "x" * 129):
        assert not valid_request_id(refused)


@pytest.mark.parametrize("request_id", IDS)
def test_every_accepted_id_is_deleted_sent_percent_encoded(
    client: FlaskClient, store: PredictionStore, request_id: str
) -> None:
    answer_and_label(client, request_id)
    assert len(store.predictions_of(request_id)) == 1
    deleted = client.delete("/feedback/" + quote(request_id, safe=""), headers=ADMIN)
    assert deleted.status_code == 200, deleted.get_data(as_text=True)
    assert deleted.get_json() == {
        "request_id": request_id,
        "deleted": {"predictions": 1, "feedback": 1},
    }
    assert store.predictions_of(request_id) == []


@pytest.mark.parametrize("request_id", [i for i in IDS if "/" in i and "?" not in i])
def test_an_id_with_slashes_is_deleted_with_its_slashes_sent_as_they_are(
    client: FlaskClient, store: PredictionStore, request_id: str
) -> None:
    answer_and_label(client, request_id)
    deleted = client.delete("/feedback/" + quote(request_id, safe="/"), headers=ADMIN)
    assert deleted.status_code == 200, deleted.get_data(as_text=True)
    assert deleted.get_json()["request_id"] == request_id
    assert deleted.get_json()["deleted"] == {"predictions": 1, "feedback": 1}
    assert store.predictions_of(request_id) == []


def test_only_the_named_id_goes_and_a_second_delete_is_404(
    client: FlaskClient, store: PredictionStore
) -> None:
    for request_id in ("tenant/7", "tenant/7/x", "tenant"):
        answer_and_label(client, request_id)
    deleted = client.delete("/feedback/tenant/7", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.get_json()["request_id"] == "tenant/7"
    assert store.predictions_of("tenant/7") == []
    assert len(store.predictions_of("tenant/7/x")) == 1
    assert len(store.predictions_of("tenant")) == 1
    again = client.delete("/feedback/tenant%2F7", headers=ADMIN)
    assert again.status_code == 404
    error = again.get_json()["error"]
    assert error["code"] == "unknown_request_id" and "'tenant/7'" in error["message"]


def test_the_admin_rule_and_the_length_limit_hold_for_ids_with_slashes(
    client: FlaskClient,
) -> None:
    refused = client.delete("/feedback/user/42")
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "unauthorized"
    too_long = client.delete("/feedback/" + "a/" * 64 + "b", headers=ADMIN)  # 129 characters
    assert too_long.status_code == 422
    assert "longer than 128" in too_long.get_json()["error"]["message"]
