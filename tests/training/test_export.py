"""training/export.py writes no subnormal weights, and the graph still agrees with scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.model.subnormals import subnormal_count
from tests.service.test_subnormals import graph_subnormals


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 5 epochs
def test_training_exports_no_subnormal_weights_and_still_agrees_with_scikit_learn(
    mnist_data: Any,
) -> None:
    from sklearn.neural_network import MLPClassifier

    from training.export import export_onnx
    from training.verify import verify_onnx

    images = mnist_data.train.images[:600].astype(np.float32) / np.float32(255)
    labels = mnist_data.train.labels[:600]
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    model.fit(images, labels)
    # the weights of pixels that are blank in every digit, as long training under L2 leaves them
    model.coefs_[0][:28] = np.float32(1e-40) * np.sign(model.coefs_[0][:28])
    assert subnormal_count(model.coefs_[0].astype(np.float32)) > 0
    exported = export_onnx(model)
    assert graph_subnormals(exported) == 0
    test = mnist_data.test.images[:500].astype(np.float32) / np.float32(255)
    parity = verify_onnx(exported, model.predict(test), model.predict_proba(test), test)
    assert parity.label_mismatches == 0
