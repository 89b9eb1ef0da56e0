"""The cost header and counter over the real digits model: its metadata's cost, per key."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mlapi_tools.build.digits_data import DigitsSplit


def _cost_by_labels(api: httpx.Client) -> dict[tuple[str, str, str], float]:
    found = {}
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "mlapi_gateway_cost_usd_total":
                labels = sample.labels
                found[(labels["model"], labels["version"], labels["key"])] = sample.value
    return found


def test_each_prediction_carries_its_cost_and_the_key_accrues_it(
    api: httpx.Client, split: DigitsSplit, keys: dict[str, str]
) -> None:
    key_id = keys["predict"].split("_")[1]
    before = _cost_by_labels(api)
    costs = []
    for index in range(3):
        answer = api.post(
            "/v1/models/digits/versions/2/predict",
            json={"pixels": split.test_images[index].tolist()},
        )
        assert answer.status_code == 200
        cost = float(answer.headers["X-Cost-USD"])
        metadata = answer.json()["metadata"]["cost"]
        assert cost > 0 and cost == float(f"{metadata['usd']:.6g}")
        assert metadata["gpu_s"] == 0  # a CPU-only server: no GPU time to price
        costs.append(metadata["usd"])
    refused = api.post("/v1/models/digits/predict", json={"pixels": "x"})
    assert refused.status_code == 400 and "X-Cost-USD" not in refused.headers
    grown = {k: v - before.get(k, 0.0) for k, v in _cost_by_labels(api).items()}
    grown = {k: v for k, v in grown.items() if v > 0}
    assert grown.keys() == {("digits", "2", key_id)}, grown
    assert abs(grown["digits", "2", key_id] - sum(costs)) <= 1e-6 * sum(costs)
