"""Every activation x solver trains, exports and keeps ONNX parity on the whole test set."""

from __future__ import annotations

from typing import Any, get_args

import numpy as np
import pytest

from service.model.contract import INPUT_NAME, OUTPUT_LABEL, OUTPUT_PROBABILITIES
from training.config import Activation, Solver, TrainConfig, validate
from training.data import scale_pixels
from training.evaluate import evaluate
from training.export import export_onnx
from training.fit import fit
from training.verify import verify_onnx


@pytest.fixture(scope="module")
def test_images(mnist_data: Any) -> np.ndarray:
    return scale_pixels(mnist_data.test.images)


@pytest.mark.parametrize("solver", get_args(Solver))
@pytest.mark.parametrize("activation", get_args(Activation))
def test_trains_exports_and_matches_onnx(
    mnist_data: Any, test_images: Any, activation: Any, solver: Any
) -> None:
    import onnxruntime as ort

    config = validate(
        TrainConfig(
            hidden_layers=(8,),
            activation=activation,
            solver=solver,
            epochs=6 if solver == "lbfgs" else 2,
            validation_fraction=0.0,
            learning_rate_init=0.3 if solver == "sgd" else 0.01,
        )
    )
    fitted = fit(mnist_data.train.head(1000), config)
    evaluation = evaluate(fitted.model, mnist_data.test)
    assert evaluation.accuracy > 0.2  # learned something: chance is 0.1
    onnx_bytes = export_onnx(fitted.model)
    parity = verify_onnx(
        onnx_bytes, evaluation.predicted_labels, evaluation.probabilities, test_images
    )
    assert parity.passed and parity.count == 10000
    assert np.array_equal(parity.onnx_labels, evaluation.predicted_labels)
    assert parity.max_abs_probability_diff < 1e-4

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert (model_input.name, model_input.type) == (INPUT_NAME, "tensor(float)")
    assert model_input.shape[1] == 784
    outputs = {o.name: o.type for o in session.get_outputs()}
    assert outputs == {OUTPUT_LABEL: "tensor(int64)", OUTPUT_PROBABILITIES: "tensor(float)"}
