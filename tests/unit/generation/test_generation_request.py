from __future__ import annotations

import numpy as np
import pytest

from mlapi_backend.errors import InvalidInputError
from mlapi_backend.generation_request import GenerationLimits, parse_request

LIMITS = GenerationLimits()


def text(value: str | bytes) -> np.ndarray:
    return np.array([value.encode() if isinstance(value, str) else value], dtype=np.object_)


def request(**fields: np.ndarray) -> dict[str, np.ndarray]:
    return {"text_input": text("Hello"), **fields}


def test_defaults() -> None:
    parsed = parse_request(request(), LIMITS)
    assert parsed.prompt == "Hello"
    assert parsed.prompt_ids.tolist() == [42, 71, 78, 78, 81]
    assert (parsed.max_tokens, parsed.temperature, parsed.top_p) == (64, 0.8, 1.0)
    assert parsed.seed is None and parsed.stop == () and parsed.stream is True


def test_every_field() -> None:
    parsed = parse_request(
        request(
            max_tokens=np.array([5], dtype=np.int32),
            temperature=np.array([0.0], dtype=np.float32),
            top_p=np.array([0.5], dtype=np.float32),
            seed=np.array([42], dtype=np.int64),
            stop=np.array([b"\n\n", b"."], dtype=np.object_),
            stream=np.array([False]),
        ),
        LIMITS,
    )
    assert (parsed.max_tokens, parsed.temperature, parsed.top_p, parsed.seed) == (5, 0.0, 0.5, 42)
    assert parsed.stop == ("\n\n", ".") and parsed.stream is False


BAD = [
    ("text_input", {"text_input": text("")}, "non-empty"),
    ("text_input", {"text_input": text("   \n")}, "non-empty"),
    ("text_input", {"text_input": text("x" * 257)}, "at most 256 characters"),
    ("text_input", {"text_input": text(b"\xff\xfe")}, "UTF-8"),
    ("text_input", {"text_input": np.array([1.0], dtype=np.float32)}, "BYTES"),
    ("text_input", {"text_input": np.array([b"a", b"b"], dtype=np.object_)}, "exactly one value"),
    ("max_tokens", {"max_tokens": np.array([0], dtype=np.int32)}, "[1, 1024]"),
    ("max_tokens", {"max_tokens": np.array([1025], dtype=np.int32)}, "[1, 1024]"),
    ("max_tokens", {"max_tokens": np.array([1.5], dtype=np.float32)}, "an integer"),
    ("temperature", {"temperature": np.array([-0.1], dtype=np.float32)}, "[0, 2]"),
    ("temperature", {"temperature": np.array([np.nan], dtype=np.float32)}, "finite"),
    ("top_p", {"top_p": np.array([0.0], dtype=np.float32)}, "(0, 1]"),
    ("top_p", {"top_p": np.array([1.5], dtype=np.float32)}, "(0, 1]"),
    ("seed", {"seed": np.array([-1], dtype=np.int64)}, ">= 0"),
    ("stop", {"stop": np.array([b""], dtype=np.object_)}, "1 to 32 characters"),
    ("stop", {"stop": np.array([b"x" * 33], dtype=np.object_)}, "1 to 32 characters"),
    ("stop", {"stop": np.array([b"a"] * 5, dtype=np.object_)}, "at most 4"),
    ("stream", {"stream": np.array([1], dtype=np.int32)}, "boolean"),
]


@pytest.mark.parametrize(
    ("field", "fields", "expected"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_fields_are_named(field: str, fields: dict[str, np.ndarray], expected: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_request(request(**fields), LIMITS)
    assert caught.value.field == field
    assert f"'{field}'" in str(caught.value) and expected in str(caught.value)


def test_missing_prompt() -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_request({}, LIMITS)
    assert caught.value.field == "text_input"


def test_limits_come_from_the_config() -> None:
    from mlapi_backend.model_config import ModelConfig

    config = ModelConfig.from_json(
        {
            "name": "g",
            "parameters": {
                "max_prompt_chars": {"string_value": "8"},
                "default_max_tokens": {"string_value": "3"},
            },
        }
    )
    limits = GenerationLimits.from_config(config)
    assert (limits.max_prompt_chars, limits.default_max_tokens, limits.max_tokens_limit) == (
        8,
        3,
        1024,
    )
    with pytest.raises(InvalidInputError):
        parse_request({"text_input": text("123456789")}, limits)
