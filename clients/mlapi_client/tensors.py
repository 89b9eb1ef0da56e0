"""numpy arrays <-> tritonclient tensors, the same way for both protocols.

HTTP inference bodies of numeric tensors are encoded and decoded here directly, byte for byte
as tritonclient.http's codecs do (its JSON library, rapidjson; tensors as raw bytes after the
JSON header), without its InferInput and InferResult objects: those cost about 60 us a
digits call (a class built per result, per-output scans). BYTES inputs and compressed replies
still go through tritonclient's codecs.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import rapidjson
import tritonclient.http as httpclient
from tritonclient.utils import deserialize_bf16_tensor, np_to_triton_dtype, triton_to_np_dtype

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


_CODEC = httpclient.InferenceServerClient  # its request/response codecs are static methods
_RAW_KINDS = frozenset("biuf")
_ELEMENT_LENGTH = struct.Struct("<I")  # numpy kinds sent as their own bytes (bool, ints, floats)


def http_infer_body(
    inputs: Mapping[str, npt.NDArray[Any]],
    outputs: Sequence[str] | None,
    request_id: str,
    parameters: Mapping[str, Any] | None,
) -> tuple[bytes, int | None]:
    """Return an HTTP infer request body and its JSON header's length (None: all JSON).

    The body tritonclient.http builds for the same call: every input as binary data after
    the JSON header, outputs binary too; ``request_id`` "" leaves the KServe id out.
    """
    header_inputs: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = triton_dtype(name, array)
        if array.dtype.kind not in _RAW_KINDS:
            return _tritonclient_body(inputs, outputs, request_id, parameters)
        data = array.tobytes()
        header_inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data)},
            }
        )
        raw.append(data)
    request: dict[str, Any] = {}
    if request_id:
        request["id"] = request_id
    request["inputs"] = header_inputs
    request_parameters: dict[str, Any] = {}
    if outputs:
        request["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    else:
        request_parameters["binary_data_output"] = True
    for key, value in (parameters or {}).items():
        if key in RESERVED_PARAMETERS:  # refused by tritonclient, in its words
            return _tritonclient_body(inputs, outputs, request_id, parameters)
        request_parameters[key] = value
    if request_parameters:
        request["parameters"] = request_parameters
    header = rapidjson.dumps(request).encode()  # ASCII (ensure_ascii), as tritonclient's
    if not raw:
        return header, None
    return b"".join((header, *raw)), len(header)


def _tritonclient_body(
    inputs: Mapping[str, npt.NDArray[Any]],
    outputs: Sequence[str] | None,
    request_id: str,
    parameters: Mapping[str, Any] | None,
) -> tuple[bytes, int | None]:
    body, json_size = _CODEC.generate_request_body(
        infer_inputs(httpclient, inputs),
        outputs=requested_outputs(httpclient, outputs),
        request_id=request_id,
        parameters=dict(parameters) if parameters else None,
    )
    return body, json_size


def http_infer_response(
    body: bytes, header_length: str | None, content_encoding: str | None
) -> InferResponse:
    """Decode an HTTP infer reply: its JSON header, then any binary outputs after it."""
    if content_encoding is not None:  # gzip or deflate: rare, left to tritonclient
        return http_response(
            _CODEC.parse_response_body(
                body, header_length=header_length, content_encoding=content_encoding
            )
        )
    if header_length is None:
        header = rapidjson.loads(body)
        described = header.get("outputs") or []
        buffer = memoryview(b"")
    else:
        size = int(header_length)
        header = rapidjson.loads(body[:size])
        described = header["outputs"]
        buffer = memoryview(body)[size:]
    outputs: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for output in described:
        name = output["name"]
        datatype = output["datatype"]
        data_size = (output.get("parameters") or {}).get("binary_data_size")
        if data_size is None:
            array = np.array(output["data"], dtype=_np_dtype(datatype))
        else:
            chunk = buffer[offset : offset + data_size]
            offset += data_size
            if not data_size:
                array = np.empty(0)
            elif datatype == "BYTES":
                array = bytes_tensor(chunk.tobytes())
            elif datatype == "BF16":
                array = deserialize_bf16_tensor(chunk.tobytes())
            else:
                array = np.frombuffer(chunk, dtype=_np_dtype(datatype))
        if name not in outputs:  # a name twice: the first, as tritonclient's as_numpy
            outputs[name] = array.reshape(output["shape"])
    return InferResponse(
        model_name=header.get("model_name", ""),
        model_version=str(header.get("model_version", "")),
        outputs=outputs,
    )


# triton_to_np_dtype, looked up once: it walks a chain of comparisons on every call. Names it
# does not know are absent here and None there, alike.
_NP_DTYPES: Mapping[str, Any] = MappingProxyType(
    {
        name: triton_to_np_dtype(name)
        for name in ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                     "UINT64", "FP16", "BF16", "FP32", "FP64", "BYTES")
    }
)  # fmt: skip


def _np_dtype(datatype: str) -> Any:
    return _NP_DTYPES.get(datatype)


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


def bytes_tensor(encoded: bytes) -> npt.NDArray[np.object_]:
    """Decode a serialized BYTES tensor (each element: 4-byte little-endian length, bytes).

    tritonclient's deserialize_bytes_tensor, without its per-element format strings; a
    truncated element is a struct.error, as there.
    """
    items = []
    offset, end = 0, len(encoded)
    while offset < end:
        (length,) = _ELEMENT_LENGTH.unpack_from(encoded, offset)
        offset += 4
        if offset + length > end:
            raise struct.error(
                f"BYTES element of {length} bytes at offset {offset}: {end - offset} left"
            )
        items.append(encoded[offset : offset + length])
        offset += length
    return np.array(items, dtype=np.object_)
