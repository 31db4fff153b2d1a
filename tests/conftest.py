"""Fixtures shared by every test: where the repository and the MNIST files are."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.model.repository import ModelRepository, ServingState

REPO_ROOT = Path(__file__).resolve().parent.parent
#: the committed model's version in models/mnist; it is `stable` in the committed labels.json
COMMITTED_VERSION = 1
#: the tests that drive Docker: they run last, so that `make test` can start its engine beside
#: the others (tests/deploy/conftest.py waits for it)
DEPLOY_TESTS = REPO_ROOT / "tests" / "deploy"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The deployment tests last, each part in its own order."""
    items.sort(key=lambda item: item.path.is_relative_to(DEPLOY_TESTS))


def _copy_of_committed_models() -> Path:
    """A temporary repository holding only the committed model, as `stable`.

    Tests never read the developer's models/: versions trained, promoted or pruned there (the
    README's training commands publish into it) must not change what the tests serve.
    """
    root = Path(tempfile.mkdtemp(prefix="mnist-committed-models-"))
    atexit.register(shutil.rmtree, root, True)
    _fill_with_committed_model(root)
    return root


def _fill_with_committed_model(root: Path) -> None:
    source = REPO_ROOT / "models" / "mnist" / str(COMMITTED_VERSION)
    shutil.copytree(source, root / "mnist" / str(COMMITTED_VERSION))
    with ModelRepository(root).changing_state() as change:
        change.state = ServingState(stable=COMMITTED_VERSION)


#: a session-long temporary copy of the committed model repository (read-only for tests)
COMMITTED_MODELS = _copy_of_committed_models()


def _fingerprint(root: Path) -> dict[str, str]:
    """Every file below ``root`` with the SHA-256 of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(autouse=True, scope="module")
def committed_models_stay_as_they_are() -> Iterator[None]:
    """Fails the module that changed the shared COMMITTED_MODELS (e.g. a server it started took a
    repository API call: unload, promote, publish) and puts the repository back, so the modules
    after it do not fail for it. A test that changes a repository serves a copy of its own."""
    before = _fingerprint(COMMITTED_MODELS)
    yield
    after = _fingerprint(COMMITTED_MODELS)
    if after != before:
        changed = sorted(
            name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
        )
        for entry in COMMITTED_MODELS.iterdir():  # the folder itself stays: servers name it
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        _fill_with_committed_model(COMMITTED_MODELS)
        pytest.fail(
            f"this module changed the shared committed model repository ({', '.join(changed)}); "
            "serve a copy of it instead (shutil.copytree(COMMITTED_MODELS, ...))"
        )


def _mnist_data_dir() -> Path:
    # One setting: MNIST_DATA_DIR (the Makefile and .ci/run point it at ../shared/data/mnist).
    configured = os.environ.get("MNIST_DATA_DIR")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "mnist"
    return path.resolve()


@pytest.fixture(scope="session")
def mnist_data_dir() -> Path:
    """The folder holding the four canonical MNIST IDX files; the suite fails loudly without it."""
    path = _mnist_data_dir()
    missing = [
        name
        for name in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
        if not (path / name).is_file()
    ]
    if missing:
        pytest.fail(
            f"MNIST files {missing} not found in {path}; set MNIST_DATA_DIR to their folder"
        )
    return path


# --- trained artifacts (TRAIN): small real models, built once per session -------------------

#: the tiny model every test shares: a few seconds to build, about 85% test accuracy
TINY_CONFIG_VALUES: dict[str, Any] = {
    "hidden_layers": (32,),
    "epochs": 5,
    "train_limit": 3000,
    "seed": 0,
    "progress": "none",
}


@pytest.fixture(scope="session")
def mnist_data(mnist_data_dir: Path) -> Any:
    """The whole of MNIST (training.data.MnistData), loaded and MD5-checked once per session."""
    import io

    from training.data import load_mnist

    return load_mnist(mnist_data_dir, log=io.StringIO())


@pytest.fixture(scope="session")
def tiny_trained_run(mnist_data: Any) -> Any:
    """A tiny MLP trained, evaluated, exported and verified, not yet published (a TrainedRun)."""
    from training.config import TrainConfig
    from training.pipeline import train_run

    return train_run(TrainConfig(**TINY_CONFIG_VALUES), mnist_data)


@pytest.fixture(scope="session")
def tiny_model_repo(tmp_path_factory: pytest.TempPathFactory, tiny_trained_run: Any) -> Path:
    """A model repository root holding ``mnist/1`` (the tiny model, its card, report, self-test).

    Shared by the whole session: copy it (shutil.copytree) before publishing into it or
    damaging it.
    """
    from training.pipeline import publish_run

    root = tmp_path_factory.mktemp("tiny_models")
    publish_run(tiny_trained_run, root, min_accuracy=0.0)
    return root


# --- databases (STORE): SQLite files and a real PostgreSQL server --------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL cluster for the whole session, removed afterwards (tests/postgres.py)."""
    from tests.postgres import start_postgres

    server = start_postgres()
    yield server
    server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, then a database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    server = request.getfixturevalue("postgres_server")
    if not server.running():  # a test stopped it and failed before restarting it
        server.start()
    url: str = server.create_database()
    return url
