"""INT8 versions of the digits classifiers and of the text encoder (onnxruntime.quantization).

`python -m mlapi_tools.build.quantize [--repository DIR] [--only digits|encoder] [--force]`

Two methods per source graph, both with INT8 weights:

- ``dynamic``: weights quantized ahead of time, activation scales computed on every call
  (MatMulInteger / ConvInteger), no calibration data;
- ``static``: QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized operator),
  activation ranges fixed by MinMax calibration on a calibration set that never includes test
  data: the training split of scikit-learn's digits for version 2, the calibration split of
  version 3's data (digits_v3_data), and prose of CPython's documentation from past the part
  that the text_embedder agreement test draws from for the encoder.

Every INT8 graph is evaluated against its FP32 source on held-out data (digits: accuracy on the
test split; encoder: cosine with the FP32 encoder and with sentence-transformers), and the
results are written beside it (``metrics.json``) and to ``build/quantized/report.json``.
Served: the ``SERVED`` versions of digits_classifier (the traffic policy can route to them like
to any version). The others stay under ``build/quantized`` for the in-process comparison. The
build is deterministic (fixed data, MinMax calibration) and skipped when a graph's fingerprint
(source graph, method, calibration settings, the data's key, recipe and onnxruntime versions)
is unchanged.

The text encoder's INT8 graphs are not served: text_embedder promises the vectors of
sentence-transformers (cosine >= 0.9999, its agreement test), and the best INT8 graph stays
near 0.97 on some held-out sentences, so vectors of two versions would not share an index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

DIGITS = "digits_classifier"
ENCODER = "text_embedder_encoder"
OUT = Path("build") / "quantized"
RECIPE_VERSION = 1
METHODS = ("dynamic", "static")
# Served INT8 versions: version -> (FP32 source version, method). Static QDQ is the calibrated
# method the comparison below favours; the dynamic graphs are built and reported, not served.
SERVED: dict[int, tuple[int, str]] = {4: (2, "static"), 5: (3, "static")}
SOURCES = (2, 3)
FORMATS = {
    "static": "QDQ, U8 activations, S8 weights, MinMax calibration",
    # onnxruntime's CPU ConvInteger takes only U8 weights; MatMulInteger takes S8 too.
    "dynamic": "MatMulInteger (S8 weights) / ConvInteger (U8 weights)",
}
DIGITS_CALIBRATION_ROWS = 512
ENCODER_CALIBRATION_TEXTS = 64
# The encoder's options. Per-channel weights with reduce_range (7-bit) avoid the U8xS8
# saturation of AVX2's multiply-add; static quantizes the MatMuls only (BERT's activation
# outliers elsewhere cost the most). Measured on 100 held-out sentences, cosine with FP32
# min/mean: dynamic defaults 0.858/0.956, per-channel + reduce_range 0.985/0.990; static all
# operators 0.53/0.76, MatMuls only per-channel + reduce_range 0.878/0.925.
ENCODER_OPTIONS: dict[str, dict[str, Any]] = {
    "dynamic": {"per_channel": True, "reduce_range": True},
    "static": {"per_channel": True, "reduce_range": True, "op_types_to_quantize": ["MatMul"]},
}
# tests/integration/models/test_text_embedder.py draws its prose from the first 200 000
# characters of pydoc_data.topics (sorted keys); calibration takes sentences after them.
PROSE_TEST_CHARS = 200_000


class _Feeds:
    """onnxruntime's CalibrationDataReader over a fixed list of feeds."""

    def __init__(self, feeds: list[dict[str, NDArray[Any]]]) -> None:
        self._feeds: Iterator[dict[str, NDArray[Any]]] = iter(feeds)

    def get_next(self) -> dict[str, NDArray[Any]] | None:
        return next(self._feeds, None)


def quantize(
    source: Path,
    target: Path,
    method: str,
    feeds: list[dict[str, Any]],
    options: Mapping[str, Any] | None = None,
) -> bytes:
    """Write the INT8 graph of ``source`` to ``target``; its metadata props are kept."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    options = dict(options or {})
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        raw = Path(work) / "model.onnx"
        if method == "dynamic":
            has_conv = any(n.op_type == "Conv" for n in onnx.load(str(source)).graph.node)
            weights = QuantType.QUInt8 if has_conv else QuantType.QInt8
            quantize_dynamic(source, raw, weight_type=weights, **options)
        else:
            reader: Any = _Feeds(feeds)
            quantize_static(
                source,
                raw,
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                **options,
            )
        proto = onnx.load(str(raw))
    original = onnx.load(str(source), load_external_data=False)
    del proto.metadata_props[:]
    proto.metadata_props.extend(original.metadata_props)
    proto.doc_string = f"{original.doc_string} (INT8, {method})".strip()
    data = bytes(proto.SerializeToString())
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return data


def session(path: Path, threads: int = 1) -> Any:
    """One onnxruntime CPU session on ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _fingerprint(source: Path, method: str, settings: Mapping[str, Any]) -> str:
    import onnxruntime

    digest = hashlib.sha256(source.read_bytes())
    payload = {"method": method, "recipe": RECIPE_VERSION, "onnxruntime": onnxruntime.__version__}
    digest.update(json.dumps({**payload, **settings}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _fresh(metrics_path: Path, model_path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not (model_path.is_file() and metrics_path.is_file()):
        return None
    try:
        existing = json.loads(metrics_path.read_text())
    except ValueError:
        return None
    quantization = existing.get("quantization", {})
    return existing if quantization.get("fingerprint") == fingerprint else None


def _accuracy(path: Path, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    probabilities = session(path).run(["probabilities"], {"pixels": x})[0]
    return float((probabilities.argmax(axis=1) == y).mean())


def digits_data(version: int) -> dict[str, Any]:
    """Calibration rows (never test data) and held-out sets of one FP32 source version."""
    from mlapi_backend.preprocessing import digits_to_images
    from mlapi_tools.build import digits_cnn, digits_data, digits_v3_data

    if version == 2:
        split = digits_data.load_split()
        train = digits_data.preprocessed(list(digits_to_images(split.train_x)))
        step = max(1, len(train) // DIGITS_CALIBRATION_ROWS)
        test = digits_data.preprocessed(list(split.test_images))
        return {
            "calibration": train[::step][:DIGITS_CALIBRATION_ROWS],
            "calibration_source": "training split of scikit-learn digits (8x8, preprocessed)",
            "held_out": {"handwritten_8x8": (test, split.test_y)},
        }
    sets = digits_cnn.load_or_build_sets(digits_cnn.DEFAULT_SETTINGS, digits_cnn.DATA_CACHE)
    calibration, _ = digits_v3_data.split_union(sets, "calibration")
    step = max(1, len(calibration) // DIGITS_CALIBRATION_ROWS)
    held_out = {}
    for name, samples in sets.items():
        digits = samples.y < digits_data.NOT_A_DIGIT
        if name.startswith("test/") and digits.any():
            held_out[name.removeprefix("test/")] = (samples.x[digits], samples.y[digits])
    return {
        "calibration": calibration[::step][:DIGITS_CALIBRATION_ROWS],
        "calibration_source": "calibration split of version 3's data (digits_v3_data)",
        "held_out": held_out,
    }


def _digits_metrics(
    source_dir: Path, path: Path, method: str, data: Mapping[str, Any], fingerprint: str
) -> dict[str, Any]:
    held_out = {}
    for name, (x, y) in data["held_out"].items():
        fp32 = _accuracy(source_dir / "model.onnx", x, y)
        int8 = _accuracy(path, x, y)
        held_out[name] = {
            "rows": len(y),
            "fp32_accuracy": round(fp32, 6),
            "int8_accuracy": round(int8, 6),
            "delta_points": round(100 * (int8 - fp32), 3),
        }
    source_metrics = json.loads((source_dir / "metrics.json").read_text())
    return {
        **source_metrics,
        "description": f"{source_metrics.get('description', '')} — INT8 ({method})".strip(),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "quantization": {
            "source_version": int(source_dir.name),
            "method": method,
            "format": FORMATS[method],
            "calibration": data["calibration_source"] if method == "static" else None,
            "calibration_rows": len(data["calibration"]) if method == "static" else 0,
            "held_out": held_out,
            "fingerprint": fingerprint,
        },
    }


def _data_fingerprint(version: int) -> str:
    """What the calibration and held-out rows of ``version`` are made from (v3: its data's key)."""
    if version != 3:
        return "scikit-learn digits split"
    from mlapi_tools.build import digits_cnn

    return digits_cnn.data_fingerprint(digits_cnn.DEFAULT_SETTINGS)


def build_digits(repository: Path, out: Path = OUT, force: bool = False) -> dict[str, Any]:
    """Build both INT8 graphs of versions 2 and 3; copy the SERVED ones into the repository."""
    classifier = repository / DIGITS
    report: dict[str, Any] = {}
    for source_version in SOURCES:
        source_dir = classifier / str(source_version)
        if not (source_dir / "model.onnx").is_file():
            raise FileNotFoundError(f"{source_dir}/model.onnx is missing: build the digits first")
        data: dict[str, Any] | None = None
        data_key = _data_fingerprint(source_version)
        for method in METHODS:
            target = out / DIGITS / f"{source_version}-{method}"
            settings = {"calibration_rows": DIGITS_CALIBRATION_ROWS, "data": data_key}
            fingerprint = _fingerprint(source_dir / "model.onnx", method, settings)
            metrics = (
                None
                if force
                else _fresh(target / "metrics.json", target / "model.onnx", fingerprint)
            )
            if metrics is None:
                data = data or digits_data(source_version)
                feeds = [{"pixels": row[None, :]} for row in data["calibration"]]
                quantize(source_dir / "model.onnx", target / "model.onnx", method, feeds)
                metrics = _digits_metrics(
                    source_dir, target / "model.onnx", method, data, fingerprint
                )
                (target / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            report[f"{source_version}-{method}"] = metrics["quantization"]
            log.info("quantized digits v%d (%s): %s", source_version, method,
                     {k: v["delta_points"] for k, v in metrics["quantization"]["held_out"].items()})  # fmt: skip
    for version, (source_version, method) in SERVED.items():
        built = out / DIGITS / f"{source_version}-{method}"
        served = classifier / str(version)
        served.mkdir(exist_ok=True)
        for name in ("model.onnx", "metrics.json"):
            text = (built / name).read_bytes()
            if name == "metrics.json":
                document = json.loads(text)
                document["version"] = version
                text = (json.dumps(document, indent=2) + "\n").encode()
            if not (served / name).is_file() or (served / name).read_bytes() != text:
                (served / f"{name}.tmp").write_bytes(text)
                (served / f"{name}.tmp").replace(served / name)
    return report


def _prose(start: int, stop: int | None) -> list[str]:
    import re
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))[start:stop]
    sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in sentences if 3 <= len(s) <= 600]


def _embed(model: Any, tokenizer: Any, texts: list[str]) -> NDArray[np.float32]:
    rows = []
    for text in texts:
        batch = tokenizer.encode([text])
        feed = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        rows.append(model.run(["embedding"], feed)[0])
    return np.concatenate(rows).astype(np.float32)


def build_encoder(repository: Path, out: Path = OUT, force: bool = False) -> dict[str, Any]:
    """Build and evaluate both INT8 graphs of the text encoder (in-process only, not served)."""
    from mlapi_backend.text_embedding import TextTokenizer

    source = repository / ENCODER / "1" / "model.onnx"
    tokenizer = TextTokenizer.from_file(
        repository / "text_embedder_tokenizer" / "1" / "tokenizer.json"
    )
    held_out = _prose(0, PROSE_TEST_CHARS)
    rng = np.random.default_rng(7)
    held_out = [held_out[i] for i in sorted(rng.choice(len(held_out), 200, replace=False))]
    calibration = _prose(PROSE_TEST_CHARS, None)[::10][:ENCODER_CALIBRATION_TEXTS]
    report: dict[str, Any] = {}
    reference: dict[str, NDArray[np.float32]] = {}
    for method in METHODS:
        target = out / ENCODER / method
        settings = {"calibration_texts": ENCODER_CALIBRATION_TEXTS, **ENCODER_OPTIONS[method]}
        fingerprint = _fingerprint(source, method, settings)
        metrics = (
            None if force else _fresh(target / "metrics.json", target / "model.onnx", fingerprint)
        )
        if metrics is None:
            if not reference:
                reference["fp32"] = _embed(session(source), tokenizer, held_out)
                reference["st"] = _sentence_transformers(held_out)
            feeds = []
            for text in calibration:
                batch = tokenizer.encode([text])
                feeds.append({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
            quantize(source, target / "model.onnx", method, feeds, ENCODER_OPTIONS[method])
            vectors = _embed(session(target / "model.onnx"), tokenizer, held_out)
            metrics = {"quantization": {
                "method": method,
                "calibration": "CPython documentation prose past the test's part" if method == "static" else None,
                "calibration_texts": len(calibration) if method == "static" else 0,
                "options": ENCODER_OPTIONS[method],
                "held_out_texts": len(held_out),
                "cosine_vs_fp32": _cosines(vectors, reference["fp32"]),
                "cosine_vs_sentence_transformers": _cosines(vectors, reference["st"]),
                "fp32_cosine_vs_sentence_transformers": _cosines(reference["fp32"], reference["st"]),
                "model_bytes": (target / "model.onnx").stat().st_size,
                "fingerprint": fingerprint,
            }}  # fmt: skip
            (target / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        report[method] = metrics["quantization"]
        log.info("quantized encoder (%s): %s", method, metrics["quantization"]["cosine_vs_fp32"])
    return report


def _sentence_transformers(texts: list[str]) -> NDArray[np.float32]:
    from sentence_transformers import SentenceTransformer

    from mlapi_tools.build.text_embedder import model_dir

    model = SentenceTransformer(str(model_dir()), device="cpu")
    return np.asarray(model.encode(texts, normalize_embeddings=True), dtype=np.float32)


def _cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> dict[str, float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cosine = (a * b).sum(axis=1)
    return {"min": round(float(cosine.min()), 6), "mean": round(float(cosine.mean()), 6)}


def main(argv: list[str] | None = None) -> int:
    """Build the INT8 graphs and write build/quantized/report.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--only", choices=("digits", "encoder"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    report_path = args.out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if args.only in (None, "digits"):
        report[DIGITS] = build_digits(args.repository, args.out, args.force)
    if args.only in (None, "encoder"):
        report[ENCODER] = build_encoder(args.repository, args.out, args.force)
    args.out.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
