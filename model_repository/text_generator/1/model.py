"""The public ``text_generator`` model: a prompt in, text streamed out token by token.

Thin adapter (decoupled, ``async def execute``): validation, sampling, stop strings, step
coalescing and the loop live in mlapi_backend.generation*; this file moves tensors, makes the
awaited BLS calls to the prompt model (one per prompt) and the decode-step model, and sends
each piece as its own response. Every
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
    PREFILL_LENGTHS,
    PREFILL_STATE,
    PREFILL_TOKENS,
    STATE_INPUT,
    STATE_OUTPUT,
    TOKEN_INPUT,
    DecoderError,
    DecoderUnavailableError,
    GeneratorSettings,
    PrefillMissingError,
    responses,
)
from mlapi_backend.generation_batching import stream_prefill, stream_step
from mlapi_backend.generation_metrics import GeneratorMetrics
from mlapi_backend.generation_request import INPUTS, parse_request
from mlapi_backend.generation_sending import QueuedSender, SendQueue
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.triton_responses import request_id, send_stream


class TritonPythonModel:
    """``text_generator`` in Triton: one coroutine per stream, decode steps batched by BLS."""

    def initialize(self, args: dict[str, str]) -> None:
        config = ModelConfig.from_json(json.loads(args["model_config"]))
        self.settings = settings = GeneratorSettings.from_config(config)
        self.failures = FailureLog(pb_utils.Logger, config.name)
        self.step = stream_step(self._decode, settings.coalesce_steps, settings.max_decoder_batch)
        self.prefill = (
            stream_prefill(self._prefill, settings.coalesce_steps, settings.max_prefill_batch)
            if settings.prefill_model
            else None
        )
        self.metrics = GeneratorMetrics(pb_utils)
        failures = self.failures
        self.sends = SendQueue(lambda rid, exc: failures.request_failed(rid, exc, "send failed"))

    def finalize(self) -> None:
        self.sends.close()

    async def execute(self, requests: list) -> None:
        await asyncio.gather(*(self._stream(request) for request in requests))

    async def _stream(self, request) -> None:
        rid = request_id(request)
        sender = request.get_response_sender()
        if self.settings.queue_sends:
            sender = self.sends.sender(sender, rid)
        chunks = self._chunks(request, sender)
        await send_stream(sender, chunks, pb_utils, self.failures, rid)

    async def _chunks(self, request, sender) -> AsyncGenerator[tuple[dict, bool], None]:
        queued = isinstance(sender, QueuedSender)
        tensors = {name: _input(request, name) for name in INPUTS}
        parsed = parse_request(tensors, self.settings.limits)
        shape = self.settings.state_shape
        timing = self.metrics.stream_started()
        try:
            async for chunk in responses(
                parsed, self.step, shape, sender.is_cancelled, self.prefill
            ):
                yield chunk.outputs(), chunk.is_last
                timing.sent()
                if queued:  # computing the next token overlaps this one's send, no more
                    await sender.caught_up(1)
                if chunk.finish_reason is not None:
                    self.metrics.stream_finished(chunk, timing)
        finally:
            self.metrics.stream_ended()

    async def _decode(
        self, tokens: np.ndarray, states: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One batched BLS call to the decoder: tokens [k, 1], states [k, layers, hidden]."""
        inputs = {TOKEN_INPUT: tokens, STATE_INPUT: states}
        return await _call(self.settings.decoder_model, inputs, STATE_OUTPUT)

    async def _prefill(
        self, tokens: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One batched BLS call to the prompt model: padded tokens [k, time], lengths [k, 1]."""
        name = self.settings.prefill_model
        try:
            return await _call(
                name, {PREFILL_TOKENS: tokens, PREFILL_LENGTHS: lengths}, PREFILL_STATE
            )
        except DecoderError as exc:
            if not pb_utils.is_model_ready(name):
                raise PrefillMissingError(f"{name} is not loaded") from exc
            raise


async def _call(model: str, inputs: dict, state_output: str) -> tuple[np.ndarray, np.ndarray]:
    """One BLS call returning (logits, state); its error becomes a DecoderError naming ``model``."""
    response = await pb_utils.InferenceRequest(
        model_name=model,
        requested_output_names=[LOGITS_OUTPUT, state_output],
        inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
    ).async_exec()
    if response.has_error():
        error = response.error()
        unavailable = error.code() == pb_utils.TritonError.UNAVAILABLE
        failure = DecoderUnavailableError if unavailable else DecoderError
        raise failure(f"{model} failed: {error.message()}")
    logits = pb_utils.get_output_tensor_by_name(response, LOGITS_OUTPUT).as_numpy()
    return logits, pb_utils.get_output_tensor_by_name(response, state_output).as_numpy()


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
