"""Subnormal weights set to zero: the same function, without the x86 slow path.

A weight that L2 decay drives toward zero (an MLP's weights from MNIST's always-blank border
pixels) ends up subnormal in float32: 0 < |w| < 2**-126 (1.18e-38). x86 processors handle a
subnormal operand of a multiply-add in a microcode assist, tens to hundreds of cycles instead of
one (Intel 64 and IA-32 Architectures Optimization Reference Manual, "Floating-point
exceptions" and "Denormals-are-zero"), so a matrix product over such weights runs several times
slower: the committed 784-800-10 model was first exported with 17,016 subnormal weights, and
onnxruntime took 15.6 ms of CPU per batch of 256 on it, against 2.2 ms with them set to zero
(bench/subnormals_bench.py measures it on the machine at hand).

Setting them to zero changes no answer a classifier can give: a subnormal weight's product with a
pixel in 0..1 is below 2**-126, so it is lost in the rounding of any sum with a normal term (the
hidden layer's float32 biases are 1e-6 and more). onnxruntime's own switch
(``session.set_denormal_as_zero``) only sets the flags in its intra-op pool's threads; with one
intra-op thread the operators run on the caller's thread, where it does nothing (measured).
Hence the weights themselves: training/export.py writes models without them, and the service's
validation (service/model/validation.py) serves an in-memory copy of an older model without
them; model.onnx, its size and sha256 stay as published.
"""

from __future__ import annotations

import numpy as np

#: the floating dtypes whose subnormal values are set to zero
FLOAT_KINDS = (np.float16, np.float32, np.float64)


def _subnormal(values: np.ndarray) -> np.ndarray | None:
    """bool mask of the subnormal values of a float16/32/64 array; None for any other dtype."""
    if values.dtype.type not in FLOAT_KINDS:
        return None
    magnitude = np.abs(values)
    return np.asarray((magnitude > 0) & (magnitude < np.finfo(values.dtype).tiny))


def subnormal_count(values: np.ndarray) -> int:
    """How many values of a float16/32/64 array are subnormal (0 for any other dtype)."""
    mask = _subnormal(values)
    return 0 if mask is None else int(np.count_nonzero(mask))


def without_subnormals(values: np.ndarray) -> np.ndarray:
    """``values`` with every subnormal value set to +0.0 (signs of zero are not kept), as a new
    array of the same dtype and shape; the array itself when it has none or is not float16/32/64.
    NaN and infinities are kept."""
    mask = _subnormal(values)
    if mask is None or not mask.any():
        return values
    flushed = np.array(values, copy=True)
    flushed[mask] = 0
    return flushed


def flush_graph(model: object) -> int:
    """Set every subnormal value of the floating initializers of ``model`` (an
    ``onnx.ModelProto``, its main graph) to zero, in place; the number of values changed.
    Tensors of other dtypes and the graph's structure are left as they are."""
    from onnx import numpy_helper

    changed = 0
    for tensor in model.graph.initializer:  # type: ignore[attr-defined]
        values = numpy_helper.to_array(tensor)
        count = subnormal_count(values)
        if count:
            tensor.CopyFrom(numpy_helper.from_array(without_subnormals(values), tensor.name))
            changed += count
    return changed
