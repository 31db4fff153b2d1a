"""The typed model card: the committed card.json reads and writes back unchanged; a wrong field
is named by its path; optional sections can be added without touching the reader."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.model.contract import CardError, ModelCard, load_section, parse_card

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "mnist" / "1" / "card.json"


def committed() -> dict[str, Any]:
    card: dict[str, Any] = json.loads(COMMITTED.read_text())
    return card


def test_the_committed_card_reads_and_writes_back_the_same_json() -> None:
    card = parse_card(COMMITTED.read_text())
    assert card.version == 1 and card.name == "mnist"
    assert card.metrics.test_accuracy == committed()["metrics"]["test_accuracy"]
    assert card.input.shape == (-1, 784)
    assert card.to_json() == committed()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["metrics"].update(test_accuracy="high"),
            'metrics.test_accuracy: expected a number, got "high"',
        ),
        (lambda d: d.pop("selftest"), "selftest: missing"),
        (
            lambda d: d["history"][2].update(epoch=2.5),
            "history[2].epoch: expected an integer, got 2.5",
        ),
        (lambda d: d.update(outputs={}), "outputs: expected a list, got {}"),
        (
            lambda d: d["input"]["pixel_scale"].update(raw_max=True),
            "input.pixel_scale.raw_max: expected an integer, got true",
        ),
        (lambda d: d.update(version="1"), 'version: expected an integer, got "1"'),
        (lambda d: d["metrics"].update(best_epoch=None), None),  # nullable: fine
    ],
)
def test_a_wrong_field_is_named_by_its_path(change: Any, message: Any) -> None:
    document = committed()
    change(document)
    if message is None:
        assert ModelCard.from_json(document).metrics.best_epoch is None
        return
    with pytest.raises(CardError) as caught:
        ModelCard.from_json(document)
    assert str(caught.value) == message


def test_not_json_and_not_an_object_are_card_errors() -> None:
    with pytest.raises(CardError, match="not JSON"):
        parse_card("{nope")
    with pytest.raises(CardError, match="card: expected an object"):
        parse_card("[1, 2]")


def test_unknown_keys_are_ignored_so_newer_cards_still_load() -> None:
    document = committed()
    document["a_section_from_the_future"] = {"x": 1}
    document["metrics"]["new_figure"] = 0.5
    assert ModelCard.from_json(document) == ModelCard.from_json(committed())


@dataclass(frozen=True)
class DriftCheck:
    threshold: float
    coverage: float


@dataclass(frozen=True)
class CardWithDrift(ModelCard):
    drift: DriftCheck | None = None


def test_an_optional_section_is_one_dataclass_and_one_field() -> None:
    """How a new section is added: a card without it reads as None and is written without it."""
    old = load_section(CardWithDrift, committed())
    assert old.drift is None and "drift" not in old.to_json()
    document = {**committed(), "drift": {"threshold": 0.7, "coverage": 0.98}}
    new = load_section(CardWithDrift, document)
    assert new.drift == DriftCheck(threshold=0.7, coverage=0.98)
    assert new.to_json() == document
    broken = copy.deepcopy(document)
    broken["drift"]["threshold"] = "0.7"
    with pytest.raises(CardError, match=r"^drift\.threshold: expected a number"):
        load_section(CardWithDrift, broken)
