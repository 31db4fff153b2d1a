"""Operator settings checked at start: tokens a client can send, an upper bound for every number,
the OpenTelemetry batch sizes, and which files of the metrics folder start-up deletes."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service import serve
from service.config import ServiceConfig
from tests.conftest import COMMITTED_MODELS, REPO_ROOT


def _problem(**environ: str) -> str | None:
    return serve.check_settings(environ)


@pytest.mark.parametrize("value", ["", " ", "  ,  ", ","])
def test_api_tokens_set_to_nothing_stops_the_start(value: str) -> None:
    problem = _problem(API_TOKENS=value)
    assert problem is not None and problem.startswith(f"API_TOKENS={value!r} holds no token")


def test_api_tokens_unset_leaves_inference_open() -> None:
    assert ServiceConfig.from_env({}).api_tokens == frozenset()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_TOKENS", "токен"),
        ("API_TOKENS", "good,café"),
        ("API_TOKENS", "two words"),
        ("ADMIN_TOKEN", "clé"),
        ("ADMIN_TOKEN", "tab\there"),
    ],
)
def test_a_token_no_client_can_send_stops_the_start(name: str, value: str) -> None:
    problem = _problem(**{name: value})
    assert problem is not None and problem.startswith(f"{name}: ")
    assert "visible ASCII" in problem
    assert value not in problem  # a secret is never shown, even a bad one


def test_every_visible_ascii_token_is_taken() -> None:
    visible = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) != ",")
    config = ServiceConfig.from_env({"API_TOKENS": f"{visible},b64token+/=", "ADMIN_TOKEN": "a~b"})
    assert config.api_tokens == {visible, "b64token+/="}
    assert config.admin_token == "a~b"


#: a value over each bound, which used to pass the start and fail at run time
TOO_LARGE = {
    "MODEL_POLL_SECONDS": "1e10",
    "MODEL_VERSION": "99999999999999999999",
    "MAX_BODY_BYTES": "99999999999999999999",
    "MAX_IMAGE_BYTES": "99999999999999999999",
    "MAX_IMAGE_PIXELS": "99999999999999999999",
    "MAX_REQUEST_PIXELS": "99999999999999999999",
    "MAX_MODEL_BYTES": "99999999999999999999",
    "STORE_FLUSH_SECONDS": "1e10",
    "STORE_RETENTION_DAYS": "1e9",
    "STORE_INPUT_RETENTION_SECONDS": "1e15",
    "FEEDBACK_WAIT_SECONDS": "1e10",
    "STORE_RETENTION_ROWS": "100000000000000000000",
    "STORE_QUEUE_IMAGES": "100000000000000000000",
    "FEEDBACK_WINDOW": "100000000000000000000",
    "DRIFT_WINDOW": "100000000000000000000",
    "WEB_CONCURRENCY": "100000000000000000000",
    "GUNICORN_THREADS": "100000",
    "GUNICORN_TIMEOUT": "1000000000",
}


@pytest.mark.parametrize("name", sorted(TOO_LARGE))
def test_a_number_over_its_bound_stops_the_start_naming_it_and_the_range(name: str) -> None:
    problem = _problem(**{name: TOO_LARGE[name]})
    assert problem is not None and problem.startswith(name), problem
    assert " to " in problem  # the allowed range


def test_the_largest_values_allowed_still_start() -> None:
    assert (
        _problem(
            MODEL_POLL_SECONDS="86400",
            STORE_FLUSH_SECONDS="3600",
            STORE_RETENTION_ROWS=str(2**62),
            DRIFT_WINDOW="1000000",
            WEB_CONCURRENCY="256",
        )
        is None
    )


def test_workers_flag_over_its_bound_is_a_bad_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        serve.build_parser().parse_args(["--workers", "99999999999999999999"])
    assert stopped.value.code == serve.EXIT_BAD_SETTING
    assert "--workers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "-5"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE='-5'"),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=4096"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "100"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=512"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "many"}, "OTEL_BSP_MAX_QUEUE_SIZE='many'"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "0"}, "OTEL_BSP_SCHEDULE_DELAY='0'"),
        ({"OTEL_BSP_EXPORT_TIMEOUT": "1e20"}, "OTEL_BSP_EXPORT_TIMEOUT='1e20'"),
    ],
)
def test_batch_settings_the_sdk_would_fail_on_stop_the_start(
    environ: dict[str, str], words: str
) -> None:
    problem = serve.check_settings({"OTEL_TRACES_EXPORTER": "otlp", **environ})
    assert problem is not None and problem.startswith(words), problem
    # tracing off: the SDK never reads them
    assert serve.check_settings({"OTEL_TRACES_EXPORTER": "none", **environ}) is None


def test_batch_settings_the_sdk_takes_start() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    environ = {"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100"}
    assert serve.check_settings({"OTEL_TRACES_EXPORTER": "otlp", **environ}) is None
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environ.items():
            patch.setenv(name, value)
        processor = BatchSpanProcessor(InMemorySpanExporter())  # the SDK agrees: no error
        processor.shutdown()  # type: ignore[no-untyped-call]


def _gunicorn_conf() -> dict[str, Any]:
    return runpy.run_path(str(REPO_ROOT / "service" / "gunicorn.conf.py"))


def test_start_up_deletes_every_file_prometheus_client_writes(tmp_path: Path) -> None:
    """prometheus_client itself writes a sample of every type and gauge mode in a child
    process; each file it made matches the start-up's pattern and is deleted."""
    script = (
        "from prometheus_client import Counter, Gauge, Histogram, Summary\n"
        "Counter('c', 'c').inc(); Histogram('h', 'h').observe(1); Summary('s', 's').observe(1)\n"
        "for mode in Gauge._MULTIPROC_MODES:\n"
        "    Gauge('g_' + mode, 'g', multiprocess_mode=mode).set(1)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    written = sorted(os.listdir(tmp_path))
    assert len(written) == 3 + 10, written
    (tmp_path / "store.db").write_text("feedback")
    (tmp_path / "store.db-wal").write_text("wal")
    (tmp_path / "gauge_other_1.db").write_text("not prometheus_client's")
    _gunicorn_conf()["prepare_multiproc_dir"](str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["gauge_other_1.db", "store.db", "store.db-wal"]


def test_a_prometheus_folder_that_is_a_file_is_one_line_naming_it(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    problem = _problem(PROMETHEUS_MULTIPROC_DIR=str(a_file))
    assert problem == f"PROMETHEUS_MULTIPROC_DIR={str(a_file)!r}: not a folder"


def test_model_dir_blank_or_padded_means_what_the_workers_read() -> None:
    args = serve.build_parser().parse_args([])
    assert serve.check_models_dir(args, {"MODEL_DIR": f" {COMMITTED_MODELS} "}) is None
    pinned = {"MODEL_DIR": str(COMMITTED_MODELS), "MODEL_VERSION": "7"}
    problem = serve.check_models_dir(args, pinned)
    assert problem is not None and problem.startswith("MODEL_VERSION=7: ")


def test_a_unix_socket_path_over_the_kernel_limit_is_named(tmp_path: Path) -> None:
    # gunicorn retried it for 5 s ("AF_UNIX path too long"), then exited 1
    folder = tmp_path / ("d" * 110)
    folder.mkdir()
    path = folder / "s.sock"
    problem = serve.check_listen_target(f"unix:{path}")
    assert problem == (
        f"BIND='unix:{path}': the socket path is {len(str(path))} bytes; the limit is 107"
    )


def test_a_unix_socket_under_a_file_says_it_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    problem = serve.check_listen_target(f"unix:{tmp_path}/afile/s.sock")
    assert problem is not None and problem.endswith(f"('{tmp_path}/afile' is not a folder)")
    missing = serve.check_listen_target(f"unix:{tmp_path}/gone/s.sock")
    assert missing is not None and missing.endswith(f"('{tmp_path}/gone' does not exist)")
