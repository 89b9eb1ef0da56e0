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

import numpy as np
import triton_python_backend_utils as pb_utils

from mlapi_backend.errors import InvalidInputError
from mlapi_backend.generation import (
    LOGITS_OUTPUT,
    STATE_INPUT,
    STATE_OUTPUT,
    TOKEN_INPUT,
    Chunk,
    DecoderError,
    FinishReason,
    GeneratorSettings,
    responses,
)
from mlapi_backend.generation_batching import StepCoalescer
from mlapi_backend.generation_request import INPUTS, parse_request
from mlapi_backend.model_config import ModelConfig

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings = GeneratorSettings.from_config(
            ModelConfig.from_json(json.loads(args["model_config"]))
        )
        self.step = self._single_step
        if self.settings.coalesce_steps:
            self.step = StepCoalescer(self._decode, self.settings.max_decoder_batch).step
        self.streams = pb_utils.MetricFamily(
            name="mlapi_text_generator_streams_total",
            description="Finished text_generator streams by finish reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.tokens = pb_utils.MetricFamily(
            name="mlapi_text_generator_tokens_total",
            description="Tokens processed by text_generator (prompt or completion)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.finished = {
            r: self.streams.Metric(labels={"finish_reason": r.value}) for r in FinishReason
        }
        self.prompt_tokens = self.tokens.Metric(labels={"kind": "prompt"})
        self.completion_tokens = self.tokens.Metric(labels={"kind": "completion"})

    async def execute(self, requests: list) -> None:
        await asyncio.gather(*(self._stream(request) for request in requests))

    async def _stream(self, request) -> None:
        sender = request.get_response_sender()
        try:
            parsed = parse_request(
                {name: _input(request, name) for name in INPUTS}, self.settings.limits
            )
            async for chunk in responses(
                parsed, self.step, self.settings.state_shape, sender.is_cancelled
            ):
                sender.send(_response(chunk), flags=FINAL if chunk.is_last else 0)
                if chunk.finish_reason is not None:
                    self.finished[chunk.finish_reason].increment(1)
                    self.prompt_tokens.increment(chunk.prompt_tokens)
                    self.completion_tokens.increment(chunk.completion_tokens)
        except InvalidInputError as exc:
            _send_error(sender, str(exc), pb_utils.TritonError.INVALID_ARG)
        except DecoderError as exc:
            _send_error(sender, str(exc), pb_utils.TritonError.INTERNAL)
        except Exception as exc:  # a bug must end this stream, not the instance's other streams
            pb_utils.Logger.log_error(f"text_generator: stream failed: {exc!r}")
            _send_error(sender, f"text_generator failed: {exc}", pb_utils.TritonError.INTERNAL)

    async def _single_step(
        self, token: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        logits, new_state = await self._decode(token, state)
        return logits[0], new_state

    async def _decode(
        self, tokens: np.ndarray, states: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        response = await pb_utils.InferenceRequest(
            model_name=self.settings.decoder_model,
            requested_output_names=[LOGITS_OUTPUT, STATE_OUTPUT],
            inputs=[pb_utils.Tensor(TOKEN_INPUT, tokens), pb_utils.Tensor(STATE_INPUT, states)],
        ).async_exec()
        if response.has_error():
            raise DecoderError(
                f"{self.settings.decoder_model} failed: {response.error().message()}"
            )
        return (
            pb_utils.get_output_tensor_by_name(response, LOGITS_OUTPUT).as_numpy(),
            pb_utils.get_output_tensor_by_name(response, STATE_OUTPUT).as_numpy(),
        )


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _response(chunk: Chunk):
    tensors = [pb_utils.Tensor("text_output", np.array([chunk.text.encode()], dtype=np.object_))]
    if chunk.finish_reason is not None:
        tensors += [
            pb_utils.Tensor(
                "finish_reason", np.array([chunk.finish_reason.value.encode()], dtype=np.object_)
            ),
            pb_utils.Tensor("prompt_tokens", np.array([chunk.prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor(
                "completion_tokens", np.array([chunk.completion_tokens], dtype=np.int32)
            ),
        ]
    return pb_utils.InferenceResponse(output_tensors=tensors)


def _send_error(sender, message: str, code) -> None:
    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)), flags=FINAL)
