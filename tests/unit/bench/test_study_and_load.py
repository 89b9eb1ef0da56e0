"""Batching variants (config rewriting and checking) and how load is split over processes."""

from __future__ import annotations

import pytest

from mlapi_bench.clients import Endpoint
from mlapi_bench.load import LoadSpec
from mlapi_bench.study import FULL_VARIANTS, Variant, best_variant

SHIPPED = {
    "name": "digits_classifier",
    "max_batch_size": 256,
    "dynamic_batching": {"max_queue_delay_microseconds": 100},
    "instance_group": [{"name": "digits_classifier_0", "kind": "KIND_CPU", "count": 1}],
    "parameters": {"intra_op_thread_count": {"string_value": "1"}},
}


def test_batching_off_removes_dynamic_batching_and_keeps_the_rest() -> None:
    config = Variant(None, instances=2).apply(SHIPPED)
    assert "dynamic_batching" not in config
    assert config["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
    assert config["parameters"] == SHIPPED["parameters"]
    assert SHIPPED["dynamic_batching"] == {"max_queue_delay_microseconds": 100}  # not mutated


def test_batching_on_sets_delay_and_preferred_sizes() -> None:
    config = Variant(500, (4, 8)).apply(SHIPPED)
    assert config["dynamic_batching"] == {
        "max_queue_delay_microseconds": 500,
        "preferred_batch_size": [4, 8],
    }


def test_served_config_check() -> None:
    served = {
        "dynamic_batching": {"max_queue_delay_microseconds": "500", "preferred_batch_size": [256]},
        "instance_group": [{"count": 1}],
    }
    assert Variant(500).matches(served)  # server-filled preferred sizes are not ours to check
    assert not Variant(500, (4, 8)).matches(served)
    assert not Variant(100).matches(served)
    assert not Variant(500, instances=2).matches(served)
    assert not Variant(None).matches(served)
    assert Variant(None).matches({"instance_group": [{"count": 1}]})


def test_variant_labels_are_distinct() -> None:
    labels = [v.label for v in FULL_VARIANTS]
    assert len(set(labels)) == len(labels)
    assert Variant(None).label == "batching off x1"
    assert Variant(2000, (4, 8), 2).label == "delay 2000us pref 4,8 x2"


def test_best_variant_prefers_throughput_then_lower_p99() -> None:
    rows = [
        {"label": "a", "level": 8, "throughput_per_s": 100.0, "p99_us": 50.0},
        {"label": "b", "level": 8, "throughput_per_s": 120.0, "p99_us": 90.0},
        {"label": "c", "level": 8, "throughput_per_s": 120.0, "p99_us": 80.0},
        {"label": "d", "level": 1, "throughput_per_s": 999.0, "p99_us": 1.0},
    ]
    assert best_variant(rows, 8)["label"] == "c"
    with pytest.raises(ValueError):
        best_variant(rows, 32)


def spec(mode: str, level: float) -> LoadSpec:
    return LoadSpec(Endpoint("grpc", "127.0.0.1:1"), "digits", mode, level)


def test_concurrency_is_split_into_whole_workers() -> None:
    assert [s.level for s in spec("concurrency", 10).shares(3)] == [4, 3, 3]
    assert [s.level for s in spec("concurrency", 2).shares(4)] == [1, 1]  # no idle processes


def test_request_rate_is_split_evenly() -> None:
    assert [s.level for s in spec("request_rate", 300.0).shares(3)] == [100.0, 100.0, 100.0]


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        spec("burst", 1)
    with pytest.raises(ValueError, match="positive"):
        spec("concurrency", 0)
    with pytest.raises(ValueError, match="protocol"):
        Endpoint("udp", "x:1")


def test_routing_keys_cycle_per_request_and_default_to_no_parameters():
    plain = spec("concurrency", 2)
    assert plain.parameters(5) is None
    keyed = LoadSpec(Endpoint("grpc", "127.0.0.1:1"), "digits", "concurrency", 2, routing_keys=3)
    assert [keyed.parameters(n) for n in (0, 1, 2, 3)] == [
        {"routing_key": "key-0"},
        {"routing_key": "key-1"},
        {"routing_key": "key-2"},
        {"routing_key": "key-0"},
    ]
    with pytest.raises(ValueError, match="routing_keys"):
        LoadSpec(Endpoint("grpc", "127.0.0.1:1"), "digits", "concurrency", 2, routing_keys=-1)
