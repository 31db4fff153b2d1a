"""mnist-models and the lifecycle operations on real copies of the committed model and MNIST."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.config import ServiceConfig
from service.model import lifecycle
from service.model.cli import main
from service.model.repository import ModelRepository, ServingState, Trial
from service.model.testset import MnistTestSet, MnistUnavailable, load_test_set
from tests.conftest import COMMITTED_MODELS, REPO_ROOT
from tests.service.conftest import committed_parts, publish_copy

SETTINGS = ServiceConfig()
#: the committed model's test accuracy as its card states it (test_committed_model checks the card)
COMMITTED_ACCURACY: float = committed_parts()[1]["metrics"]["test_accuracy"]


@pytest.fixture(scope="module")
def test_set(mnist_data_dir: Path) -> MnistTestSet:
    return load_test_set(mnist_data_dir)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the committed repository (version 1 stable)."""
    shutil.copytree(COMMITTED_MODELS, tmp_path / "models")
    return tmp_path / "models"


@pytest.fixture
def with_tiny(repo: Path, tiny_trained_run: Any) -> Path:
    """The committed repository plus version 2: the tiny model (~85%), a candidate."""
    from training.pipeline import publish_run

    publish_run(tiny_trained_run, repo, min_accuracy=0.0)
    return repo


def state(root: Path) -> ServingState:
    return ModelRepository(root).read_state()


def test_the_test_set_is_read_with_numpy_and_checked(
    test_set: MnistTestSet, tmp_path: Path
) -> None:
    assert test_set.images.shape == (10_000, 784) and test_set.images.dtype.name == "uint8"
    assert test_set.labels[:5].tolist() == [7, 2, 1, 0, 4]
    with pytest.raises(MnistUnavailable, match="MNIST_DATA_DIR"):
        load_test_set(tmp_path)


def test_promote_refuses_a_worse_version_with_the_figures(with_tiny: Path, test_set: Any) -> None:
    repository = ModelRepository(with_tiny)
    with pytest.raises(lifecycle.Refused) as refused:
        lifecycle.promote(repository, 2, SETTINGS, test_set)
    message = refused.value.message
    assert "points less accurate than stable version 1" in message
    assert f"version 1: {COMMITTED_ACCURACY:.2%}" in message
    assert "10,000 MNIST test images" in message
    assert state(with_tiny) == ServingState(stable=1)
    outcome = lifecycle.promote(repository, 2, SETTINGS, test_set, force=True)
    assert "forced past the gate" in outcome.message
    assert state(with_tiny) == ServingState(stable=2, history=(1,))
    assert "specific: { versions: [ 2 ] }" in repository.config_path.read_text()


def test_promote_refuses_a_card_that_lies(repo: Path, test_set: Any) -> None:
    metrics = {**committed_parts()[1]["metrics"], "test_accuracy": 0.9999}
    publish_copy(repo, card_changes={"metrics": metrics})
    lies = rf"its card lies: it claims 99\.99%, it scores {COMMITTED_ACCURACY:.2%}"
    with pytest.raises(lifecycle.Refused, match=lies):
        lifecycle.promote(ModelRepository(repo), 2, SETTINGS, test_set)


def test_promote_refuses_a_version_that_fails_its_self_test(repo: Path, test_set: Any) -> None:
    version = publish_copy(repo)
    (version.path / "selftest.json").write_text("{}")
    with pytest.raises(lifecycle.Refused, match=r"fails validation: .*selftest"):
        lifecycle.promote(ModelRepository(repo), 2, SETTINGS, test_set)


def test_an_equal_version_is_promoted_and_rolled_back(repo: Path, test_set: Any) -> None:
    publish_copy(repo)
    repository = ModelRepository(repo)
    outcome = lifecycle.promote(repository, 2, SETTINGS, test_set)
    assert outcome.gate is not None and outcome.gate.passed
    assert state(repo) == ServingState(stable=2, history=(1,))
    assert "version 1 is stable again" in lifecycle.rollback(repository, SETTINGS).message
    assert state(repo) == ServingState(stable=1)
    with pytest.raises(lifecycle.LifecycleError, match="no earlier stable"):
        lifecycle.rollback(repository, SETTINGS)


def test_trials_and_prune_never_touch_labelled_versions(with_tiny: Path, test_set: Any) -> None:
    repository = ModelRepository(with_tiny)
    publish_copy(with_tiny)  # 3: an equal copy of the committed model
    publish_copy(with_tiny)  # 4
    lifecycle.start_trial(repository, "shadow", 2, 0.5, SETTINGS, None)  # shadows skip the gate
    assert state(with_tiny).trial == Trial("shadow", 2, 0.5)
    with pytest.raises(lifecycle.Refused, match="less accurate"):
        lifecycle.start_trial(repository, "canary", 2, 0.2, SETTINGS, test_set)
    lifecycle.start_trial(repository, "canary", 3, 0.2, SETTINGS, test_set)
    assert state(with_tiny).trial == Trial("canary", 3, 0.2)
    outcome = lifecycle.prune(repository, keep=0)
    assert outcome.details["deleted"] == [2, 4]
    assert [v.version for v in repository.versions()] == [1, 3]
    assert "trial ended" in lifecycle.end_trial(repository).message
    assert state(with_tiny) == ServingState(stable=1)


def test_diff_gives_agreement_disagreements_and_accuracies(with_tiny: Path, test_set: Any) -> None:
    result = lifecycle.diff(ModelRepository(with_tiny), 1, 2, SETTINGS, test_set)
    assert result.accuracy_a == pytest.approx(COMMITTED_ACCURACY, abs=5e-5)
    assert 0.7 < result.accuracy_b < 0.95
    disagreeing = int(result.disagreements.sum())
    assert disagreeing == round((1 - result.agreement) * 10_000)
    assert result.disagreements.trace() == 0  # only where the digits differ


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "service.model.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_the_cli_lists_shows_refuses_and_exits_with_documented_codes(
    with_tiny: Path, mnist_data_dir: Path
) -> None:
    common = ["--models-dir", str(with_tiny), "--data-dir", str(mnist_data_dir)]
    listed = run_cli(*common, "list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[1].split()[:3] == ["1", "stable", f"{COMMITTED_ACCURACY:.2%}"]
    assert lines[2].split()[:2] == ["2", "candidate"] and "784-32-10" in lines[2]
    shown = run_cli(*common, "show", "2")
    assert "report: " in shown.stdout and "summary.md" in shown.stdout
    refused = run_cli(*common, "promote", "2")
    assert refused.returncode == 4
    assert refused.stderr.startswith("mnist-models: refused to promote version 2")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert run_cli(*common, "show", "9").returncode == 2
    assert run_cli(*common, "rollback").returncode == 7  # nothing to roll back to
    nowhere = ["--models-dir", str(with_tiny), "--data-dir", "/nonexistent"]
    missing = run_cli(*nowhere, "diff", "1", "2")
    assert missing.returncode == 3
    diffed = run_cli(*common, "diff", "1", "2")
    assert diffed.returncode == 0 and "agreement" in diffed.stdout
    assert run_cli(*common, "shadow", "2", "--sample", "1").returncode == 0
    labels = json.loads((with_tiny / "mnist" / "labels.json").read_text())
    assert labels["trial"] == {"mode": "shadow", "version": 2, "sample": 1.0}


def test_main_returns_the_exit_code_in_process(with_tiny: Path, mnist_data_dir: Path) -> None:
    code = main(["--models-dir", str(with_tiny), "--data-dir", str(mnist_data_dir), "end-trial"])
    assert code == 0
