"""Labelled examples from feedback, split into a training share and a held-out test share.

``mnist-train --feedback`` trains on the training share; the held-out share is a second test set
that training, ``mnist-models diff`` and the promotion gate score every version on. Which share an
example falls in depends only on its request id and image index (a salted hash), so every later
run, and every tool, draws the same line without storing it anywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from service.model.contract import N_PIXELS, PIXEL_MAX
from service.store.config import sqlalchemy_url
from service.store.database import LabelledExample, PredictionStore

#: changing the salt would move examples between the shares: never change it
_SALT = b"mnist-service feedback holdout v1"
DEFAULT_HOLDOUT = 0.2


def held_out(request_id: str, item: int, share: float) -> bool:
    """Whether this image's feedback belongs to the held-out test share (deterministic)."""
    digest = hashlib.sha256(_SALT + f"{request_id}\x00{item}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


@dataclass(frozen=True)
class FeedbackExamples:
    """Kept inputs with people's labels: uint8 [N, 784] images (ink high) and int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray  # what the answering version said
    created: tuple[datetime, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def corrected(self) -> int:
        """Examples whose label differs from the answer given."""
        return int(np.count_nonzero(self.labels != self.predicted))

    def newest(self, count: int) -> FeedbackExamples:
        """The ``count`` most recent examples (all when there are fewer)."""
        start = max(0, len(self) - count)
        return FeedbackExamples(
            self.images[start:], self.labels[start:], self.predicted[start:], self.created[start:]
        )

    @classmethod
    def of(cls, examples: Sequence[LabelledExample]) -> FeedbackExamples:
        images = np.zeros((len(examples), N_PIXELS), dtype=np.uint8)
        for row, example in enumerate(examples):
            images[row] = np.frombuffer(example.pixels, dtype=np.uint8, count=N_PIXELS)
        return cls(
            images=images,
            labels=np.array([e.label for e in examples], dtype=np.int64),
            predicted=np.array([e.predicted_digit for e in examples], dtype=np.int64),
            created=tuple(e.created_at for e in examples),
        )


def split_examples(
    examples: Sequence[LabelledExample], share: float = DEFAULT_HOLDOUT
) -> tuple[FeedbackExamples, FeedbackExamples]:
    """(training share, held-out share), each oldest first."""
    usable = [e for e in examples if len(e.pixels) == N_PIXELS]
    test = [e for e in usable if held_out(e.request_id, e.item, share)]
    train = [e for e in usable if not held_out(e.request_id, e.item, share)]
    return FeedbackExamples.of(train), FeedbackExamples.of(test)


def load_feedback(
    database_url: str, share: float = DEFAULT_HOLDOUT
) -> tuple[FeedbackExamples, FeedbackExamples]:
    """The training and held-out feedback examples of the store at ``database_url``.

    Raises StoreUnavailable when the database cannot be read.
    """
    store = PredictionStore.open(sqlalchemy_url(database_url))
    try:
        return split_examples(store.labelled_examples(), share)
    finally:
        store.close()


def heldout_accuracy(
    predict: Callable[[np.ndarray], np.ndarray],
    database_url: str,
    share: float = DEFAULT_HOLDOUT,
) -> tuple[float | None, int]:
    """(accuracy, examples) of ``predict`` on the held-out feedback set; accuracy is None when
    the set is empty. ``predict`` takes float32 [N, 784] in [0, 1] and returns int labels [N].

    For the promotion gate and ``mnist-models diff``, e.g. with an onnxruntime session:
    ``heldout_accuracy(lambda x: session.run(["label"], {"input": x})[0], url, share)``, with
    ``share`` from the card's ``feedback.holdout_share``.
    """
    _, test = load_feedback(database_url, share)
    if not len(test):
        return None, 0
    predicted = np.asarray(predict(test.images.astype(np.float32) / np.float32(PIXEL_MAX)))
    return float(np.mean(predicted.ravel() == test.labels)), len(test)
