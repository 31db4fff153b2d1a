"""The Open Inference Protocol's inference request and response for the MNIST model.

``parse_infer_request`` turns a body (JSON tensors or the binary tensor data extension) into
float32 images in [0, 1] plus the outputs the client asked for; ``encode_infer_response`` turns a
prediction back into a body. Both are pure; every bad request raises errors.BadRequest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import json_arrays
from service.errors import BadRequest
from service.json_body import WrittenNumber, echo, shown
from service.model.contract import (
    IMAGE_SIDE,
    INPUT_NAME,
    N_CLASSES,
    N_PIXELS,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    PIXEL_MAX,
)
from service.model.reject import Decision
from service.v2.binary import (
    BinarySection,
    binary_data_size,
    encode_bytes_elements,
    join_body,
    parse_header_length,
    split_body,
)

#: the wire types accepted for the input; FP32 is the model's own scale, UINT8 raw MNIST pixels
INPUT_DATATYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
OUTPUT_NAMES = (OUTPUT_LABEL, OUTPUT_PROBABILITIES)
#: the reject option's decision, answered only when asked for by name (not model outputs:
#: computed beside the graph, as for /predict): BOOL [N] and BYTES [N] ("" when accepted)
OUTPUT_ACCEPTED = "accepted"
OUTPUT_REJECT_REASON = "reject_reason"
DECISION_OUTPUTS = (OUTPUT_ACCEPTED, OUTPUT_REJECT_REASON)
ACCEPTED_SHAPES = f"[N, {N_PIXELS}] or [N, {IMAGE_SIDE}, {IMAGE_SIDE}]"
SEND_DATATYPE = "send FP32 (pixels in 0..1) or UINT8 (raw pixels 0..255)"
NUMBERS_ONLY = "'data' must hold numbers only (no strings, booleans or null)"


@dataclass(frozen=True)
class RequestedOutput:
    """One output the client wants, and how: binary or JSON, raw or top-k classification."""

    name: str
    binary: bool = False
    classification: int | None = None


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request: images float32 [N, 784] in [0, 1]."""

    images: np.ndarray
    outputs: tuple[RequestedOutput, ...]
    id: str | None = None


def parse_infer_request(
    body: bytes,
    header_length: str | None,
    max_batch: int,
    on_id: Callable[[str], None] | None = None,
) -> InferRequest:
    """The request in ``body``; ``header_length`` is the Inference-Header-Content-Length value.
    ``on_id(id)`` is called with the request's ``id`` as soon as it is read, before the inputs
    are (so an error in them is logged under that id too)."""
    plain = json_arrays.infer_request_with_data(body) if header_length is None else None
    if plain is None:
        header, binary = split_body(body, parse_header_length(header_length, len(body)))
    else:  # all JSON, the input's numbers already an array (the common JSON request, read fast)
        header, binary = plain, BinarySection(memoryview(b""))
    if header_length is None and header.get("inputs") and _uses_binary(header["inputs"]):
        raise BadRequest(
            "an input has parameters.binary_data_size but the request has no "
            "Inference-Header-Content-Length header to say where the JSON ends"
        )
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {shown(request_id)}")
    if request_id is not None and on_id is not None:
        on_id(request_id)
    parameters = _parameters(header, "the request")
    if "sequence_id" in parameters:
        raise BadRequest("the mnist model is not a sequence model: drop sequence_id")
    # A boolean can only be in a body holding the bytes true or false, and never in data read
    # by the fast path: only then is a data list searched for one, value by value
    booleans = plain is None and (b"true" in body or b"false" in body)
    images = _read_inputs(header.get("inputs"), binary, max_batch, booleans)
    binary.finish()
    default_binary = _flag(parameters, "binary_data_output", "the request")
    outputs = _read_outputs(header.get("outputs"), default_binary)
    return InferRequest(images=images, outputs=outputs, id=request_id)


def encode_infer_response(
    request: InferRequest,
    labels: np.ndarray,
    probabilities: np.ndarray,
    model_name: str,
    model_version: int,
    decision: Decision | None = None,
) -> tuple[bytes, int | None]:
    """The response body and its Inference-Header-Content-Length (None when all JSON).

    ``decision`` is the reject option's, needed when "accepted" or "reject_reason" is asked for.
    """
    header: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request.id is not None:
        header["id"] = request.id
    tensors = []
    chunks = []
    for output in request.outputs:
        tensor: dict[str, Any] = {"name": output.name}
        if output.classification is not None:
            tensor["datatype"] = "BYTES"
            strings = top_classes(probabilities, output.classification)
            tensor["shape"] = [len(strings), output.classification]
            if output.binary:
                raw = encode_bytes_elements(s.encode() for row in strings for s in row)
            else:
                tensor["data"] = [s for row in strings for s in row]
        elif output.name in DECISION_OUTPUTS:
            assert decision is not None
            if output.name == OUTPUT_ACCEPTED:
                flags = decision.accepted
                tensor.update(datatype="BOOL", shape=[len(flags)])
                if output.binary:
                    raw = np.asarray(flags, dtype=np.uint8).tobytes()
                else:
                    tensor["data"] = list(flags)
            else:
                reasons = [reason or "" for reason in decision.reasons]
                tensor.update(datatype="BYTES", shape=[len(reasons)])
                if output.binary:
                    raw = encode_bytes_elements(reason.encode() for reason in reasons)
                else:
                    tensor["data"] = reasons
        elif output.name == OUTPUT_LABEL:
            array = labels.astype("<i8", copy=False)
            tensor.update(datatype="INT64", shape=[len(array)])
        else:
            array = probabilities.astype("<f4", copy=False)
            tensor.update(datatype="FP32", shape=list(array.shape))
        if output.classification is None and output.name not in DECISION_OUTPUTS:
            if output.binary:
                raw = array.tobytes()
            else:
                tensor["data"] = array.ravel().tolist()
        if output.binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        tensors.append(tensor)
    header["outputs"] = tensors
    return join_body(header, chunks)


def top_classes(probabilities: np.ndarray, count: int) -> list[list[str]]:
    """Triton's classification strings "<value>:<index>", best first, ``count`` per image."""
    # a stable sort on the negated scores keeps the lower index first on ties, as Triton does
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
    return [
        [f"{row[index]:f}:{index}" for index in indices]
        for row, indices in zip(probabilities.tolist(), order.tolist(), strict=True)
    ]


def _uses_binary(inputs: Any) -> bool:
    return isinstance(inputs, list) and any(
        isinstance(item, dict)
        and isinstance(item.get("parameters"), dict)
        and "binary_data_size" in item["parameters"]
        for item in inputs
    )


def _parameters(holder: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}: 'parameters' must be a JSON object")
    if "shared_memory_region" in parameters:
        raise BadRequest(f"{where}: the shared-memory extension is not supported")
    return parameters


def _flag(parameters: Mapping[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: parameter {key} must be true or false, got {shown(value)}")
    return value


def _read_inputs(
    inputs: Any, binary: BinarySection, max_batch: int, booleans: bool = False
) -> np.ndarray:
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(f"'inputs' must be a list holding the one input tensor {INPUT_NAME!r}")
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise BadRequest(
                f'each input must be an object {{"name": {INPUT_NAME!r}, "shape": [...], '
                f'"datatype": ..., "data": [...]}}, got {shown(tensor)}'
            )
        name = tensor.get("name")
        if "name" not in tensor:
            raise BadRequest(
                f"inputs[{index}] has no 'name': the mnist model has one input, {INPUT_NAME!r}"
            )
        if name != INPUT_NAME:
            raise BadRequest(
                f"unknown input {shown(name)}: the mnist model has one input, {INPUT_NAME!r}"
            )
    if len(inputs) > 1:
        raise BadRequest(f"input {INPUT_NAME!r} is given {len(inputs)} times")
    return _read_input(inputs[0], binary, max_batch, booleans)


def _read_input(
    tensor: Mapping[str, Any], binary: BinarySection, max_batch: int, booleans: bool = False
) -> np.ndarray:
    """The input's images; ``booleans``: the body may hold a boolean (see _array_of)."""
    where = f"input {INPUT_NAME!r}"
    datatype = tensor.get("datatype")
    if "datatype" not in tensor:
        raise BadRequest(f"{where} (inputs[0]) has no 'datatype'; {SEND_DATATYPE}")
    if not isinstance(datatype, str) or datatype not in INPUT_DATATYPES:
        raise BadRequest(f"{where}: datatype {shown(datatype)} is not supported; {SEND_DATATYPE}")
    dtype = INPUT_DATATYPES[datatype]
    shape = _read_shape(tensor.get("shape"), where, max_batch)
    count = shape[0] * N_PIXELS
    parameters = _parameters(tensor, where)
    size: Any = parameters.get("binary_data_size")
    if not (_huge(size) and size > 0):  # one of more digits than Python converts: named below
        size = binary_data_size(parameters, INPUT_NAME)
    if size is not None:
        if "data" in tensor:
            raise BadRequest(
                f"{where}: give either 'data' or parameters.binary_data_size, not both"
            )
        expected = count * dtype.itemsize
        if size != expected:
            raise BadRequest(
                f"{where}: binary_data_size is {size} bytes but shape {shape} of {datatype} "
                f"needs {expected}"
            )
        # frombuffer reads the request's own bytes in place: no copy on the hot path
        array = np.frombuffer(binary.take(size, INPUT_NAME), dtype=dtype)
    elif "data" in tensor:
        array = _json_data(tensor["data"], shape, count, where, datatype, booleans)
    else:
        raise BadRequest(f"{where}: needs 'data' or parameters.binary_data_size")
    return _to_model_scale(array.reshape(shape[0], N_PIXELS), datatype, where, array.shape)


def _read_shape(shape: Any, where: str, max_batch: int) -> list[int]:
    if isinstance(shape, list):
        # orjson reads an integer beyond 64 bits as a float: it is still the integer written
        shape = [_written_integer(d) for d in shape]
    if not (
        isinstance(shape, list)
        and shape
        and all((isinstance(d, int) and not isinstance(d, bool)) or _huge(d) for d in shape)
    ):
        raise BadRequest(f"{where}: 'shape' must be a list of integers, got {echo(shape)}")
    if shape[1:] not in ([N_PIXELS], [IMAGE_SIDE, IMAGE_SIDE]) or shape[0] < 0:
        raise BadRequest(f"{where}: shape {shape} is not {ACCEPTED_SHAPES}")
    if shape[0] == 0:
        raise BadRequest(f"{where}: the batch is empty (shape {shape})")
    if shape[0] > max_batch:
        raise BadRequest(f"{where}: batch of {shape[0]} images is over the limit of {max_batch}")
    return shape


def _huge(value: Any) -> bool:
    """True for a number too large for a float (``1e400``) or an integer of more digits than
    Python converts (both read as a WrittenNumber): it stays as written, so that the checks below
    name it (out of the datatype's range) and none passes it."""
    return isinstance(value, WrittenNumber)


def _written_integer(value: Any) -> Any:
    """``value``, or the integer a whole float beyond int64 stands for (as the client wrote it)."""
    if type(value) is float and value.is_integer() and abs(value) >= 2**63:
        return int(value)
    return value


def _json_data(
    data: Any, shape: list[int], count: int, where: str, datatype: str, booleans: bool = False
) -> np.ndarray:
    if isinstance(data, np.ndarray):
        array = data  # read by json_arrays as np.array(data) would have made it
    elif not isinstance(data, list):
        raise BadRequest(f"{where}: 'data' must be a JSON array of numbers")
    else:
        array = _array_of(data, where, datatype, booleans)
    if array.ndim != 1 and list(array.shape) != shape:
        raise BadRequest(
            f"{where}: nested 'data' has shape {list(array.shape)} but 'shape' says {shape}"
        )
    if array.size != count:
        raise BadRequest(
            f"{where}: 'data' holds {array.size} values but shape {shape} needs {count}"
        )
    return array


def _array_of(data: list[Any], where: str, datatype: str, booleans: bool) -> np.ndarray:
    """``data`` as numpy makes it, refused unless it holds numbers only, each a number numpy holds.

    numpy reads true and false among numbers as 1 and 0: when ``booleans`` says the body may hold
    one, the values are searched for it. An integer beyond 64 bits makes an array of objects, one
    of more digits than Python converts an infinite float (a WrittenNumber): both are named as
    out of the datatype's range. Only the ordinary parser's lists come here, never the fast path.
    """
    try:
        array = np.array(data)
    except RecursionError as exc:
        raise BadRequest(f"{where}: 'data' is nested too deeply") from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(
            f"{where}: 'data' is not a regular array of numbers: its nested lists must all have "
            "the same length and hold numbers, not lists, at the same depth"
        ) from exc
    if array.dtype.kind == "O":
        _check_objects(array, where, datatype)
    if array.dtype.kind not in "iuf":
        raise BadRequest(f"{where}: {NUMBERS_ONLY}")
    if booleans and bool in set(map(type, _flat(data, array.ndim))):
        index, value = next(
            (index, value)
            for index, value in enumerate(_flat(data, array.ndim))
            if type(value) is bool
        )
        raise _not_a_number(value, index, array.shape, where)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():  # NaN and Infinity are named by the range check; 1e999 too
            index = int(np.argmin(finite.ravel()))
            value = _value_at(data, index, array.shape)
            if _huge(value):
                raise _out_of_range(value, index, array.shape, where, datatype)
    return array


def _check_objects(array: np.ndarray, where: str, datatype: str) -> None:
    """An array of objects that holds only numbers and booleans: the first boolean, else the
    first integer beyond 64 bits (what made numpy keep objects) named; anything else (a string,
    null) is left to the caller's message."""
    values = array.ravel().tolist()
    if not set(map(type, values)) <= {int, float, bool, WrittenNumber}:
        return
    for index, value in enumerate(values):
        if type(value) is bool:
            raise _not_a_number(value, index, array.shape, where)
    for index, value in enumerate(values):
        if (type(value) is int and abs(value) >= 2**63) or _huge(value):
            raise _out_of_range(value, index, array.shape, where, datatype)


def _flat(data: list[Any], depth: int) -> Iterable[Any]:
    """The values of ``data``, lists ``depth`` deep, in row-major order."""
    values: Iterable[Any] = data
    for _ in range(depth - 1):
        values = itertools.chain.from_iterable(values)
    return values


def _value_at(data: list[Any], index: int, shape: tuple[int, ...]) -> Any:
    value: Any = data
    for step in np.unravel_index(index, shape):
        value = value[int(step)]
    return value


def _position(index: int, shape: tuple[int, ...]) -> str:
    """``data[5]``, or ``data[0][14][8]`` in nested data: where the ``index``-th value is."""
    return "data" + "".join(f"[{int(step)}]" for step in np.unravel_index(index, shape))


def _not_a_number(value: Any, index: int, shape: tuple[int, ...], where: str) -> BadRequest:
    return BadRequest(f"{where}: {NUMBERS_ONLY}: {_position(index, shape)} is {echo(value)}")


def _out_of_range(
    value: Any, index: int, shape: tuple[int, ...], where: str, datatype: str
) -> BadRequest:
    """The range message of ``datatype`` (as _to_model_scale words it) for one value."""
    got = f"got {echo(value)} at {_position(index, shape)}"
    if datatype == "UINT8":
        return BadRequest(f"{where}: UINT8 values must be in 0..255, {got}")
    return BadRequest(f"{where}: FP32 pixels must be in [0, 1] (raw 0..255 divided by 255), {got}")


def _to_model_scale(
    array: np.ndarray, datatype: str, where: str, sent_shape: tuple[int, ...]
) -> np.ndarray:
    """float32 [N, 784] in [0, 1], the scale the model was trained on (raw / 255); a value is
    placed in ``data`` as sent (``sent_shape``, flat or nested)."""
    if datatype == "UINT8":
        if array.dtype != np.uint8:  # JSON numbers: check before a cast could wrap them around
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise BadRequest(f"{where}: UINT8 values must be whole numbers in 0..255")
            low, high = array.min(), array.max()
            if low < 0 or high > PIXEL_MAX:
                raise BadRequest(f"{where}: UINT8 values must be in 0..255, got {low}..{high}")
        return array.astype(np.float32) / np.float32(PIXEL_MAX)
    # The binary section starts wherever the JSON header ends, so the view is usually misaligned
    # for float32: numpy and onnxruntime then take slow paths (about 2x the model's time on one
    # image). One aligned copy costs far less.
    with np.errstate(over="ignore"):  # 1e39 from JSON: infinite in float32, named below
        images = np.require(array, dtype=np.float32, requirements=["ALIGNED", "C_CONTIGUOUS"])
    low, high = images.min(), images.max()
    # written so that NaN fails the test: every comparison with NaN is false
    if not (low >= 0.0 and high <= 1.0):
        finite = np.isfinite(images)
        if not finite.all():
            index = int(np.argmin(finite.ravel()))
            value = array.ravel()[index]
            if np.isfinite(value):  # a JSON number beyond float32 (1e39): out of range, as sent
                raise _out_of_range(float(value), index, sent_shape, where, datatype)
            raise BadRequest(f"{where}: FP32 values must be finite numbers (got NaN or Infinity)")
        raise BadRequest(
            f"{where}: FP32 pixels must be in [0, 1] (raw 0..255 divided by 255), got "
            f"{float(low):g}..{float(high):g}"
        )
    return images


def _read_outputs(outputs: Any, default_binary: bool) -> tuple[RequestedOutput, ...]:
    if outputs is None or outputs == []:
        return tuple(RequestedOutput(name, binary=default_binary) for name in OUTPUT_NAMES)
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects")
    requested: dict[str, RequestedOutput] = {}
    for item in outputs:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUT_NAMES and name not in DECISION_OUTPUTS:
            raise BadRequest(
                f"unknown output {shown(name)}: the mnist model has outputs {list(OUTPUT_NAMES)}"
                f" (and the reject option's {list(DECISION_OUTPUTS)})"
            )
        if name in requested:
            raise BadRequest(f"output {name!r} is requested twice")
        where = f"output {name!r}"
        parameters = _parameters(item, where)
        binary = _flag(parameters, "binary_data", where, default=default_binary)
        requested[name] = RequestedOutput(
            name, binary=binary, classification=_classification(parameters, name)
        )
    return tuple(requested.values())


def _classification(parameters: Mapping[str, Any], name: str) -> int | None:
    count = parameters.get("classification")
    if count is None:
        return None
    if name != OUTPUT_PROBABILITIES:
        raise BadRequest(
            f"classification applies to the {OUTPUT_PROBABILITIES!r} output, not {name!r}"
        )
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= N_CLASSES:
        raise BadRequest(
            f"output {name!r}: classification must be a whole number from 1 to {N_CLASSES}, "
            f"got {shown(count)}"
        )
    return count
