"""``mnist-store`` run where no store is: delete and purge refuse, in one line naming the path
they looked for and how to point at the right one, and create nothing; migrate creates a new
store and says where, but not beside a model folder that does not exist (the default store's
place) nor in a folder that does not exist. A reader gone before the change: 141 and nothing
changed. Real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.store.cli import EXIT_NO_STORE, build_parser
from service.store.database import PredictionStore
from tests.conftest import REPO_ROOT


def store_process(cwd: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """``mnist-store ARGS`` run from ``cwd`` with only ``env`` of the store's settings."""
    settings = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name in ("DATABASE_URL", "STORE", "STORE_PATH", "MODEL_DIR"):
        settings.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "service.store.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**settings, **env},
        cwd=cwd,
    )


def store_cli(cwd: Path, *args: str, **env: str) -> tuple[int, str, str]:
    process = store_process(cwd, *args, **env)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


@pytest.mark.parametrize("command", [["delete", "readme-seven"], ["purge"]])
def test_another_folder_is_refused_without_creating_a_store(
    tmp_path: Path, command: list[str]
) -> None:
    code, out, err = store_cli(tmp_path, *command)  # cwd has no models/ and no store
    assert code == EXIT_NO_STORE == 6
    expected = tmp_path / "mnist-store.sqlite3"
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"mnist-store: no prediction store at {expected} (from ")
    assert "MODEL_DIR=models, no such folder" in err and "STORE_PATH=" in err
    assert "mnist-store migrate" not in err  # it would refuse too: no model folder here
    assert err.endswith(f"nothing to {command[0]}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("variable", ["STORE_PATH", "DATABASE_URL"])
def test_a_configured_path_that_does_not_exist_is_named(tmp_path: Path, variable: str) -> None:
    missing = tmp_path / "elsewhere" / "store.sqlite3"
    value = str(missing) if variable == "STORE_PATH" else f"sqlite:///{missing}"
    code, _, err = store_cli(tmp_path, "purge", **{variable: value})
    assert code == 6
    assert err.startswith(f"mnist-store: no prediction store at {missing} (from {variable}); ")
    assert not missing.exists() and not missing.parent.exists()


def test_migrate_creates_a_new_store_and_says_where(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()  # run from a project folder: MODEL_DIR=models exists
    code, out, err = store_cli(tmp_path, "migrate")
    created = tmp_path / "mnist-store.sqlite3"
    assert code == 0 and err == ""
    assert out.startswith(f"created a new store at {created}; schema at revision ")
    assert created.is_file()
    # the store now exists: a second migrate says nothing about creating, delete reads it
    code, out, _ = store_cli(tmp_path, "migrate")
    assert code == 0 and out.startswith("schema at revision ")
    code, _, err = store_cli(tmp_path, "delete", "readme-seven")
    assert code == 4 and err == "mnist-store: no records of request id 'readme-seven'\n"


def test_the_store_beside_model_dir_is_found(tmp_path: Path) -> None:
    store = PredictionStore.open(f"sqlite:///{tmp_path / 'mnist-store.sqlite3'}")
    store.migrate()
    store.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out, _ = store_cli(elsewhere, "purge", MODEL_DIR=str(tmp_path / "models"))
    assert code == 0 and out.endswith("surplus records deleted\n")
    assert list(elsewhere.iterdir()) == []


def test_a_reader_gone_before_migrate_changes_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    process = store_process(tmp_path, "migrate")
    assert process.stdout is not None
    process.stdout.close()  # `mnist-store migrate | true`
    _, err = process.communicate(timeout=60)
    assert process.returncode == 141 and err == ""
    assert list(tmp_path.iterdir()) == [models]  # no store was created


@pytest.mark.parametrize("model_dir", ["", "nonexistent", "/abs"])
def test_migrate_beside_a_model_folder_that_does_not_exist_creates_nothing(
    tmp_path: Path, model_dir: str
) -> None:
    """``MODEL_DIR=/nonexistent mnist-store migrate`` (or run outside the project, where
    ``models`` is not) once made a store beside the missing folder and exited 0."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    missing = tmp_path / "gone" / "models" if model_dir == "/abs" else None
    env = {} if not model_dir else {"MODEL_DIR": str(missing or model_dir)}
    code, out, err = store_cli(cwd, "migrate", **env)
    folder = missing or cwd / (model_dir or "models")
    assert code == EXIT_NO_STORE == 6 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"mnist-store: no model folder at {folder} (MODEL_DIR=")
    assert "STORE_PATH=" in err and err.endswith("; nothing created\n")
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["cwd"]


def test_a_store_path_in_a_folder_that_exists_is_created_without_a_model_folder(
    tmp_path: Path,
) -> None:
    target = tmp_path / "store.sqlite3"
    code, out, err = store_cli(
        tmp_path, "migrate", MODEL_DIR=str(tmp_path / "nonexistent"), STORE_PATH=str(target)
    )
    assert code == 0 and err == ""
    assert out.startswith(f"created a new store at {target}; schema at revision ")
    assert target.is_file() and not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize("variable", ["STORE_PATH", "DATABASE_URL"])
def test_migrate_into_a_folder_that_does_not_exist_names_it(tmp_path: Path, variable: str) -> None:
    (tmp_path / "models").mkdir()
    missing = tmp_path / "elsewhere" / "store.sqlite3"
    value = str(missing) if variable == "STORE_PATH" else f"sqlite:///{missing}"
    code, out, err = store_cli(tmp_path, "migrate", **{variable: value})
    assert code == EXIT_NO_STORE and out == ""
    assert err == (
        f"mnist-store: no folder {missing.parent} for a new store at {missing} (from "
        f"{variable}); nothing created\n"
    )
    assert not missing.parent.exists()


def test_the_new_exit_code_is_documented() -> None:
    help_text = " ".join(build_parser().format_help().split("exit codes:")[1].split())
    doc = (REPO_ROOT / "docs" / "feedback.md").read_text().split("`mnist-store` exit codes:")[1]
    doc = " ".join(doc.split("\n\n")[0].split())
    for text in (help_text, doc):
        assert " 6 no store at that path" in text
        assert "141 standard output or error closed early" in text
