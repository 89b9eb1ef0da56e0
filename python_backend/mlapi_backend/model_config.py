"""Typed view of the model configuration Triton hands to a Python model (``args["model_config"]``).

Triton serialises the protobuf ModelConfig to JSON, where int64 fields (dims) arrive as strings
and parameters as ``{"key": {"string_value": "..."}}``; this module hides both quirks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mlapi_backend.errors import ModelConfigError

T = TypeVar("T", int, float)

TRITON_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model config."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> TensorSpec:
        return cls(
            name=str(spec["name"]),
            data_type=str(spec.get("data_type", "TYPE_INVALID")),
            dims=tuple(int(d) for d in spec.get("dims", [])),
            optional=bool(spec.get("optional", False)),
            raw=spec,
        )

    @property
    def numpy_dtype(self) -> Any:
        try:
            return TRITON_TO_NUMPY[self.data_type]
        except KeyError:
            raise ModelConfigError(
                f"tensor '{self.name}': unsupported data type {self.data_type}"
            ) from None


@dataclass(frozen=True)
class ModelConfig:
    """A model's config (Triton's JSON form) with typed access to what the code uses."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, str]
    raw: Mapping[str, Any] = field(compare=False, repr=False)

    @classmethod
    def from_pbtxt(cls, path: Path) -> ModelConfig:
        return cls.from_json(read_pbtxt(path))

    @classmethod
    def from_json(cls, config: str | Mapping[str, Any]) -> ModelConfig:
        raw = json.loads(config) if isinstance(config, str) else config
        parameters = {
            key: str(value.get("string_value", ""))
            for key, value in raw.get("parameters", {}).items()
        }
        return cls(
            name=str(raw.get("name", "")),
            max_batch_size=int(raw.get("max_batch_size", 0)),
            inputs=tuple(TensorSpec.from_json(s) for s in raw.get("input", [])),
            outputs=tuple(TensorSpec.from_json(s) for s in raw.get("output", [])),
            parameters=parameters,
            raw=raw,
        )

    def input(self, name: str) -> TensorSpec:
        return _find(self, self.inputs, name, "input")

    def output(self, name: str) -> TensorSpec:
        return _find(self, self.outputs, name, "output")

    def string_parameter(self, key: str, default: str) -> str:
        return self.parameters.get(key, default) or default

    def int_parameter(self, key: str, default: int, low: int, high: int) -> int:
        return self._number(key, default, low, high, int)

    def float_parameter(self, key: str, default: float, low: float, high: float) -> float:
        return self._number(key, default, low, high, float)

    def _number(self, key: str, default: T, low: T, high: T, parse: Callable[[str], T]) -> T:
        text = self.parameters.get(key)
        if text is None or text == "":
            return default
        try:
            value = parse(text)
        except ValueError:
            raise ModelConfigError(
                f"model '{self.name}': parameter '{key}' must be of type {parse.__name__}, got {text!r}"
            ) from None
        if not low <= value <= high:
            raise ModelConfigError(
                f"model '{self.name}': parameter '{key}' must be in [{low}, {high}], got {value}"
            )
        return value

    def require_tensors(self, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> None:
        """Fail unless the config declares exactly these tensors with these data types."""
        for kind, declared, wanted in (
            ("input", self.inputs, inputs),
            ("output", self.outputs, outputs),
        ):
            got = {spec.name: spec.data_type for spec in declared}
            if got != dict(wanted):
                raise ModelConfigError(
                    f"model '{self.name}': {kind}s must be {dict(wanted)}, config declares {got}"
                )


def read_pbtxt(path: Path) -> dict[str, Any]:
    """Read a config.pbtxt as the JSON form Triton uses (for the load API and ModelConfig)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _find(config: ModelConfig, specs: tuple[TensorSpec, ...], name: str, kind: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise ModelConfigError(f"model '{config.name}': no {kind} named '{name}' in the config")
