"""Parsing and diffing Triton's statistics replies (HTTP and gRPC JSON shapes)."""

from __future__ import annotations

import pytest

from mlapi_bench.server_stats import ServerCounters, ServerWindow


def http_reply(
    version: str, success: int, queue_ns: int, infer_ns: int, inferences: int, executions: int
) -> dict:
    return {
        "name": "digits_classifier",
        "version": version,
        "inference_count": inferences,
        "execution_count": executions,
        "inference_stats": {
            "success": {"count": success, "ns": 0},
            "fail": {"count": 1, "ns": 0},
            "queue": {"count": success, "ns": queue_ns},
            "compute_input": {"count": success, "ns": 1000 * success},
            "compute_infer": {"count": success, "ns": infer_ns},
            "compute_output": {"count": success, "ns": 2000 * success},
        },
    }


def test_http_reply_is_summed_over_versions_of_the_model_only() -> None:
    reply = {
        "model_stats": [
            http_reply("1", 10, 5_000, 50_000, 10, 5),
            http_reply("2", 30, 15_000, 150_000, 30, 10),
            {**http_reply("1", 999, 1, 1, 1, 1), "name": "other"},
        ]
    }
    counters = ServerCounters.parse(reply, "digits_classifier")
    assert counters.success_count == 40
    assert counters.fail_count == 2
    assert counters.queue_ns == 20_000
    assert counters.compute_infer_ns == 200_000
    assert counters.inference_count == 40
    assert counters.execution_count == 15


def test_grpc_json_reply_with_camel_case_and_string_integers() -> None:
    reply = {
        "modelStats": [
            {
                "name": "digits",
                "version": "1",
                "inferenceCount": "8",
                "executionCount": "2",
                "inferenceStats": {
                    "success": {"count": "8", "ns": "800"},
                    "queue": {"count": "8", "ns": "16000"},
                    "computeInfer": {"count": "8", "ns": "80000"},
                },
            }
        ]
    }
    counters = ServerCounters.parse(reply, "digits")
    assert counters == ServerCounters(
        success_count=8,
        queue_ns=16_000,
        compute_infer_ns=80_000,
        inference_count=8,
        execution_count=2,
    )


def test_window_is_the_difference_per_successful_request() -> None:
    before = ServerCounters(
        success_count=100,
        queue_ns=1_000_000,
        compute_infer_ns=9_000_000,
        inference_count=100,
        execution_count=100,
    )
    after = ServerCounters(
        success_count=300,
        queue_ns=3_000_000,
        compute_infer_ns=19_000_000,
        compute_input_ns=400_000,
        compute_output_ns=600_000,
        inference_count=300,
        execution_count=150,
        fail_count=4,
    )
    window = ServerWindow.between(before, after)
    assert window.requests == 200
    assert window.failures == 4
    assert window.queue_us == pytest.approx(10.0)
    assert window.compute_infer_us == pytest.approx(50.0)
    assert window.compute_input_us == pytest.approx(2.0)
    assert window.compute_output_us == pytest.approx(3.0)
    assert window.avg_batch_size == pytest.approx(4.0)
    assert window.server_total_us == pytest.approx(65.0)


def test_idle_window_has_no_batches_and_no_division_by_zero() -> None:
    window = ServerWindow.between(ServerCounters(), ServerCounters())
    assert window.requests == 0
    assert window.avg_batch_size == 0.0
    assert window.queue_us == 0.0
