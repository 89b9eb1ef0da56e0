"""mlapi_tools.tensorrt_plans without a GPU: the configs it writes for the real ONNX files, the
optimisation profiles, and the clean skip (tool and device check script) where no GPU is."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlapi_backend.model_config import read_pbtxt
from mlapi_tools import tensorrt_plans as plans

ROOT = Path(__file__).resolve().parents[3]
REPOSITORY = ROOT / "model_repository"
no_gpu = pytest.mark.skipif(
    shutil.which("nvidia-smi") is not None, reason="this host has nvidia-smi: the skip is not taken"
)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trt")
    for model in plans.VERSIONS:
        if not (REPOSITORY / model / plans.VERSIONS[model] / "model.onnx").is_file():
            pytest.skip(f"{model} is not built: run `make models`")
        plans.write_config(plans.plan_spec(REPOSITORY, model), model, out)
    return out


def _dims(config: dict, section: str) -> dict[str, list[int]]:
    return {t["name"]: [int(d) for d in t["dims"]] for t in config[section]}


@pytest.mark.parametrize("model", sorted(plans.VERSIONS))
def test_plan_configs_match_the_served_onnx_configs(written: Path, model: str) -> None:
    plan = read_pbtxt(written / f"{model}_trt" / "config.pbtxt")
    served = read_pbtxt(REPOSITORY / model / "config.pbtxt")
    assert plan["name"] == f"{model}_trt" and plan["platform"] == "tensorrt_plan"
    assert plan["max_batch_size"] == served["max_batch_size"]
    assert plan["instance_group"][0]["kind"] == "KIND_GPU"
    assert plan["version_policy"] == {"specific": {"versions": [plans.VERSIONS[model]]}}
    assert (written / f"{model}_trt" / plans.VERSIONS[model]).is_dir()
    for section in ("input", "output"):
        types = {t["name"]: t["data_type"] for t in served[section]}
        assert {t["name"]: t["data_type"] for t in plan[section]} == types
        expected = _dims(served, section)
        if model == "digits_classifier" and section == "input":
            expected = {"pixels": [784]}  # version 3's 28x28, fixed in the plan
        assert _dims(plan, section) == expected


def test_profiles_span_batch_and_lengths_of_the_real_files(written: Path) -> None:
    encoder = plans.plan_spec(REPOSITORY, "text_embedder_encoder")
    assert encoder["profiles"]["input_ids"] == ((1, 1), (16, 32), (64, 256))
    digits = plans.plan_spec(REPOSITORY, "digits_classifier")
    assert digits["profiles"]["pixels"] == ((1, 784), (64, 784), (256, 784))
    decoder = plans.plan_spec(REPOSITORY, "text_decoder")
    assert decoder["profiles"]["state"] == ((1, 1, 256), (16, 1, 256), (64, 1, 256))


def test_a_dimension_without_a_range_is_refused() -> None:
    with pytest.raises(ValueError, match="no length range for dimension 'width'"):
        plans.profile(plans.Tensor("x", "TYPE_FP32", ("width",)), 8)


def test_sample_feeds_fit_the_profiles(written: Path) -> None:
    spec = plans.plan_spec(REPOSITORY, "text_prefill")
    feeds = plans.sample_feeds(spec, 4)
    assert feeds["tokens"].shape == (4, 64) and (feeds["lengths"] == 64).all()


@no_gpu
def test_build_skips_with_the_reason_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert plans.gpu_reason() == "no NVIDIA GPU: nvidia-smi is not installed"
    assert plans.main(["build", "--out", "unused"]) == 0
    assert "tensorrt_plans: skipped: no NVIDIA GPU" in capsys.readouterr().err
    assert plans.main(["compare", "--require"]) == 2
    assert not Path("unused").exists()


def test_unknown_model_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        plans.main(["build", "--models", "cats"])
    assert "unknown models ['cats']" in capsys.readouterr().err


@no_gpu
def test_device_check_script_skips_cleanly_without_a_gpu() -> None:
    done = subprocess.run(
        [str(ROOT / "tools" / "device_check_gpu.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": "/nonexistent"},
    )
    assert done.returncode == 0, done.stderr
    assert "device_check_gpu: skipped: no NVIDIA GPU" in done.stdout
