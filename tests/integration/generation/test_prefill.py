"""text_prefill reads a stream's prompt in one call and changes no text: the served streams equal
the prompt fed by decode steps (in-process and served with prefill_model ""), seed for seed; a
text_prefill that is not loaded leaves streams working, by decode steps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient

from mlapi_backend.generation import LocalDecoder, LocalPrefill, collect, generate
from mlapi_backend.generation_batching import pad_prompts
from mlapi_backend.generation_request import GenerationLimits, parse_request
from mlapi_client import access
from mlapi_tools.build import text_lm
from mlapi_tools.local.triton_process import TritonServer
from tests.integration.generation.conftest import (
    DECODER,
    GENERATOR,
    PREFILL,
    PREFILL_FILE,
    grpc_inputs,
    model_stats,
    reference,
    settled_decoder_steps,
    stream_grpc,
    stream_http,
)

# The seeded stream of docs/streaming.md and prompts of other lengths (1 to 256 characters).
CASES = [
    ("The assert statement", {"max_tokens": 40, "temperature": 0.7, "seed": 1}),
    ("x", {"max_tokens": 30, "temperature": 1.0, "seed": 7}),
    ("def f(x):\n    return", {"max_tokens": 30, "temperature": 0.0}),
    ("The " * 64, {"max_tokens": 20, "temperature": 0.9, "top_p": 0.9, "seed": 3}),
]


@pytest.fixture(scope="module")
def local_prefill() -> LocalPrefill:
    return LocalPrefill(PREFILL_FILE)


def test_the_built_prefill_equals_the_decode_steps_on_held_out_prompts(
    local_decoder: LocalDecoder, local_prefill: LocalPrefill
) -> None:
    _, held_out = text_lm.split_ids(text_lm.corpus(), text_lm.DEFAULT_SETTINGS.held_out_fraction)
    prompts = [held_out[i * 500 : i * 500 + n][None, :] for i, n in enumerate((1, 3, 50, 256))]
    tokens, lengths = pad_prompts(prompts)
    logits, states = local_prefill.run(tokens, lengths)
    for row, prompt in enumerate(prompts):
        state = np.zeros((1, *local_decoder.state_shape), dtype=np.float32)
        for token in prompt[0]:
            step_logits, state = local_decoder.run(np.array([[token]], dtype=np.int64), state)
        np.testing.assert_allclose(logits[row], step_logits[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(states[row], state[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("prompt", "fields"), CASES, ids=lambda v: str(v)[:12])
def test_in_process_text_is_the_same_with_and_without_prefill(
    local_decoder: LocalDecoder, local_prefill: LocalPrefill, prompt: str, fields: dict
) -> None:
    tensors = {"text_input": np.array([prompt.encode()], dtype=np.object_)}
    types = {"max_tokens": np.int32, "temperature": np.float32, "top_p": np.float32}
    for name, value in fields.items():
        tensors[name] = np.array([value], dtype=types.get(name, np.int64))
    request = parse_request(tensors, GenerationLimits())
    shape = local_decoder.state_shape
    with_prefill = collect(
        generate(request, local_decoder.step, shape, prefill=local_prefill.prefill)
    )
    assert asyncio.run(with_prefill)[0] == reference(local_decoder, prompt, **fields)[0]


def reload_generator(triton: TritonServer, prefill_model: str) -> None:
    client = access.with_key(httpclient.InferenceServerClient(triton.http_url))
    try:
        config = client.get_model_config(GENERATOR)
        config["parameters"]["prefill_model"] = {"string_value": prefill_model}
        client.load_model(GENERATOR, config=_json(config))
    finally:
        client.close()


def _json(config: dict) -> str:
    import json

    return json.dumps(config)


def wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.fixture
def steps_only_generator(triton: TritonServer) -> Iterator[None]:
    """text_generator reloaded with prefill_model "" for one test, then as shipped again."""
    reload_generator(triton, "")
    try:
        yield
    finally:
        reload_generator(triton, PREFILL)


def served_texts(triton: TritonServer) -> list[tuple[str, int, int]]:
    """(text, prompt_tokens, completion_tokens) of every case, over SSE and over gRPC."""
    texts = []
    for prompt, fields in CASES:
        http = stream_http(triton, {"text_input": prompt, **fields})
        grpc = stream_grpc(triton, grpc_inputs(prompt, **fields))
        assert grpc.error is None and grpc.text == http.text
        texts.append((http.text, http.last["prompt_tokens"], http.last["completion_tokens"]))
    return texts


def counted(triton: TritonServer, run, models=(DECODER, PREFILL)) -> tuple[object, ...]:
    """What ``run()`` returns, then the inferences it caused in each of ``models``."""
    settled_decoder_steps(triton)
    before = [model_stats(triton, model)[0] for model in models]
    result = run()
    settled_decoder_steps(triton)
    after = [model_stats(triton, model)[0] for model in models]
    return (result, *(a - b for a, b in zip(after, before, strict=True)))


def test_served_streams_read_the_prompt_in_one_call(
    triton: TritonServer, local_decoder: LocalDecoder
) -> None:
    texts, steps, prompts = counted(triton, lambda: served_texts(triton))
    for (text, prompt_tokens, completion_tokens), (prompt, fields) in zip(
        texts, CASES, strict=True
    ):
        assert text == reference(local_decoder, prompt, **fields)[0]
        assert (prompt_tokens, completion_tokens) == (len(prompt), fields["max_tokens"])
    # two protocols per case; the decoder ran only the sampled tokens (not the last one)
    assert prompts == 2 * len(CASES)
    assert steps == 2 * sum(fields["max_tokens"] - 1 for _, fields in CASES)


def test_prompt_by_decode_steps_gives_the_same_streams(
    triton: TritonServer, steps_only_generator: None
) -> None:
    texts, steps, prompts = counted(triton, lambda: served_texts(triton))
    assert prompts == 0
    assert steps == 2 * sum(len(p) + fields["max_tokens"] - 1 for p, fields in CASES)
    reload_generator(triton, PREFILL)
    assert served_texts(triton) == texts


def test_an_unloaded_prefill_model_falls_back_to_decode_steps(triton: TritonServer) -> None:
    prompt, fields = CASES[0]
    expected = stream_http(triton, {"text_input": prompt, **fields}).text
    client = access.with_key(httpclient.InferenceServerClient(triton.http_url))
    try:
        client.unload_model(PREFILL)
        wait_until(lambda: not client.is_model_ready(PREFILL))
        reply, steps = counted(
            triton, lambda: stream_http(triton, {"text_input": prompt, **fields}), (DECODER,)
        )
        assert reply.last["finish_reason"] == "length" and reply.text == expected
        assert steps == len(prompt) + fields["max_tokens"] - 1
    finally:
        client.load_model(PREFILL)
        client.close()
    assert stream_http(triton, {"text_input": prompt, **fields}).text == expected
