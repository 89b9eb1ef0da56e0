"""Adapter selection by model name, and limits read from the model's config: a changed limit
is picked up on the next refresh, gateway settings only lower it, base64 is decoded once."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mlapi_backend import preprocessing
from mlapi_backend.errors import ModelConfigError
from mlapi_client import errors as client_errors
from mlapi_gateway.adapters import ADAPTERS, TensorAdapter, adapters_for
from mlapi_gateway.adapters.digits import DigitsAdapter, DigitsLimits
from mlapi_gateway.inference import Inference

from .fake_triton import DIGITS_PARAMETERS, FakeTriton, config_of
from .inprocess import Gateway, run, settings_for

PREDICT = "/v1/models/digits/predict"


def _png(side: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _digits_config(triton: FakeTriton, **parameters: str) -> None:
    triton.configs["digits"] = config_of("digits", {**DIGITS_PARAMETERS, **parameters})


def _fields(reply: Any) -> dict[str, dict[str, str]]:
    assert reply.status_code == 400, reply.text
    return {error["field"]: error for error in reply.json()["errors"]}


def test_each_model_gets_its_adapter_and_the_rest_the_tensor_one(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, models=["digits", "text_generator", "slow"])
    inference = Inference(settings, FakeTriton.default())
    adapters = adapters_for(settings.models, inference)
    assert ADAPTERS["digits"] is DigitsAdapter
    assert type(adapters["digits"]) is DigitsAdapter
    assert type(adapters["text_generator"]) is TensorAdapter
    assert type(adapters["slow"]) is TensorAdapter
    assert list(inference.adapters) == settings.models  # only the exposed models


def test_a_changed_top_k_limit_is_picked_up_on_refresh(tmp_path: Path) -> None:
    triton = FakeTriton.default()

    async def check(gw: Gateway) -> None:
        body = {"pixels": [[0] * 8] * 8, "top_k": 5}
        assert (await gw.http.post(PREDICT, json=body, headers=gw.auth)).status_code == 200
        spec = (await gw.http.get("/openapi.json")).json()
        top_k = spec["components"]["schemas"]["DigitsPredict"]["properties"]["top_k"]
        assert top_k["anyOf"][0]["maximum"] == 10
        _digits_config(triton, max_top_k="4")  # the model is reloaded with a lower limit
        error = _fields(await gw.http.post(PREDICT, json=body, headers=gw.auth))["body.top_k"]
        assert error["expected"] == "an integer in 1..4"
        spec = (await gw.http.get("/openapi.json")).json()
        top_k = spec["components"]["schemas"]["DigitsPredict"]["properties"]["top_k"]
        assert top_k["anyOf"][0]["maximum"] == 4  # the document follows the model
        jobs = await gw.http.post(
            "/v1/jobs", json={"model": "digits", "inputs": [body]}, headers=gw.auth
        )
        assert "body.inputs.0.top_k" in _fields(jobs)
        assert [call["top_k"] for call in triton.called("digits")] == [5]

    run(tmp_path, check, triton, metadata_cache_s=0)


def test_image_sides_come_from_the_config_and_settings_only_lower_them(tmp_path: Path) -> None:
    triton = FakeTriton.default()
    _digits_config(triton, max_side_px="16", min_side_px="4")

    async def check(gw: Gateway) -> None:
        ok = await gw.http.post(PREDICT, json={"image": _png(16)}, headers=gw.auth)
        assert ok.status_code == 200, ok.text
        error = _fields(await gw.http.post(PREDICT, json={"image": _png(17)}, headers=gw.auth))
        assert "at most 16 px a side" in error["body.image"]["expected"]
        error = _fields(
            await gw.http.post(PREDICT, json={"pixels": [[0] * 17] * 3}, headers=gw.auth)
        )
        assert error["body.pixels"]["message"] == "3x17 pixels"
        spec = (await gw.http.get("/openapi.json")).json()
        pixels = spec["components"]["schemas"]["DigitsPredict"]["properties"]["pixels"]
        assert (pixels["anyOf"][0]["minItems"], pixels["anyOf"][0]["maxItems"]) == (4, 16)

    run(tmp_path, check, triton)


def test_limits_fall_back_to_the_model_library_and_a_setting_caps_lower(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    plain = DigitsLimits.from_config(config_of("digits", {}), settings)
    assert (plain.min_side_px, plain.max_side_px) == (
        preprocessing.MIN_SIDE,
        preprocessing.MAX_SIDE,
    )
    # No max_top_k in the config: the model's own default, 10 (DigitsSettings.from_config).
    assert plain.max_pixels == preprocessing.MAX_SIDE**2 and plain.max_top_k == 10
    config = config_of("digits", {"max_side_px": "512", "max_top_k": "6"})
    capped = DigitsLimits.from_config(config, settings_for(tmp_path, image_max_side_px=100))
    assert (capped.max_side_px, capped.max_pixels, capped.max_top_k) == (100, 100 * 100, 6)
    higher = settings_for(tmp_path, image_max_side_px=4096, image_max_pixels=300 * 300)
    raised = DigitsLimits.from_config(config, higher)
    assert (raised.max_side_px, raised.max_pixels) == (512, 300 * 300)  # never above the model


def test_base64_is_decoded_once_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    original = base64.b64decode

    def counting(data: Any, *args: Any, **kwargs: Any) -> bytes:
        decoded.append(len(data))
        return original(data, *args, **kwargs)

    png = _png(8)

    async def check(gw: Gateway) -> None:
        monkeypatch.setattr(base64, "b64decode", counting)
        reply = await gw.http.post(PREDICT, json={"image": png}, headers=gw.auth)
        assert reply.status_code == 200, reply.text
        assert decoded == [len(png)]
        (call,) = gw.triton.called("digits")
        assert call["image"].shape == (8, 8)

    run(tmp_path, check)


def test_limits_are_parsed_as_the_model_parses_them(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)

    def limits(**parameters: str) -> DigitsLimits:
        return DigitsLimits.from_config(config_of("digits", parameters), settings)

    # int() forms the model accepts, and the model's default for max_side_px.
    assert limits(max_side_px="+2048").max_side_px == 2048
    assert limits(max_side_px="2_048").max_side_px == 2048
    assert limits(min_side_px="2000").max_side_px == 2000  # max(1024, min_side), as the model
    for bad in ({"max_side_px": "\u00b2"}, {"max_side_px": "0"}, {"max_top_k": "0"}):
        with pytest.raises(ModelConfigError):
            limits(**bad)


def test_a_failing_config_read_keeps_the_last_known_limits(tmp_path: Path) -> None:
    triton = FakeTriton.default()
    _digits_config(triton, max_top_k="4")

    async def check(gw: Gateway) -> None:
        body = {"pixels": [[0] * 8] * 8, "top_k": 5}
        assert "body.top_k" in _fields(await gw.http.post(PREDICT, json=body, headers=gw.auth))
        triton.fail["model_config"] = client_errors.InferenceTimeoutError("config: deadline")
        # Predictions go on under the limits last read: a refused top_k stays refused ...
        assert "body.top_k" in _fields(await gw.http.post(PREDICT, json=body, headers=gw.auth))
        # ... and a valid request is served, neither a 504 nor a 503 for the config read.
        ok = await gw.http.post(PREDICT, json={**body, "top_k": 4}, headers=gw.auth)
        assert ok.status_code == 200, ok.text
        # A job is accepted too, and its 20 inputs cost at most one more config read.
        reads = len(triton.called("model_config"))
        job = await gw.http.post(
            "/v1/jobs",
            json={"model": "digits", "inputs": [{**body, "top_k": 4}] * 20},
            headers=gw.auth,
        )
        assert job.status_code == 202, job.text
        assert len(triton.called("model_config")) - reads <= 1

    run(tmp_path, check, triton, metadata_cache_s=0)


def test_a_config_that_cannot_be_read_yet_is_a_503_not_a_504(tmp_path: Path) -> None:
    triton = FakeTriton.default()
    never = asyncio.Event()

    async def hanging(model: str, version: str | None = None, *, retry: bool = False) -> Any:
        triton.calls.append(("model_config", {"model": model}))
        await never.wait()

    async def check(gw: Gateway) -> None:
        # As before any read: neither the adapter nor the cache knows a config.
        gw.services.inference.adapters["digits"]._config = None  # type: ignore[attr-defined]
        gw.services.inference._configs.forget("digits")
        triton.model_config = hanging  # type: ignore[method-assign]
        reads = len(triton.called("model_config"))
        body = {"pixels": [[0] * 8] * 8}
        replies = await asyncio.gather(
            *(
                gw.http.post(PREDICT + "?timeout_s=0.5", json=body, headers=gw.auth)
                for _ in range(6)
            )
        )
        assert [r.status_code for r in replies] == [503] * 6, [r.text for r in replies]
        assert all(r.headers.get("retry-after") for r in replies)
        assert "could not be read" in replies[0].json()["detail"]
        assert len(triton.called("model_config")) - reads == 1  # one shared read, not one each
        never.set()

    run(tmp_path, check, triton, metadata_cache_s=0)


def test_the_openapi_document_is_rebuilt_only_when_a_limit_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    triton = FakeTriton.default()
    builds: list[str] = []
    original = DigitsAdapter.documented_schemas

    def counting(self: DigitsAdapter) -> dict[str, dict[str, Any]]:
        builds.append(self.name)
        return original(self)

    monkeypatch.setattr(DigitsAdapter, "documented_schemas", counting)

    async def check(gw: Gateway) -> None:
        for _ in range(20):  # an open route: its cost must not be a schema build per call
            assert (await gw.http.get("/openapi.json")).status_code == 200
        assert len(builds) == 1
        _digits_config(triton, max_top_k="4")
        body = {"pixels": [[0] * 8] * 8, "top_k": 5}
        assert "body.top_k" in _fields(await gw.http.post(PREDICT, json=body, headers=gw.auth))
        spec = (await gw.http.get("/openapi.json")).json()
        assert (
            spec["components"]["schemas"]["DigitsPredict"]["properties"]["top_k"]["anyOf"][0][
                "maximum"
            ]
            == 4
        )
        assert len(builds) == 2

    run(tmp_path, check, triton, metadata_cache_s=0)
