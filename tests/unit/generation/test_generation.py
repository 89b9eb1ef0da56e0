"""The generation loop against a toy decode step (a deterministic function of token and state)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlapi_backend import tokenizer
from mlapi_backend.errors import ModelConfigError
from mlapi_backend.generation import (
    DecoderError,
    FinishReason,
    GeneratorSettings,
    PrefillMissingError,
    collect,
    generate,
    responses,
)
from mlapi_backend.generation_request import GenerationLimits, GenerationRequest
from mlapi_backend.model_config import ModelConfig

STATE_SHAPE = (1, 4)


class ToyDecoder:
    """Predicts the character after ``token`` in a fixed cycle; counts its steps."""

    CYCLE = "abc \n"

    def __init__(self) -> None:
        self.steps = 0

    async def step(self, token: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.steps += 1
        assert token.shape == (1, 1) and token.dtype == np.int64
        assert state.shape == (1, *STATE_SHAPE) and state.dtype == np.float32
        char = tokenizer.decode([int(token[0, 0])])
        following = (
            self.CYCLE[(self.CYCLE.index(char) + 1) % len(self.CYCLE)]
            if char in self.CYCLE
            else "a"
        )
        logits = np.zeros(tokenizer.VOCAB_SIZE, dtype=np.float32)
        logits[tokenizer.encode(following)[0]] = 5.0
        return logits, state + 1.0


def make_request(prompt: str = "xa", **overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "prompt": prompt,
        "prompt_ids": tokenizer.encode(prompt),
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": None,
        "stop": (),
    }
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def run(request: GenerationRequest, decoder: ToyDecoder, **kwargs: object) -> list:
    async def go() -> list:
        return [c async for c in generate(request, decoder.step, STATE_SHAPE, **kwargs)]  # type: ignore[arg-type]

    return asyncio.run(go())


def test_greedy_generation_to_the_length_limit() -> None:
    decoder = ToyDecoder()
    chunks = run(make_request(), decoder)
    assert "".join(c.text for c in chunks) == "bc \nabc"
    assert [c.finish_reason for c in chunks] == [None] * 6 + [FinishReason.LENGTH]
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (2, 7)
    # prompt steps + one step per generated token except the last
    assert decoder.steps == 2 + 7 - 1


def test_stop_string_finishes_early_without_emitting_it() -> None:
    decoder = ToyDecoder()
    chunks = run(make_request(stop=("\na",)), decoder)
    assert "".join(c.text for c in chunks) == "bc "
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert chunks[-1].completion_tokens == 5


def test_cancellation_stops_within_one_step() -> None:
    decoder = ToyDecoder()
    cancelled_after = 3
    chunks = run(
        make_request(max_tokens=100), decoder, is_cancelled=lambda: decoder.steps >= cancelled_after
    )
    assert chunks[-1].finish_reason is FinishReason.CANCELLED
    assert decoder.steps == cancelled_after


def test_cancellation_during_the_prompt() -> None:
    decoder = ToyDecoder()
    chunks = run(make_request(prompt="a" * 10), decoder, is_cancelled=lambda: decoder.steps >= 2)
    assert [c.finish_reason for c in chunks] == [FinishReason.CANCELLED]
    assert decoder.steps == 2 and chunks[0].completion_tokens == 0


def test_non_streaming_request_gets_one_chunk_with_all_the_text() -> None:
    decoder = ToyDecoder()

    async def go() -> list:
        return [c async for c in responses(make_request(stream=False), decoder.step, STATE_SHAPE)]

    (chunk,) = asyncio.run(go())
    assert chunk.text == "bc \nabc" and chunk.finish_reason is FinishReason.LENGTH


def test_seeded_sampling_is_reproducible() -> None:
    request = make_request(temperature=1.5, seed=9, max_tokens=30)

    async def text() -> str:
        return (await collect(generate(request, ToyDecoder().step, STATE_SHAPE)))[0]

    assert asyncio.run(text()) == asyncio.run(text())


def config(**parameters: str) -> ModelConfig:
    from mlapi_backend.generation_request import INPUTS, OUTPUTS

    return ModelConfig.from_json(
        {
            "name": "text_generator",
            "max_batch_size": 0,
            "model_transaction_policy": {"decoupled": True},
            "input": [{"name": n, "data_type": t, "dims": [1]} for n, t in INPUTS.items()],
            "output": [{"name": n, "data_type": t, "dims": [1]} for n, t in OUTPUTS.items()],
            "parameters": {k: {"string_value": v} for k, v in parameters.items()},
        }
    )


def test_settings_from_config() -> None:
    settings = GeneratorSettings.from_config(
        config(decoder_state_dims="2,128", coalesce_decode_steps="false")
    )
    assert settings.state_shape == (2, 128)
    assert settings.coalesce_steps is False
    assert settings.decoder_model == "text_decoder"
    assert settings.limits == GenerationLimits()


@pytest.mark.parametrize(
    "parameters",
    [
        {},
        {"decoder_state_dims": "256"},
        {"decoder_state_dims": "1,256", "coalesce_decode_steps": "yes"},
    ],
)
def test_bad_settings_are_refused(parameters: dict[str, str]) -> None:
    with pytest.raises(ModelConfigError):
        GeneratorSettings.from_config(config(**parameters))


def test_chunk_outputs_carry_counts_only_when_last() -> None:
    from mlapi_backend.generation import Chunk

    assert set(Chunk("ab").outputs()) == {"text_output"}
    last = Chunk("c", FinishReason.STOP, 3, 4).outputs()
    assert last["text_output"].tolist() == [b"c"] and last["finish_reason"].tolist() == [b"stop"]
    assert last["prompt_tokens"].dtype == np.int32 and last["completion_tokens"].tolist() == [4]


class ToyPrefill:
    """The toy decoder's steps over a whole prompt, in one call; or a model that is missing."""

    def __init__(self, decoder: ToyDecoder, missing: bool = False) -> None:
        self.decoder = decoder
        self.missing = missing
        self.calls: list[tuple[int, ...]] = []

    async def prefill(self, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert prompt.shape[0] == 1 and prompt.dtype == np.int64
        self.calls.append(prompt.shape)
        if self.missing:
            raise PrefillMissingError("text_prefill is not loaded")
        stepper = ToyDecoder()
        state = np.zeros((1, *STATE_SHAPE), dtype=np.float32)
        logits = np.zeros(0, dtype=np.float32)
        for token in prompt[0]:
            logits, state = await stepper.step(np.array([[token]], dtype=np.int64), state)
        return logits, state


def test_prefill_reads_the_prompt_in_one_call_and_gives_the_same_text() -> None:
    request = make_request(prompt="a long prompt\n", temperature=1.3, seed=4, max_tokens=20)
    stepped = ToyDecoder()
    expected = run(request, stepped)
    decoder = ToyDecoder()
    prefill = ToyPrefill(decoder)
    chunks = run(request, decoder, prefill=prefill.prefill)
    assert [c.text for c in chunks] == [c.text for c in expected]
    assert chunks[-1] == expected[-1] and chunks[-1].prompt_tokens == 14
    assert prefill.calls == [(1, 14)]
    # the decoder ran only the sampled tokens (the last one needs no step)
    assert decoder.steps == stepped.steps - 14 == 19


def test_a_missing_prefill_model_falls_back_to_decode_steps() -> None:
    request = make_request(prompt="xa")
    decoder = ToyDecoder()
    prefill = ToyPrefill(decoder, missing=True)
    chunks = run(request, decoder, prefill=prefill.prefill)
    assert "".join(c.text for c in chunks) == "bc \nabc"
    assert len(prefill.calls) == 1 and decoder.steps == 2 + 6


def test_a_failing_prefill_fails_the_stream() -> None:
    async def broken(prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise DecoderError("text_prefill failed: boom")

    with pytest.raises(DecoderError, match="text_prefill failed"):
        run(make_request(), ToyDecoder(), prefill=broken)


def test_a_stream_cancelled_before_its_prompt_calls_no_model() -> None:
    decoder = ToyDecoder()
    prefill = ToyPrefill(decoder)
    chunks = run(make_request(), decoder, is_cancelled=lambda: True, prefill=prefill.prefill)
    assert [c.finish_reason for c in chunks] == [FinishReason.CANCELLED]
    assert prefill.calls == [] and decoder.steps == 0


def test_prefill_settings_from_config() -> None:
    settings = GeneratorSettings.from_config(
        config(decoder_state_dims="1,4", prefill_model="text_prefill", max_prefill_batch="8")
    )
    assert settings.prefill_model == "text_prefill" and settings.max_prefill_batch == 8
    assert GeneratorSettings.from_config(config(decoder_state_dims="1,4")).prefill_model == ""


def test_queued_sends_are_the_default_and_can_be_turned_off() -> None:
    assert GeneratorSettings.from_config(config(decoder_state_dims="1,4")).queue_sends
    off = config(decoder_state_dims="1,4", queue_sends="false")
    assert not GeneratorSettings.from_config(off).queue_sends
    with pytest.raises(ModelConfigError, match="queue_sends"):
        GeneratorSettings.from_config(config(decoder_state_dims="1,4", queue_sends="maybe"))
