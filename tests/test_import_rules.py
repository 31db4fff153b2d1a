"""The import rules of docs/architecture.md hold, and the checker would see them broken."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = REPO_ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter with the project's contracts over the packages found in ``root``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(PYPROJECT), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_project_keeps_every_import_contract() -> None:
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
    assert result.stdout.count("KEPT") >= 4


def test_a_broken_rule_is_reported(tmp_path: Path) -> None:
    for package in ("service", "training"):
        shutil.copytree(
            REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for module, line in [
        ("service/model/contract.py", "import flask"),
        ("service/page.py", "import service.app"),
        ("service/config.py", "import training.cli"),
    ]:
        path = tmp_path / module
        path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert broken == [
        "the service never imports the training pipeline BROKEN",
        "the model layer has no web framework BROKEN",
        # the store imports the model contract, which now imports flask
        "the prediction store has no web framework (training reads it too) BROKEN",
        "only the entry points import the app factory BROKEN",
        # training imports the contract, which now imports flask
        "training imports only the model contract and repository of the service BROKEN",
    ]


def test_importing_the_model_layer_imports_no_web_framework() -> None:
    code = (
        "import sys\n"
        "import service.model, service.model.contract, service.model.repository\n"
        "import service.model.predictor\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'werkzeug'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "OPENBLAS_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]"
