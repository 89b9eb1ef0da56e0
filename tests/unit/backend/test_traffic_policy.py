from __future__ import annotations

import json

import pytest

from mlapi_backend.errors import InvalidInputError, ModelConfigError
from mlapi_backend.traffic_policy import TrafficPolicy, key_unit, routing_parameters


def test_parse_normalises_and_sorts_weights():
    policy = TrafficPolicy.parse('{"weights": {"2": 25, "1": 75}, "shadow": "3"}', "m")
    assert policy.weights == ((1, 0.75), (2, 0.25))
    assert policy.shadow == 3
    assert policy.to_dict() == {"weights": {"1": 75.0, "2": 25.0}, "shadow": 3}


def test_zero_weight_versions_are_dropped():
    assert TrafficPolicy.parse('{"weights": {"1": 0, "2": 100}}', "m").versions == (2,)


@pytest.mark.parametrize("weights", ['{"1": 30, "2": 10}', '{"1": 90, "2": 20}', '{"1": 99.9}'])
def test_weights_must_sum_to_100(weights):
    with pytest.raises(ModelConfigError, match="must sum to 100, got"):
        TrafficPolicy.parse(f'{{"weights": {weights}}}', "digits")


def test_a_policy_echoed_by_to_dict_parses_again():
    text = '{"weights": {"1": 33.3333333, "2": 33.3333333, "3": 33.3333334}}'
    thirds = TrafficPolicy.parse(text, "m")
    echoed = TrafficPolicy.parse(json.dumps(thirds.to_dict()), "m")  # rounded to 6 decimals
    assert echoed.versions == (1, 2, 3)
    assert [share for _, share in echoed.weights] == pytest.approx([1 / 3] * 3)


def test_require_live_refuses_dead_weighted_or_shadow_versions():
    policy = TrafficPolicy.parse('{"weights": {"1": 50, "3": 50}, "shadow": 4}', "m")
    assert policy.named_versions == {1, 3, 4}
    with pytest.raises(ModelConfigError) as info:
        policy.require_live([1, 2], "digits", "digits_classifier")
    message = str(info.value)
    assert (
        "model 'digits'" in message and "[3, 4]" in message and "live versions: [1, 2]" in message
    )
    policy.require_live([1, 3, 4], "digits", "digits_classifier")  # all live: accepted


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"weights": {}}',
        '{"weights": {"1": 0}}',
        '{"weights": {"1": 10}}',
        '{"weights": {"0": 1}}',
        '{"weights": {"x": 1}}',
        '{"weights": {"1": -1}}',
        '{"weights": {"1": "a"}}',
        '{"weights": {"1": true}}',
        '{"weights": {"1": 1}, "shadow": "v2"}',
        '{"weights": {"1": 1}, "extra": 1}',
    ],
)
def test_bad_policies_fail_with_the_model_named(text):
    with pytest.raises(ModelConfigError, match="model 'digits'"):
        TrafficPolicy.parse(text, "digits")


def test_pick_buckets_by_cumulative_share():
    policy = TrafficPolicy.parse('{"weights": {"1": 90, "2": 10}}', "m")
    assert policy.pick(0.0) == 1
    assert policy.pick(0.8999) == 1
    assert policy.pick(0.9001) == 2
    assert policy.pick(0.999999) == 2


def test_route_precedence():
    split = TrafficPolicy.parse('{"weights": {"1": 50, "2": 50}}', "m")
    assert split.route(7, "key", 0.1).reason == "pinned"
    assert split.route(None, "key", 0.1).reason == "sticky"
    assert split.route(None, None, 0.1).version == 1
    assert split.route(None, None, 0.9).version == 2
    single = TrafficPolicy.single(2)
    assert single.route(None, "key", 0.9) == single.route(None, None, 0.1)
    assert single.route(None, None, 0.1).reason == "default"


def test_key_unit_is_stable_and_roughly_uniform():
    assert key_unit("user-1") == key_unit("user-1")
    units = [key_unit(f"user-{i}") for i in range(4000)]
    assert all(0 <= u < 1 for u in units)
    assert abs(sum(u < 0.5 for u in units) / len(units) - 0.5) < 0.03


def test_routing_parameters():
    assert routing_parameters({}) == (None, None)
    assert routing_parameters({"model_version": "2", "routing_key": "k"}) == (2, "k")
    assert routing_parameters({"model_version": 3}) == (3, None)
    with pytest.raises(InvalidInputError, match="model_version"):
        routing_parameters({"model_version": -1})


def test_sticky_keys_spread_by_weight_and_move_monotonically():
    keys = [f"user-{i}" for i in range(3000)]
    even = TrafficPolicy.parse('{"weights": {"1": 50, "2": 50}}', "m")
    canary = TrafficPolicy.parse('{"weights": {"1": 90, "2": 10}}', "m")
    on_even = {k: even.route(None, k, 0.0).version for k in keys}
    on_canary = {k: canary.route(None, k, 0.0).version for k in keys}
    assert abs(sum(v == 2 for v in on_canary.values()) / len(keys) - 0.10) < 0.02
    # Growing v1's share only moves keys from v2 to v1, never the other way.
    assert not any(on_even[k] == 1 and on_canary[k] == 2 for k in keys)
    assert sum(on_even[k] == 2 and on_canary[k] == 1 for k in keys) > 0


def test_non_finite_weights_are_refused():
    for text in ('{"weights": {"1": Infinity}}', '{"weights": {"1": NaN, "2": 100}}'):
        with pytest.raises(ModelConfigError):
            TrafficPolicy.parse(text, "m")


def test_version_beyond_int64_is_invalid_input():
    with pytest.raises(InvalidInputError, match="model_version"):
        routing_parameters({"model_version": str(2**63)})


def test_default_version_is_one_rule_for_policies_and_plain_models() -> None:
    from mlapi_backend.traffic_policy import default_version

    # With a policy: the heaviest version, ties to the newer one, any key/weight type.
    assert default_version({"1": 90, "2": 10}) == "1"
    assert default_version({"1": 50.0, "2": 50.0}) == "2"
    assert default_version(((1, 0.5), (10, 0.5))) == "10"  # integers, not strings, compare
    # Without one: the newest live version, numerically.
    assert default_version({}, ["2", "10", "9"]) == "10"
    assert default_version({}, []) is None
