"""The real openai package against the gateway: completions, chat, embeddings, models."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import openai
import pytest

MODEL = "text_generator"


def test_models_lists_the_served_models(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["text_embedder", "text_generator"]
    assert client.models.retrieve("text_generator").id == "text_generator"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("digits")


def test_completion_whole_and_streamed_give_the_same_text(client: openai.OpenAI) -> None:
    params = {"model": MODEL, "prompt": "The assert statement", "max_tokens": 24, "seed": 3}
    whole = client.completions.create(**params, temperature=0.7)
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 24
    assert whole.usage.prompt_tokens == len("The assert statement")
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 24
    assert len(whole.choices[0].text) > 0

    chunks = list(
        client.completions.create(
            **params, temperature=0.7, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finished = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finished[-1] == "length" and set(finished[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_stop_string_ends_with_stop(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="The ", max_tokens=40, temperature=0)
    text = free.choices[0].text
    stop = text[5:7]
    assert stop.strip(), f"no stop string in {text!r}"
    stopped = client.completions.create(
        model=MODEL, prompt="The ", max_tokens=40, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]


def test_chat_completion_whole_and_streamed(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is a list?"},
    ]
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=16, temperature=0.5, top_p=0.9, seed=11
    )
    assert whole.object == "chat.completion"
    message = whole.choices[0].message
    assert message.role == "assistant" and message.content
    assert whole.choices[0].finish_reason == "length"
    rendered = "System: You answer briefly.\nUser: What is a list?\nAssistant:"
    assert whole.usage is not None and whole.usage.prompt_tokens == len(rendered)

    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=16,
        temperature=0.5,
        top_p=0.9,
        seed=11,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


def test_async_client_streams_concurrently(base_url: str, openai_keys: dict[str, str]) -> None:
    async def go() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key=openai_keys["predict"], max_retries=0
        ) as client:

            async def one(seed: int) -> str:
                stream = await client.completions.create(
                    model=MODEL, prompt="Hello", max_tokens=12, seed=seed, stream=True
                )
                return "".join([c.choices[0].text async for c in stream if c.choices])

            texts = await asyncio.gather(*(one(seed) for seed in range(4)))
            whole = await client.completions.create(
                model=MODEL, prompt="Hello", max_tokens=12, seed=0
            )
            assert whole.choices[0].text == texts[0]
            return list(texts)

    texts = asyncio.run(go())
    assert all(len(t) > 0 for t in texts)


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "Stock prices fell."]
    floats = client.embeddings.create(model="text_embedder", input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in floats.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0

    # The package asks for base64 by default and decodes it itself.
    default = client.embeddings.create(model="text_embedder", input=texts)
    assert np.allclose(np.array([d.embedding for d in default.data]), vectors, atol=1e-6)
    raw = client.with_raw_response.embeddings.create(
        model="text_embedder", input="one text", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert decoded.shape == (384,)
    one = client.embeddings.create(model="text_embedder", input="one text", encoding_format="float")
    assert np.allclose(decoded, one.data[0].embedding, atol=1e-6)
    assert raw.http_response.headers["x-model-version"]
