"""mlapi_tools.build.quantize on the real version 2 graph: both methods give INT8 graphs that keep
the source's metadata and predictions, the build is byte-for-byte deterministic, and a graph whose
fingerprint is unchanged is not rebuilt while a changed input is."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from mlapi_backend.preprocessing import digits_to_images
from mlapi_tools.build import digits_data, quantize

ROOT = Path(__file__).resolve().parents[4]
V2 = ROOT / "model_repository" / "digits_classifier" / "2"

pytestmark = pytest.mark.skipif(
    not (V2 / "model.onnx").is_file(), reason="digits_classifier 2 is not built: `make models`"
)


@functools.cache
def _rows() -> tuple[np.ndarray, np.ndarray]:
    """Calibration rows from the training split, evaluation rows from the held-out split."""
    split = digits_data.load_split()
    train = digits_data.preprocessed(list(digits_to_images(split.train_x)))
    return train[::40], digits_data.preprocessed(list(split.test_images))


def _feeds() -> list[dict[str, np.ndarray]]:
    return [{"pixels": row[None, :]} for row in _rows()[0]]


@pytest.mark.parametrize(
    ("method", "int8_op"), [("static", "QuantizeLinear"), ("dynamic", "MatMulInteger")]
)
def test_int8_graph_keeps_metadata_and_predictions(
    tmp_path: Path, method: str, int8_op: str
) -> None:
    target = tmp_path / "model.onnx"
    quantize.quantize(V2 / "model.onnx", target, method, _feeds())
    graph = onnx.load(str(target))
    source = onnx.load(str(V2 / "model.onnx"))
    assert int8_op in {n.op_type for n in graph.graph.node}
    assert {p.key: p.value for p in graph.metadata_props} == {
        p.key: p.value for p in source.metadata_props
    }
    rows = _rows()[1]
    fp32 = quantize.session(V2 / "model.onnx").run(["probabilities"], {"pixels": rows})[0]
    int8 = quantize.session(target).run(["probabilities"], {"pixels": rows})[0]
    assert (fp32.argmax(axis=1) == int8.argmax(axis=1)).mean() >= 0.98
    assert np.abs(fp32 - int8).max() < 0.2


def test_the_build_is_deterministic(tmp_path: Path) -> None:
    first = quantize.quantize(V2 / "model.onnx", tmp_path / "a.onnx", "static", _feeds())
    second = quantize.quantize(V2 / "model.onnx", tmp_path / "b.onnx", "static", _feeds())
    assert first == second


def test_fresh_only_while_the_fingerprint_matches(tmp_path: Path) -> None:
    model = tmp_path / "v2.onnx"
    shutil.copy(V2 / "model.onnx", model)
    settings = {"calibration_rows": 512, "data": "x"}
    fingerprint = quantize._fingerprint(model, "static", settings)
    assert fingerprint == quantize._fingerprint(model, "static", settings)
    assert fingerprint != quantize._fingerprint(model, "dynamic", settings)
    assert fingerprint != quantize._fingerprint(model, "static", {**settings, "data": "y"})
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"quantization": {"fingerprint": fingerprint}}))
    assert quantize._fresh(metrics, model, fingerprint) is not None
    assert quantize._fresh(metrics, model, "other") is None
    metrics.write_text("not json")
    assert quantize._fresh(metrics, model, fingerprint) is None
    model.write_bytes(model.read_bytes() + b"\0")  # a changed source graph
    assert quantize._fingerprint(model, "static", settings) != fingerprint
