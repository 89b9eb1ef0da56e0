"""Tokens stream over SSE and gRPC as they are generated; every path gives the same text."""

from __future__ import annotations

import asyncio

import aiohttp

from mlapi_client import access
from mlapi_tools.local.triton_process import TritonServer
from tests.integration.generation.conftest import (
    STREAMS_FINISHED,
    decoder_steps,
    generate_http,
    generator_metric,
    grpc_inputs,
    reference,
    settled_decoder_steps,
    sse,
    stream_grpc,
    stream_http,
    wait_streams_finished,
)

CANCELLED = 'finish_reason="cancelled"'
PROMPT = "The assert statement"
PARAMS = {"max_tokens": 40, "temperature": 0.9, "top_p": 0.95, "seed": 1234}


def test_sse_events_one_per_piece_with_final_counts(triton: TritonServer, local_decoder) -> None:
    reply = stream_http(triton, {"text_input": PROMPT, **PARAMS})
    assert reply.status == 200
    assert reply.content_type.startswith("text/event-stream")
    assert len(reply.events) >= 10, "text arrives in many events, not one"
    assert all("finish_reason" not in e for e in reply.events[:-1])
    assert reply.last["finish_reason"] == "length"
    assert (reply.last["prompt_tokens"], reply.last["completion_tokens"]) == (len(PROMPT), 40)
    assert reply.text == reference(local_decoder, PROMPT, **PARAMS)[0]


def test_first_event_arrives_while_generation_is_still_running(triton: TritonServer) -> None:
    """Causal, not timed: when the first event is read, far fewer decode steps have run than
    the request needs, so the server sent it before computing the rest."""
    settled_decoder_steps(triton)
    before = decoder_steps(triton)
    cancelled_before = generator_metric(triton, STREAMS_FINISHED, CANCELLED)
    prompt, max_tokens = "Hello", 1024
    steps_at_first_event: list[int] = []

    def on_event(count: int) -> bool:
        steps_at_first_event.append(decoder_steps(triton) - before)
        return False  # hang up: this also cancels the rest

    async def go() -> None:
        async with aiohttp.ClientSession(headers=access.http_headers(access.read_key())) as session:
            await sse(
                session,
                f"http://{triton.http_url}",
                {"text_input": prompt, "max_tokens": max_tokens},
                on_event,
            )

    asyncio.run(go())
    assert steps_at_first_event[0] < (len(prompt) + max_tokens - 1) // 4
    # The hang-up cancels the rest: the stream ends as cancelled, before the next test.
    wait_streams_finished(triton, CANCELLED, cancelled_before + 1)


def test_grpc_stream_gives_the_same_pieces_as_sse(triton: TritonServer) -> None:
    http = stream_http(triton, {"text_input": PROMPT, **PARAMS})
    grpc = stream_grpc(triton, grpc_inputs(PROMPT, **PARAMS))
    assert grpc.error is None
    assert [o["text_output"] for o in grpc.outputs] == [e["text_output"] for e in http.events]
    assert grpc.last["finish_reason"] == "length"
    assert (grpc.last["prompt_tokens"], grpc.last["completion_tokens"]) == (len(PROMPT), 40)


def test_generate_returns_the_whole_text_in_one_response(
    triton: TritonServer, local_decoder
) -> None:
    status, body = generate_http(triton, {"text_input": PROMPT, "stream": False, **PARAMS})
    assert status == 200, body
    assert body["text_output"] == reference(local_decoder, PROMPT, **PARAMS)[0]
    assert (body["finish_reason"], body["completion_tokens"]) == ("length", 40)


def test_generate_without_stream_false_is_refused_by_triton(triton: TritonServer) -> None:
    """Triton 2.51 answers this with status 200 and an error body (documented quirk)."""
    status, body = generate_http(triton, {"text_input": PROMPT, "max_tokens": 3})
    assert status == 200
    assert "text_output" not in body
    assert "generate stream" in body["error"]


def test_greedy_is_deterministic_without_a_seed(triton: TritonServer, local_decoder) -> None:
    body = {"text_input": "A function definition", "max_tokens": 30, "temperature": 0}
    first, second = stream_http(triton, body), stream_http(triton, body)
    assert (
        first.text
        == second.text
        == reference(local_decoder, "A function definition", max_tokens=30, temperature=0)[0]
    )


def test_different_seeds_give_different_text(triton: TritonServer) -> None:
    texts = {
        stream_http(triton, {"text_input": PROMPT, **PARAMS, "seed": seed}).text
        for seed in (1, 2, 3)
    }
    assert len(texts) == 3


def test_stop_string_ends_the_stream(triton: TritonServer, local_decoder) -> None:
    expected, _ = reference(local_decoder, PROMPT, max_tokens=200, temperature=0)
    stop = expected[10:13]  # a string the greedy continuation is known to contain
    reply = stream_http(
        triton, {"text_input": PROMPT, "max_tokens": 200, "temperature": 0, "stop": [stop]}
    )
    assert reply.last["finish_reason"] == "stop"
    assert reply.text == expected[: expected.index(stop)]
    assert stop not in reply.text
    grpc = stream_grpc(triton, grpc_inputs(PROMPT, max_tokens=200, temperature=0, stop=[stop]))
    assert (grpc.text, grpc.last["finish_reason"]) == (reply.text, "stop")
