"""Named tensors as JSON: values checked against a model's contract, calls, answers."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import numpy.typing as npt

from mlapi_client.results import InferResponse, ModelContract
from mlapi_gateway import errors
from mlapi_gateway.schemas import TensorPredict
from mlapi_gateway.upstream import Upstream

Tensor = npt.NDArray[Any]
_DTYPES = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}  # fmt: skip


async def infer(
    upstream: Upstream,
    model: str,
    body: TensorPredict,
    version: str | None,
    timeout_s: float,
    request_id: str | None,
) -> dict[str, Any]:
    """Run a non-streaming model on ``body``'s tensors; its outputs as JSON."""
    contract = await upstream.contract(model, version)
    if contract.decoupled:
        raise errors.RequestInvalidError(
            f"model '{model}' streams its answer",
            [errors.FieldError("path.model", "streaming model", f"POST /v1/models/{model}/stream")],
        )
    inputs = tensors_for(contract, body.inputs)
    with upstream.translated(model, version):
        response = await upstream.client.infer(
            model,
            inputs,
            version,
            parameters=body.parameters,
            timeout_s=timeout_s,
            retry=False,
            request_id=request_id,
        )
    return answer_of(response)


async def stream(
    upstream: Upstream,
    model: str,
    body: TensorPredict,
    version: str | None,
    timeout_s: float,
    request_id: str | None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Relay a decoupled model's responses as JSON (errors already translated)."""
    contract = await upstream.contract(model, version)
    if not contract.decoupled:
        raise errors.RequestInvalidError(
            f"model '{model}' does not stream",
            [
                errors.FieldError(
                    "path.model", "not a streaming model", f"POST /v1/models/{model}/predict"
                )
            ],
        )
    inputs = tensors_for(contract, body.inputs)
    with upstream.translated(model, version):
        async for response in upstream.stream_client.stream(
            model,
            inputs,
            version,
            parameters=body.parameters,
            timeout_s=timeout_s,
            request_id=request_id,
        ):
            yield answer_of(response)


def tensors_for(contract: ModelContract, values: dict[str, Any]) -> dict[str, Tensor]:
    """Convert JSON values to the model's input tensors, checked against dtypes and shapes."""
    problems: list[errors.FieldError] = []
    specs = {spec.name: spec for spec in contract.inputs}
    for name in values.keys() - specs.keys():
        problems.append(errors.FieldError(f"body.inputs.{name}", "unknown input", ", ".join(specs)))
    tensors: dict[str, Tensor] = {}
    for name, spec in specs.items():
        field = f"body.inputs.{name}"
        if name not in values:
            if not spec.optional:
                problems.append(errors.FieldError(field, "missing required input"))
            continue
        expected = f"{spec.datatype} with shape {list(spec.shape)} (-1: any size)"
        try:
            array = _array(values[name], spec.datatype)
        except (ValueError, TypeError, OverflowError, KeyError):
            problems.append(errors.FieldError(field, "values of the wrong type", expected))
            continue
        dims_ok = array.ndim == len(spec.shape) and all(
            want in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
        )
        if not dims_ok:
            problems.append(errors.FieldError(field, f"got shape {list(array.shape)}", expected))
            continue
        tensors[name] = array
    if problems:
        raise errors.RequestInvalidError(f"inputs do not match model '{contract.name}'", problems)
    return tensors


def answer_of(response: InferResponse) -> dict[str, Any]:
    """Return a response's outputs as JSON values, with the model and version that served it."""
    return {
        "model": response.model_name,
        "model_version": response.model_version,
        "outputs": {name: _json(array) for name, array in response.outputs.items()},
    }


def _array(value: Any, datatype: str) -> Tensor:
    if datatype == "BYTES":
        array = np.asarray(value, dtype=np.object_)
        return np.vectorize(_utf8, otypes=[np.object_])(array) if array.size else array
    return np.asarray(value, dtype=_DTYPES[datatype])


def _utf8(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected strings")
    return value.encode()


def _json(array: Tensor) -> Any:
    if array.dtype == np.object_:
        return (
            np.vectorize(
                lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
                otypes=[object],
            )(array).tolist()
            if array.size
            else []
        )
    return array.tolist()
