"""X-Cost-USD and mlapi_gateway_cost_usd_total: the cost a model's metadata reports, per key.

test_fast_path.py compares every predict answer of the protocol shortcut with the ASGI app's,
headers included, over a fake digits that reports a cost: both paths send the same header.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from mlapi_gateway.metrics import COST_HEADER, answer_cost_usd, cost_key_label

from .fake_triton import FAKE_COST_USD
from .inprocess import Gateway, run

PIXELS = {"pixels": [[0] * 8] * 8}


def _cost(model: str, version: str, key: str) -> float:
    labels = {"model": model, "version": version, "key": key}
    return REGISTRY.get_sample_value("mlapi_gateway_cost_usd_total", labels) or 0.0


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"metadata": {"cost": {"usd": 1.5e-8}}}, 1.5e-8),
        ({"metadata": {"cost": {"usd": 0}}}, 0.0),
        ({"metadata": {"cost": {"usd": 1.5e-8}}, "cache": {"hit": True}}, 0.0),
        ({"metadata": {"cost": {"usd": 1.5e-8}}, "cache": {"hit": False}}, 1.5e-8),
        ({"metadata": {"cost": {"usd": -1.0}}}, None),
        ({"metadata": {"cost": {"usd": math.nan}}}, None),
        ({"metadata": {"cost": {"usd": math.inf}}}, None),
        ({"metadata": {"cost": {"usd": True}}}, None),
        ({"metadata": {"cost": {"usd": "1e-8"}}}, None),
        ({"metadata": {"cost": "1e-8"}}, None),
        ({"metadata": {}}, None),
        ({"metadata": "{}"}, None),
        ({"outputs": {}}, None),
    ],
)
def test_the_cost_is_read_from_the_metadata_only_when_it_is_a_sane_number(
    answer: dict[str, Any], expected: float | None
) -> None:
    assert answer_cost_usd(answer) == expected


def test_open_mode_callers_share_one_key_label() -> None:
    assert cost_key_label("open:10.0.0.7") == "open"
    assert cost_key_label("open:::1") == "open"
    assert cost_key_label("3fa2c1d4e5b6") == "3fa2c1d4e5b6"


def test_a_served_prediction_carries_its_cost_and_its_key_accrues_it(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        key_id = gw.key.split("_")[1]
        before = _cost("digits", "2", key_id)
        answers = [
            await gw.http.post("/v1/models/digits/predict", json=PIXELS, headers=gw.auth)
            for _ in range(3)
        ]
        for answer in answers:
            assert answer.status_code == 200
            assert float(answer.headers[COST_HEADER]) == FAKE_COST_USD
            assert answer.json()["metadata"]["cost"]["usd"] == FAKE_COST_USD
        assert _cost("digits", "2", key_id) - before == pytest.approx(3 * FAKE_COST_USD)
        pinned = await gw.http.post(
            "/v1/models/digits/versions/1/predict", json=PIXELS, headers=gw.auth
        )
        assert float(pinned.headers[COST_HEADER]) == FAKE_COST_USD
        assert _cost("digits", "1", key_id) > 0

        # A refused request costs nothing and changes no counter; a model without a cost in
        # its answer gets no header.
        totals = _cost("digits", "2", key_id), _cost("digits", "1", key_id)
        refused = await gw.http.post(
            "/v1/models/digits/predict", json={"pixels": "x"}, headers=gw.auth
        )
        assert refused.status_code == 400 and COST_HEADER.lower() not in refused.headers
        echoed = await gw.http.post(
            "/v1/models/echo/predict",
            content=orjson.dumps({"inputs": {"x": [[1, 2]]}}),
            headers={**gw.auth, "Content-Type": "application/json"},
        )
        assert echoed.status_code == 200 and COST_HEADER.lower() not in echoed.headers
        assert (_cost("digits", "2", key_id), _cost("digits", "1", key_id)) == totals

    run(tmp_path, check, exact_cache_models=[])


def test_a_cache_hit_costs_nothing(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        key_id = gw.key.split("_")[1]
        body = {"pixels": [[3] * 8] * 8}
        first = await gw.http.post("/v1/models/digits/predict", json=body, headers=gw.auth)
        before = _cost("digits", "2", key_id)
        second = await gw.http.post("/v1/models/digits/predict", json=body, headers=gw.auth)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        assert float(first.headers[COST_HEADER]) == FAKE_COST_USD
        assert float(second.headers[COST_HEADER]) == 0.0
        assert _cost("digits", "2", key_id) == before

    run(tmp_path, check, exact_cache_models=["digits"])


def test_open_mode_counts_under_one_label(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        before = _cost("digits", "2", "open")
        answer = await gw.http.post("/v1/models/digits/predict", json=PIXELS)
        assert answer.status_code == 200
        assert _cost("digits", "2", "open") - before == pytest.approx(FAKE_COST_USD)

    run(tmp_path, check, auth_mode="open", open_mode_plan="default", exact_cache_models=[])
