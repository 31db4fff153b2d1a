"""Rolling back passes the service's validation, as promote, canary and shadow do: a version the
servers would refuse (a damaged model.onnx, a model over MAX_MODEL_BYTES) is refused, on the
command line (exit 4) and over HTTP (409), and nothing changes; labelled stable, it would have
left every worker quietly serving an older version from the history."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from service.model.cli import main
from service.model.repository import ModelRepository, ServingState
from tests.conftest import COMMITTED_MODELS
from tests.service.conftest import publish_copy
from tests.service.test_model_repository_routes import ADMIN, TOKEN, make_client


@pytest.fixture
def repo(tmp_path: Path, tiny_trained_run: Any) -> Path:
    """1: the committed model, 2: the tiny model (stable), 3: a copy of 1 (stable before 2),
    so that rollback goes back to 3, then 1."""
    from training.pipeline import publish_run

    root = tmp_path / "models"
    shutil.copytree(COMMITTED_MODELS, root)
    publish_run(tiny_trained_run, root, min_accuracy=0.0)
    publish_copy(root)
    with ModelRepository(root).changing_state() as change:
        change.state = ServingState(stable=2, history=(1, 3))
    return root


def damage_model(root: Path, version: int) -> None:
    with (root / "mnist" / str(version) / "model.onnx").open("ab") as onnx_file:
        onnx_file.write(b"appended bytes")


def test_rollback_to_a_damaged_version_is_refused_and_changes_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage_model(repo, 3)
    assert main(["--models-dir", str(repo), "rollback"]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(
        "mnist-models: refused to roll back to version 3: version 3 fails validation: "
        "model.onnx sha256"
    )
    assert err.endswith("nothing changed (version 2 stays stable)")
    assert ModelRepository(repo).read_state() == ServingState(stable=2, history=(1, 3))


def test_rollback_to_a_version_over_max_model_bytes_is_refused(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = (repo / "mnist" / "2" / "model.onnx").stat().st_size
    committed = (repo / "mnist" / "3" / "model.onnx").stat().st_size
    assert tiny < committed
    monkeypatch.setenv("MAX_MODEL_BYTES", str(tiny + 1))  # the stable version still fits
    assert main(["--models-dir", str(repo), "rollback"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("mnist-models: refused to roll back to version 3: ")
    assert f"over MAX_MODEL_BYTES={tiny + 1}" in err and len(err.splitlines()) == 1
    assert ModelRepository(repo).read_state() == ServingState(stable=2, history=(1, 3))


def test_a_valid_version_is_rolled_back_to(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models-dir", str(repo), "rollback"]) == 0
    assert capsys.readouterr().out == "rolled back: version 3 is stable again (was 2)\n"
    assert ModelRepository(repo).read_state() == ServingState(stable=3, history=(1,))


def test_rollback_over_http_is_refused_with_409(repo: Path) -> None:
    admin = make_client(repo, admin_token=TOKEN)
    damage_model(repo, 3)
    response = admin.post("/v2/repository/models/mnist/rollback", headers=ADMIN)
    assert response.status_code == 409
    assert "refused to roll back to version 3: version 3 fails validation" in response.get_data(
        as_text=True
    )
    assert ModelRepository(repo).read_state() == ServingState(stable=2, history=(1, 3))


@pytest.mark.parametrize("missing", ["model.onnx", "card.json"])
def test_rollback_to_a_version_missing_a_file_is_refused_not_skipped(
    repo: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    # an incomplete folder was taken for a deleted version: the rollback went on to version 1
    (repo / "mnist" / "3" / missing).unlink()
    assert main(["--models-dir", str(repo), "rollback"]) == 4
    err = capsys.readouterr().err.strip()
    assert err == (
        "mnist-models: refused to roll back to version 3: its folder lacks model.onnx or "
        "card.json; nothing changed (version 2 stays stable)"
    )
    assert ModelRepository(repo).read_state() == ServingState(stable=2, history=(1, 3))


def test_rollback_skips_a_version_whose_folder_is_gone(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(repo / "mnist" / "3")
    assert main(["--models-dir", str(repo), "rollback"]) == 0
    assert ModelRepository(repo).read_state() == ServingState(stable=1, history=())
