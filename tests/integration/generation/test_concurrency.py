"""Many concurrent streams all finish correctly; their decode steps are batched; a slow reader
neither stalls the others nor makes the server generate beyond its request."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp

from mlapi_client import access
from mlapi_tools.local.triton_process import TritonServer
from tests.integration.generation.conftest import (
    GENERATOR,
    PREFILL,
    decoder_stats,
    model_stats,
    reference,
    settled_decoder_steps,
    sse,
)

STREAMS = 32
MAX_TOKENS = 24


def body(seed: int) -> dict:
    return {
        "text_input": f"Section {seed}: ",
        "max_tokens": MAX_TOKENS,
        "temperature": 0.8,
        "seed": seed,
    }


def test_32_concurrent_streams_finish_with_their_own_text(
    triton: TritonServer, local_decoder, report_figure
) -> None:
    settled_decoder_steps(triton)
    inferences_before, executions_before = decoder_stats(triton)
    prompts_before, prefill_calls_before = model_stats(triton, PREFILL)

    async def go() -> list:
        async with aiohttp.ClientSession(
            headers=access.http_headers(access.read_key()),
            connector=aiohttp.TCPConnector(limit=STREAMS),
        ) as session:
            return await asyncio.gather(
                *(sse(session, f"http://{triton.http_url}", body(s)) for s in range(STREAMS))
            )

    replies = asyncio.run(go())
    inferences, executions = decoder_stats(triton)
    prompts, prefill_calls = model_stats(triton, PREFILL)
    for seed, reply in enumerate(replies):
        assert reply.status == 200
        assert (
            reply.last["finish_reason"] == "length"
            and reply.last["completion_tokens"] == MAX_TOKENS
        )
        prompt = body(seed)["text_input"]
        assert (
            reply.text
            == reference(local_decoder, prompt, max_tokens=MAX_TOKENS, temperature=0.8, seed=seed)[
                0
            ]
        )
    steps = inferences - inferences_before
    # every prompt ("Section 0: " .. "Section 31: ", two lengths) is read by text_prefill in
    # one call per stream, so the decoder runs only the sampled tokens (not the last one)
    assert steps == STREAMS * (MAX_TOKENS - 1)
    assert prompts - prompts_before == STREAMS
    report_figure(
        f"text_prefill executions for {STREAMS} prompts", prefill_calls - prefill_calls_before
    )
    mean_batch = steps / (executions - executions_before)
    report_figure(f"text_decoder mean batch size over {STREAMS} streams", round(mean_batch, 2))
    assert mean_batch > 2, "decode steps of concurrent streams were not batched"


def test_slow_reader_does_not_stall_other_streams(triton: TritonServer) -> None:
    """A client that never reads its socket: the other streams complete meanwhile, and the slow
    stream, read at last, is complete; the server never produces more than max_tokens for it."""
    host, port = triton.http_url.split(":")
    payload = json.dumps({"text_input": "The ", "max_tokens": 400, "seed": 1}).encode()
    slow = socket.create_connection((host, int(port)))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        slow.sendall(
            f"POST /v2/models/{GENERATOR}/generate_stream HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{access.KEY_HEADER}: {access.read_key()}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )

        async def others() -> list:
            async with aiohttp.ClientSession(
                headers=access.http_headers(access.read_key())
            ) as session:
                return await asyncio.gather(
                    *(sse(session, f"http://{triton.http_url}", body(s)) for s in range(8))
                )

        for reply in asyncio.run(others()):
            assert reply.last["finish_reason"] == "length"
        received = b""
        slow.settimeout(60)
        while chunk := slow.recv(65536):
            received += chunk
    finally:
        slow.close()
    events = [json.loads(line[6:]) for line in received.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1]["finish_reason"] == "length" and events[-1]["completion_tokens"] == 400
    assert len("".join(e["text_output"] for e in events)) <= 400
