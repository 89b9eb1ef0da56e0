"""Body schemas, tensor conversion against a model contract, and settings bounds."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from pydantic import ValidationError

from mlapi_client.results import ModelContract, TensorSpec
from mlapi_gateway.adapters.digits import DigitsPredict
from mlapi_gateway.errors import RequestInvalidError
from mlapi_gateway.inference import Inference
from mlapi_gateway.schemas import TensorPredict
from mlapi_gateway.settings import GatewaySettings
from mlapi_gateway.tensors import tensors_for

CONTRACT = ModelContract(
    name="m",
    versions=("1",),
    platform="python",
    max_batch_size=4,
    decoupled=False,
    inputs=(
        TensorSpec("x", "FP32", (-1, 3)),
        TensorSpec("prompt", "BYTES", (-1, 1)),
        TensorSpec("k", "INT32", (-1, 1), optional=True),
    ),
    outputs=(),
)


def parse_body(model: str, raw: bytes) -> object:
    settings = GatewaySettings(models=["digits", "slow"], jobs_db="unused.sqlite3")
    return Inference(settings).parse(model, raw)


def _fields(raw: bytes, model: str = "digits") -> list[str]:
    with pytest.raises(RequestInvalidError) as invalid:
        parse_body(model, raw)
    return [e.field for e in invalid.value.errors]


def test_digits_body_accepts_pixels_or_base64_image() -> None:
    body = parse_body("digits", b'{"pixels": [[0, 255], [3, 4]], "top_k": 2}')
    assert isinstance(body, DigitsPredict) and body.top_k == 2
    image = base64.b64encode(b"\x89PNG...").decode()
    parsed = parse_body("digits", f'{{"image": "{image}"}}'.encode())
    assert isinstance(parsed, DigitsPredict) and parsed.image == b"\x89PNG..."  # decoded once


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"[1, 2", "body"),
        (b"{}", "body"),
        (b'{"pixels": [[1]], "image": "AAAA"}', "body"),
        (b'{"pixels": []}', "body.pixels"),
        (b'{"pixels": [[1, 2], [1]]}', "body.pixels"),
        (b'{"pixels": [[-1]]}', "body.pixels"),
        (b'{"pixels": [[1.5]]}', "body.pixels.0.0"),
        (b'{"image": "not base64!"}', "body.image"),
        (b'{"pixels": [[1]], "extra": 1}', "body.extra"),
    ],
)
def test_digits_body_errors_name_the_field(raw: bytes, field: str) -> None:
    assert field in _fields(raw)


def test_other_models_take_named_tensors() -> None:
    body = parse_body("slow", b'{"inputs": {"delay_ms": [[1]]}, "parameters": {"a": 1}}')
    assert isinstance(body, TensorPredict)
    assert "body.inputs" in _fields(b'{"inputs": {}}', "slow")


def test_tensors_follow_the_contract() -> None:
    tensors = tensors_for(CONTRACT, {"x": [[1, 2, 3]], "prompt": [["hi"]]})
    assert tensors["x"].dtype == np.float32 and tensors["x"].shape == (1, 3)
    assert tensors["prompt"].tolist() == [[b"hi"]]
    assert "k" not in tensors


def test_tensor_errors_are_collected_per_field() -> None:
    with pytest.raises(RequestInvalidError) as invalid:
        tensors_for(CONTRACT, {"x": [[1, 2]], "prompt": [[1]], "k": [["a"]], "y": 1})
    fields = sorted(e.field for e in invalid.value.errors)
    assert fields == ["body.inputs.k", "body.inputs.prompt", "body.inputs.x", "body.inputs.y"]
    with pytest.raises(RequestInvalidError) as missing:
        tensors_for(CONTRACT, {"x": [[1, 2, 3]]})
    assert missing.value.errors[0].message == "missing required input"


def test_deadline_settings_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewaySettings().deadline_s == 10
    monkeypatch.setenv("MLAPI_GATEWAY_DEADLINE_S", "31")
    with pytest.raises(ValidationError):
        GatewaySettings()
    monkeypatch.setenv("MLAPI_GATEWAY_DEADLINE_S", "4")
    with pytest.raises(ValidationError):
        GatewaySettings()
    monkeypatch.setenv("MLAPI_GATEWAY_DEADLINE_S", "20")
    monkeypatch.setenv("MLAPI_GATEWAY_PLANS", '{"default": {"rate_per_s": 1, "burst": 2}}')
    settings = GatewaySettings()
    assert settings.deadline_s == 20 and settings.plans["default"].burst == 2
    monkeypatch.setenv("MLAPI_GATEWAY_WEBHOOK_ALLOW", '["not-a-network"]')
    with pytest.raises(ValidationError):
        GatewaySettings()
