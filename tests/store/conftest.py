"""The store tests' shared fixture: a migrated store on each database ``database_url`` gives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.store.config import sqlalchemy_url
from service.store.database import PredictionStore


@pytest.fixture
def store(database_url: str) -> Iterator[PredictionStore]:
    """A PredictionStore at the newest migration, closed after the test."""
    opened = PredictionStore.open(sqlalchemy_url(database_url))
    opened.migrate()
    yield opened
    opened.close()
