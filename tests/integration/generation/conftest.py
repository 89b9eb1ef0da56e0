"""Helpers for the text_generator tests: SSE over HTTP (aiohttp), gRPC streams, the in-process
reference (same library loop over ONNX Runtime, no server) and decoder step counts."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from mlapi_backend.generation import LocalDecoder, collect, generate
from mlapi_backend.generation_request import GenerationLimits, parse_request
from mlapi_client import access
from mlapi_tools.local.triton_process import TritonServer

ROOT = Path(__file__).resolve().parents[3]
GENERATOR = "text_generator"
DECODER = "text_decoder"
DECODER_FILE = ROOT / "model_repository" / DECODER / "1" / "model.onnx"
PREFILL = "text_prefill"
PREFILL_FILE = ROOT / "model_repository" / PREFILL / "1" / "model.onnx"


@pytest.fixture(scope="session")
def local_decoder() -> LocalDecoder:
    return LocalDecoder(DECODER_FILE)


def reference(decoder: LocalDecoder, prompt: str, **fields: Any) -> tuple[str, str]:
    """(text, finish reason) the library produces in-process for the same request."""
    tensors = {"text_input": np.array([prompt.encode()], dtype=np.object_)}
    types = {
        "max_tokens": np.int32,
        "temperature": np.float32,
        "top_p": np.float32,
        "seed": np.int64,
    }
    for name, value in fields.items():
        if name == "stop":
            tensors[name] = np.array([s.encode() for s in value], dtype=np.object_)
        else:
            tensors[name] = np.array([value], dtype=types[name])
    request = parse_request(tensors, GenerationLimits())
    text, last = asyncio.run(collect(generate(request, decoder.step, decoder.state_shape)))
    assert last.finish_reason is not None
    return text, last.finish_reason.value


@dataclass
class SseReply:
    status: int
    content_type: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(e.get("text_output", "") for e in self.events)

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]


async def sse(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    on_event: Callable[[int], bool] | None = None,
) -> SseReply:
    """POST to generate_stream and parse ``data:`` events; ``on_event(n)`` returning False hangs up."""
    async with session.post(f"{url}/v2/models/{GENERATOR}/generate_stream", json=body) as response:
        reply = SseReply(response.status, response.headers.get("Content-Type", ""))
        async for line in response.content:
            if line.startswith(b"data: "):
                reply.events.append(json.loads(line[len(b"data: ") :]))
                if on_event is not None and not on_event(len(reply.events)):
                    break
        return reply


def stream_http(triton: TritonServer, body: dict[str, Any]) -> SseReply:
    async def go() -> SseReply:
        async with aiohttp.ClientSession(headers=access.http_headers(access.read_key())) as session:
            return await sse(session, f"http://{triton.http_url}", body)

    return asyncio.run(go())


def generate_http(triton: TritonServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(headers=access.http_headers(access.read_key())) as session,
            session.post(
                f"http://{triton.http_url}/v2/models/{GENERATOR}/generate", json=body
            ) as r,
        ):
            return r.status, await r.json(content_type=None)

    return asyncio.run(go())


def grpc_inputs(prompt: str | bytes, **fields: Any) -> list[grpcclient.InferInput]:
    types = {
        "max_tokens": ("INT32", np.int32),
        "temperature": ("FP32", np.float32),
        "top_p": ("FP32", np.float32),
        "seed": ("INT64", np.int64),
        "stream": ("BOOL", np.bool_),
    }
    data = prompt.encode() if isinstance(prompt, str) else prompt
    tensors = [("text_input", "BYTES", np.array([data], dtype=np.object_))]
    for name, value in fields.items():
        if name == "stop":
            tensors.append((name, "BYTES", np.array([s.encode() for s in value], dtype=np.object_)))
        elif isinstance(value, np.ndarray):
            from tritonclient.utils import np_to_triton_dtype

            tensors.append((name, np_to_triton_dtype(value.dtype), value))
        else:
            triton_type, dtype = types[name]
            tensors.append((name, triton_type, np.array([value], dtype=dtype)))
    inputs = []
    for name, triton_type, array in tensors:
        tensor = grpcclient.InferInput(name, list(array.shape), triton_type)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@dataclass
class GrpcReply:
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: Exception | None = None

    @property
    def text(self) -> str:
        return "".join(o["text_output"] for o in self.outputs)

    @property
    def last(self) -> dict[str, Any]:
        return self.outputs[-1]


def stream_grpc(
    triton: TritonServer,
    inputs: list[grpcclient.InferInput],
    headers: dict[str, str] | None = None,
    cancel_after: int | None = None,
    timeout_s: float = 60.0,
) -> GrpcReply:
    """One request over ModelStreamInfer; ``cancel_after=n`` cancels it after n responses."""
    events: queue.Queue[Any] = queue.Queue()
    client = access.with_key(grpcclient.InferenceServerClient(triton.grpc_url))
    reply = GrpcReply()
    try:
        client.start_stream(
            callback=lambda result, error: events.put((result, error)), headers=headers
        )
        client.async_stream_infer(GENERATOR, inputs, enable_empty_final_response=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result, error = events.get(timeout=timeout_s)
            if error is not None:
                reply.error = error
                break
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            if response.outputs:
                reply.outputs.append(_outputs(result))
            if final:
                break
            if cancel_after is not None and len(reply.outputs) >= cancel_after:
                client.stop_stream(cancel_requests=True)
                break
    finally:
        client.stop_stream()
        client.close()
    return reply


def _outputs(result: Any) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for output in result.get_response().outputs:
        value = result.as_numpy(output.name).reshape(-1)[0]
        outputs[output.name] = value.decode() if isinstance(value, bytes) else int(value)
    return outputs


def decoder_steps(triton: TritonServer) -> int:
    """Decode steps text_decoder has run (Triton's statistics: one inference per stream step)."""
    return decoder_stats(triton)[0]


def decoder_stats(triton: TritonServer) -> tuple[int, int]:
    """(inference_count, execution_count) of text_decoder."""
    return model_stats(triton, DECODER)


def model_stats(triton: TritonServer, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model`` (all its versions)."""
    import urllib.request

    request = urllib.request.Request(
        f"http://{triton.http_url}/v2/models/{model}/stats",
        headers=access.http_headers(access.read_key()),
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        stats = json.loads(reply.read())["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def settled_decoder_steps(
    triton: TritonServer, quiet_s: float = 1.0, timeout_s: float = 60.0
) -> int:
    """The decoder's step count once it stops moving (no change for ``quiet_s``).

    Only for streams a test did not start and so cannot wait for (an earlier module's): a
    test waits for the end of its own streams with ``wait_streams_finished``, a condition.
    """
    deadline = time.monotonic() + timeout_s
    last = decoder_steps(triton)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = decoder_steps(triton)
        if now == last:
            return now
        last = now
    raise AssertionError(f"{DECODER} still stepping after {timeout_s}s")


STREAMS_FINISHED = "mlapi_text_generator_streams_total"


def generator_metric(triton: TritonServer, name: str, label: str) -> float:
    import urllib.request

    with urllib.request.urlopen(triton.metrics_url, timeout=30) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + "{") and label in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_streams_finished(
    triton: TritonServer, label: str, count: float, timeout_s: float = 60.0
) -> None:
    """Wait until text_generator has recorded ``count`` finished streams with ``label`` (e.g.
    ``finish_reason="cancelled"``): it records a stream once its last step has run, so the
    decoder's step count is final for it afterwards, however long a loaded machine took."""
    deadline = time.monotonic() + timeout_s
    while (seen := generator_metric(triton, STREAMS_FINISHED, label)) < count:
        assert time.monotonic() < deadline, f"{label}: {seen} finished streams, not {count}"
        time.sleep(0.05)
