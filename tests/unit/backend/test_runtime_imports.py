"""mlapi_backend and the model.py files are runtime code: importing them pulls in no build,
test, client or gateway tooling (an image that installs mlapi_backend carries none of it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MODEL_FILES = sorted(
    [
        *ROOT.glob("model_repository/*/1/model.py"),
        ROOT / "python_backend/backends/onnxruntime/model.py",
    ]
)
FORBIDDEN = (
    "sklearn",
    "skl2onnx",
    "onnx",
    "torch",
    "mlapi_tools",
    "mlapi_client",
    "mlapi_gateway",
    "mlapi_bench",
    "fastapi",
    "starlette",
    "tritonclient",
    "pytest",
)

# Runs in a fresh interpreter: every mlapi_backend module first (with no Triton stub module
# available, so none of them may import it), then every model.py against a stand-in
# triton_python_backend_utils, then onnxruntime (the stand-in backend imports it when loading).
PROBE = """
import importlib, importlib.util, json, pkgutil, sys, types
import mlapi_backend
modules = sorted(m.name for m in pkgutil.walk_packages(mlapi_backend.__path__, "mlapi_backend."))
for name in modules:
    importlib.import_module(name)
stub_seen = "triton_python_backend_utils" in sys.modules
sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
for index, path in enumerate(json.loads(sys.argv[1])):
    spec = importlib.util.spec_from_file_location(f"model_{index}", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
import onnxruntime
print(json.dumps({"modules": modules, "stub_seen": stub_seen, "loaded": sorted(sys.modules)}))
"""


def test_runtime_code_imports_no_build_or_test_tooling():
    done = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, json.dumps([str(p) for p in MODEL_FILES])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",  # nothing of the checkout on sys.path but what is installed
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(MODEL_FILES) >= 3
    assert {"mlapi_backend.triton_responses", "mlapi_backend.digits_pipeline"} <= set(
        report["modules"]
    )
    assert not report["stub_seen"], "mlapi_backend imports triton_python_backend_utils"
    pulled = sorted(name for name in report["loaded"] if name.split(".")[0] in FORBIDDEN)
    assert pulled == [], f"runtime imports pulled in {pulled}"
