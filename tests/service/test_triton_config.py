"""config.pbtxt is a ModelConfig Triton accepts: parsed with Triton's own model_config.proto
(as tritonclient ships it) and checked against Triton's I/O shape rule and version policies."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tritonclient
from google.protobuf import text_format

from service.model.contract import triton_config
from service.model.repository import ModelRepository, ServingState, Trial
from tests.service.conftest import publish_copy


def triton_model_config() -> ModuleType:
    """tritonclient's compiled model_config.proto, loaded without its grpc package."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count(values: list[int]) -> int:
    """Element count as Triton's GetElementCount: -1 if any dim is variable, 0 for no dims."""
    return 0 if not values else -1 if -1 in values else math.prod(values)


def io_problems(config: Any) -> list[str]:
    """Triton's ValidateIOShape (core/src/model_config_utils.cc) for every input and output."""
    problems = []
    for tensor in [*config.input, *config.output]:
        dims = list(tensor.dims)
        if not dims:
            problems.append(f"{tensor.name}: must specify 'dims'")
            continue
        if tensor.HasField("reshape"):
            shape = list(tensor.reshape.shape)
            if not shape and config.max_batch_size == 0:
                problems.append(f"{tensor.name}: empty reshape on a non-batching model")
            if _count(dims) != _count(shape) and (_count(shape) != 0 or _count(dims) != 1):
                problems.append(f"{tensor.name}: dims {dims} and reshape {shape} differ")
    return problems


@pytest.mark.parametrize("versions", [None, [1], [1, 3]])
def test_the_config_parses_as_triton_model_config_and_passes_its_io_rules(
    versions: list[int] | None,
) -> None:
    config = text_format.Parse(
        triton_config(versions=versions), triton_model_config().ModelConfig()
    )
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 1024
    assert io_problems(config) == []
    label = next(o for o in config.output if o.name == "label")
    assert list(label.dims) == [1] and label.HasField("reshape") and not label.reshape.shape
    if versions is None:
        assert config.version_policy.latest.num_versions == 1
    else:
        assert list(config.version_policy.specific.versions) == versions


def test_the_old_empty_dims_label_is_what_triton_refuses() -> None:
    """The rule above catches the triton-config-dims case's config (so it can fail)."""
    text = triton_config().replace("dims: [ 1 ]", "dims: [ ]")
    config = text_format.Parse(text, triton_model_config().ModelConfig())
    assert io_problems(config) == ["label: must specify 'dims'"]


def test_the_policy_written_lists_the_loaded_versions_and_they_exist(tmp_path: Path) -> None:
    publish_copy(tmp_path)
    publish_copy(tmp_path)
    repository = ModelRepository(tmp_path)
    with repository.changing_state() as change:
        change.state = ServingState(stable=1, trial=Trial("canary", 2, 0.1))
    config = text_format.Parse(
        repository.config_path.read_text(), triton_model_config().ModelConfig()
    )
    listed = list(config.version_policy.specific.versions)
    assert listed == [1, 2]
    assert all((repository.model_dir / str(v) / "model.onnx").is_file() for v in listed)
