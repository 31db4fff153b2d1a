"""mnist-train --feedback: labelled examples from the prediction store join training, a share is
held out as a second test set, and the card says how many and from when."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from service.model.drift import DriftReference
from service.store.config import sqlalchemy_url
from service.store.database import STATISTIC_COLUMNS, FeedbackItem, PredictionStore
from service.store.examples import held_out, heldout_accuracy, split_examples
from service.store.schema import KEPT_REQUESTED
from tests.conftest import TINY_CONFIG_VALUES
from training.config import TrainConfig, redact_url
from training.pipeline import EXIT_DATA, EXIT_OK, run, train_run

START = datetime(2026, 11, 1, tzinfo=UTC)


def fill_store(url: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Every image answered as digit 0 by version 1 (its input kept: the client asked), then
    labelled by a person."""
    store = PredictionStore.open(sqlalchemy_url(url))
    store.migrate()
    rows = []
    for index, image in enumerate(images):
        row = {
            "request_id": f"req-{index}",
            "item": 0,
            "created_at": START + timedelta(minutes=index),
            "model_version": 1,
            "route": "/predict",
            "digit": 0,
            "confidence": 0.5,
            "input": image.astype(np.uint8).tobytes(),
            "input_kept": KEPT_REQUESTED,
        }
        row.update(dict.fromkeys(STATISTIC_COLUMNS, 0.0))
        rows.append(row)
    store.write_predictions(rows)
    for index, label in enumerate(labels):  # feedback arrives a day later, a minute apart
        store.add_feedback(
            [FeedbackItem(f"req-{index}", int(label))], START + timedelta(days=1, minutes=index)
        )
    store.close()


def test_the_holdout_is_deterministic_and_about_its_share() -> None:
    chosen = [held_out(f"id-{n}", 0, 0.2) for n in range(5000)]
    assert chosen == [held_out(f"id-{n}", 0, 0.2) for n in range(5000)]
    assert 0.17 < np.mean(chosen) < 0.23
    assert held_out("id-1", 0, 0.2) != held_out("id-1", 0, 0.0) or not held_out("id-1", 0, 0.2)
    assert not any(held_out(f"id-{n}", 0, 0.0) for n in range(100))


def test_redacted_urls_keep_no_password() -> None:
    assert redact_url("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact_url("sqlite:////tmp/a.sqlite3") == "sqlite:////tmp/a.sqlite3"


def test_training_with_feedback_counts_it_in_the_card(mnist_data: Any, database_url: Any) -> None:
    count = 150
    images = mnist_data.test.images[:count]
    labels = mnist_data.test.labels[:count]
    fill_store(database_url, images, labels)
    store = PredictionStore.open(sqlalchemy_url(database_url))
    train_share, test_share = split_examples(store.labelled_examples(), 0.2)
    store.close()
    config = TrainConfig(
        **TINY_CONFIG_VALUES, feedback=database_url, feedback_weight=2, feedback_cap=100
    )
    trained = train_run(config, mnist_data)
    section = trained.card.feedback
    assert section is not None
    assert section.examples_available == count
    assert section.train_examples == min(100, len(train_share))
    assert section.test_examples == len(test_share) > 0
    assert section.train_corrected == int(np.count_nonzero(train_share.labels[-100:] != 0))
    assert section.weight == 2 and section.holdout_share == 0.2
    used = sorted(train_share.newest(100).created + test_share.created)  # what training saw
    first, last = used[0], START + timedelta(days=1, minutes=count - 1)
    assert first > START + timedelta(days=1)  # the cap left the oldest training examples out
    assert section.first == first.isoformat(timespec="seconds")
    assert section.last == last.isoformat(timespec="seconds")
    assert section.test_accuracy is not None and 0.0 <= section.test_accuracy <= 1.0
    assert "secret" not in json.dumps(trained.card.to_json())
    assert DriftReference.from_card(trained.card) is not None  # and every run has a reference

    # the function the promotion gate calls scores any model on the same held-out set
    def always_seven(x: np.ndarray) -> np.ndarray:
        return np.full(len(x), 7)

    accuracy, examples = heldout_accuracy(always_seven, database_url, 0.2)
    assert examples == len(test_share)
    assert accuracy == pytest.approx(float(np.mean(test_share.labels == 7)))


def test_an_unreachable_feedback_database_is_a_data_error(mnist_data: Any, capsys: Any) -> None:
    config = TrainConfig(**TINY_CONFIG_VALUES, feedback="postgresql://me:secret@127.0.0.1:1/none")
    assert run(config, data=mnist_data) == EXIT_DATA
    err = capsys.readouterr().err
    assert "feedback database postgresql://me:***@127.0.0.1:1/none" in err
    assert "secret" not in err


def test_the_cli_publishes_with_feedback(
    mnist_data: Any, tmp_path: Any, mnist_data_dir: Any
) -> None:
    from training.cli import main

    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    fill_store(url, mnist_data.test.images[:40], mnist_data.test.labels[:40])
    code = main(
        [
            "--hidden-layers", "16", "--epochs", "2", "--train-limit", "2000",
            "--progress", "none", "--data-dir", str(mnist_data_dir),
            "--models-dir", str(tmp_path / "models"), "--feedback", url,
        ]
    )  # fmt: skip
    assert code == EXIT_OK
    card = json.loads((tmp_path / "models" / "mnist" / "1" / "card.json").read_text())
    assert card["feedback"]["examples_available"] == 40
    assert card["config"]["feedback"] == url
