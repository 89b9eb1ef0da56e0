"""Train the two digits classifiers and export them to ONNX for `digits_classifier`.

Version 1 is a multinomial logistic regression, version 2 a two-layer MLP. Both are trained on
the *preprocessed* training split (so there is no train/serve skew), augmented with copies
resampled to other sizes, plus a reject class of synthetic non-digit images (see digits_data).
The exported graph takes ``pixels`` FP32 [batch, 64] and returns ``probabilities`` FP32
[batch, 10]: the probability of each digit, summing to 1 - P(not a digit). The graph declares
the pixels feature dim symbolic (config dims ``[ -1 ]`` are shared with version 3's 784).
Version 3 (a CNN on 28x28 frames) is built by digits_cnn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlapi_backend.onnx_backend import INPUT_DIMS_METADATA
from mlapi_backend.preprocessing import digits_to_images
from mlapi_tools.build.digits_data import (
    NOT_A_DIGIT,
    DigitsSplit,
    junk_images,
    load_split,
    preprocessed,
)

log = logging.getLogger(__name__)

MODEL_NAME = "digits_classifier"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
# The symbolic name of the pixels input's feature dim, in every version's graph.
FEATURE_DIM_NAME = "pixels_features"
NUM_DIGITS = 10
# Opset 17 / IR 8 load in the ONNX Runtime 1.19 that the NGC 24.10 onnxruntime backend embeds.
ONNX_OPSET = 17
ONNX_ML_OPSET = 3
AUGMENT_SEED = 11
JUNK_SEED = 7
JUNK_COUNT = 1500
AUGMENT_SIDES = (12, 20, 28, 36, 60)


@dataclass(frozen=True)
class ClassifierSpec:
    version: int
    description: str
    make: Callable[[], Any]


def _logistic_regression() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=0.5, max_iter=5000)


def _mlp() -> Any:
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(128, 64), alpha=1e-3, max_iter=1000, random_state=0)


SPECS = (
    ClassifierSpec(1, "multinomial logistic regression (C=0.5)", _logistic_regression),
    ClassifierSpec(2, "MLP 64-128-64-11 (ReLU, adam, alpha=1e-3)", _mlp),
)


def training_set(split: DigitsSplit) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed train digits, a resampled copy of each, and the reject class."""
    from PIL import Image

    rng = np.random.default_rng(AUGMENT_SEED)
    images = list(digits_to_images(split.train_x))
    filters = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
    resampled = []
    for img in images:
        side = int(rng.choice(AUGMENT_SIDES))
        resample = filters[int(rng.integers(len(filters)))]
        resampled.append(np.asarray(Image.fromarray(img).resize((side, side), resample)))
    junk = preprocessed(junk_images(JUNK_COUNT, JUNK_SEED))
    x = np.concatenate([preprocessed(images), preprocessed(resampled), junk])
    y = np.concatenate([split.train_y, split.train_y, np.full(len(junk), NOT_A_DIGIT)])
    return x.astype(np.float32), y


def to_onnx(model: Any) -> bytes:
    """Export a fitted scikit-learn classifier as pixels -> probabilities of the ten digits."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    proto = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, 64]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET},
    )
    graph = proto.graph
    all_probs = "all_class_probabilities"
    for node in graph.node:
        node.input[:] = [all_probs if name == OUTPUT_NAME else name for name in node.input]
        node.output[:] = [all_probs if name == OUTPUT_NAME else name for name in node.output]
    graph.initializer.extend(
        [
            helper.make_tensor("slice_start", TensorProto.INT64, [1], [0]),
            helper.make_tensor("slice_end", TensorProto.INT64, [1], [NUM_DIGITS]),
            helper.make_tensor("slice_axis", TensorProto.INT64, [1], [1]),
        ]
    )
    graph.node.append(
        helper.make_node(
            "Slice",
            [all_probs, "slice_start", "slice_end", "slice_axis"],
            [OUTPUT_NAME],
            name="drop_not_a_digit",
        )
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, NUM_DIGITS])
    )
    make_feature_dim_symbolic(proto)
    declare_input_dims(proto, {INPUT_NAME: [64]})
    graph.name = f"{MODEL_NAME}_{type(model).__name__}"  # skl2onnx names it with a random uuid
    proto.producer_name = "triton-mlapi"
    proto.doc_string = "digits classifier: pixels [N,64] in 0..16 -> probabilities [N,10]"
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def make_feature_dim_symbolic(proto: Any, name: str = FEATURE_DIM_NAME) -> None:
    """Give the ``pixels`` input a symbolic feature dim (in place).

    The config declares ``dims: [ -1 ]`` for every version (64 pixels for versions 1 and 2, 784
    for version 3), and the native onnxruntime backend refuses a fixed model dim against a -1
    config dim. The graph's operators still fix the width a session accepts.
    """
    for graph_input in proto.graph.input:
        if graph_input.name == INPUT_NAME:
            dims = graph_input.type.tensor_type.shape.dim
            dims[1].ClearField("dim_value")
            dims[1].dim_param = name
            return
    raise ValueError(f"the graph has no input {INPUT_NAME!r}")


def declare_input_dims(proto: Any, dims: dict[str, list[int]]) -> None:
    """Record in the graph's metadata the dims its symbolic inputs need (in place).

    The onnxruntime stand-in then refuses a request of another width with INVALID_ARG
    (mlapi_backend.onnx_backend.INPUT_DIMS_METADATA) rather than failing inside the session.
    """
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {INPUT_DIMS_METADATA: json.dumps(dims)})


def onnx_accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the exported graph itself (not the scikit-learn object) on (x, y)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    probs = session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]
    return float((probs.argmax(axis=1) == y).mean())


def build(repository: Path) -> dict[int, dict[str, Any]]:
    """Train, export and evaluate every version into ``repository/digits_classifier/<v>/``."""
    model_dir = repository / MODEL_NAME
    split = load_split()
    log.info("digits: %d train / %d held-out images", len(split.train_y), len(split.test_y))
    started = time.monotonic()
    x, y = training_set(split)
    test_x = preprocessed(list(split.test_images))
    log.info(
        "training set: %d rows incl. augmentation and reject class (%.1fs)",
        len(y),
        time.monotonic() - started,
    )
    results: dict[int, dict[str, Any]] = {}
    for i, spec in enumerate(SPECS, start=1):
        version_dir = model_dir / str(spec.version)
        version_dir.mkdir(parents=True, exist_ok=True)
        log.info("[%d/%d] version %d: %s: training", i, len(SPECS), spec.version, spec.description)
        t0 = time.monotonic()
        model = spec.make().fit(x, y)
        model_bytes = to_onnx(model)
        accuracy = onnx_accuracy(model_bytes, test_x, split.test_y)
        metrics = {
            "model": MODEL_NAME,
            "version": spec.version,
            "description": spec.description,
            "held_out_accuracy": round(accuracy, 6),
            "held_out_size": len(split.test_y),
            "train_rows": len(y),
            "onnx_opset": ONNX_OPSET,
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
        }
        # Atomic replace: a server watching the folder never reads a half-written file.
        _write_atomic(version_dir / "model.onnx", model_bytes)
        _write_atomic(version_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
        log.info(
            "[%d/%d] version %d: held-out accuracy %.4f (%.1fs) -> %s",
            i,
            len(SPECS),
            spec.version,
            accuracy,
            time.monotonic() - t0,
            version_dir,
        )
        results[spec.version] = metrics
    return results


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_metrics(repository: Path, version: int) -> dict[str, Any]:
    """The metrics.json written beside a built version."""
    path = repository / MODEL_NAME / str(version) / "metrics.json"
    return json.loads(path.read_text())
