"""The public ``text_generator`` model: a prompt in, text streamed out token by token.

Thin adapter (decoupled, ``async def execute``): validation, sampling, stop strings, step
coalescing and the loop live in mlapi_backend.generation*; this file moves tensors, makes the
awaited BLS calls to the decode-step model and sends each piece as its own response. Every
request runs as its own coroutine on the stub's event loop, so the decode steps of concurrent
streams are batched (here, and in text_decoder's dynamic batcher).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import numpy as np
import triton_python_backend_utils as pb_utils

from mlapi_backend.failure_log import FailureLog
from mlapi_backend.generation import (
    LOGITS_OUTPUT,
    STATE_INPUT,
    STATE_OUTPUT,
    TOKEN_INPUT,
    DecoderError,
    DecoderUnavailableError,
    GeneratorSettings,
    responses,
)
from mlapi_backend.generation_batching import stream_step
from mlapi_backend.generation_metrics import GeneratorMetrics
from mlapi_backend.generation_request import INPUTS, parse_request
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.triton_responses import request_id, send_stream


class TritonPythonModel:
    """``text_generator`` in Triton: one coroutine per stream, decode steps batched by BLS."""

    def initialize(self, args: dict[str, str]) -> None:
        config = ModelConfig.from_json(json.loads(args["model_config"]))
        self.settings = settings = GeneratorSettings.from_config(config)
        self.failures = FailureLog(pb_utils.Logger, config.name)
        self.step = stream_step(self._decode, settings.coalesce_steps, settings.max_decoder_batch)
        self.metrics = GeneratorMetrics(pb_utils)

    async def execute(self, requests: list) -> None:
        await asyncio.gather(*(self._stream(request) for request in requests))

    async def _stream(self, request) -> None:
        sender = request.get_response_sender()
        chunks = self._chunks(request, sender.is_cancelled)
        await send_stream(sender, chunks, pb_utils, self.failures, request_id(request))

    async def _chunks(self, request, is_cancelled) -> AsyncGenerator[tuple[dict, bool], None]:
        tensors = {name: _input(request, name) for name in INPUTS}
        parsed = parse_request(tensors, self.settings.limits)
        shape = self.settings.state_shape
        timing = self.metrics.stream_started()
        try:
            async for chunk in responses(parsed, self.step, shape, is_cancelled):
                yield chunk.outputs(), chunk.is_last
                timing.sent()
                if chunk.finish_reason is not None:
                    self.metrics.stream_finished(chunk, timing)
        finally:
            self.metrics.stream_ended()

    async def _decode(
        self, tokens: np.ndarray, states: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One batched BLS call to the decoder: tokens [k, 1], states [k, layers, hidden]."""
        response = await pb_utils.InferenceRequest(
            model_name=self.settings.decoder_model,
            requested_output_names=[LOGITS_OUTPUT, STATE_OUTPUT],
            inputs=[pb_utils.Tensor(TOKEN_INPUT, tokens), pb_utils.Tensor(STATE_INPUT, states)],
        ).async_exec()
        if response.has_error():
            error = response.error()
            failure = (
                DecoderUnavailableError
                if error.code() == pb_utils.TritonError.UNAVAILABLE
                else DecoderError
            )
            raise failure(f"{self.settings.decoder_model} failed: {error.message()}")
        logits = pb_utils.get_output_tensor_by_name(response, LOGITS_OUTPUT).as_numpy()
        return logits, pb_utils.get_output_tensor_by_name(response, STATE_OUTPUT).as_numpy()


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
