"""docker/triton/gpu_configs.py, the `triton` image's build step that puts the ONNX models on
the GPU, run on copies of the real model repository's configs and parsed back with Triton's
own ModelConfig message."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mlapi_backend.model_config import read_pbtxt

from .images_dockerfile import parse

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "triton" / "gpu_configs.py"
REPOSITORY = ROOT / "model_repository"
ONNX_MODELS = {"digits_classifier", "text_decoder", "text_embedder_encoder", "text_prefill"}
PYTHON_MODELS = {"digits", "text_generator", "text_embedder_tokenizer"}
# Ensembles run no instances of their own: the script leaves them as they are.
ENSEMBLES = {"text_embedder"}


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_configs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    for config in REPOSITORY.glob("*/config.pbtxt"):
        (copy / config.parent.name).mkdir(parents=True)
        shutil.copy(config, copy / config.parent.name / "config.pbtxt")
    assert {p.name for p in copy.iterdir()} == ONNX_MODELS | PYTHON_MODELS | ENSEMBLES
    return copy


def _config(repository: Path, name: str) -> dict[str, Any]:
    return read_pbtxt(repository / name / "config.pbtxt")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_onnx_models_go_to_the_gpu_and_python_models_stay(repository: Path) -> None:
    before = {m: _config(repository, m) for m in ONNX_MODELS | PYTHON_MODELS}
    python_text = {
        m: (repository / m / "config.pbtxt").read_text() for m in PYTHON_MODELS | ENSEMBLES
    }
    done = _run(str(repository))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "gpu_configs: KIND_GPU for digits_classifier, text_decoder, text_embedder_encoder,"
        " text_prefill"
        " (tensorrt off)"
    )
    for model in ONNX_MODELS:
        after = _config(repository, model)
        assert before[model]["instance_group"][0]["kind"] == "KIND_CPU"
        (group,) = after["instance_group"]
        assert group["kind"] == "KIND_GPU"
        assert group["count"] == before[model]["instance_group"][0]["count"]
        # Nothing else changed: the rest of the config is what runs on the CPU.
        rest = {k: v for k, v in after.items() if k != "instance_group"}
        assert rest == {k: v for k, v in before[model].items() if k != "instance_group"}
        assert "optimization" not in after
    for model in PYTHON_MODELS | ENSEMBLES:
        assert (repository / model / "config.pbtxt").read_text() == python_text[model]


def test_tensorrt_is_an_opt_in_gpu_accelerator(repository: Path) -> None:
    done = _run("--tensorrt=on", str(repository))
    assert done.returncode == 0, done.stderr
    for model in ONNX_MODELS:
        after = _config(repository, model)
        accelerators = after["optimization"]["execution_accelerators"]
        assert accelerators["gpu_execution_accelerator"] == [
            {
                "name": "tensorrt",
                "parameters": {
                    "precision_mode": "FP16",
                    "max_workspace_size_bytes": "1073741824",
                },
            }
        ]
        assert after["instance_group"][0]["kind"] == "KIND_GPU"
    for model in PYTHON_MODELS:
        assert "optimization" not in _config(repository, model)


def test_a_config_it_cannot_rewrite_fails_the_build(repository: Path) -> None:
    again = _run(str(repository))
    assert again.returncode == 0
    twice = _run(str(repository))  # already KIND_GPU: nothing left to rewrite
    assert twice.returncode == 1
    assert "digits_classifier: instance_group has no KIND_CPU" in twice.stderr
    script = _script()
    with pytest.raises(script.ConfigError, match="expected one instance_group, found 0"):
        script.gpu_config('backend: "onnxruntime"\n', "bare")
    assert script.gpu_config('backend: "python"\ninstance_group [{kind: KIND_CPU}]\n', "p") is None
    empty = repository.parent / "empty"
    empty.mkdir()
    assert "no ONNX model" in _run(str(empty)).stderr


def test_the_triton_image_runs_it_in_its_build_stage_with_tensorrt_off() -> None:
    docker = parse(ROOT / "docker" / "triton" / "Dockerfile")
    build = docker.stages[0]
    runs = " ".join(run.args for run in build.all("RUN"))
    assert 'python3 /tmp/gpu_configs.py --tensorrt="${TENSORRT}" /models' in runs
    assert any(c.args.split()[0] == "docker/triton/gpu_configs.py" for c in build.all("COPY"))
    assert any(a.args == "TENSORRT=off" for a in build.all("ARG"))
    # The CPU image keeps the repository's KIND_CPU configs.
    cpu = (ROOT / "docker" / "triton-cpu" / "Dockerfile").read_text()
    assert "gpu_configs" not in cpu
