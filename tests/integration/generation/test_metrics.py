"""text_generator's histograms on Triton's metrics port: one observation per finished stream
of time to first token, mean inter-token gap and length; streams in flight back to 0."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mlapi_tools.local.triton_process import TritonServer
from tests.integration.generation.conftest import (
    generator_metric,
    grpc_inputs,
    stream_grpc,
    wait_streams_finished,
)

HISTOGRAMS = (
    "mlapi_text_generator_time_to_first_token_seconds",
    "mlapi_text_generator_inter_token_seconds",
    "mlapi_text_generator_completion_tokens",
)
ACTIVE = "mlapi_text_generator_active_streams"


def samples(triton: TritonServer) -> dict[str, float]:
    with urllib.request.urlopen(triton.metrics_url, timeout=30) as reply:
        text = reply.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("mlapi_text_generator_", ACTIVE)) and "le" not in sample.labels
    }


def test_each_finished_stream_is_observed_once_with_its_timing_and_length(
    triton: TritonServer,
) -> None:
    label = 'finish_reason="length"'
    finished = generator_metric(triton, "mlapi_text_generator_streams_total", label)
    before = samples(triton)
    started = time.monotonic()
    replies = [stream_grpc(triton, grpc_inputs(f"The server {n}", max_tokens=6)) for n in range(4)]
    wall_s = time.monotonic() - started
    assert all(r.error is None for r in replies)
    assert all(r.outputs[-1]["finish_reason"] == "length" for r in replies)
    tokens = sum(r.outputs[-1]["completion_tokens"] for r in replies)
    wait_streams_finished(triton, label, finished + 4)
    after = samples(triton)
    grown = {name: after[name] - before.get(name, 0.0) for name in after}
    for name in HISTOGRAMS:
        assert grown[f"{name}_count"] == 4, (name, grown)
    assert grown["mlapi_text_generator_completion_tokens_sum"] == tokens == 4 * 6
    # Timings are positive and within what the caller saw.
    ttft_s = grown["mlapi_text_generator_time_to_first_token_seconds_sum"]
    gaps_s = grown["mlapi_text_generator_inter_token_seconds_sum"]
    assert 0 < ttft_s < wall_s and 0 < gaps_s * 5 < wall_s
    assert after[ACTIVE] == 0
