"""Validation of ``text_generator`` requests: tensors in, a checked GenerationRequest out.

Every rejection is an InvalidInputError naming the field (the tensor, which is also the JSON
field of the HTTP generate endpoints), what was expected and what arrived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlapi_backend import tokenizer
from mlapi_backend.errors import InvalidInputError
from mlapi_backend.model_config import ModelConfig

# Tensor names and types of the public text_generator contract.
INPUTS = {
    "text_input": "TYPE_STRING",
    "max_tokens": "TYPE_INT32",
    "temperature": "TYPE_FP32",
    "top_p": "TYPE_FP32",
    "seed": "TYPE_INT64",
    "stop": "TYPE_STRING",
    "stream": "TYPE_BOOL",
}
OUTPUTS = {
    "text_output": "TYPE_STRING",
    "finish_reason": "TYPE_STRING",
    "prompt_tokens": "TYPE_INT32",
    "completion_tokens": "TYPE_INT32",
}
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class GenerationLimits:
    """Request limits and defaults; read from the model config's parameters."""

    max_prompt_chars: int = 256
    max_tokens_limit: int = 1024
    default_max_tokens: int = 64
    default_temperature: float = 0.8
    max_stop_strings: int = 4
    max_stop_chars: int = 32

    @classmethod
    def from_config(cls, config: ModelConfig) -> GenerationLimits:
        limit = config.int_parameter("max_tokens_limit", cls.max_tokens_limit, 1, 1 << 20)
        return cls(
            max_prompt_chars=config.int_parameter(
                "max_prompt_chars", cls.max_prompt_chars, 1, 1 << 20
            ),
            max_tokens_limit=limit,
            default_max_tokens=config.int_parameter(
                "default_max_tokens", cls.default_max_tokens, 1, limit
            ),
            default_temperature=config.float_parameter(
                "default_temperature", cls.default_temperature, 0.0, MAX_TEMPERATURE
            ),
            max_stop_strings=config.int_parameter("max_stop_strings", cls.max_stop_strings, 0, 64),
            max_stop_chars=config.int_parameter("max_stop_chars", cls.max_stop_chars, 1, 1024),
        )


@dataclass(frozen=True)
class GenerationRequest:
    """One checked ``text_generator`` request."""

    prompt: str
    prompt_ids: NDArray[np.int64]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    # False: one response with the whole text (what the HTTP ``generate`` endpoint needs).
    stream: bool = True


def parse_request(
    tensors: Mapping[str, NDArray[Any] | None], limits: GenerationLimits
) -> GenerationRequest:
    """Check every field of one request; raise InvalidInputError on the first bad one."""
    prompt = _text(tensors.get("text_input"), "text_input")
    if not prompt.strip():
        raise InvalidInputError("text_input", "a non-empty prompt", "an empty or blank string")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidInputError(
            "text_input",
            f"at most {limits.max_prompt_chars} characters",
            f"{len(prompt)} characters",
        )
    max_tokens = _integer(tensors.get("max_tokens"), "max_tokens", limits.default_max_tokens)
    if not 1 <= max_tokens <= limits.max_tokens_limit:
        raise InvalidInputError(
            "max_tokens", f"an integer in [1, {limits.max_tokens_limit}]", str(max_tokens)
        )
    temperature = _real(tensors.get("temperature"), "temperature", limits.default_temperature)
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise InvalidInputError(
            "temperature", f"a number in [0, {MAX_TEMPERATURE:g}] (0 = greedy)", f"{temperature:g}"
        )
    top_p = _real(tensors.get("top_p"), "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise InvalidInputError("top_p", "a number in (0, 1]", f"{top_p:g}")
    seed_array = tensors.get("seed")
    seed = None if seed_array is None else _integer(seed_array, "seed", 0)
    if seed is not None and seed < 0:
        raise InvalidInputError("seed", "an integer >= 0", str(seed))
    return GenerationRequest(
        prompt=prompt,
        prompt_ids=tokenizer.encode(prompt),
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=_stops(tensors.get("stop"), limits),
        stream=_flag(tensors.get("stream"), "stream", True),
    )


def _scalar(array: NDArray[Any], field: str) -> Any:
    if array.size != 1:
        raise InvalidInputError(
            field, "exactly one value", f"{array.size} values (shape {list(array.shape)})"
        )
    return array.reshape(-1)[0]


def _decode(value: object, field: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(field, "UTF-8 text", "bytes that are not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise InvalidInputError(field, "a string (BYTES)", type(value).__name__)


def _text(array: NDArray[Any] | None, field: str) -> str:
    if array is None:
        raise InvalidInputError(field, "a string", "nothing")
    if array.dtype != np.object_:
        raise InvalidInputError(field, "a string (BYTES)", str(array.dtype))
    return _decode(_scalar(array, field), field)


def _integer(array: NDArray[Any] | None, field: str, default: int) -> int:
    if array is None:
        return default
    if array.dtype.kind not in "iu":
        raise InvalidInputError(field, "an integer", str(array.dtype))
    return int(_scalar(array, field))


def _real(array: NDArray[Any] | None, field: str, default: float) -> float:
    if array is None:
        return default
    if array.dtype.kind not in "fiu":
        raise InvalidInputError(field, "a number", str(array.dtype))
    value = float(_scalar(array, field))
    if not math.isfinite(value):
        raise InvalidInputError(field, "a finite number", str(value))
    return value


def _flag(array: NDArray[Any] | None, field: str, default: bool) -> bool:
    if array is None:
        return default
    if array.dtype != np.bool_:
        raise InvalidInputError(field, "a boolean", str(array.dtype))
    return bool(_scalar(array, field))


def _stops(array: NDArray[Any] | None, limits: GenerationLimits) -> tuple[str, ...]:
    if array is None:
        return ()
    if array.dtype != np.object_:
        raise InvalidInputError("stop", "strings (BYTES)", str(array.dtype))
    stops = tuple(_decode(value, "stop") for value in array.reshape(-1))
    if len(stops) > limits.max_stop_strings:
        raise InvalidInputError(
            "stop", f"at most {limits.max_stop_strings} strings", f"{len(stops)}"
        )
    for stop in stops:
        if not 1 <= len(stop) <= limits.max_stop_chars:
            raise InvalidInputError(
                "stop",
                f"strings of 1 to {limits.max_stop_chars} characters",
                f"{stop!r} ({len(stop)} characters)",
            )
    return stops
