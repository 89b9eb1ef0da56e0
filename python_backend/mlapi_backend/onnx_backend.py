"""Logic of the Python stand-in for Triton's native ``onnxruntime`` backend (CPU only).

The stand-in lets a config with ``backend: "onnxruntime"`` run unchanged on a CPU host whose
tritonserver has only the Python backend. It implements what the project's configs use and
refuses, at load time, everything else, so a config never silently means something different
here than on the NGC container:

- inputs/outputs are taken from the config and checked against the ONNX graph (names, types,
  shapes). A graph whose input dims are symbolic (so that one config with ``dims: [ -1 ]``
  serves versions of different widths) may declare the dims it needs in its metadata
  (INPUT_DIMS_METADATA, JSON ``{"input": [dims without the batch axis]}``): the config must
  allow them, and a request of another shape is refused with INVALID_ARG instead of failing
  inside the session (the native backend cannot read them: there such a request is a 500);
- every request of one ``execute`` call is concatenated along the batch axis and run in one
  session call (requests whose non-batch shapes differ are run in one call per shape);
- ``intra_op_thread_count`` / ``inter_op_thread_count`` parameters set the session's threads,
  as they do for the native backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlapi_backend.errors import InvalidInputError, ModelConfigError
from mlapi_backend.model_config import ModelConfig, TensorSpec

Tensors = Mapping[str, NDArray[Any]]
Outputs = dict[str, NDArray[Any]]

ORT_TO_TRITON = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
}
SUPPORTED_PARAMETERS = ("intra_op_thread_count", "inter_op_thread_count")
# ONNX metadata key: the non-batch dims each input needs, where the graph declares them symbolic.
INPUT_DIMS_METADATA = "mlapi.input_dims"
# Config sections the stand-in cannot honour. Scheduling sections that Triton's core implements
# (dynamic_batching, response_cache, model_warmup, version_policy) are fine.
UNSUPPORTED_SECTIONS = {
    "sequence_batching": "sequence batching",
    "ensemble_scheduling": "ensemble scheduling",
    "batch_input": "batch inputs",
    "batch_output": "batch outputs",
}
UNSUPPORTED_TENSOR_FIELDS = {
    "reshape": "reshape",
    "allow_ragged_batch": "ragged batching",
    "is_shape_tensor": "shape tensors",
    "optional": "optional inputs",
}


def check_supported(config: ModelConfig, instance_kind: str) -> None:
    """Raise ModelConfigError naming the first config feature the stand-in does not implement."""
    name = config.name
    raw = config.raw
    if instance_kind.upper() not in ("CPU", "KIND_CPU"):
        raise ModelConfigError(
            f"model '{name}': the Python onnxruntime stand-in runs on CPU only, got instance kind "
            f"{instance_kind}; GPU instances need the native onnxruntime backend (NGC container)"
        )
    for section, what in UNSUPPORTED_SECTIONS.items():
        if raw.get(section):
            raise ModelConfigError(
                f"model '{name}': {what} is not supported by the onnxruntime stand-in"
            )
    if raw.get("model_transaction_policy", {}).get("decoupled"):
        raise ModelConfigError(
            f"model '{name}': decoupled models are not supported by the onnxruntime stand-in"
        )
    accelerators = raw.get("optimization", {}).get("execution_accelerators", {})
    if any(
        accelerators.get(kind)
        for kind in ("gpu_execution_accelerator", "cpu_execution_accelerator")
    ):
        raise ModelConfigError(
            f"model '{name}': execution accelerators (TensorRT, OpenVINO) are not supported by the "
            "onnxruntime stand-in; keep them in the GPU variant of the config"
        )
    for spec in (*config.inputs, *config.outputs):
        for key, what in UNSUPPORTED_TENSOR_FIELDS.items():
            if spec.raw.get(key):
                raise ModelConfigError(
                    f"model '{name}': tensor '{spec.name}' uses {what}, which the onnxruntime stand-in does not support"
                )
        if spec.data_type not in ORT_TO_TRITON.values():
            raise ModelConfigError(
                f"model '{name}': tensor '{spec.name}' has type {spec.data_type}; the onnxruntime "
                f"stand-in supports {sorted(set(ORT_TO_TRITON.values()))}"
            )
    unknown = sorted(set(config.parameters) - set(SUPPORTED_PARAMETERS))
    if unknown:
        raise ModelConfigError(
            f"model '{name}': unsupported parameters {unknown}; the onnxruntime stand-in supports "
            f"{list(SUPPORTED_PARAMETERS)}"
        )


def session_options(config: ModelConfig) -> Any:
    """Build ONNX Runtime session options with the config's thread counts (0: runtime default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = config.int_parameter("intra_op_thread_count", 0, 0, 1024)
    options.inter_op_num_threads = config.int_parameter("inter_op_thread_count", 0, 0, 1024)
    return options


def _check_tensor(config: ModelConfig, spec: TensorSpec, node: Any, kind: str) -> None:
    """Compare a config tensor with the ONNX graph's node argument of the same name."""
    triton_type = ORT_TO_TRITON.get(node.type)
    if triton_type != spec.data_type:
        raise ModelConfigError(
            f"model '{config.name}': {kind} '{spec.name}' is {spec.data_type} in the config but "
            f"{node.type} in the ONNX model"
        )
    graph_dims = list(node.shape)
    if config.max_batch_size > 0:
        if not graph_dims or isinstance(graph_dims[0], int):
            raise ModelConfigError(
                f"model '{config.name}': max_batch_size > 0 needs a dynamic first dimension on "
                f"{kind} '{spec.name}', ONNX shape is {graph_dims}"
            )
        graph_dims = graph_dims[1:]
    if len(graph_dims) != len(spec.dims):
        raise ModelConfigError(
            f"model '{config.name}': {kind} '{spec.name}' has dims {list(spec.dims)} in the config "
            f"but ONNX shape {list(node.shape)} (batch dimension excluded: {config.max_batch_size > 0})"
        )
    for want, have in zip(spec.dims, graph_dims, strict=True):
        if isinstance(have, int) and want != have:
            raise ModelConfigError(
                f"model '{config.name}': {kind} '{spec.name}' has dims {list(spec.dims)} in the "
                f"config but ONNX shape {list(node.shape)}"
            )


def _declared_dims(config: ModelConfig, session: Any, version: str) -> dict[str, tuple[int, ...]]:
    """Return the dims the graph's metadata declares per input, checked against the config."""
    raw = session.get_modelmeta().custom_metadata_map.get(INPUT_DIMS_METADATA)
    if raw is None:
        return {}
    try:
        declared = {str(k): tuple(int(d) for d in v) for k, v in json.loads(raw).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelConfigError(
            f"model '{config.name}' version {version}: unreadable {INPUT_DIMS_METADATA} "
            f"metadata {raw!r}: {exc}"
        ) from exc
    for spec in config.inputs:
        dims = declared.get(spec.name)
        if dims is None:
            continue
        fits = len(dims) == len(spec.dims) and all(
            want in (-1, have) for want, have in zip(spec.dims, dims, strict=True)
        )
        if not fits:
            raise ModelConfigError(
                f"model '{config.name}' version {version}: input '{spec.name}' has dims "
                f"{list(spec.dims)} in the config but the ONNX model needs {list(dims)}"
            )
    return declared


@dataclass
class OnnxModel:
    """An ONNX Runtime session checked against its Triton config."""

    config: ModelConfig
    session: Any
    # Input name -> the non-batch dims the graph needs (from INPUT_DIMS_METADATA).
    needed_dims: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def load(
        cls, config: ModelConfig, model_dir: Path, version: str, instance_kind: str
    ) -> OnnxModel:
        check_supported(config, instance_kind)
        filename = str(config.raw.get("default_model_filename") or "model.onnx")
        path = model_dir / version / filename
        if not path.is_file():
            raise ModelConfigError(f"model '{config.name}': no model file at {path}")
        import onnxruntime as ort

        session = ort.InferenceSession(
            str(path), sess_options=session_options(config), providers=["CPUExecutionProvider"]
        )
        graph_inputs = {node.name: node for node in session.get_inputs()}
        graph_outputs = {node.name: node for node in session.get_outputs()}
        config_inputs = {spec.name for spec in config.inputs}
        if config_inputs != set(graph_inputs):
            raise ModelConfigError(
                f"model '{config.name}': config inputs {sorted(config_inputs)} differ from the ONNX "
                f"model's inputs {sorted(graph_inputs)}"
            )
        for spec in config.inputs:
            _check_tensor(config, spec, graph_inputs[spec.name], "input")
        for spec in config.outputs:
            if spec.name not in graph_outputs:
                raise ModelConfigError(
                    f"model '{config.name}': output '{spec.name}' is not produced by the ONNX model "
                    f"(it produces {sorted(graph_outputs)})"
                )
            _check_tensor(config, spec, graph_outputs[spec.name], "output")
        needed = _declared_dims(config, session, version)
        return cls(config=config, session=session, needed_dims=needed)

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.config.outputs]

    def check_request(self, inputs: Tensors) -> None:
        """Reject a request whose tensors do not fit the config (Triton core checks most of this)."""
        for spec in self.config.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidInputError(spec.name, "a tensor", "nothing")
            if array.dtype != spec.numpy_dtype:
                raise InvalidInputError(spec.name, spec.data_type, str(array.dtype))
            needed = self.needed_dims.get(spec.name)
            batched = self.config.max_batch_size > 0
            shape = tuple(array.shape[1:] if batched else array.shape)
            if needed is not None and shape != needed:
                raise InvalidInputError(
                    spec.name, f"dims {list(needed)} for this version", f"{list(shape)}"
                )

    def run(self, requests: Sequence[Tensors | Exception]) -> list[Outputs | Exception]:
        """Run every request; batched requests with equal non-batch shapes share one session run.

        Returns, per request, its outputs or the exception that failed it (so one bad request
        never fails its batch-mates). An exception in place of a request (one that could not be
        read) is passed through as its result.
        """
        results: list[Outputs | Exception] = [RuntimeError("not run")] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        readable: dict[int, Tensors] = {}
        for index, inputs in enumerate(requests):
            if isinstance(inputs, Exception):
                results[index] = inputs
                continue
            try:
                self.check_request(inputs)
            except InvalidInputError as exc:
                results[index] = exc
                continue
            readable[index] = inputs
            key: tuple[Any, ...] = (index,)  # without batching every request runs alone
            if self.config.max_batch_size > 0:
                key = tuple((name, inputs[name].shape[1:]) for name in sorted(inputs))
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            for index, outputs in zip(
                members, self._run_group([readable[i] for i in members]), strict=True
            ):
                results[index] = outputs
        return results

    def _run_group(self, requests: Sequence[Tensors]) -> list[Outputs | Exception]:
        feed = {
            spec.name: np.concatenate([r[spec.name] for r in requests])
            if len(requests) > 1
            else requests[0][spec.name]
            for spec in self.config.inputs
        }
        try:
            arrays = self.session.run(self.output_names, feed)
        except Exception as exc:  # onnxruntime raises several unrelated types for bad input
            if len(requests) == 1:
                return [exc]
            # Find the culprit: run each request alone so its batch-mates still get answers.
            return [self._run_group([request])[0] for request in requests]
        if self.config.max_batch_size <= 0:
            return [dict(zip(self.output_names, arrays, strict=True))]
        sizes = np.cumsum([len(next(iter(r.values()))) for r in requests])[:-1]
        per_output = [np.split(array, sizes) for array in arrays]
        return [
            {name: parts[i] for name, parts in zip(self.output_names, per_output, strict=True)}
            for i in range(len(requests))
        ]
