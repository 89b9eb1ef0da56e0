"""The token-by-token generation loop of ``text_generator``, independent of Triton.

The loop is written once, as an async generator over a *decode step* callable: inside Triton
the step is an async BLS call to ``text_decoder`` (coalesced with the steps of the instance's
other streams, see generation_batching); in-process (benchmarks, tests) it is an ONNX Runtime
session. The prompt goes to a *prefill* callable in one call (``text_prefill``: the same GRU
over the whole prompt) when one is configured, else one decode step per prompt character;
both give the same logits and state to float tolerance, so a seeded stream is the same text.
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
from mlapi_backend.generation_batching import Logits, States, StreamPrefill, StreamStep, Tokens
from mlapi_backend.generation_request import INPUTS, OUTPUTS, GenerationLimits, GenerationRequest
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.sampling import Sampler, StopMatcher

# Tensor names of the decode-step model (text_decoder).
TOKEN_INPUT = "token"
STATE_INPUT = "state"
LOGITS_OUTPUT = "logits"
STATE_OUTPUT = "new_state"
# Tensor names of the prompt model (text_prefill); its logits output is LOGITS_OUTPUT.
PREFILL_TOKENS = "tokens"
PREFILL_LENGTHS = "lengths"
PREFILL_STATE = "state"

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


class PrefillMissingError(DecoderError):
    """The prefill model is not loaded: the stream feeds its prompt step by step instead."""


@dataclass(frozen=True)
class GeneratorSettings:
    """What ``text_generator`` reads from its config: the decoder to call and request limits."""

    decoder_model: str
    state_shape: tuple[int, int]
    limits: GenerationLimits
    # Merge the steps of this instance's streams into one BLS request (see generation_batching).
    coalesce_steps: bool
    max_decoder_batch: int
    # The model that reads a whole prompt in one call; "" feeds the prompt step by step.
    prefill_model: str = ""
    max_prefill_batch: int = 16
    # Send responses from a worker thread (generation_sending) rather than the event loop.
    queue_sends: bool = True

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
            prefill_model=config.string_parameter("prefill_model", "").strip(),
            max_prefill_batch=config.int_parameter("max_prefill_batch", 16, 1, 1 << 16),
            queue_sends=_boolean(config, "queue_sends", True),
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
    prefill: StreamPrefill | None = None,
) -> AsyncIterator[Chunk]:
    """Feed the prompt, then sample up to ``max_tokens`` tokens, yielding text as it appears.

    The prompt goes to ``prefill`` in one call when given (falling back to decode steps when
    it raises PrefillMissingError). ``is_cancelled`` is polled before every model call, so a
    cancelled stream costs at most the call already in flight. Exactly one yielded chunk has
    a finish reason, and it is last.
    """
    prompt_tokens = len(request.prompt_ids)
    fed = await _feed_prompt(request.prompt_ids, step, state_shape, is_cancelled, prefill)
    if fed is None:
        yield Chunk("", FinishReason.CANCELLED, prompt_tokens, 0)
        return
    logits, state = fed
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


async def _feed_prompt(
    prompt_ids: Tokens,
    step: DecodeStep,
    state_shape: tuple[int, int],
    is_cancelled: Callable[[], bool],
    prefill: StreamPrefill | None,
) -> tuple[Logits, States] | None:
    """(logits after the prompt, state), or None when the stream was cancelled first."""
    if is_cancelled():
        return None
    if prefill is not None:
        try:
            return await prefill(prompt_ids[None, :])
        except PrefillMissingError:
            pass
    state = np.zeros((1, *state_shape), dtype=np.float32)
    logits = np.zeros(0, dtype=np.float32)
    for index, token in enumerate(prompt_ids):
        if index and is_cancelled():
            return None
        logits, state = await step(_token(int(token)), state)
    return logits, state


def _token(token: int) -> Tokens:
    return np.array([[token]], dtype=np.int64)


async def responses(
    request: GenerationRequest,
    step: DecodeStep,
    state_shape: tuple[int, int],
    is_cancelled: Callable[[], bool] = lambda: False,
    prefill: StreamPrefill | None = None,
) -> AsyncIterator[Chunk]:
    """Yield what to send: every chunk when streaming, else one chunk with all the text."""
    chunks = generate(request, step, state_shape, is_cancelled, prefill)
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


class LocalPrefill:
    """The prompt model (text_prefill) run in-process with ONNX Runtime (benchmarks, tests)."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def run(self, tokens: Tokens, lengths: Tokens) -> tuple[Logits, States]:
        """Run padded prompts: tokens [batch, time], lengths [batch, 1] -> (logits, states)."""
        outputs: list[Any] = self.session.run(
            [LOGITS_OUTPUT, PREFILL_STATE], {PREFILL_TOKENS: tokens, PREFILL_LENGTHS: lengths}
        )
        return outputs[0], outputs[1]

    async def prefill(self, prompt: Tokens) -> tuple[Logits, States]:
        """One prompt: ids [1, time] -> (logits [vocab], state [1, layers, hidden])."""
        logits, state = self.run(prompt, np.array([[prompt.shape[1]]], dtype=np.int64))
        return logits[0], state
