"""The ``digits`` model's request and response, typed (contract in model_repository/digits)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
import rapidjson

from mlapi_client.errors import InvalidInputError, ServerError
from mlapi_client.images import ImageLike, grayscale_uint8
from mlapi_client.results import DigitsResult, InferResponse, Prediction

MODEL = "digits"
OUTPUTS = ("labels", "scores", "low_confidence", "metadata")


def digits_inputs(image: ImageLike, top_k: int | None = None) -> dict[str, npt.NDArray[Any]]:
    """One image as a batch of one: ``image`` UINT8 [1, H, W], optional ``top_k`` INT32 [1, 1]."""
    inputs = {"image": grayscale_uint8(image)[None]}
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise InvalidInputError(
                f"input 'top_k': expected an integer, got {top_k!r}",
                field="top_k",
                expected="an integer",
                got=repr(top_k),
            )
        inputs["top_k"] = np.array([[top_k]], dtype=np.int32)
    return inputs


def digits_parameters(version: int | str | None) -> dict[str, int] | None:
    """Return the request parameter that pins the classifier version ``digits`` routes to."""
    if version is None:
        return None
    try:
        return {"model_version": int(version)}
    except ValueError as exc:
        raise InvalidInputError(
            f"version: expected a positive integer, got {version!r}",
            field="version",
            expected="a positive integer",
            got=repr(version),
        ) from exc


def digits_result(response: InferResponse) -> DigitsResult:
    """Decode the ``digits`` model's outputs into a DigitsResult."""
    try:
        # tolist(): Python floats and bytes in one step (float32 -> float exact, as float()).
        labels = response["labels"].reshape(-1).tolist()
        scores = response["scores"].reshape(-1).tolist()
        low_confidence = bool(response["low_confidence"].reshape(-1)[0])
        metadata = _json(_text(response["metadata"].reshape(-1)[0]))
        version = str(metadata.get("classifier", {}).get("version", response.model_version))
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ServerError(
            f"model '{MODEL}' returned a response outside its contract: {exc}"
        ) from exc
    predictions = tuple(
        Prediction(label=_text(label), score=float(score))
        for label, score in zip(labels, scores, strict=True)
    )
    return DigitsResult(predictions, low_confidence, version, metadata)


def _json(text: str) -> Any:
    # rapidjson (tritonclient's JSON library) reads the ~0.9 kB metadata in a third of
    # json's time; what it refuses (a number past a double, 1e400) json reads as before.
    try:
        return rapidjson.loads(text)
    except ValueError:
        return json.loads(text)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
