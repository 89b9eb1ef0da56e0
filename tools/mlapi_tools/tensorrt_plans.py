"""TensorRT plans of the ONNX models, for GPU hosts (the `tensorrt` wheel; NGC's tensorrt backend).

    python -m mlapi_tools.tensorrt_plans build [--repository DIR] [--out DIR] [--models A,B]
    python -m mlapi_tools.tensorrt_plans compare [--repository DIR] [--out DIR] [--rounds N]

``build`` parses each ONNX file with TensorRT's ONNX parser and writes an FP16 engine
(``model.plan``) with one optimisation profile per input (batch 1 to the model's
max_batch_size, variable lengths from 1 to ``LENGTHS``) into a repository of its own:
``<out>/<model>_trt/<version>/model.plan`` beside a config with ``platform: "tensorrt_plan"``,
``KIND_GPU`` instances and the same input and output names as the ONNX model, so a client
changes only the model name. ``compare`` runs every plan with TensorRT's runtime and the ONNX
file with ONNX Runtime on the CPU on the same inputs and prints the largest difference and the
median latency of each. A plan only runs on the TensorRT version (and GPU generation) that
built it: build on the serving host, with the wheel of the server's TensorRT (24.10: 10.5).

Without an NVIDIA GPU or the ``tensorrt`` wheel both commands print why and exit 0 (``--require``
makes that exit 2), so the same command is safe on CPU-only hosts.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import glob
import importlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

OUT = Path("build") / "tensorrt"
SUFFIX = "_trt"
# The served version of each model that gets a plan (digits_classifier: the CNN, 28x28 input).
VERSIONS = {
    "digits_classifier": "3",
    "text_embedder_encoder": "1",
    "text_decoder": "1",
    "text_prefill": "1",
}
# Range (min, opt, max) of each variable non-batch dimension, by ONNX dim name: token sequences
# up to the tokenizer's largest pad bucket (encoder) and the prompt window (prefill).
LENGTHS = {"sequence": (1, 32, 256), "time": (1, 64, 256)}
WORKSPACE_BYTES = 1 << 30
ONNX_TYPES = {
    1: ("TYPE_FP32", np.float32),
    7: ("TYPE_INT64", np.int64),
    6: ("TYPE_INT32", np.int32),
}


class UnavailableError(RuntimeError):
    """No GPU or no TensorRT here: the reason, for a clean skip."""


@dataclass(frozen=True)
class Tensor:
    """One input or output: name, Triton type and its dims after the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int | str, ...]

    def config_dims(self) -> list[int]:
        """Dims as the config names them (-1 for a variable one)."""
        return [d if isinstance(d, int) else -1 for d in self.dims]


def gpu_reason() -> str | None:
    """Why TensorRT plans cannot be built or run here, or None when they can."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU: nvidia-smi is not installed"
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    if listed.returncode != 0 or "GPU" not in listed.stdout:
        return f"no NVIDIA GPU: nvidia-smi -L lists none ({listed.stderr.strip() or 'empty'})"
    try:
        importlib.import_module("tensorrt")
    except ImportError as exc:
        return f"the tensorrt wheel is not installed ({exc}): pip install tensorrt-cu12==10.5.0"
    return None


def _dims(value: Any) -> tuple[int | str, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value.type.tensor_type.shape.dim
    )


def onnx_tensors(path: Path, features: int | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs and outputs of an ONNX file, batch dimension dropped.

    ``features`` fixes a dimension named ``*_features`` (digits_classifier's versions differ in
    input width: the ONNX file leaves it open, the plan cannot).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    found: list[list[Tensor]] = [[], []]
    for index, values in enumerate((graph.input, graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            elem = value.type.tensor_type.elem_type
            if elem not in ONNX_TYPES:
                raise ValueError(f"{path}: {value.name} has ONNX type {elem}, not supported here")
            dims = tuple(
                features if isinstance(d, str) and d.endswith("_features") and features else d
                for d in _dims(value)[1:]
            )
            found[index].append(Tensor(value.name, ONNX_TYPES[elem][0], dims))
    return found[0], found[1]


def profile(tensor: Tensor, max_batch: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes of one input, batch dimension included."""
    shapes: list[list[int]] = [[1], [max(1, max_batch // 4)], [max_batch]]
    for dim in tensor.dims:
        if isinstance(dim, int):
            bounds = (dim, dim, dim)
        elif dim in LENGTHS:
            bounds = LENGTHS[dim]
        else:
            raise ValueError(f"{tensor.name}: no length range for dimension {dim!r} (LENGTHS)")
        for shape, bound in zip(shapes, bounds, strict=True):
            shape.append(bound)
    return tuple(tuple(s) for s in shapes)


def plan_config(
    name: str, version: str, max_batch: int, inputs: list[Tensor], outputs: list[Tensor]
) -> str:
    """config.pbtxt of one plan model (platform tensorrt_plan, GPU instances)."""

    def block(tensors: list[Tensor]) -> str:
        rows = [
            f'  {{ name: "{t.name}", data_type: {t.data_type}, dims: {t.config_dims()} }}'
            for t in tensors
        ]
        return ",\n".join(rows)

    return (
        "# Written by mlapi_tools.tensorrt_plans: an FP16 TensorRT engine of the ONNX model of the\n"
        "# same name without _trt (built on this host; a plan only runs on the TensorRT and GPU\n"
        "# generation that built it).\n"
        f'name: "{name}"\n'
        'platform: "tensorrt_plan"\n'
        f"max_batch_size: {max_batch}\n"
        f"version_policy: {{ specific: {{ versions: [{version}] }} }}\n"
        f"input [\n{block(inputs)}\n]\n"
        f"output [\n{block(outputs)}\n]\n"
        "dynamic_batching { max_queue_delay_microseconds: 0 }\n"
        "instance_group [ { kind: KIND_GPU, count: 1 } ]\n"
    )


def _max_batch(config: Path) -> int:
    from mlapi_backend.model_config import read_pbtxt

    return int(read_pbtxt(config).get("max_batch_size", 1))


def _features(model_dir: Path, version: str) -> int | None:
    metrics = model_dir / version / "metrics.json"
    if model_dir.name != "digits_classifier":
        return None
    side = json.loads(metrics.read_text()).get("input", {}).get("side") if metrics.is_file() else 0
    return int(side) ** 2 if side else 64


def plan_spec(repository: Path, model: str) -> dict[str, Any]:
    """What the plan of ``model`` is built from: ONNX path, version, batch, inputs, outputs."""
    version = VERSIONS[model]
    source = repository / model
    onnx_path = source / version / "model.onnx"
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} is missing: run `make models` first")
    inputs, outputs = onnx_tensors(onnx_path, _features(source, version))
    max_batch = _max_batch(source / "config.pbtxt")
    return {
        "onnx": onnx_path,
        "version": version,
        "max_batch": max_batch,
        "inputs": inputs,
        "outputs": outputs,
        "profiles": {t.name: profile(t, max_batch) for t in inputs},
    }


def write_config(spec: dict[str, Any], model: str, out: Path) -> Path:
    """Write the plan model's config.pbtxt under ``out``; the model's folder."""
    folder = out / f"{model}{SUFFIX}"
    (folder / spec["version"]).mkdir(parents=True, exist_ok=True)
    text = plan_config(
        folder.name, spec["version"], spec["max_batch"], spec["inputs"], spec["outputs"]
    )
    (folder / "config.pbtxt").write_text(text, encoding="utf-8")
    return folder


def build_plan(spec: dict[str, Any], target: Path, fp16: bool = True) -> None:
    """Parse the ONNX file with TensorRT and write the serialized engine to ``target``."""
    trt: Any = importlib.import_module("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: TensorRT 10's only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(spec["onnx"].read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{spec['onnx']}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    optimisation = builder.create_optimization_profile()
    for name, (low, opt, high) in spec["profiles"].items():
        optimisation.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimisation)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"{spec['onnx']}: TensorRT built no engine (see its log above)")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(bytes(engine))
    tmp.replace(target)


def _cudart() -> Any:
    """libcudart (nvidia-cuda-runtime-cu12's copy first), for device buffers of the runtime."""
    candidates = []
    for entry in sys.path:
        candidates += glob.glob(
            os.path.join(entry, "nvidia", "cuda_runtime", "lib", "libcudart.so*")
        )
    for name in [*candidates, "libcudart.so.12", "libcudart.so"]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise UnavailableError("libcudart.so.12 not found: pip install nvidia-cuda-runtime-cu12")


class PlanRunner:
    """Runs one serialized engine on numpy inputs (TensorRT 10 name-based I/O, default stream)."""

    H2D, D2H = 1, 2

    def __init__(self, plan: Path) -> None:
        """Deserialize ``plan`` on GPU 0."""
        trt: Any = importlib.import_module("tensorrt")
        self._cuda = _cudart()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"{plan}: TensorRT cannot load it (built by another version?)")
        self._context = self._engine.create_execution_context()
        self._trt = trt

    def _call(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"CUDA {what} failed with error {status}")

    def run(self, feeds: dict[str, NDArray[Any]], outputs: list[str]) -> dict[str, NDArray[Any]]:
        """One execution; the named outputs as numpy arrays."""
        buffers: list[ctypes.c_void_p] = []
        try:
            for name, array in feeds.items():
                array = np.ascontiguousarray(array)
                self._context.set_input_shape(name, array.shape)
                buffers.append(self._device(array.nbytes))
                self._copy(buffers[-1], array, self.H2D)
                self._context.set_tensor_address(name, buffers[-1].value)
            results = {}
            for name in outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                dtype = self._trt.nptype(self._engine.get_tensor_dtype(name))
                results[name] = np.empty(shape, dtype)
                buffers.append(self._device(results[name].nbytes))
                self._context.set_tensor_address(name, buffers[-1].value)
            if not self._context.execute_async_v3(0):
                raise RuntimeError("TensorRT execution failed")
            for name, buffer in zip(outputs, buffers[len(feeds) :], strict=True):
                self._copy(buffer, results[name], self.D2H)
            self._call(self._cuda.cudaDeviceSynchronize(), "synchronize")
            return results
        finally:
            for buffer in buffers:
                self._cuda.cudaFree(buffer)

    def _device(self, size: int) -> ctypes.c_void_p:
        pointer = ctypes.c_void_p()
        self._call(self._cuda.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(size)), "malloc")
        return pointer

    def _copy(self, device: ctypes.c_void_p, host: NDArray[Any], kind: int) -> None:
        host_pointer = ctypes.c_void_p(host.ctypes.data)
        src, dst = (host_pointer, device) if kind == self.H2D else (device, host_pointer)
        self._call(self._cuda.cudaMemcpy(dst, src, ctypes.c_size_t(host.nbytes), kind), "memcpy")


def sample_feeds(spec: dict[str, Any], batch: int, seed: int = 0) -> dict[str, NDArray[Any]]:
    """Deterministic inputs of one batch within the plan's profile (opt lengths)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, NDArray[Any]] = {}
    for tensor in spec["inputs"]:
        shape = (batch, *spec["profiles"][tensor.name][1][1:])
        if tensor.data_type == "TYPE_FP32":
            feeds[tensor.name] = rng.random(shape, dtype=np.float32)
        elif tensor.name in ("attention_mask",):
            feeds[tensor.name] = np.ones(shape, np.int64)
        elif tensor.name == "lengths":
            feeds[tensor.name] = np.full(shape, spec["profiles"]["tokens"][1][1], np.int64)
        else:
            feeds[tensor.name] = rng.integers(1, 90, shape, dtype=np.int64)
    return feeds


def _median_ms(call: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def compare(repository: Path, out: Path, models: list[str], rounds: int) -> list[dict[str, Any]]:
    """Each plan against its ONNX file on ONNX Runtime's CPU provider, batch 1 and 16."""
    import onnxruntime as ort

    rows = []
    for model in models:
        spec = plan_spec(repository, model)
        runner = PlanRunner(out / f"{model}{SUFFIX}" / spec["version"] / "model.plan")
        cpu = ort.InferenceSession(str(spec["onnx"]), providers=["CPUExecutionProvider"])
        names = [t.name for t in spec["outputs"]]
        for batch in (1, 16):
            feeds = sample_feeds(spec, batch)
            gpu_out = runner.run(feeds, names)
            cpu_out = dict(zip(names, cpu.run(names, feeds), strict=True))
            diff = max(float(np.abs(gpu_out[n] - cpu_out[n]).max()) for n in names)
            gpu_ms = _median_ms(functools.partial(runner.run, feeds, names), rounds)
            cpu_ms = _median_ms(functools.partial(cpu.run, names, feeds), rounds)
            rows.append(
                {
                    "model": model,
                    "batch": batch,
                    "max_abs_diff": diff,
                    "gpu_ms": gpu_ms,
                    "cpu_ms": cpu_ms,
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of compare's rows."""
    lines = [
        "| model | batch | max abs diff | TensorRT FP16 ms | ORT CPU ms | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['max_abs_diff']:.2e} | {r['gpu_ms']:.3f} "
            f"| {r['cpu_ms']:.3f} | {r['cpu_ms'] / r['gpu_ms']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build or compare the plans; skip with the reason where there is no GPU or TensorRT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "compare", "configs"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--models", default=",".join(VERSIONS))
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--require", action="store_true", help="exit 2 instead of 0 on a skip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(VERSIONS))
    if unknown:
        parser.error(f"unknown models {unknown}: known are {', '.join(VERSIONS)}")
    if args.command == "configs":  # the configs alone: no GPU needed
        for model in models:
            log.info("wrote %s", write_config(plan_spec(args.repository, model), model, args.out))
        return 0
    reason = gpu_reason()
    if reason is not None:
        sys.stderr.write(f"tensorrt_plans: skipped: {reason}\n")
        return 2 if args.require else 0
    if args.command == "build":
        for model in models:
            spec = plan_spec(args.repository, model)
            folder = write_config(spec, model, args.out)
            build_plan(spec, folder / spec["version"] / "model.plan")
            log.info("built %s/%s/model.plan", folder, spec["version"])
        return 0
    sys.stdout.write(table(compare(args.repository, args.out, models, args.rounds)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
