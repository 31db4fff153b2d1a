"""StoreConfig.from_env: the writer's CPU priority setting, read and checked like the others."""

from __future__ import annotations

import pytest

from service.config import ConfigError
from service.store.config import MAX_NICE, StoreConfig


def test_the_writer_runs_at_nice_10_unless_told() -> None:
    assert StoreConfig.from_env({}).writer_nice == 10
    assert StoreConfig.from_env({"STORE_WRITER_NICE": " "}).writer_nice == 10
    assert StoreConfig.from_env({"STORE_WRITER_NICE": "0"}).writer_nice == 0
    assert StoreConfig.from_env({"STORE_WRITER_NICE": str(MAX_NICE)}).writer_nice == MAX_NICE


# the last: an Arabic-Indic digit one, which str.isdigit accepts and int would read
@pytest.mark.parametrize("text", ["20", "-5", "low", "1.5", "\u0661"])
def test_a_nice_value_outside_0_to_19_names_the_setting_and_the_range(text: str) -> None:
    with pytest.raises(ConfigError, match=r"STORE_WRITER_NICE.*from 0 to 19"):
        StoreConfig.from_env({"STORE_WRITER_NICE": text})
