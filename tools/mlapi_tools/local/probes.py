"""Synthetic inferences that tell a living Python stub from a dead one, for any model.

The probe is built from the model's config alone: every required input as zeros (empty strings
for BYTES), batch 1, each variable dim 8 (the smallest image side digits accepts, so its probe
is a valid request; any size passes Triton's core). Triton checks only datatypes and shapes
before handing a request to the backend, so the request reaches the stub; the model may still
refuse it (text_generator refuses an empty prompt, the cheapest answer it has) — any answer
from the model proves its process alive, while a dead stub is reported as "is not healthy"
before the model is asked. Triton counts probes like any request (a refusal as a failure).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, cast

import numpy as np

from mlapi_backend.model_config import TRITON_TO_NUMPY
from mlapi_client import AsyncClient
from mlapi_client.errors import MlapiError
from mlapi_tools.local.healing import Verdict, verdict

_VARIABLE_DIM = 8


class ProbeUnsupportedError(Exception):
    """The model has an input no synthetic value can be made for (e.g. BF16)."""


def probe_inputs(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The synthetic request for a model, from its config (Triton's JSON form)."""
    batched = int(config.get("max_batch_size", 0)) > 0
    inputs: dict[str, np.ndarray] = {}
    for tensor in config.get("input", []):
        if tensor.get("optional"):
            continue
        dtype = TRITON_TO_NUMPY.get(str(tensor.get("data_type")))
        if dtype is None:
            raise ProbeUnsupportedError(
                f"model '{config.get('name')}': no probe value for input "
                f"'{tensor.get('name')}' of type {tensor.get('data_type')}"
            )
        shape = [_VARIABLE_DIM if int(d) < 0 else int(d) for d in tensor.get("dims", [])]
        if batched:
            shape.insert(0, 1)
        if dtype is np.object_:
            inputs[tensor["name"]] = np.full(shape, b"", dtype=object)
        else:
            inputs[tensor["name"]] = np.zeros(shape, dtype=dtype)
    return inputs


def is_decoupled(config: Mapping[str, Any]) -> bool:
    return bool(config.get("model_transaction_policy", {}).get("decoupled", False))


async def probe(
    client: AsyncClient,
    model: str,
    version: str,
    config: Mapping[str, Any],
    timeout_s: float,
) -> Verdict:
    """Send the synthetic request to ``model`` at ``version`` and judge the answer."""
    inputs = probe_inputs(config)
    error: MlapiError | None = None
    try:
        if is_decoupled(config):
            # The first response (or error) is the stub's answer; the rest is not needed.
            # AsyncClient.stream is an async generator (typed as its iterator).
            stream = cast(
                AsyncGenerator[Any, None],
                client.stream(model, inputs, version, timeout_s=timeout_s, retry=False),
            )
            try:
                await anext(stream, None)
            finally:
                await stream.aclose()
        else:
            await client.infer(model, inputs, version, timeout_s=timeout_s, retry=False)
    except MlapiError as exc:
        error = exc
    return verdict(error)
