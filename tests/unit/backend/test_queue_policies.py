"""Every dynamically batched model sheds overload (REJECT, bounded queue, a timeout) and runs
two instances, which Triton 2.51 needs to avoid a 500 ms batcher stall once a policy is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlapi_backend.model_config import read_pbtxt

REPO = Path(__file__).resolve().parents[3] / "model_repository"
BATCHED = sorted(
    path.parent.name
    for path in REPO.glob("*/config.pbtxt")
    if "dynamic_batching" in read_pbtxt(path)
)


def test_the_batched_models_are_the_expected_ones():
    assert BATCHED == [
        "digits",
        "digits_classifier",
        "text_decoder",
        "text_embedder_encoder",
        "text_embedder_tokenizer",
        "text_prefill",
    ]


@pytest.mark.parametrize("model", BATCHED)
def test_queue_policy_rejects_with_bounded_size_and_time(model):
    config = read_pbtxt(REPO / model / "config.pbtxt")
    policy = config["dynamic_batching"]["default_queue_policy"]
    assert policy.get("timeout_action", "REJECT") == "REJECT"
    assert 0 < int(policy["max_queue_size"]) <= 256
    assert 0 < int(policy["default_timeout_microseconds"]) <= 2_000_000
    # A caller may shorten its own timeout (2.51 only ever lowers it), never lengthen it.
    assert policy.get("allow_timeout_override") is True
    assert sum(int(g.get("count", 1)) for g in config["instance_group"]) >= 2
