"""gRPC statistics arrive in the HTTP reply's shape: protobuf's JSON writes uint64 as text."""

from __future__ import annotations

from mlapi_client.transport_grpc import _integers


def test_counters_become_integers_and_names_and_versions_stay_text() -> None:
    entry = {
        "name": "digits_classifier",
        "version": "2",
        "last_inference": "1764640000000",
        "inference_count": "12",
        "execution_count": "3",
        "inference_stats": {"success": {"count": "12", "ns": "480000"}, "queue": {"ns": "9"}},
        "batch_stats": [{"batch_size": "4", "compute_infer": {"count": "3", "ns": "77"}}],
        "memory_usage": [{"type": "CPU", "id": "0", "byte_size": "0"}],
    }
    assert _integers(entry) == {
        "name": "digits_classifier",
        "version": "2",
        "last_inference": 1764640000000,
        "inference_count": 12,
        "execution_count": 3,
        "inference_stats": {"success": {"count": 12, "ns": 480000}, "queue": {"ns": 9}},
        "batch_stats": [{"batch_size": 4, "compute_infer": {"count": 3, "ns": 77}}],
        "memory_usage": [{"type": "CPU", "id": 0, "byte_size": 0}],
    }
