"""numpy arrays <-> tritonclient tensors, the same way for both protocols."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.utils import np_to_triton_dtype

from mlapi_client.errors import InvalidInputError
from mlapi_client.results import InferResponse


def triton_dtype(name: str, array: npt.NDArray[Any]) -> str:
    """Return Triton's datatype of ``array``; refuse dtypes Triton has none for."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return "BYTES"
    dtype = np_to_triton_dtype(array.dtype)
    if dtype is None:
        raise InvalidInputError(
            f"input '{name}': numpy dtype {array.dtype} has no Triton datatype",
            field=name,
            expected="a numeric, bool or bytes array",
            got=str(array.dtype),
        )
    return str(dtype)


# Set by tritonclient from its own arguments; in ``parameters`` it refuses them. Over a gRPC
# stream that refusal happens inside grpc's request task and surfaces only as a local
# cancellation, so the client checks first, for both protocols alike.
RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "binary_data_output"}
)


def check_parameters(parameters: Mapping[str, Any] | None) -> None:
    """Refuse request parameters Triton's protocol cannot carry, naming the parameter."""
    for key, value in (parameters or {}).items():
        if key in RESERVED_PARAMETERS:
            raise InvalidInputError(
                f"parameter '{key}' is reserved by the inference protocol",
                field=f"parameters.{key}",
                expected="a model parameter",
                got=key,
            )
        if not isinstance(value, str | bool | int | float):
            raise InvalidInputError(
                f"parameter '{key}': expected a string, bool, integer or float, "
                f"got {type(value).__name__}",
                field=f"parameters.{key}",
                expected="str, bool, int or float",
                got=type(value).__name__,
            )


def infer_inputs(module: ModuleType, inputs: Mapping[str, npt.NDArray[Any]]) -> list[Any]:
    """Build the request tensors of ``module`` (tritonclient.http or tritonclient.grpc)."""
    tensors = []
    for name, value in inputs.items():
        array = np.asarray(value)
        dtype = triton_dtype(name, array)
        if array.dtype.kind == "U":
            array = np.char.encode(array, "utf-8").astype(np.object_)
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def requested_outputs(module: ModuleType, names: Sequence[str] | None) -> list[Any] | None:
    """Build the requested outputs of ``module`` (None: every output)."""
    return [module.InferRequestedOutput(name) for name in names] if names else None


def http_response(result: Any) -> InferResponse:
    """Convert a tritonclient.http result to an InferResponse."""
    body = result.get_response()
    names = [output["name"] for output in body.get("outputs", [])]
    return InferResponse(
        model_name=body.get("model_name", ""),
        model_version=str(body.get("model_version", "")),
        outputs={name: result.as_numpy(name) for name in names},
    )


def grpc_response(result: Any) -> InferResponse:
    """Convert a tritonclient.grpc result to an InferResponse."""
    proto = result.get_response()
    names = [output.name for output in proto.outputs]
    return InferResponse(
        model_name=proto.model_name,
        model_version=proto.model_version,
        outputs={name: result.as_numpy(name) for name in names},
    )


def json_value(name: str, array: npt.NDArray[Any]) -> Any:
    """Return a tensor as the JSON value the generate endpoints take (one element: a scalar)."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype == np.object_ or flat.dtype.kind == "S":
        values: list[Any] = [v.decode() if isinstance(v, bytes) else v for v in flat.tolist()]
    else:
        triton_dtype(name, flat)
        values = flat.tolist()
    return values[0] if len(values) == 1 else values


def from_json_event(event: Mapping[str, Any]) -> InferResponse:
    """Decode an SSE event of generate_stream: output fields next to model_name/model_version."""
    outputs = {
        key: np.asarray(value if isinstance(value, list) else [value])
        for key, value in event.items()
        if key not in ("model_name", "model_version", "id")
    }
    for key, value in outputs.items():
        if value.dtype.kind == "U":
            outputs[key] = np.char.encode(value, "utf-8").astype(np.object_)
    return InferResponse(
        model_name=str(event.get("model_name", "")),
        model_version=str(event.get("model_version", "")),
        outputs=outputs,
    )
