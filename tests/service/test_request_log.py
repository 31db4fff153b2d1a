"""Unit tests of service.observability.request_log: request ids, one JSON line per request."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flask import Flask, request

from service.app import serve_with_layers
from service.config import ServiceConfig
from service.errors import InvalidInput
from service.observability import request_log
from service.observability.request_log import REQUEST_ID_HEADER
from service.observability.wsgi import facts_of

REPO_ROOT = Path(__file__).resolve().parents[2]


def build_app() -> Flask:
    """A small app wired like the service: routes note batch_size and model_version."""
    app = Flask("request_log_test")

    @app.post("/predict")
    def predict() -> dict[str, object]:
        images = request.get_json()["images"]
        facts = facts_of(request.environ)
        facts.batch_size = len(images)
        facts.model_version = 3
        if len(images) > 2:
            raise InvalidInput("at most 2 images")
        return {"request_id": facts.request_id, "again": facts_of(request.environ).request_id}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("a bug")

    serve_with_layers(app, ServiceConfig(), [])
    return app


@pytest.fixture
def client() -> Any:
    return build_app().test_client()


def log_lines(captured: str) -> list[dict[str, Any]]:
    """The request log lines among what was written to stderr."""
    lines = [json.loads(line) for line in captured.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == request_log.LOGGER_NAME]


def test_generated_id_when_none_sent(client: Any) -> None:
    response = client.post("/predict", json={"images": [[0] * 784]})
    assert response.status_code == 200
    request_id = response.headers[REQUEST_ID_HEADER]
    assert len(request_id) == 32
    int(request_id, 16)  # hex
    assert response.json["request_id"] == request_id == response.json["again"]


def test_each_request_gets_its_own_id(client: Any) -> None:
    responses = [client.post("/predict", json={"images": []}) for _ in range(5)]
    ids = {response.headers[REQUEST_ID_HEADER] for response in responses}
    assert len(ids) == 5


@pytest.mark.parametrize(
    "sent", ["abc-123", "trace:00f0/span.7_x", "x" * request_log.MAX_REQUEST_ID_LENGTH]
)
def test_valid_client_id_is_echoed(client: Any, sent: Any) -> None:
    response = client.post("/predict", json={"images": []}, headers={REQUEST_ID_HEADER: sent})
    assert response.headers[REQUEST_ID_HEADER] == sent
    assert response.json["request_id"] == sent


@pytest.mark.parametrize(
    "sent",
    [
        "",
        "x" * (request_log.MAX_REQUEST_ID_LENGTH + 1),
        "has space",
        "tab\there",
        "caf\u00e9",
        "\x7f",
    ],
)
def test_invalid_client_id_is_replaced(client: Any, sent: Any) -> None:
    response = client.post("/predict", json={"images": []}, headers={REQUEST_ID_HEADER: sent})
    returned = response.headers[REQUEST_ID_HEADER]
    assert returned != sent
    assert len(returned) == 32
    assert response.json["request_id"] == returned


def test_valid_request_id_rules() -> None:
    assert request_log.valid_request_id("a")
    assert not request_log.valid_request_id(None)
    assert not request_log.valid_request_id("")
    assert not request_log.valid_request_id("line\nbreak")
    assert not request_log.valid_request_id("y" * 129)


def test_id_header_on_every_error(client: Any) -> None:
    sent = {REQUEST_ID_HEADER: "err-1"}
    assert client.get("/no/such/route", headers=sent).headers[REQUEST_ID_HEADER] == "err-1"
    assert client.get("/predict", headers=sent).headers[REQUEST_ID_HEADER] == "err-1"  # 405
    too_many = client.post("/predict", json={"images": [1, 2, 3]}, headers=sent)
    assert too_many.status_code == 422
    assert too_many.headers[REQUEST_ID_HEADER] == "err-1"
    crashed = client.get("/boom", headers=sent)
    assert crashed.status_code == 500
    assert crashed.headers[REQUEST_ID_HEADER] == "err-1"


def test_one_json_line_per_request_with_its_fields(
    client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    pixels = [[7] * 784, [201] * 784]
    ok = client.post("/predict", json={"images": pixels}, headers={REQUEST_ID_HEADER: "req-ok"})
    missing = client.get("/missing/42", headers={REQUEST_ID_HEADER: "req-404"})
    assert (ok.status_code, missing.status_code) == (200, 404)
    captured = capsys.readouterr().err
    lines = log_lines(captured)
    assert [line["request_id"] for line in lines] == ["req-ok", "req-404"]
    first, second = lines
    assert first["method"] == "POST"
    assert first["route"] == "/predict"
    assert first["status"] == 200
    assert first["batch_size"] == 2
    assert first["model_version"] == 3
    assert isinstance(first["latency_ms"], float)
    assert first["latency_ms"] >= 0
    assert first["request_bytes"] > 784
    assert datetime.fromisoformat(first["ts"]).utcoffset() == timedelta(0)
    assert first["pid"] == os.getpid()
    assert second["route"] == request_log.UNMATCHED_ROUTE
    assert second["path"] == "/missing/42"
    assert second["status"] == 404
    assert second["batch_size"] is None
    # never pixels or bodies (a run of the pixel value, so a pid or a
    # latency that happens to contain the digits 201 cannot fail this)
    assert "201,201" not in captured.replace(" ", "")
    assert "images" not in captured


def test_failed_request_is_logged_once(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    client.get("/boom", headers={REQUEST_ID_HEADER: "req-500"})
    lines = [line for line in log_lines(capsys.readouterr().err) if line["event"] == "request"]
    assert len(lines) == 1
    assert lines[0]["status"] == 500
    assert lines[0]["request_id"] == "req-500"


def test_hostile_path_is_escaped_and_truncated(
    client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    path = "/x\u2028" + "a" * 1000
    client.get(path)
    (line,) = log_lines(capsys.readouterr().err)
    assert len(line["path"]) == request_log.MAX_LOGGED_PATH


def test_a_line_is_one_json_line_even_for_odd_values(capsys: pytest.CaptureFixture[str]) -> None:
    fields = request_log.line_fields(
        request_id="r-1",
        method="POST",
        route="/predict",
        path="/predict\u2028x\u0085y",
        status=200,
        latency_ms=0.12345,
        model_version=np.int64(2),  # type: ignore[arg-type]
        batch_size=1,
        request_bytes=3000,
    )
    request_log.configure_logging()
    capsys.readouterr()
    request_log.log_request(fields)
    written = capsys.readouterr().err
    assert written.endswith("\n") and written.count("\n") == 1
    assert len(written.splitlines()) == 1  # U+2028 and U+0085 escaped: no reader splits the line
    line = json.loads(written)
    assert line["path"] == "/predict\u2028x\u0085y"
    assert line["latency_ms"] == 0.123 and line["model_version"] == "2"
    assert (line["level"], line["logger"], line["event"]) == ("info", "mnist.requests", "request")
    stamp = datetime.fromisoformat(line["ts"])
    assert stamp.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


@pytest.mark.parametrize(
    ("field", "value", "written"),
    [
        ("request_bytes", 99999999999999999999, "99999999999999999999"),  # beyond 64 bits
        ("request_bytes", -(2**63) - 1, str(-(2**63) - 1)),
        ("request_bytes", 2**64 - 1, 2**64 - 1),  # still an integer: orjson writes it
        ("request_bytes", 10**5000, "an integer of 16610 bits"),  # more digits than str() writes
        ("request_bytes", -(2**63), -(2**63)),
        ("path", "/x\ud800y", "/x\\ud800y"),  # a lone surrogate: no UTF-8 encodes it
        ("route", "\udfff\u2028", "\\udfff\u2028"),
        ("model_version", {1: [2**70, "\ud800"]}, {"1": ["1180591620717411303424", "\\ud800"]}),
    ],
    ids=[
        "beyond-64-bits",
        "below-64-bits",
        "largest-64-bit",
        "too-many-digits-for-str",
        "smallest-64-bit",
        "lone-surrogate",
        "lone-surrogate-and-line-break",
        "nested",
    ],
)
def test_a_value_orjson_cannot_write_still_makes_one_line(
    capsys: pytest.CaptureFixture[str], field: str, value: Any, written: Any
) -> None:
    fields: dict[str, Any] = request_log.line_fields(
        request_id="r-odd",
        method="POST",
        route="/predict",
        path="/predict",
        status=413,
        latency_ms=0.5,
        model_version=None,
        batch_size=None,
        request_bytes=None,
    )
    fields[field] = value
    request_log.configure_logging()
    capsys.readouterr()
    request_log.log_request(fields)
    written_text = capsys.readouterr().err
    assert written_text.endswith("\n") and written_text.count("\n") == 1
    line = json.loads(written_text)
    assert (line["event"], line["request_id"], line["status"]) == ("request", "r-odd", 413)
    assert line[field] == written
    assert "could not be written" not in written_text


def test_a_line_too_deep_for_orjson_is_written_too() -> None:
    deep: Any = "end"
    for _ in range(300):  # orjson writes 254 levels
        deep = [deep]
    event: dict[Any, Any] = {"event": "e", "deep": deep, 1: "a"}  # a key orjson refuses too
    line = json.loads(request_log.json_line(event))
    assert line["event"] == "e" and line["1"] == "a"
    assert "end" in json.dumps(line["deep"])


def test_a_record_whose_message_is_not_text_is_one_json_line() -> None:
    try:
        raise ValueError("bad id '\ud800'")
    except ValueError:
        record = logging.LogRecord(
            "service.error_render", logging.ERROR, __file__, 1, "in %s", ("\udc00",), sys.exc_info()
        )
    line = json.loads(request_log.json_formatter().format(record))
    assert line["event"] == "in \\udc00"
    assert "ValueError: bad id '\\ud800'" in line["exception"]


@pytest.mark.parametrize(
    ("sent", "logged"),
    [
        ("99999999999999999999", "99999999999999999999"),
        ("9" * 5000, None),  # more digits than int() converts: not an error after the answer
        ("0" * 4999 + "7", 7),
    ],
)
def test_a_content_length_no_integer_holds_still_makes_one_line(
    client: Any, capsys: pytest.CaptureFixture[str], sent: str, logged: Any
) -> None:
    capsys.readouterr()
    answer = client.post(
        "/predict",
        data=b"{}",
        environ_overrides={"CONTENT_LENGTH": sent},
        headers={REQUEST_ID_HEADER: "req-long"},
    )
    assert 400 <= answer.status_code < 500
    (line,) = log_lines(capsys.readouterr().err)
    assert (line["request_id"], line["status"]) == ("req-long", answer.status_code)
    assert line["request_bytes"] == logged


def test_standard_library_records_are_the_same_json() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.LogRecord(
            "gunicorn.error", logging.ERROR, __file__, 1, "worker %s failed", (7,), sys.exc_info()
        )
    line = json.loads(request_log.json_formatter().format(record))
    assert (line["level"], line["logger"], line["event"]) == (
        "error",
        "gunicorn.error",
        "worker 7 failed",
    )
    assert line["pid"] == os.getpid()
    assert "ValueError: broken" in line["exception"]
    assert datetime.fromisoformat(line["ts"]).utcoffset() == timedelta(0)


def test_gunicorn_and_library_loggers_write_json_lines_with_the_logging_config() -> None:
    code = (
        "import logging, logging.config\n"
        "from service.observability.request_log import logging_config\n"
        "logging.config.dictConfig(logging_config('info', access=True))\n"
        "logging.getLogger('gunicorn.error').info('Booting worker with pid: %s', 42)\n"
        "logging.getLogger('gunicorn.access').info('GET / 200')\n"
        "logging.getLogger('service.model.predictor').warning('version %d rejected', 3)\n"
        "logging.getLogger('gunicorn.error').debug('not at info')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert all(list(line)[:4] == ["ts", "level", "logger", "event"] for line in lines)
    assert [(line["logger"], line["event"]) for line in lines] == [
        ("gunicorn.error", "Booting worker with pid: 42"),
        ("gunicorn.access", "GET / 200"),
        ("service.model.predictor", "version 3 rejected"),
    ]


def test_a_forked_child_draws_its_own_id_prefix_and_pid() -> None:
    parent_id = request_log.new_request_id()
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            fields = request_log.line_fields(
                request_id=request_log.new_request_id(),
                method="GET",
                route="/",
                path="/",
                status=200,
                latency_ms=None,
                model_version=None,
                batch_size=None,
                request_bytes=None,
            )
            os.write(writer, json.dumps(fields).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        fields = json.loads(pipe.read())
    os.waitpid(child, 0)
    assert fields["pid"] == child != os.getpid()
    assert fields["request_id"][:16] != parent_id[:16]
    assert request_log.new_request_id()[:16] == parent_id[:16]


class _CountingLogger(request_log.GunicornLogger):
    """The service's gunicorn logger, counting how often it builds gunicorn's access-log fields."""

    built = 0

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> Any:
        type(self).built += 1
        return super().atoms(resp, req, environ, request_time)


def _access(logger: request_log.GunicornLogger) -> None:
    """One request's access-log call, as gunicorn's worker makes it after the response."""

    response = SimpleNamespace(
        status="200 OK", sent=12, headers=[("Content-Type", "application/json")]
    )
    parsed = SimpleNamespace(headers=[("HOST", "127.0.0.1")])

    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/predict",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": "/predict",
        "REMOTE_ADDR": "127.0.0.1",
    }
    logger.access(response, parsed, environ, timedelta(milliseconds=3))


def test_the_gunicorn_logger_builds_no_access_line_without_an_access_log() -> None:
    from gunicorn.config import Config

    config = Config()  # as service/gunicorn.conf.py: a logging config, no access log
    config.set("logconfig_dict", request_log.logging_config("info"))
    _CountingLogger.built = 0
    logger = _CountingLogger(config)
    _access(logger)
    assert not logger.access_log_enabled
    assert _CountingLogger.built == 0


def test_the_gunicorn_logger_writes_the_access_log_when_one_is_set(tmp_path: Path) -> None:
    from gunicorn.config import Config

    access_log = tmp_path / "access.log"
    config = Config()
    config.set("accesslog", str(access_log))
    _CountingLogger.built = 0
    logger = _CountingLogger(config)
    _access(logger)
    for handler in logger.access_log.handlers:
        handler.flush()
    assert logger.access_log_enabled
    assert _CountingLogger.built == 1
    assert '"POST /predict HTTP/1.1" 200 12' in access_log.read_text()


def test_the_gunicorn_config_uses_the_service_logger() -> None:
    from gunicorn.config import Config

    config = Config()
    settings: dict[str, Any] = {}
    conf = REPO_ROOT / "service" / "gunicorn.conf.py"
    exec(compile(conf.read_text(), str(conf), "exec"), settings)
    config.set("logger_class", settings["logger_class"])
    assert config.logger_class is request_log.GunicornLogger
