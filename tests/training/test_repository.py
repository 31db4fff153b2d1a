"""The model repository as training uses it: atomic publish, concurrent publishers, bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.model.contract import LABELS_FILE, TRITON_CONFIG_FILE, triton_config
from service.model.repository import (
    STAGING_PREFIX,
    ModelRepository,
    RepositoryError,
    ServingState,
    Trial,
    policy_versions,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ONNX = b"not really onnx, the repository only stores bytes"


def _publish(root: Path, payload: bytes = ONNX) -> Any:
    return ModelRepository(root).publish(
        payload, {"metrics": {"test_accuracy": 0.5}}, {"report/summary.md": b"# hi\n"}
    )


def test_publish_writes_a_complete_version_and_the_triton_config(tmp_path: Path) -> None:
    version = _publish(tmp_path)
    assert version.version == 1 and version.path == tmp_path / "mnist" / "1"
    onnx_bytes, card = version.read_verified()
    assert onnx_bytes == ONNX
    assert card["name"] == "mnist" and card["version"] == 1 and card["size"] == len(ONNX)
    assert (version.path / "report" / "summary.md").read_bytes() == b"# hi\n"
    config = (tmp_path / "mnist" / TRITON_CONFIG_FILE).read_text()
    assert config == triton_config(versions=[1])  # the first version published is stable
    assert not [p for p in (tmp_path / "mnist").iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_publish_into_a_relative_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mnist-train's default --models-dir is the relative "models"."""
    monkeypatch.chdir(tmp_path)
    version = _publish(Path("models"))
    assert version.path == tmp_path / "models" / "mnist" / "1"
    assert version.read_verified()[0] == ONNX
    assert ModelRepository("models").latest() == version


def test_stale_staging_from_a_crash_is_cleaned_and_never_listed(tmp_path: Path) -> None:
    _publish(tmp_path)
    stale = tmp_path / "mnist" / f"{STAGING_PREFIX}crashed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    assert [v.version for v in ModelRepository(tmp_path).versions()] == [1]
    assert _publish(tmp_path).version == 2
    assert not stale.exists()


def test_a_publish_that_fails_midway_leaves_nothing_visible(tmp_path: Path) -> None:
    _publish(tmp_path)
    with pytest.raises(RepositoryError, match="outside the version"):
        ModelRepository(tmp_path).publish(ONNX, {}, {"../escape.txt": b"x"})
    assert [v.version for v in ModelRepository(tmp_path).versions()] == [1]
    assert not [p for p in (tmp_path / "mnist").iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert not (tmp_path / "mnist" / "escape.txt").exists()


def test_concurrent_publishers_in_separate_processes_get_distinct_numbers(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from service.model.repository import ModelRepository\n"
        "repo = ModelRepository(sys.argv[1])\n"
        "print(' '.join(str(repo.publish(sys.argv[2].encode() * 1000, {}).version)"
        " for _ in range(3)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), f"worker{i}"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(4)
    ]
    numbers = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        numbers += [int(n) for n in out.split()]
    assert sorted(numbers) == list(range(1, 13))
    repository = ModelRepository(tmp_path)
    assert [v.version for v in repository.versions()] == list(range(1, 13))
    for version in repository.versions():
        onnx_bytes, card = version.read_verified()  # every version whole and matching its card
        assert onnx_bytes.startswith(b"worker") and card["version"] == version.version


def test_read_verified_rejects_a_changed_model_file(tmp_path: Path) -> None:
    version = _publish(tmp_path)
    version.model_path.write_bytes(ONNX[:-1] + b"X")
    with pytest.raises(RepositoryError, match="sha256"):
        version.read_verified()


def test_read_verified_rejects_a_wrong_size_or_version_in_the_card(tmp_path: Path) -> None:
    version = _publish(tmp_path)
    card = json.loads(version.card_path.read_text())
    version.card_path.write_text(json.dumps({**card, "size": 1}))
    with pytest.raises(RepositoryError, match="bytes"):
        version.read_verified()
    version.card_path.write_text(json.dumps({**card, "version": 9}))
    with pytest.raises(RepositoryError, match="names version 9"):
        version.read_verified()


def test_missing_or_unreadable_files_are_not_served(tmp_path: Path) -> None:
    first = _publish(tmp_path)
    second = _publish(tmp_path)
    second.card_path.write_text("{not json")
    with pytest.raises(RepositoryError, match=r"unreadable card\.json"):
        second.read_verified()
    first.model_path.unlink()
    repository = ModelRepository(tmp_path)
    assert [v.version for v in repository.versions()] == [2]  # an incomplete folder is no version
    with pytest.raises(RepositoryError, match="no complete version 1"):
        repository.get(1)


def test_a_published_tiny_model_verifies(tiny_model_repo: Any) -> None:
    version = ModelRepository(tiny_model_repo).latest()
    assert version is not None
    _, card = version.read_verified()
    assert (version.path / card["selftest"]["file"]).is_file()
    assert card["metrics"]["test_accuracy"] > 0.5


def test_a_later_publish_is_a_candidate_and_changes_nothing_that_serves(tmp_path: Path) -> None:
    _publish(tmp_path)
    repository = ModelRepository(tmp_path)
    labels = repository.labels_path.read_bytes()
    config = repository.config_path.read_bytes()
    _publish(tmp_path)
    assert repository.read_state() == ServingState(stable=1)
    assert repository.labels_path.read_bytes() == labels
    assert repository.config_path.read_bytes() == config


def test_a_repository_without_labels_gets_its_highest_version_pinned_at_the_next_publish(
    tmp_path: Path,
) -> None:
    _publish(tmp_path)
    _publish(tmp_path)
    repository = ModelRepository(tmp_path)
    repository.labels_path.unlink()
    repository.config_path.write_text(triton_config())  # latest 1: what the service serves now
    assert repository.read_state() == ServingState()
    _publish(tmp_path)
    assert repository.read_state() == ServingState(stable=2)


def test_state_changes_write_the_version_policy_and_the_labels(tmp_path: Path) -> None:
    _publish(tmp_path)
    _publish(tmp_path)
    repository = ModelRepository(tmp_path)
    with repository.changing_state() as change:
        change.state = ServingState(stable=1, trial=Trial("shadow", 2, 0.25), history=())
    config = repository.config_path.read_text()
    assert "version_policy: { specific: { versions: [ 1, 2 ] } }" in config
    assert policy_versions(config) == (1, 2)
    labels = json.loads((tmp_path / "mnist" / LABELS_FILE).read_text())
    assert labels["trial"] == {"mode": "shadow", "version": 2, "sample": 0.25}
    assert not [p for p in (tmp_path / "mnist").iterdir() if p.name.endswith(".tmp")]


def test_a_labelled_version_cannot_be_deleted_and_a_deleted_one_vanishes_at_once(
    tmp_path: Path,
) -> None:
    _publish(tmp_path)
    _publish(tmp_path)
    repository = ModelRepository(tmp_path)
    with pytest.raises(RepositoryError, match="stable"):
        repository.delete_version(1)
    repository.delete_version(2)
    assert [v.version for v in repository.versions()] == [1]
    assert [p.name for p in (tmp_path / "mnist").iterdir() if p.is_dir()] == ["1"]


def test_labels_that_are_not_json_are_a_repository_error(tmp_path: Path) -> None:
    _publish(tmp_path)
    repository = ModelRepository(tmp_path)
    repository.labels_path.write_text("{half")
    with pytest.raises(RepositoryError, match="not JSON"):
        repository.read_state()


@pytest.mark.parametrize("stray", ["file", "symlink loop", "dangling symlink", "folder"])
def test_a_stray_entry_named_like_the_next_version_is_skipped(stray: str, tmp_path: Path) -> None:
    _publish(tmp_path)
    entry = tmp_path / "mnist" / "2"
    if stray == "file":
        entry.write_text("notes\n")
    elif stray == "symlink loop":
        os.symlink("2", entry)
    elif stray == "dangling symlink":
        os.symlink(tmp_path / "nowhere", entry)
    else:
        entry.mkdir()
    version = _publish(tmp_path)
    assert version.version == 3 and version.path == tmp_path / "mnist" / "3"
    assert [v.version for v in ModelRepository(tmp_path).versions()] == [1, 3]
    assert os.path.lexists(entry)  # left as it was


def test_names_of_digits_int_cannot_read_are_not_versions(tmp_path: Path) -> None:
    _publish(tmp_path)
    (tmp_path / "mnist" / "²").mkdir()  # str.isdigit says yes, int() says no
    (tmp_path / "mnist" / "0").mkdir()
    repository = ModelRepository(tmp_path)
    assert [v.version for v in repository.versions()] == [1]
    assert _publish(tmp_path).version == 2
