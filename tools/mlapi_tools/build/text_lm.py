"""Train the character-level GRU language model of ``text_generator`` and export its decode step.

Training text is CPython's own documentation (``pydoc_data.topics``, ~465 KB of English prose
shipped with every interpreter), so no download is needed. The last tenth is held out. The
network (embedding, one GRU layer, linear head) is trained with PyTorch on CPU with a fixed
seed, then ONE decode step is written to ONNX by hand, op by op, which keeps the graph small,
opset 17 / IR 8 (loadable by the ONNX Runtime 1.19 inside NGC 24.10) and batch-first:

    token  INT64 [batch, 1]          the previous token
    state  FP32  [batch, layers, hidden]
 -> logits FP32  [batch, vocab]      unnormalised next-token scores
    new_state FP32 [batch, layers, hidden]

Every tensor has the batch as dimension 0, so Triton's dynamic batcher can stack the steps of
concurrent streams. The same weights are also written as ``text_prefill`` (mlapi_tools.build.text_prefill):
the whole prompt in one call, so a stream's first token does not wait for one step per
prompt character. ``metrics.json`` beside the model records held-out perplexity next to a
unigram baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlapi_backend import tokenizer

log = logging.getLogger(__name__)

MODEL_NAME = "text_decoder"
VERSION = 1
TOKEN_INPUT = "token"
STATE_INPUT = "state"
LOGITS_OUTPUT = "logits"
STATE_OUTPUT = "new_state"
# Opset 17 / IR 8 load in the ONNX Runtime 1.19 that the NGC 24.10 onnxruntime backend embeds.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8
# Bump when the training or export code changes what is built (part of the build fingerprint).
RECIPE_VERSION = 1


@dataclass(frozen=True)
class TrainingSettings:
    """Hyper-parameters; the defaults train in 1-2 minutes on one CPU core (about 3 on a busy one)."""

    embedding_dim: int = 64
    hidden_dim: int = 256
    layers: int = 1
    sequence_length: int = 100
    batch_size: int = 32
    steps: int = 500
    learning_rate: float = 3e-3
    final_learning_rate: float = 3e-4
    grad_clip: float = 1.0
    held_out_fraction: float = 0.1
    seed: int = 1234
    threads: int = 1


# The served config (model_repository/text_decoder/config.pbtxt) states these dims.
DEFAULT_SETTINGS = TrainingSettings()


def corpus() -> str:
    """The training text: every pydoc topic, in key order, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def split_ids(text: str, held_out_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    ids = tokenizer.encode(text)
    cut = int(len(ids) * (1.0 - held_out_fraction))
    return ids[:cut], ids[cut:]


def unigram_perplexity(train: np.ndarray, held_out: np.ndarray) -> float:
    """Perplexity of an add-one-smoothed character unigram model fitted on ``train``."""
    counts = np.bincount(train, minlength=tokenizer.VOCAB_SIZE).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(math.exp(-log_p[held_out].mean()))


class _Network:
    """The torch modules; imported lazily so the serving path never needs torch."""

    def __init__(self, settings: TrainingSettings) -> None:
        import torch

        self.embedding = torch.nn.Embedding(tokenizer.VOCAB_SIZE, settings.embedding_dim)
        self.gru = torch.nn.GRU(
            settings.embedding_dim, settings.hidden_dim, settings.layers, batch_first=True
        )
        self.head = torch.nn.Linear(settings.hidden_dim, tokenizer.VOCAB_SIZE)
        self.modules = (self.embedding, self.gru, self.head)

    def parameters(self) -> list[Any]:
        return [p for module in self.modules for p in module.parameters()]

    def logits(self, ids: Any, state: Any = None) -> tuple[Any, Any]:
        hidden, state = self.gru(self.embedding(ids), state)
        return self.head(hidden), state

    def weights(self) -> dict[str, np.ndarray]:
        named = {
            "embedding": self.embedding.weight,
            "head_w": self.head.weight,
            "head_b": self.head.bias,
        }
        for layer in range(self.gru.num_layers):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                named[f"{kind}_l{layer}"] = getattr(self.gru, f"{kind}_l{layer}")
        return {name: p.detach().numpy().astype(np.float32).copy() for name, p in named.items()}


def train(train_ids: np.ndarray, settings: TrainingSettings) -> _Network:
    """Truncated sequences from random offsets, zero initial state (as served), Adam, cosine LR."""
    import torch

    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    net = _Network(settings)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    data = torch.from_numpy(train_ids)
    span = settings.sequence_length + 1
    started = time.monotonic()
    for step in range(settings.steps):
        progress = step / max(1, settings.steps - 1)
        lr = settings.final_learning_rate + 0.5 * (
            settings.learning_rate - settings.final_learning_rate
        ) * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        offsets = rng.integers(0, len(train_ids) - span, size=settings.batch_size)
        batch = torch.stack([data[o : o + span] for o in offsets])
        logits, _ = net.logits(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, tokenizer.VOCAB_SIZE), batch[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
        optimizer.step()
        if step % 50 == 0 or step == settings.steps - 1:
            log.info(
                "text_lm: step %d/%d  train loss %.3f (perplexity %.2f)  lr %.1e  %.0fs",
                step + 1,
                settings.steps,
                loss.item(),
                math.exp(loss.item()),
                lr,
                time.monotonic() - started,
            )
    return net


def model_perplexity(net: _Network, held_out: np.ndarray, chunk: int = 1024) -> float:
    """Held-out perplexity, reading the text in chunks that each start from a zero state."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(held_out) - 1, chunk):
            piece = torch.from_numpy(held_out[start : start + chunk + 1])[None]
            if piece.shape[1] < 2:
                break
            logits, _ = net.logits(piece[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, tokenizer.VOCAB_SIZE), piece[0, 1:], reduction="sum"
            )
            total += loss.item()
            count += piece.shape[1] - 1
    return float(math.exp(total / count))


def decode_step_onnx(weights: dict[str, np.ndarray], layers: int, hidden_dim: int) -> bytes:
    """One GRU decode step as an ONNX graph (PyTorch's gate equations), batch on dimension 0."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    inits += [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([hidden_dim] * 3, dtype=np.int64), "gate_sizes"),
    ]

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def gates(prefix: str, source: str, layer: int, kind: str) -> list[str]:
        dense = node(
            "Gemm",
            [source, f"weight_{kind}_l{layer}", f"bias_{kind}_l{layer}"],
            f"{prefix}_{kind}",
            transB=1,
        )
        names = [f"{prefix}_{kind}_{g}" for g in "rzn"]
        nodes.append(
            helper.make_node(
                "Split", [dense, "gate_sizes"], names, name=f"{prefix}_{kind}_split", axis=1
            )
        )
        return names

    x = node(
        "Squeeze", [node("Gather", ["embedding", TOKEN_INPUT], "embedded", axis=0), "axis1"], "x0"
    )
    new_states = []
    for layer in range(layers):
        p = f"l{layer}"
        inits.append(numpy_helper.from_array(np.array(layer, dtype=np.int64), f"{p}_index"))
        h = node("Gather", [STATE_INPUT, f"{p}_index"], f"{p}_h", axis=1)
        i_r, i_z, i_n = gates(p, x, layer, "ih")
        h_r, h_z, h_n = gates(p, h, layer, "hh")
        r = node("Sigmoid", [node("Add", [i_r, h_r], f"{p}_r_in")], f"{p}_r")
        z = node("Sigmoid", [node("Add", [i_z, h_z], f"{p}_z_in")], f"{p}_z")
        n = node(
            "Tanh", [node("Add", [i_n, node("Mul", [r, h_n], f"{p}_rh")], f"{p}_n_in")], f"{p}_n"
        )
        # h' = (1 - z) * n + z * h  ==  n + z * (h - n)
        x = node(
            "Add",
            [n, node("Mul", [z, node("Sub", [h, n], f"{p}_h_minus_n")], f"{p}_zd")],
            f"{p}_h_new",
        )
        new_states.append(node("Unsqueeze", [x, "axis1"], f"{p}_h_new_3d"))
    if len(new_states) == 1:
        nodes.append(helper.make_node("Identity", new_states, [STATE_OUTPUT], name=STATE_OUTPUT))
    else:
        nodes.append(
            helper.make_node("Concat", new_states, [STATE_OUTPUT], name=STATE_OUTPUT, axis=1)
        )
    nodes.append(
        helper.make_node(
            "Gemm", [x, "head_w", "head_b"], [LOGITS_OUTPUT], name=LOGITS_OUTPUT, transB=1
        )
    )
    graph = helper.make_graph(
        nodes,
        "text_decoder_step",
        inputs=[
            helper.make_tensor_value_info(TOKEN_INPUT, TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info(
                STATE_INPUT, TensorProto.FLOAT, ["batch", layers, hidden_dim]
            ),
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


def check_export(
    net: _Network, model_bytes: bytes, ids: np.ndarray, layers: int, hidden_dim: int
) -> float:
    """Largest |difference| between torch (whole sequence) and ONNX (step by step) logits."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected, _ = net.logits(torch.from_numpy(ids)[None])
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    state = np.zeros((1, layers, hidden_dim), dtype=np.float32)
    worst = 0.0
    for position, token in enumerate(ids):
        logits, state = session.run(
            None, {TOKEN_INPUT: np.array([[token]], dtype=np.int64), STATE_INPUT: state}
        )
        worst = max(worst, float(np.abs(logits[0] - expected[0, position].numpy()).max()))
    return worst


def fingerprint(text: str, settings: TrainingSettings) -> str:
    """Hash of what determines the model: the corpus, the vocabulary, the settings and recipe."""
    digest = hashlib.sha256(text.encode())
    digest.update(tokenizer.CHARACTERS.encode())
    digest.update(
        json.dumps({**asdict(settings), "recipe": RECIPE_VERSION}, sort_keys=True).encode()
    )
    return digest.hexdigest()[:16]


def build(
    repository: Path, settings: TrainingSettings = DEFAULT_SETTINGS, force: bool = False
) -> dict[str, Any]:
    """Build the decode step (``text_decoder``), then the prompt model (``text_prefill``) from it.

    Returns the decode step's metrics. Each part is skipped when what it was built from is
    unchanged, so rebuilding the other default models retrains nothing.
    """
    from mlapi_tools.build import text_prefill

    metrics = build_decoder(repository, settings, force)
    text_prefill.build(repository, settings, force)
    return metrics


def build_decoder(
    repository: Path, settings: TrainingSettings = DEFAULT_SETTINGS, force: bool = False
) -> dict[str, Any]:
    """Train, check and write ``text_decoder/1/model.onnx`` plus ``metrics.json``.

    Skipped (returning the existing metrics) when the model on disk was built from the same
    corpus, settings and code, so rebuilding the other default models does not retrain it.
    """
    started = time.monotonic()
    text = corpus()
    version_dir = repository / MODEL_NAME / str(VERSION)
    built_from = fingerprint(text, settings)
    if not force and (version_dir / "model.onnx").is_file():
        try:
            existing = read_metrics(repository)
        except (OSError, ValueError):
            existing = {}
        if existing.get("fingerprint") == built_from:
            log.info(
                "text_lm: %s is up to date (fingerprint %s)", version_dir / "model.onnx", built_from
            )
            return existing
    train_ids, held_out = split_ids(text, settings.held_out_fraction)
    baseline = unigram_perplexity(train_ids, held_out)
    log.info(
        "text_lm: %d training / %d held-out characters; unigram perplexity %.2f",
        len(train_ids),
        len(held_out),
        baseline,
    )
    net = train(train_ids, settings)
    perplexity = model_perplexity(net, held_out)
    model_bytes = decode_step_onnx(net.weights(), settings.layers, settings.hidden_dim)
    export_error = check_export(
        net, model_bytes, held_out[:200], settings.layers, settings.hidden_dim
    )
    if export_error > 1e-3:
        raise RuntimeError(
            f"text_lm: ONNX decode step differs from the trained network by {export_error:g}"
        )
    if perplexity >= 0.5 * baseline:
        raise RuntimeError(
            f"text_lm: held-out perplexity {perplexity:.2f} does not clearly beat the unigram {baseline:.2f}"
        )
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(model_bytes)
    metrics = {
        "model": "character-level GRU language model (decode step)",
        "corpus": "pydoc_data.topics (CPython documentation)",
        "train_characters": len(train_ids),
        "held_out_characters": len(held_out),
        "held_out_perplexity": round(perplexity, 3),
        "unigram_perplexity": round(baseline, 3),
        "onnx_max_abs_logit_error": export_error,
        "vocab_size": tokenizer.VOCAB_SIZE,
        "onnx_opset": ONNX_OPSET,
        "onnx_ir_version": ONNX_IR_VERSION,
        "settings": asdict(settings),
        "fingerprint": built_from,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (version_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "text_lm: held-out perplexity %.2f vs unigram %.2f (export error %.1e) -> %s in %.0fs",
        perplexity,
        baseline,
        export_error,
        version_dir / "model.onnx",
        metrics["build_seconds"],
    )
    return metrics


def read_metrics(repository: Path) -> dict[str, Any]:
    """The metrics.json written beside the built decode step."""
    return dict(json.loads((repository / MODEL_NAME / str(VERSION) / "metrics.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train the text LM and export its decode step to ONNX."
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--force", action="store_true", help="retrain even when the model is up to date"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    build(args.repository, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
