"""Streams of the OpenAI routes: a hang-up cancels generation, curl -N, the routes' metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import httpx
import openai
import pytest

from mlapi_tools.local.triton_process import TritonServer
from tests.integration.generation.conftest import (
    STREAMS_FINISHED,
    decoder_steps,
    generator_metric,
    settled_decoder_steps,
    wait_streams_finished,
)
from tests.integration.generation.test_cancellation import MAX_STEPS_AFTER_HANGUP, MAX_TOKENS

MODEL = "text_generator"
CANCELLED = 'finish_reason="cancelled"'


@pytest.mark.parametrize("chat", [False, True])
def test_hang_up_cancels_generation_within_a_few_steps(
    client: openai.OpenAI, triton: TritonServer, report_figure, chat: bool
) -> None:
    settled_decoder_steps(triton)
    start = decoder_steps(triton)
    cancelled_before = generator_metric(triton, STREAMS_FINISHED, CANCELLED)
    if chat:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "The "}], max_tokens=MAX_TOKENS,
            stream=True,
        )  # fmt: skip
    else:
        stream = client.completions.create(
            model=MODEL, prompt="The ", max_tokens=MAX_TOKENS, stream=True
        )
    for seen, _ in enumerate(stream, 1):
        if seen == 5:
            break
    steps_at_hangup = decoder_steps(triton)
    stream.close()  # closes the connection: the gateway cancels its gRPC call to Triton
    wait_streams_finished(triton, CANCELLED, cancelled_before + 1)
    end = decoder_steps(triton)
    after = end - steps_at_hangup
    report_figure(f"decode steps after an OpenAI {'chat ' if chat else ''}stream hang-up", after)
    assert after <= MAX_STEPS_AFTER_HANGUP
    assert end - start < MAX_TOKENS // 4, "generation ran on after the hang-up"


def test_curl_streams_openai_chunks(base_url: str, openai_keys: dict[str, str]) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = {"model": MODEL, "prompt": "The ", "max_tokens": 6, "seed": 2, "stream": True}
    out = subprocess.run(
        [curl, "-sS", "-N", f"{base_url}/completions",
         "-H", f"Authorization: Bearer {openai_keys['predict']}",
         "-H", "Content-Type: application/json", "-d", json.dumps(body)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    events = [line[len("data: ") :] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks)


def _sample(text: str, name: str, labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(part in line for part in labels.split(",")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_routes_join_the_gateway_metrics(
    client: openai.OpenAI, base_url: str, openai_gateway
) -> None:
    route = 'route="/openai/v1/chat/completions"'
    before = httpx.get(f"{openai_gateway.url}/metrics").text
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=7, stream=True
    )
    assert sum(1 for _ in stream) >= 2
    after = httpx.get(f"{openai_gateway.url}/metrics").text
    requests = "mlapi_gateway_requests_total"
    assert _sample(after, requests, route) == _sample(before, requests, route) + 1
    tokens = "mlapi_gateway_openai_tokens_total"
    completion = f'{route},kind="completion"'
    assert _sample(after, tokens, completion) == _sample(before, tokens, completion) + 7
    ttft = "mlapi_gateway_openai_time_to_first_token_seconds_count"
    assert _sample(after, ttft, route) == _sample(before, ttft, route) + 1
    assert re.search(r'mlapi_gateway_openai_completions_total\{.*finish_reason="length"', after)
