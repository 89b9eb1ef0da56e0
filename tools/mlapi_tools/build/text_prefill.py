"""Export ``text_prefill``: the decode step's GRU run over a whole prompt in one call.

Built from the weights inside ``text_decoder/1/model.onnx`` (no training), with ONNX's GRU
operator, so a stream's first token does not wait for one decode step per prompt character:

    tokens  INT64 [batch, time]    prompts, padded at the end to the longest
    lengths INT64 [batch, 1]       each prompt's own length (>= 1)
 -> logits  FP32  [batch, vocab]   the scores after each prompt's last token
    state   FP32  [batch, layers, hidden]

``linear_before_reset=1`` is PyTorch's formulation (the decode step's equations) and
``sequence_lens`` stops each row at its own length, so prompts of different lengths share
one batch and padding changes nothing. ``metrics.json`` records the largest difference from
feeding the same prompts step by step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mlapi_backend import tokenizer
from mlapi_tools.build.text_lm import (
    DEFAULT_SETTINGS,
    LOGITS_OUTPUT,
    MODEL_NAME,
    ONNX_IR_VERSION,
    ONNX_OPSET,
    STATE_INPUT,
    TOKEN_INPUT,
    VERSION,
    TrainingSettings,
    corpus,
    split_ids,
)

log = logging.getLogger(__name__)

PREFILL_MODEL_NAME = "text_prefill"
TOKENS_INPUT = "tokens"
LENGTHS_INPUT = "lengths"
STATE_OUTPUT = "state"
# Bump when prefill_onnx changes what it writes (part of the fingerprint).
RECIPE_VERSION = 1
# The export must match the decode step to float tolerance (measured: 1.9e-06).
MAX_ERROR = 1e-4


def _zrh(array: np.ndarray, hidden_dim: int) -> np.ndarray:
    """PyTorch stacks the GRU gates r, z, n; ONNX's GRU operator wants z, r, h."""
    r, z, n = (array[i * hidden_dim : (i + 1) * hidden_dim] for i in range(3))
    return np.concatenate([z, r, n])


def prefill_onnx(weights: dict[str, np.ndarray], layers: int, hidden_dim: int) -> bytes:
    """The prefill graph (see the module docstring) over the decode step's ``weights``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h3 = 3 * hidden_dim
    inits = [
        numpy_helper.from_array(weights["embedding"], "embedding"),
        numpy_helper.from_array(weights["head_w"], "head_w"),
        numpy_helper.from_array(weights["head_b"], "head_b"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Reshape", [LENGTHS_INPUT, "flat"], ["lengths_flat"]),
        helper.make_node("Cast", ["lengths_flat"], ["sequence_lens"], to=TensorProto.INT32),
        helper.make_node("Gather", ["embedding", TOKENS_INPUT], ["embedded"], axis=0),
        helper.make_node("Transpose", ["embedded"], ["x0"], perm=[1, 0, 2]),
    ]
    x, finals = "x0", []
    for layer in range(layers):
        p = f"l{layer}"
        w = _zrh(weights[f"weight_ih_l{layer}"], hidden_dim)
        r = _zrh(weights[f"weight_hh_l{layer}"], hidden_dim)
        b = np.concatenate(
            [
                _zrh(weights[f"bias_ih_l{layer}"], hidden_dim),
                _zrh(weights[f"bias_hh_l{layer}"], hidden_dim),
            ]
        )
        inits += [
            numpy_helper.from_array(w.reshape(1, h3, -1), f"{p}_w"),
            numpy_helper.from_array(r.reshape(1, h3, hidden_dim), f"{p}_r"),
            numpy_helper.from_array(b.reshape(1, 2 * h3), f"{p}_b"),
        ]
        nodes.append(
            helper.make_node(
                "GRU",
                [x, f"{p}_w", f"{p}_r", f"{p}_b", "sequence_lens"],
                [f"{p}_y", f"{p}_y_h"],
                hidden_size=hidden_dim,
                linear_before_reset=1,
            )
        )
        # Y [time, 1, batch, hidden] feeds the next layer; Y_h [1, batch, hidden] is the state
        nodes.append(helper.make_node("Squeeze", [f"{p}_y", "axis1"], [f"{p}_out"]))
        x = f"{p}_out"
        finals.append(f"{p}_y_h")
    nodes.append(helper.make_node("Concat", finals, ["states_lbh"], axis=0))
    nodes.append(helper.make_node("Transpose", ["states_lbh"], [STATE_OUTPUT], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Gather", ["states_lbh", "last_layer"], ["last_h"], axis=0))
    inits.append(numpy_helper.from_array(np.array(layers - 1, dtype=np.int64), "last_layer"))
    nodes.append(
        helper.make_node("Gemm", ["last_h", "head_w", "head_b"], [LOGITS_OUTPUT], transB=1)
    )
    graph = helper.make_graph(
        nodes,
        "text_prefill",
        inputs=[
            helper.make_tensor_value_info(TOKENS_INPUT, TensorProto.INT64, ["batch", "time"]),
            helper.make_tensor_value_info(LENGTHS_INPUT, TensorProto.INT64, ["batch", 1]),
        ],
        outputs=[
            helper.make_tensor_value_info(
                LOGITS_OUTPUT, TensorProto.FLOAT, ["batch", tokenizer.VOCAB_SIZE]
            ),
            helper.make_tensor_value_info(
                STATE_OUTPUT, TensorProto.FLOAT, ["batch", layers, hidden_dim]
            ),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="mlapi_backend"
    )
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def build(
    repository: Path, settings: TrainingSettings = DEFAULT_SETTINGS, force: bool = False
) -> dict[str, Any]:
    """Write ``text_prefill/1/model.onnx`` from the weights inside the built decode step.

    No training: the same weights, so the prompt's logits and state equal those of feeding it
    step by step (checked here on held-out prompts of mixed lengths, padded into one batch).
    """
    import onnx
    from onnx import numpy_helper

    decoder_bytes = (repository / MODEL_NAME / str(VERSION) / "model.onnx").read_bytes()
    version_dir = repository / PREFILL_MODEL_NAME / str(VERSION)
    digest = hashlib.sha256(decoder_bytes)
    digest.update(f"prefill recipe {RECIPE_VERSION}".encode())
    built_from = digest.hexdigest()[:16]
    metrics_path = version_dir / "metrics.json"
    if not force and (version_dir / "model.onnx").is_file() and metrics_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            existing = dict(json.loads(metrics_path.read_text()))
            if existing.get("fingerprint") == built_from:
                log.info("text_prefill: %s is up to date", version_dir / "model.onnx")
                return existing
    decoder = onnx.load_from_string(decoder_bytes)
    weights = {init.name: numpy_helper.to_array(init) for init in decoder.graph.initializer}
    model_bytes = prefill_onnx(weights, settings.layers, settings.hidden_dim)
    _, held_out = split_ids(corpus(), settings.held_out_fraction)
    lengths = (1, 2, 7, 64, 256, 33)
    prompts = [held_out[i * 300 : i * 300 + n] for i, n in enumerate(lengths)]
    error = check_prefill(decoder_bytes, model_bytes, prompts, settings.layers, settings.hidden_dim)
    if error > MAX_ERROR:
        raise RuntimeError(f"text_prefill: text_prefill differs from the decode step by {error:g}")
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(model_bytes)
    metrics = {
        "model": "character-level GRU language model (whole prompt in one call)",
        "built_from": f"{MODEL_NAME}/{VERSION}/model.onnx",
        "max_abs_error_vs_decode_steps": error,
        "checked_prompt_lengths": list(lengths),
        "fingerprint": built_from,
    }
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("text_prefill: %s (max error vs decode steps %.1e)", version_dir / "model.onnx", error)
    return metrics


def check_prefill(
    step_bytes: bytes, prefill_bytes: bytes, prompts: list[np.ndarray], layers: int, hidden_dim: int
) -> float:
    """Largest |difference| in logits and state: prompts padded into one prefill batch vs steps."""
    import onnxruntime as ort

    step = ort.InferenceSession(step_bytes, providers=["CPUExecutionProvider"])
    prefill = ort.InferenceSession(prefill_bytes, providers=["CPUExecutionProvider"])
    tokens = np.zeros((len(prompts), max(len(p) for p in prompts)), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt
    lengths = np.array([[len(p)] for p in prompts], dtype=np.int64)
    logits, states = prefill.run(None, {TOKENS_INPUT: tokens, LENGTHS_INPUT: lengths})
    worst = 0.0
    for row, prompt in enumerate(prompts):
        state = np.zeros((1, layers, hidden_dim), dtype=np.float32)
        for token in prompt:
            step_logits, state = step.run(
                None, {TOKEN_INPUT: np.array([[token]], dtype=np.int64), STATE_INPUT: state}
            )
        worst = max(
            worst,
            float(np.abs(step_logits[0] - logits[row]).max()),
            float(np.abs(state[0] - states[row]).max()),
        )
    return worst


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Export text_prefill from the built decode step.")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--force", action="store_true", help="rewrite even when up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    build(args.repository, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
