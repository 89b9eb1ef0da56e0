"""A small in-process stand-in for the part of mlapi_client.AsyncClient the gateway uses.

It answers from plain data (model configs, contracts, canned outputs) and raises the client's
own error classes when told to, so the gateway's logic runs in-process without a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from mlapi_client.results import (
    DigitsResult,
    InferResponse,
    ModelContract,
    ModelEntry,
    Prediction,
    TensorSpec,
)

# The cost every fake digits answer reports in its metadata.
FAKE_COST_USD = 2.5e-08
DIGITS_PARAMETERS = {
    "classifier_model": "digits_classifier",
    "traffic_policy": '{"weights": {"2": 100}}',
    "default_top_k": "3",
    "max_top_k": "10",
}


def config_of(name: str, parameters: Mapping[str, str]) -> dict[str, Any]:
    """A served config as Triton's JSON carries it (parameters as string values)."""
    return {"name": name, "parameters": {k: {"string_value": v} for k, v in parameters.items()}}


@dataclass
class FakeTriton:
    """Answers the gateway's calls; ``fail`` maps a method name to the error it raises."""

    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    contracts: dict[str, ModelContract] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)
    fail: dict[str, Exception] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    closed: bool = False

    @classmethod
    def default(cls) -> FakeTriton:
        """``digits`` (two classifier versions) and a tensor model ``echo`` that streams not."""
        echo = ModelContract(
            name="echo",
            versions=("1",),
            platform="python",
            max_batch_size=4,
            decoupled=False,
            inputs=(TensorSpec("x", "FP32", (-1, 2)),),
            outputs=(TensorSpec("y", "FP32", (-1, 2)),),
        )
        return cls(
            configs={
                "digits": config_of("digits", DIGITS_PARAMETERS),
                "echo": config_of("echo", {}),
            },
            contracts={"echo": echo},
            versions={"digits": ["1"], "digits_classifier": ["1", "2"], "echo": ["1"]},
        )

    def _called(self, method: str, **arguments: Any) -> None:
        self.calls.append((method, arguments))
        if method in self.fail:
            raise self.fail[method]

    def called(self, method: str) -> list[dict[str, Any]]:
        return [arguments for name, arguments in self.calls if name == method]

    async def close(self) -> None:
        self.closed = True

    async def is_ready(self, *, timeout_s: float | None = None, retry: bool = False) -> bool:
        self._called("is_ready")
        return True

    async def list_models(
        self, *, timeout_s: float | None = None, retry: bool = False
    ) -> list[ModelEntry]:
        self._called("list_models")
        return [
            ModelEntry(name, version, "READY")
            for name, versions in self.versions.items()
            for version in versions
        ]

    async def live_versions(self, model: str, *, retry: bool | None = None) -> list[str]:
        self._called("live_versions", model=model)
        return list(self.versions.get(model, []))

    async def model_config(
        self, model: str, version: str | None = None, *, retry: bool = False
    ) -> dict[str, Any]:
        self._called("model_config", model=model)
        return self.configs[model]

    async def contract(
        self, model: str, version: str | None = None, *, retry: bool = False
    ) -> ModelContract:
        self._called("contract", model=model, version=version)
        return self.contracts[model]

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str | None = None,
        *,
        parameters: Mapping[str, int | float | str | bool] | None = None,
        timeout_s: float | None = None,
        retry: bool = False,
        request_id: str | None = None,
    ) -> InferResponse:
        self._called("infer", model=model, inputs=inputs, request_id=request_id)
        return InferResponse(model, version or "1", {"y": np.asarray(inputs["x"]) * 2})

    async def digits(
        self,
        image: npt.NDArray[np.uint8],
        *,
        top_k: int | None = None,
        version: str | None = None,
        timeout_s: float | None = None,
        retry: bool = False,
        request_id: str | None = None,
    ) -> DigitsResult:
        self._called("digits", image=image, top_k=top_k, version=version, request_id=request_id)
        predictions = tuple(
            Prediction(str(label), 0.5 / (label + 1)) for label in range(top_k or 3)
        )
        # As the real model: the request's estimated cost in the metadata (X-Cost-USD).
        metadata = {"shape": list(image.shape), "cost": {"usd": FAKE_COST_USD, "gpu_s": 0.0}}
        return DigitsResult(predictions, True, version or "2", metadata)

    async def stream(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str | None = None,
        *,
        parameters: Mapping[str, int | float | str | bool] | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[InferResponse]:
        self._called("stream", model=model)
        yield InferResponse(model, "1", {"y": np.zeros((1, 2), dtype=np.float32)})
