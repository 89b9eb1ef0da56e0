"""Versions 1 and 2 export with a symbolic pixels feature dim, so config dims [ -1 ] load them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from mlapi_backend.errors import ModelConfigError
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.onnx_backend import OnnxModel
from mlapi_tools.build import digits_models
from mlapi_tools.build.digits_data import load_split

CONFIG = Path(__file__).resolve().parents[4] / "model_repository/digits_classifier/config.pbtxt"


@pytest.fixture(scope="module")
def small_fit() -> tuple[np.ndarray, np.ndarray]:
    split = load_split()
    return split.train_x[:300], split.train_y[:300]


@pytest.mark.parametrize("spec", digits_models.SPECS, ids=lambda s: f"v{s.version}")
def test_export_declares_a_symbolic_feature_dim(spec, small_fit, tmp_path: Path) -> None:
    x, y = small_fit
    model = spec.make()
    if hasattr(model, "max_iter"):
        model.set_params(max_iter=50)
    _quiet_fit(model, x, y)
    model_bytes = digits_models.to_onnx(model)
    proto = onnx.load_from_string(model_bytes)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_param == digits_models.FEATURE_DIM_NAME and not dims[1].dim_value
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(model_bytes)
    config = ModelConfig.from_pbtxt(CONFIG)
    loaded = OnnxModel.load(config, tmp_path, "1", "CPU")
    (result,) = loaded.run([{"pixels": x[:4].astype(np.float32)}])
    expected = model.predict_proba(x[:4])[:, :10]
    np.testing.assert_allclose(result["probabilities"], expected, atol=1e-5)


def test_a_fixed_feature_dim_is_refused_against_dims_minus_one(small_fit, tmp_path: Path) -> None:
    # Why the patch exists: the stand-in, like the native backend, refuses 64 against -1.
    x, y = small_fit
    model = digits_models.SPECS[0].make().set_params(max_iter=50)
    _quiet_fit(model, x, y)
    proto = onnx.load_from_string(digits_models.to_onnx(model))
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 64
    (tmp_path / "1").mkdir()
    onnx.save(proto, tmp_path / "1" / "model.onnx")
    with pytest.raises(ModelConfigError, match="pixels"):
        OnnxModel.load(ModelConfig.from_pbtxt(CONFIG), tmp_path, "1", "CPU")


def _quiet_fit(model: object, x: np.ndarray, y: np.ndarray) -> None:
    # A 50-iteration fit does not converge; that is fine for an export test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y)  # type: ignore[attr-defined]
