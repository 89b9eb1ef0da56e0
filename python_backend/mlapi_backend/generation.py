"""The token-by-token generation loop of ``text_generator``, independent of Triton.

The loop is written once, as an async generator over a *decode step* callable: inside Triton
the step is an async BLS call to ``text_decoder`` (coalesced with the steps of the instance's
other streams, see generation_batching); in-process (benchmarks, tests) it is an ONNX Runtime
session.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlapi_backend import tokenizer
from mlapi_backend.errors import MlapiBackendError, ModelConfigError, UnavailableError
from mlapi_backend.generation_batching import Logits, States, StreamStep, Tokens
from mlapi_backend.generation_request import INPUTS, OUTPUTS, GenerationLimits, GenerationRequest
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.sampling import Sampler, StopMatcher

# Tensor names of the decode-step model (text_decoder).
TOKEN_INPUT = "token"
STATE_INPUT = "state"
LOGITS_OUTPUT = "logits"
STATE_OUTPUT = "new_state"

# (token [1, 1] int64, state [1, layers, hidden] fp32) -> (logits [vocab], new state)
DecodeStep = StreamStep


class FinishReason(str, enum.Enum):
    """Why a stream ended (the ``finish_reason`` output of its last response)."""

    LENGTH = "length"
    STOP = "stop"
    CANCELLED = "cancelled"


class DecoderError(MlapiBackendError):
    """The decode step failed (the decoder model is unavailable or returned an error)."""


class DecoderUnavailableError(DecoderError, UnavailableError):
    """The decoder shed the step (its queue is full or timed out) or is not loaded: 503."""


@dataclass(frozen=True)
class GeneratorSettings:
    """What ``text_generator`` reads from its config: the decoder to call and request limits."""

    decoder_model: str
    state_shape: tuple[int, int]
    limits: GenerationLimits
    # Merge the steps of this instance's streams into one BLS request (see generation_batching).
    coalesce_steps: bool
    max_decoder_batch: int

    @classmethod
    def from_config(cls, config: ModelConfig) -> GeneratorSettings:
        config.require_tensors(INPUTS, OUTPUTS)
        if not config.raw.get("model_transaction_policy", {}).get("decoupled"):
            raise ModelConfigError(
                f"model '{config.name}': must be decoupled (it streams responses)"
            )
        if config.max_batch_size != 0:
            raise ModelConfigError(
                f"model '{config.name}': needs max_batch_size 0 (one stream per request)"
            )
        dims_text = config.string_parameter("decoder_state_dims", "")
        try:
            layers, hidden = (int(d) for d in dims_text.split(","))
        except ValueError:
            raise ModelConfigError(
                f"model '{config.name}': parameter 'decoder_state_dims' must be 'layers,hidden', got {dims_text!r}"
            ) from None
        return cls(
            decoder_model=config.string_parameter("decoder_model", "text_decoder"),
            state_shape=(layers, hidden),
            limits=GenerationLimits.from_config(config),
            coalesce_steps=_boolean(config, "coalesce_decode_steps", True),
            max_decoder_batch=config.int_parameter("max_decoder_batch", 64, 1, 1 << 16),
        )


def _boolean(config: ModelConfig, key: str, default: bool) -> bool:
    text = config.string_parameter(key, str(default)).strip().lower()
    if text not in ("true", "false"):
        raise ModelConfigError(
            f"model '{config.name}': parameter '{key}' must be true or false, got {text!r}"
        )
    return text == "true"


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of text; the last chunk of a stream carries the finish reason."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def is_last(self) -> bool:
        return self.finish_reason is not None

    def outputs(self) -> dict[str, NDArray[Any]]:
        """Return the response tensors: text_output, plus the finish reason and counts when last."""
        tensors: dict[str, NDArray[Any]] = {
            "text_output": np.array([self.text.encode()], dtype=np.object_)
        }
        if self.finish_reason is not None:
            tensors["finish_reason"] = np.array(
                [self.finish_reason.value.encode()], dtype=np.object_
            )
            tensors["prompt_tokens"] = np.array([self.prompt_tokens], dtype=np.int32)
            tensors["completion_tokens"] = np.array([self.completion_tokens], dtype=np.int32)
        return tensors


async def generate(
    request: GenerationRequest,
    step: DecodeStep,
    state_shape: tuple[int, int],
    is_cancelled: Callable[[], bool] = lambda: False,
) -> AsyncIterator[Chunk]:
    """Feed the prompt, then sample up to ``max_tokens`` tokens, yielding text as it appears.

    ``is_cancelled`` is polled before every decode step, so a cancelled stream costs at most
    the step already in flight. Exactly one yielded chunk has a finish reason, and it is last.
    """
    prompt_tokens = len(request.prompt_ids)
    state = np.zeros((1, *state_shape), dtype=np.float32)
    logits = np.zeros(0, dtype=np.float32)
    for token in request.prompt_ids:
        if is_cancelled():
            yield Chunk("", FinishReason.CANCELLED, prompt_tokens, 0)
            return
        logits, state = await step(_token(int(token)), state)
    sampler = Sampler(request.temperature, request.top_p, request.seed)
    matcher = StopMatcher(request.stop)
    for produced in range(1, request.max_tokens + 1):
        token = sampler(logits)
        text, stopped = matcher.push(tokenizer.decode([token]))
        if stopped:
            yield Chunk(text, FinishReason.STOP, prompt_tokens, produced)
            return
        if produced == request.max_tokens:
            yield Chunk(text + matcher.flush(), FinishReason.LENGTH, prompt_tokens, produced)
            return
        if text:
            yield Chunk(text)
        if is_cancelled():
            yield Chunk(matcher.flush(), FinishReason.CANCELLED, prompt_tokens, produced)
            return
        logits, state = await step(_token(token), state)


def _token(token: int) -> Tokens:
    return np.array([[token]], dtype=np.int64)


async def responses(
    request: GenerationRequest,
    step: DecodeStep,
    state_shape: tuple[int, int],
    is_cancelled: Callable[[], bool] = lambda: False,
) -> AsyncIterator[Chunk]:
    """Yield what to send: every chunk when streaming, else one chunk with all the text."""
    chunks = generate(request, step, state_shape, is_cancelled)
    if request.stream:
        async for chunk in chunks:
            yield chunk
        return
    text, last = await collect(chunks)
    yield Chunk(text, last.finish_reason, last.prompt_tokens, last.completion_tokens)


async def collect(chunks: AsyncIterator[Chunk]) -> tuple[str, Chunk]:
    """Return the whole text of a stream and its last chunk (non-streaming callers, tests)."""
    pieces = []
    last = Chunk("")
    async for chunk in chunks:
        pieces.append(chunk.text)
        last = chunk
    return "".join(pieces), last


class LocalDecoder:
    """The decode step run in-process with ONNX Runtime (benchmark limit, tests, no server)."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        dims = self.session.get_inputs()[1].shape
        self.state_shape: tuple[int, int] = (int(dims[1]), int(dims[2]))

    def run(self, tokens: Tokens, states: States) -> tuple[Logits, States]:
        """One batched step: tokens [batch, 1], states [batch, layers, hidden]."""
        outputs: list[Any] = self.session.run(
            [LOGITS_OUTPUT, STATE_OUTPUT], {TOKEN_INPUT: tokens, STATE_INPUT: states}
        )
        return outputs[0], outputs[1]

    async def step(self, token: Tokens, state: States) -> tuple[Logits, States]:
        logits, new_state = self.run(token, state)
        return logits[0], new_state
