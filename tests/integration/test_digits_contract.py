"""Contract test: no classifier version may remove or retype what v1 clients of `digits` use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CONTRACT = json.loads(
    (Path(__file__).resolve().parents[1] / "contract" / "digits_v1.json").read_text()
)
JSON_TYPES = {"string": str, "object": dict, "array": list, "boolean": bool, "number": (int, float)}


def _lookup(document: dict, dotted: str):
    value = document
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"metadata lost field '{dotted}'"
        value = value[part]
    return value


def test_served_tensors_keep_the_contract(http_client):
    metadata = http_client.get_model_metadata("digits")
    for kind, key in (("inputs", "inputs"), ("outputs", "outputs")):
        served = {t["name"]: t for t in metadata[key]}
        for name, spec in CONTRACT[kind].items():
            assert name in served, f"{kind[:-1]} '{name}' was removed"
            assert served[name]["datatype"] == spec["datatype"], f"'{name}' was retyped"
            assert served[name]["shape"] == spec["shape"], f"'{name}' changed shape"


@pytest.mark.parametrize("version", ["1", "2", None])
def test_every_version_answers_within_the_contract(caller, version):
    image = np.zeros((1, 20, 20), dtype=np.uint8)
    image[0, 3:17, 9:12] = 255
    inputs = {"image": image, "top_k": np.array([[4]], dtype=np.int32)}
    tensors, _ = caller._request(inputs, None)
    parameters = {"model_version": version} if version else None
    result = caller.client.infer("digits", tensors, parameters=parameters)
    labels, scores = result.as_numpy("labels"), result.as_numpy("scores")
    assert labels.shape == scores.shape == (1, 4)
    assert scores.dtype == np.float32 and np.all(np.diff(scores[0]) <= 0)
    assert result.as_numpy("low_confidence").dtype == np.bool_
    metadata = json.loads(result.as_numpy("metadata")[0, 0])
    for field, kind in CONTRACT["metadata_fields"].items():
        value = _lookup(metadata, field)
        assert isinstance(value, JSON_TYPES[kind]) and not (
            kind == "number" and isinstance(value, bool)
        ), field
    if version:
        assert metadata["classifier"]["version"] == version
