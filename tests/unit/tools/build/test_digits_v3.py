"""digits_classifier version 3: deterministic data, calibration, and the exported contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from mlapi_backend.model_config import ModelConfig
from mlapi_backend.onnx_backend import OnnxModel
from mlapi_tools.build import digits_cnn, digits_v3_data, fonts
from mlapi_tools.build import v3_calibration as calibration

REPOSITORY = Path(__file__).resolve().parents[4] / "model_repository"


@pytest.fixture(scope="module", autouse=True)
def _fonts_installed() -> None:
    try:
        fonts.held_out_fonts()
    except fonts.FontsMissingError as exc:
        pytest.skip(str(exc))


def test_every_set_draws_the_same_bytes_from_the_same_seed() -> None:
    for name in digits_v3_data.SET_IDS:
        first, label = digits_v3_data._raw_image(name, 3, seed=5)
        again, label_again = digits_v3_data._raw_image(name, 3, seed=5)
        other, _ = digits_v3_data._raw_image(name, 3, seed=6)
        assert first.dtype == np.uint8 and first.ndim == 2, name
        assert first.tobytes() == again.tobytes() and label == label_again, name
        if name not in ("test/handwritten_8x8", "test/held_out_fonts"):  # enumerated, not drawn
            assert first.tobytes() != other.tobytes(), name


def test_sets_are_the_same_whatever_the_worker_count() -> None:
    sizes = digits_v3_data.Sizes(**{**digits_v3_data.TINY.__dict__, "cap": 24})
    one = digits_v3_data.build_sets(sizes, seed=1, workers=1)
    two = digits_v3_data.build_sets(sizes, seed=1, workers=2)
    assert one.keys() == two.keys() == digits_v3_data.SET_IDS.keys()
    for name in one:
        assert one[name].x.tobytes() == two[name].x.tobytes(), name
        assert one[name].y.tobytes() == two[name].y.tobytes(), name
        assert one[name].flagged == two[name].flagged, name
    rows = one["train/fonts"].x
    assert rows.dtype == np.float32 and rows.shape[1] == 784
    assert rows.min() >= 0.0 and rows.max() <= 1.0 and rows.mean() < 0.5  # ink 1 on paper 0
    assert set(np.unique(one["train/not_digits"].y)) == {digits_v3_data.NOT_A_DIGIT}


def test_saved_sets_load_back_equal(tmp_path: Path) -> None:
    sizes = digits_v3_data.Sizes(**{**digits_v3_data.TINY.__dict__, "cap": 12})
    sets = digits_v3_data.build_sets(sizes, seed=2, workers=1)
    digits_v3_data.save_sets(sets, tmp_path / "sets.npz")
    loaded = digits_v3_data.load_sets(tmp_path / "sets.npz")
    assert list(loaded) == list(sets)
    for name, s in sets.items():
        assert loaded[name].x.tobytes() == s.x.tobytes()
        assert loaded[name].flagged_by_label == s.flagged_by_label


def test_held_out_fonts_are_in_no_training_or_calibration_split() -> None:
    fit, cal, held = digits_v3_data._font_split()
    group = lambda p: fonts.family_group(fonts.family_name(p))  # noqa: E731
    assert fit and cal and held
    assert not {group(p) for p in fit + cal} & {group(p) for p in held}
    assert not {group(p) for p in fit} & {group(p) for p in cal}


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, (4000, 11))
    y = np.array([rng.choice(11, p=p) for p in calibration.softmax(true_logits)])
    # A model twice as confident as the truth: the fit should divide its logits by about 2.
    temperature = calibration.fit_temperature(true_logits * 2.0, y)
    assert temperature == pytest.approx(2.0, rel=0.1)
    calibrated = calibration.softmax(true_logits)
    over = calibration.softmax(true_logits * 2.0)
    assert calibration.expected_calibration_error(calibrated, y) < 0.03
    assert calibration.expected_calibration_error(over, y) > 0.05


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    repository = tmp_path_factory.mktemp("repository")
    cache = tmp_path_factory.mktemp("cache")
    metrics = digits_cnn.build(repository, digits_cnn.TINY_SETTINGS, cache_dir=cache)
    again = digits_cnn.build(repository, digits_cnn.TINY_SETTINGS, cache_dir=cache)
    assert again == metrics  # up to date: skipped, same metrics
    return (
        repository,
        metrics,
        (repository / "digits_classifier" / "3" / "model.onnx").stat().st_mtime,
    )


def test_exported_model_keeps_the_contract(tiny_build: tuple[Path, dict, float]) -> None:
    repository, metrics, _ = tiny_build
    path = repository / "digits_classifier" / "3" / "model.onnx"
    model = onnx.load(path)
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == "pixels" and graph_output.name == "probabilities"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim]
    assert in_dims == ["batch", "pixels_features"] and out_dims == ["batch", 10]
    probs = digits_cnn.onnx_probabilities(path.read_bytes(), np.zeros((3, 784), np.float32))
    assert probs.shape == (3, 10) and probs.dtype == np.float32
    assert (probs.sum(axis=1) <= 1.0 + 1e-6).all()
    written = json.loads((path.parent / "metrics.json").read_text())
    assert written == metrics
    for key in ("temperature", "low_confidence", "input", "accuracy", "not_digits", "ece"):
        assert key in written, key
    assert written["input"]["side"] == 28
    assert 0.0 <= written["low_confidence"]["min_score"] <= 1.0
    assert written["onnx_max_abs_error"] < 1e-4


def test_the_temperature_is_baked_into_the_graph() -> None:
    net = digits_cnn._network(digits_cnn.TINY_SETTINGS).eval()
    x = np.random.default_rng(1).random((5, 784), dtype=np.float32)
    logits = digits_cnn.logits_of(net, x)
    for temperature in (1.0, 3.0):
        served = digits_cnn.onnx_probabilities(digits_cnn.to_onnx(net, temperature), x)
        expected = calibration.softmax(logits / temperature)[:, :10]
        np.testing.assert_allclose(served, expected, atol=1e-6)


def test_the_served_config_loads_every_version_with_dims_minus_one(
    tiny_build: tuple[Path, dict, float], tmp_path: Path
) -> None:
    repository, _, _ = tiny_build
    config = ModelConfig.from_pbtxt(REPOSITORY / "digits_classifier" / "config.pbtxt")
    assert [list(spec.dims) for spec in config.inputs] == [[-1]]
    assert config.raw["version_policy"] == {"specific": {"versions": ["1", "2", "3", "4", "5"]}}
    loaded = OnnxModel.load(config, repository / "digits_classifier", "3", "CPU")
    (result,) = loaded.run([{"pixels": np.zeros((2, 784), np.float32)}])
    assert result["probabilities"].shape == (2, 10)


def _samples(y: np.ndarray, flagged: int = 0) -> digits_v3_data.Samples:
    return digits_v3_data.Samples(np.zeros((len(y), 784), np.float32), y, flagged, {})


def test_thresholds_flag_the_unsure_and_keep_the_limits() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    y = rng.integers(0, 10, n)
    logits = np.full((n, 11), 0.0)
    logits[np.arange(n), y] = 8.0  # confident and right
    unsure = rng.choice(n, 40, replace=False)  # 2 %: wrong, with low confidence
    logits[unsure] = 0.0
    logits[unsure, (y[unsure] + 1) % 10] = 1.0
    junk_logits = np.zeros((1000, 11))
    junk_logits[:, 10] = 6.0
    junk_logits[:50, 10] = 0.0  # 5 % of the junk looks like a digit, unsure
    sets = {
        "calibration/handwritten_8x8": _samples(y, flagged=20),
        "calibration/not_digits": _samples(np.full(1000, 10), flagged=500),
    }
    fitted = calibration.fit(
        sets, {"calibration/handwritten_8x8": logits, "calibration/not_digits": junk_logits}
    )
    probs = calibration.softmax(logits / fitted.temperature)
    flags = calibration.model_flags(probs, fitted.min_score, fitted.max_not_a_digit)
    assert flags[unsure].all()  # every unsure (wrong) answer is flagged
    assert (20 + flags.sum()) / (n + 20) <= calibration.FLAGGED_DIGITS_TARGET
    assert fitted.calibration_rates["silent_errors"] == 0.0
    assert fitted.calibration_rates["not_digits_flagged"] == 1.0


def test_training_is_deterministic() -> None:
    rng = np.random.default_rng(4)
    x = rng.random((300, 784), dtype=np.float32)
    y = rng.integers(0, 11, 300)
    first = digits_cnn.train(x, y, digits_cnn.TINY_SETTINGS)
    again = digits_cnn.train(x, y, digits_cnn.TINY_SETTINGS)
    assert digits_cnn.to_onnx(first, 1.5) == digits_cnn.to_onnx(again, 1.5)
