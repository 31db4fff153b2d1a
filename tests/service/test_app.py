"""create_app: factory, routes, JSON for every error; mnist-serve and the gunicorn config."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask

from service import serve
from service.app import PREDICTOR_KEY, create_app
from service.config import ServiceConfig
from service.errors import InvalidInput
from service.model.contract import ModelCard
from service.model.predictor import LoadedModel, Prediction, Predictor
from tests.service.conftest import SOURCE, RecordingMetrics, committed_parts, json_of, publish_copy

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app(model_repo: Path) -> Flask:
    return create_app(ServiceConfig(model_dir=model_repo, max_body_bytes=50_000))


def one_digit() -> list[int]:
    return list(committed_parts()[2]["images"][5])


def test_the_app_serves_predict_v2_and_metrics(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/predict", json={"images": [one_digit()]})
    assert response.status_code == 200
    assert (
        json_of(response)["predictions"][0]["digit"] == committed_parts()[2]["expected_labels"][5]
    )
    assert json_of(response)["model"] == {"name": "mnist", "version": 1}
    assert client.get("/v2/health/ready").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert b"mnist_inference_duration_seconds" in metrics.data


def test_create_app_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publish_copy(tmp_path)
    publish_copy(tmp_path)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("MODEL_VERSION", "1")
    app = create_app()
    assert app.extensions[PREDICTOR_KEY].loaded.version == 1


def test_an_app_on_an_empty_repository_is_live_not_ready_and_says_why(tmp_path: Path) -> None:
    app = create_app(ServiceConfig(model_dir=tmp_path))
    client = app.test_client()
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    response = client.post("/predict", json={"images": [committed_parts()[2]["images"][0]]})
    assert response.status_code == 503
    assert str(tmp_path) in json_of(response)["error"]["message"]


BLAS_THREADS = """
import json, sys
from pathlib import Path
from threadpoolctl import threadpool_info
from service.app import create_app
from service.config import ServiceConfig
def blas() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
before = blas()
create_app(ServiceConfig(model_dir=Path(sys.argv[1]), intra_op_threads=int(sys.argv[2])))
print(json.dumps([before, blas()]))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_numpy_blas_runs_on_the_sessions_thread_count(tmp_path: Path, threads: int) -> None:
    # left to itself OpenBLAS runs a thread per core, which spin between matrix products; the
    # app leaves it as many as each onnxruntime session has
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    environment["STORE"] = "0"
    result = subprocess.run(
        [sys.executable, "-c", BLAS_THREADS, str(tmp_path), str(threads)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        check=True,
        timeout=120,
    )
    before, after = json.loads(result.stdout.strip().splitlines()[-1])
    assert before and (os.cpu_count() == 1 or min(before) > 1)
    assert after == [threads] * len(before)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/nowhere", 404, "not_found"),
        ("get", "/predict", 405, "method_not_allowed"),
        ("delete", "/predict", 405, "method_not_allowed"),
    ],
)
def test_routing_errors_are_json(
    app: Flask, method: str, path: str, status: int, code: str
) -> None:
    response = getattr(app.test_client(), method)(path)
    assert response.status_code == status
    assert response.is_json
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]


def test_a_body_over_the_limit_is_413_json(app: Flask) -> None:
    response = app.test_client().post(
        "/predict", data=b"[" * 60_000, content_type="application/json"
    )
    assert response.status_code == 413
    assert json_of(response)["error"]["code"] == "payload_too_large"


class ExplodingPredictor:
    """A fake Predictor whose model fails in a way nobody planned for."""

    config = ServiceConfig()
    loaded = LoadedModel(
        name="mnist",
        version=9,
        card=ModelCard.from_json(json.loads((SOURCE / "card.json").read_text())),
        path=Path("."),
    )

    def predict(self, images: np.ndarray) -> Prediction:
        raise RuntimeError("secret internals /etc/passwd")

    def start_watching(self, *, handle_sighup: bool = True) -> None:
        return None


def test_an_unexpected_error_is_a_500_json_with_the_request_id_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(ServiceConfig(), predictor=ExplodingPredictor())  # type: ignore[arg-type]
    response = app.test_client().post(
        "/predict", json={"images": [one_digit()]}, headers={"X-Request-ID": "req-7"}
    )
    assert response.status_code == 500
    assert json_of(response)["error"]["code"] == "internal_error"
    assert "req-7" in json_of(response)["error"]["message"]
    body = response.get_data(as_text=True)
    assert "secret" not in body and "Traceback" not in body
    assert any("req-7" in record.getMessage() for record in caplog.records)
    assert any(record.exc_info for record in caplog.records)


def test_a_service_error_from_the_predictor_keeps_its_status() -> None:
    class Refusing(ExplodingPredictor):
        def predict(self, images: np.ndarray) -> Prediction:
            raise InvalidInput("too dark")

    app = create_app(ServiceConfig(), predictor=Refusing())  # type: ignore[arg-type]
    response = app.test_client().post("/predict", json={"images": [one_digit()]})
    assert response.status_code == 422
    assert response.json == {"error": {"code": "invalid_input", "message": "too dark"}}


def test_the_watcher_starts_lazily_on_the_first_request(model_repo: Path) -> None:
    config = ServiceConfig(model_dir=model_repo, poll_seconds=0.05)
    predictor = Predictor(config, metrics=RecordingMetrics())
    predictor.load()
    app = create_app(config, predictor=predictor)
    try:
        assert not predictor.watcher.running  # importing and creating start nothing
        app.test_client().get("/v2/health/live")
        assert predictor.watcher.running
    finally:
        predictor.stop_watching()


def test_mnist_serve_builds_the_gunicorn_command(tmp_path: Path) -> None:
    args = serve.build_parser().parse_args(
        ["--host", "0.0.0.0", "--port", "9001", "--workers", "3", "--models-dir", str(tmp_path)]
    )
    argv, env = serve.gunicorn_command(args, {"PATH": "/bin"})
    assert argv[1:3] == ["-m", "gunicorn"]
    assert argv[argv.index("--config") + 1] == str(REPO_ROOT / "service" / "gunicorn.conf.py")
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:9001"
    assert argv[argv.index("--workers") + 1] == "3"
    assert argv[-1] == "service.app:create_app()"
    assert env == {"PATH": "/bin", "MODEL_DIR": str(tmp_path.resolve())}


@pytest.mark.parametrize(
    ("flags", "bind", "expected"),
    [
        ([], " 127.0.0.1:18601 ", "127.0.0.1:18601"),  # BIND says where, no flag given
        ([], "unix:/run/mnist.sock", "unix:/run/mnist.sock"),
        ([], " ", "127.0.0.1:8000"),  # blank: unset
        (["--port", "9001"], "0.0.0.0:9000", "127.0.0.1:9001"),  # a flag wins over BIND
        (["--host", "::1"], "0.0.0.0:9000", "[::1]:8000"),
    ],
)
def test_mnist_serve_listens_where_bind_says_unless_a_flag_is_given(
    flags: list[str], bind: str, expected: str
) -> None:
    args = serve.build_parser().parse_args(flags)
    argv, _ = serve.gunicorn_command(args, {"BIND": bind})
    assert argv[argv.index("--bind") + 1] == expected


@pytest.mark.parametrize(
    ("bind", "address"),
    [
        ("127.0.0.1:18601", ("127.0.0.1", 18601)),
        ("tcp://localhost", ("localhost", 8000)),  # gunicorn's default port
        ("[::1]:9000", ("::1", 9000)),
        ("unix:/run/mnist.sock", None),
        ("fd://3", None),
    ],
)
def test_bind_takes_gunicorns_forms(bind: str, address: tuple[str, int] | None) -> None:
    assert serve.parse_bind(bind) == address
    assert serve.check_settings({"BIND": bind}) is None


@pytest.mark.parametrize(
    "bind",
    ["127.0.0.1:80a", "127.0.0.1:", ":8000", "127.0.0.1:70000", "a:1,b:2", "::1:80", "fd://x"],
)
def test_a_malformed_bind_is_one_line_naming_it(bind: str) -> None:
    problem = serve.check_settings({"BIND": bind})
    assert problem == (
        f"BIND={bind!r}: expected one address: HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N"
    )


@pytest.mark.parametrize("flags", [["--port", "0"], ["--port", "70000"], ["--workers", "0"]])
def test_mnist_serve_refuses_bad_flags(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        serve.build_parser().parse_args(flags)
    assert ended.value.code == 2


def _gunicorn_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in ("BIND", "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(REPO_ROOT / "service" / "gunicorn.conf.py"))


def test_the_gunicorn_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _gunicorn_settings(monkeypatch)
    assert settings["bind"] == ["127.0.0.1:8000"]
    assert settings["workers"] == 2
    assert settings["worker_class"] == "service.connection_balance.BalancedThreadWorker"
    assert settings["threads"] >= 2
    assert settings["preload_app"] is False
    assert settings["accesslog"] is None
    assert settings["limit_request_line"] > 0 and settings["limit_request_fields"] > 0
    for hook in (
        "on_starting",
        "pre_fork",
        "post_fork",
        "post_worker_init",
        "child_exit",
        "on_exit",
    ):
        assert callable(settings[hook])


def test_the_gunicorn_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _gunicorn_settings(monkeypatch, BIND="0.0.0.0:9000", WEB_CONCURRENCY="4")
    assert settings["bind"] == ["0.0.0.0:9000"]
    assert settings["workers"] == 4
    # a bad value: the default until on_starting's check_settings stops the start (exit 2)
    assert _gunicorn_settings(monkeypatch, WEB_CONCURRENCY="lots")["workers"] == 2
    problem = serve.check_settings({"WEB_CONCURRENCY": "lots"})
    assert problem == "WEB_CONCURRENCY='lots': expected a whole number from 1 to 256"


def test_watch_models_starts_the_watcher_only_for_the_service_app(tmp_path: Path) -> None:
    from service.app import watch_models

    publish_copy(tmp_path)
    config = ServiceConfig(model_dir=tmp_path, poll_seconds=60)
    predictor = Predictor(config, metrics=RecordingMetrics())
    predictor.load()
    app = create_app(config, predictor=predictor)
    assert watch_models(lambda environ, start_response: []) is False
    previous = signal.getsignal(signal.SIGHUP)
    try:
        assert watch_models(app) is True
        assert predictor.watcher.running
        assert signal.getsignal(signal.SIGHUP) != previous
    finally:
        predictor.stop_watching()
        signal.signal(signal.SIGHUP, previous)


def test_no_default_static_route() -> None:
    """The page blueprint serves its own files; Flask's /static would expose the whole folder."""
    from tests.conftest import COMMITTED_MODELS

    app = create_app(ServiceConfig(model_dir=COMMITTED_MODELS))
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert not any(rule.startswith("/static") for rule in rules)
    response = app.test_client().get("/static/app.js")
    assert response.status_code == 404
    assert response.is_json
