"""Which answer feedback judges, on a real gunicorn with a SQLite file and a real PostgreSQL
server: a request id used by two requests answered otherwise is refused (409
ambiguous_request_id) and its feedback leaves live accuracy and training; a retry of the same
request is not a reuse; a V2 request's own ``id`` is its request id."""

from __future__ import annotations

import gzip
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from tritonclient.http import InferenceServerClient, InferInput

from service.store.config import sqlalchemy_url
from service.store.database import PredictionStore
from service.store.examples import heldout_accuracy, load_feedback
from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningServer, start_gunicorn

EXAMPLES = REPO_ROOT / "docs" / "examples"
V2_INFER = "/v2/models/mnist/infer"
#: what new_request_id() makes: 32 hex digits
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


class Service:
    """A running server and the URL of its store."""

    def __init__(self, server: RunningServer, store_url: str) -> None:
        self.server = server
        self.url = server.url
        self.store_url = store_url

    def rows(self, request_id: str) -> list[dict[str, Any]]:
        """The stored prediction rows of ``request_id``, read from the database itself."""
        store = PredictionStore.open(self.store_url)
        try:
            return store.predictions_of(request_id)
        finally:
            store.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """Two workers on the committed model, writing to a fresh SQLite file, then PostgreSQL."""
    log_dir = tmp_path_factory.mktemp(f"request-ids-{request.param}")
    if request.param == "sqlite":
        path = log_dir / "store.sqlite3"
        env, url = {"STORE_PATH": str(path)}, f"sqlite:///{path}"
    else:
        postgres = request.getfixturevalue("postgres_server")
        if not postgres.running():
            postgres.start()
        url = postgres.create_database()
        env = {"DATABASE_URL": url}
    env |= {"STORE_FLUSH_SECONDS": "0.05", "FEEDBACK_WAIT_SECONDS": "0.5"}
    server = start_gunicorn(log_dir, env, workers=2)
    yield Service(server, sqlalchemy_url(url))
    server.stop()


@pytest.fixture(scope="module")
def digits(mnist_data_dir: Path) -> np.ndarray:
    """The first 16 MNIST test images, uint8 [16, 784] (labels 7 2 1 0 4 1 4 9 5 9 0 6 9 0 1 5)."""
    with gzip.open(mnist_data_dir / "t10k-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(16 + 16 * 784), np.uint8, offset=16)
    return images.reshape(16, 784)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def predict_seven(url: str, request_id: str) -> requests.Response:
    response = requests.post(
        url + "/predict",
        data=(EXAMPLES / "seven.json").read_bytes(),
        headers={"Content-Type": "application/json", "X-Request-ID": request_id},
        timeout=30,
    )
    assert response.status_code == 200 and response.json()["predictions"][0]["digit"] == 7
    return response


def predict_two(url: str, request_id: str) -> requests.Response:
    response = requests.post(
        url + "/predict",
        data=(EXAMPLES / "two.png").read_bytes(),
        headers={"Content-Type": "image/png", "X-Request-ID": request_id},
        timeout=30,
    )
    assert response.status_code == 200 and response.json()["predictions"][0]["digit"] == 2
    assert response.headers["X-Request-ID"] == request_id
    return response


def feedback(url: str, request_id: str, label: int) -> requests.Response:
    return requests.post(
        url + "/feedback", json={"request_id": request_id, "label": label}, timeout=30
    )


def v2_infer(
    url: str, image: np.ndarray, body_id: str | None, header_id: str | None = None
) -> requests.Response:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "input", "datatype": "UINT8", "shape": [1, 784], "data": image.tolist()}
        ]
    }
    if body_id is not None:
        body["id"] = body_id
    headers = {} if header_id is None else {"X-Request-ID": header_id}
    return requests.post(url + V2_INFER, json=body, headers=headers, timeout=30)


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:.0f} s: {what}"
        time.sleep(0.05)


def marked_reused(service: Service, request_id: str) -> bool:
    rows = service.rows(request_id)
    return bool(rows) and any(row["reused"] for row in rows)


def feedback_records(service: Service) -> float | None:
    """``mnist_feedback_records{version="1"}`` as /metrics shows it now."""
    text = requests.get(service.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found and found[1] == "mnist_feedback_records" and 'version="1"' in (found[2] or ""):
            return float(found[3])
    return None


def test_a_reused_request_id_gets_no_feedback_on_the_wrong_answer(service: Service) -> None:
    """The reported fault: a 7 and a 2 under one X-Request-ID, then feedback "2"."""
    request_id = unique("reuse")
    predict_seven(service.url, request_id)
    predict_two(service.url, request_id)
    wait_until(lambda: marked_reused(service, request_id), "the reuse marked in the store")
    answer = feedback(service.url, request_id, 2)
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "ambiguous_request_id"
    assert repr(request_id) in error["message"]
    assert "used by more than one request" in error["message"]
    assert "unique X-Request-ID" in error["message"]
    # nothing was recorded: the stored 7 keeps no label 2 and stays unkept
    (row,) = service.rows(request_id)
    assert row["digit"] == 7 and row["input_kept"] is None
    assert request_id not in {e.request_id for e in store_examples(service)}


def store_examples(service: Service) -> list[Any]:
    store = PredictionStore.open(service.store_url)
    try:
        return store.labelled_examples()
    finally:
        store.close()


def test_feedback_given_before_the_reuse_leaves_live_accuracy_and_training(
    service: Service,
) -> None:
    kept, reused = unique("kept"), unique("before-reuse")
    predict_seven(service.url, kept)
    predict_seven(service.url, reused)
    wait_until(lambda: bool(service.rows(kept)) and bool(service.rows(reused)), "both stored")
    before = feedback_records(service) or 0.0
    # a correction of each (label 1 for a 7): both inputs are kept for training
    for request_id in (kept, reused):
        answer = feedback(service.url, request_id, 1)
        assert answer.status_code == 202, answer.text
        assert answer.json()["accepted"][0]["input_kept"] is True
    wait_until(lambda: feedback_records(service) == before + 2, "both in live accuracy")
    assert {kept, reused} <= {e.request_id for e in store_examples(service)}
    # what mnist-train --feedback and the held-out scoring read
    examples = training_examples(service)
    scored = heldout_examples(service)

    predict_two(service.url, reused)  # the id used again: the label may have been for this one
    wait_until(lambda: marked_reused(service, reused), "the reuse marked in the store")
    wait_until(lambda: feedback_records(service) == before + 1, "the reused id's feedback left")
    assert kept in {e.request_id for e in store_examples(service)}
    assert reused not in {e.request_id for e in store_examples(service)}
    assert training_examples(service) == examples - 1
    assert heldout_examples(service) == scored - 1
    # the record stays in the feedback table (DELETE /feedback/<id> removes it)
    (row,) = service.rows(reused)
    assert row["digit"] == 7 and row["input_kept"] == "corrected"
    again = feedback(service.url, reused, 7)
    assert again.status_code == 409 and again.json()["error"]["code"] == "ambiguous_request_id"


def training_examples(service: Service) -> int:
    """How many feedback examples ``mnist-train --feedback`` reads (both shares)."""
    train, test = load_feedback(service.store_url, share=0.5)
    return len(train) + len(test)


def heldout_examples(service: Service) -> int:
    """How many examples the held-out scoring (``mnist-models diff``) reads with share 1."""
    _, scored = heldout_accuracy(lambda x: np.zeros(len(x), np.int64), service.store_url, 1.0)
    return scored


def test_a_retry_of_the_same_request_is_not_a_reuse(service: Service) -> None:
    request_id = unique("retry")
    written = written_total(service)
    first = predict_seven(service.url, request_id)
    second = predict_seven(service.url, request_id)  # a proxy's or client's retry
    assert first.json()["predictions"] == second.json()["predictions"]
    wait_until(lambda: written_total(service) >= written + 2, "both records offered")
    assert len(service.rows(request_id)) == 1 and not marked_reused(service, request_id)
    answer = feedback(service.url, request_id, 7)
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"][0]["correct"] is True


def written_total(service: Service) -> float:
    text = requests.get(service.url + "/metrics", timeout=10).text
    found = re.search(r"^mnist_store_records_written_total (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def test_a_v2_request_id_names_the_request(service: Service, digits: np.ndarray) -> None:
    body_id = unique("v2id")
    answer = v2_infer(service.url, digits[0], body_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == body_id and answer.headers["X-Request-ID"] == body_id
    assert answer.json()["outputs"][0]["data"] == [7]
    given = feedback(service.url, body_id, 7)
    assert given.status_code == 202, given.text
    assert given.json()["accepted"][0]["predicted_digit"] == 7
    wait_until(lambda: f'"request_id":"{body_id}"' in service.server.log(), "the log line")
    line = next(
        json.loads(text)
        for text in service.server.log().splitlines()
        if f'"request_id":"{body_id}"' in text and V2_INFER in text
    )
    assert line["status"] == 200


def test_the_x_request_id_header_wins_over_a_different_v2_id(
    service: Service, digits: np.ndarray
) -> None:
    header_id, body_id = unique("v2hdr"), unique("v2body")
    answer = v2_infer(service.url, digits[1], body_id, header_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == body_id and answer.headers["X-Request-ID"] == header_id
    assert feedback(service.url, header_id, 2).status_code == 202
    missing = feedback(service.url, body_id, 2)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_request_id"


@pytest.mark.parametrize("body_id", ["has a space", "x" * 129, "é-accent", ""])
def test_a_v2_id_x_request_id_would_refuse_is_echoed_but_not_the_request_id(
    service: Service, digits: np.ndarray, body_id: str
) -> None:
    answer = v2_infer(service.url, digits[2], body_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == body_id
    generated = answer.headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(generated), generated
    assert feedback(service.url, generated, 1).status_code == 202


def test_an_error_answer_carries_the_v2_id(service: Service) -> None:
    body_id = unique("v2bad")
    body: dict[str, Any] = {
        "id": body_id,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3]}],
    }
    answer = requests.post(service.url + V2_INFER, json=body, timeout=30)
    assert answer.status_code == 400 and "error" in answer.json()
    assert answer.headers["X-Request-ID"] == body_id


def test_a_v2_id_used_twice_for_other_images_is_refused(
    service: Service, digits: np.ndarray
) -> None:
    body_id = unique("v2reuse")
    assert v2_infer(service.url, digits[0], body_id).status_code == 200
    assert v2_infer(service.url, digits[1], body_id).status_code == 200
    wait_until(lambda: marked_reused(service, body_id), "the reuse marked in the store")
    answer = feedback(service.url, body_id, 2)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "ambiguous_request_id"


def test_tritonclient_request_id_is_the_feedback_id(service: Service, digits: np.ndarray) -> None:
    address = service.url.split("://", 1)[-1]
    client = InferenceServerClient(url=address, connection_timeout=10.0, network_timeout=30.0)
    try:
        tensor = InferInput("input", [2, 784], "FP32")
        tensor.set_data_from_numpy(digits[:2].astype(np.float32) / 255.0)
        request_id = unique("triton")
        result = client.infer("mnist", [tensor], request_id=request_id)
    finally:
        client.close()
    assert result.get_response()["id"] == request_id
    assert result.as_numpy("label").tolist() == [7, 2]
    answer = requests.post(
        service.url + "/feedback",
        json=[
            {"request_id": request_id, "index": 0, "label": 7},
            {"request_id": request_id, "index": 1, "label": 2},
        ],
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    assert [a["correct"] for a in answer.json()["accepted"]] == [True, True]
