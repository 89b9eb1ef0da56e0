"""A cancelled or abandoned stream stops within a few decode steps (counted by text_decoder)."""

from __future__ import annotations

import asyncio

import aiohttp

from mlapi_client import access
from mlapi_tools.local.triton_process import TritonServer
from tests.integration.generation.conftest import (
    STREAMS_FINISHED,
    decoder_steps,
    generator_metric,
    grpc_inputs,
    settled_decoder_steps,
    sse,
    stream_grpc,
    stream_http,
    wait_streams_finished,
)

MAX_TOKENS = 1024
# The generator checks for cancellation before every step; what may still run is the step in
# flight plus those taken before Triton's frontend notices the cancel or the closed socket.
# The request would otherwise run ~1000 more. A gRPC cancel arrives as a message: measured 0
# to 3 steps, idle and beside stress-ng --cpu 2.
MAX_STEPS_AFTER_CANCEL = 8
# A hang-up is noticed only when Triton's HTTP thread next runs: 0 to 3 steps idle, 27 beside
# stress-ng --cpu 2, while the generator keeps stepping. Bounded as a share of the ~1020 steps
# the request would still run (a generator that ignored the hang-up runs all of them).
MAX_STEPS_AFTER_HANGUP = MAX_TOKENS // 16
CANCELLED = 'finish_reason="cancelled"'


def test_grpc_cancel_stops_generation(triton: TritonServer, report_figure) -> None:
    settled_decoder_steps(triton)
    start = decoder_steps(triton)
    cancelled_before = generator_metric(triton, STREAMS_FINISHED, CANCELLED)
    reply = stream_grpc(triton, grpc_inputs("The ", max_tokens=MAX_TOKENS), cancel_after=5)
    steps_at_cancel = decoder_steps(triton)
    wait_streams_finished(triton, CANCELLED, cancelled_before + 1)
    end = decoder_steps(triton)

    assert reply.error is None and len(reply.outputs) == 5
    after_cancel = end - steps_at_cancel
    report_figure("decode steps after gRPC cancel", after_cancel)
    assert after_cancel <= MAX_STEPS_AFTER_CANCEL
    assert end - start < MAX_TOKENS // 4, "generation ran on after the cancel"
    assert generator_metric(triton, STREAMS_FINISHED, CANCELLED) == cancelled_before + 1


def test_http_disconnect_stops_generation(triton: TritonServer, report_figure) -> None:
    settled_decoder_steps(triton)
    start = decoder_steps(triton)
    cancelled_before = generator_metric(triton, STREAMS_FINISHED, CANCELLED)

    async def go() -> int:
        async with aiohttp.ClientSession(headers=access.http_headers(access.read_key())) as session:
            # returning False after 5 events leaves the response unread: aiohttp closes the socket
            body = {"text_input": "The ", "max_tokens": MAX_TOKENS}
            reply = await sse(session, f"http://{triton.http_url}", body, lambda n: n < 5)
            assert len(reply.events) == 5
            return decoder_steps(triton)

    steps_at_hangup = asyncio.run(go())
    wait_streams_finished(triton, CANCELLED, cancelled_before + 1)
    end = decoder_steps(triton)
    after_hangup = end - steps_at_hangup
    report_figure("decode steps after SSE client hang-up", after_hangup)
    assert after_hangup <= MAX_STEPS_AFTER_HANGUP
    assert end - start < MAX_TOKENS // 4
    assert generator_metric(triton, STREAMS_FINISHED, CANCELLED) == cancelled_before + 1


def test_server_serves_normally_after_cancellations(triton: TritonServer) -> None:
    reply = stream_http(triton, {"text_input": "The ", "max_tokens": 8, "seed": 5})
    assert reply.status == 200 and reply.last["finish_reason"] == "length"
    assert reply.last["completion_tokens"] == 8


def test_decoder_unavailable_is_an_internal_error_then_recovers(triton: TritonServer) -> None:
    """Unloading text_decoder fails new streams with a message naming it; loading it back heals."""
    import tritonclient.http as httpclient

    client = access.with_key(httpclient.InferenceServerClient(triton.http_url))
    try:
        client.unload_model("text_decoder")
        reply = stream_grpc(triton, grpc_inputs("Hello", max_tokens=4))
        assert reply.error is not None and "text_decoder failed" in reply.error.message()
    finally:
        client.load_model("text_decoder")
        client.close()
    again = stream_http(triton, {"text_input": "Hello", "max_tokens": 4})
    assert again.last["finish_reason"] == "length"
