"""The contract between training and serving: names, shapes and the pixel scale of the model.

Training imports this module to build the ONNX graph and the card; serving imports it to check
both. It imports nothing beyond the standard library, so the serving image needs no scikit-learn.
"""

from __future__ import annotations

MODEL_NAME = "mnist"
IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
CLASS_LABELS: tuple[int, ...] = tuple(range(N_CLASSES))

INPUT_NAME = "input"
INPUT_DTYPE = "float32"
#: raw MNIST pixels are 0 (background) .. 255 (ink); the model sees raw / 255
PIXEL_MAX = 255.0
PIXEL_SCALE = 1.0 / PIXEL_MAX

OUTPUT_LABEL = "label"
OUTPUT_PROBABILITIES = "probabilities"

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
SELFTEST_FILE = "selftest.json"
TRITON_CONFIG_FILE = "config.pbtxt"

#: largest batch the service accepts in one request, also written as Triton's max_batch_size
MAX_BATCH_SIZE = 1024


def input_contract() -> dict[str, object]:
    """The input description written into every card."""
    return {
        "name": INPUT_NAME,
        "dtype": INPUT_DTYPE,
        "shape": [-1, N_PIXELS],
        "pixel_scale": {"raw_min": 0, "raw_max": 255, "model_min": 0.0, "model_max": 1.0},
        "layout": "row-major 28x28, ink high (as in MNIST)",
    }


def output_contract() -> list[dict[str, object]]:
    """The output descriptions written into every card."""
    return [
        {"name": OUTPUT_LABEL, "dtype": "int64", "shape": [-1]},
        {"name": OUTPUT_PROBABILITIES, "dtype": "float32", "shape": [-1, N_CLASSES]},
    ]


def triton_config(name: str = MODEL_NAME, max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """Triton's config.pbtxt for the model, so the same folder can be served by Triton."""
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {N_PIXELS} ]
  }}
]
output [
  {{
    name: "{OUTPUT_LABEL}"
    data_type: TYPE_INT64
    dims: [ ]
    reshape: {{ shape: [ ] }}
  }},
  {{
    name: "{OUTPUT_PROBABILITIES}"
    data_type: TYPE_FP32
    dims: [ {N_CLASSES} ]
  }}
]
version_policy: {{ latest {{ num_versions: 1 }} }}
"""
