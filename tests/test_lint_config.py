"""`make lint`, the pre-commit hooks and CI run the same checks."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def lint_recipe() -> list[str]:
    """The commands of the Makefile's lint target, with $(BIN)/ left out."""
    text = (REPO_ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert recipe is not None, "the Makefile has no lint target"
    return [line.strip().removeprefix("$(BIN)/") for line in recipe[1].splitlines()]


def test_pre_commit_hooks_are_the_lint_recipe() -> None:
    config = yaml.safe_load((REPO_ROOT / ".pre-commit-config.yaml").read_text())
    (repo,) = config["repos"]
    assert repo["repo"] == "local"  # nothing to download
    entries = [hook["entry"].removeprefix(".venv/bin/") for hook in repo["hooks"]]
    assert entries == lint_recipe()
    assert all(hook["language"] == "system" for hook in repo["hooks"])


def test_the_lint_recipe_checks_style_types_and_imports() -> None:
    tools = [command.split()[0] for command in lint_recipe()]
    assert tools == ["ruff", "ruff", "mypy", "lint-imports"]


def test_make_test_runs_lint_before_the_suite_and_ci_runs_make_test() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    prerequisites = re.search(r"^test: (.*?)##", makefile, re.MULTILINE)
    assert prerequisites is not None and prerequisites[1].split() == ["test-setup"]
    # test-setup makes lint (beside the installs) before the suite's recipe runs
    setup = re.search(r"^test-setup:\n\t@\$\(MAKE\) (.*)$", makefile, re.MULTILINE)
    assert setup is not None and "lint" in setup[1].split()
    assert (REPO_ROOT / ".ci" / "run").read_text().rstrip().endswith("exec make test")
