#!/usr/bin/env bash
# GPU host check of the TensorRT plans: installs the TensorRT wheel, builds an FP16 plan of
# every ONNX model (mlapi_tools.tensorrt_plans), compares each plan's outputs and speed with
# the ONNX model on ONNX Runtime's CPU provider (table), and, where this host's tritonserver
# has the tensorrt backend (the NGC image), loads the plans into it and checks one answer per
# model against the CPU output. Without an NVIDIA GPU it prints why and exits 0.
#
#   tools/device_check_gpu.sh            # from the repository root, after `make models`
#
# Environment: PYTHON (default .venv/bin/python), TENSORRT_WHEEL (default tensorrt-cu12==10.5.0,
# the TensorRT of tritonserver 24.10), PIP_FIND_LINKS for hosts without PyPI, TOLERANCE (largest
# absolute difference accepted, default 0.05: FP16 against FP32), TRITONSERVER (a binary with
# the tensorrt backend; default /opt/tritonserver/bin/tritonserver when it exists).
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT_DIR:-build/tensorrt}
TOLERANCE=${TOLERANCE:-0.05}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "device_check_gpu: skipped: no NVIDIA GPU on this host (nvidia-smi lists none)"
  exit 0
fi
nvidia-smi -L
if [ ! -x "$PYTHON" ]; then
  echo "device_check_gpu: $PYTHON is missing: run \`make install\` (or set PYTHON)" >&2
  exit 1
fi
# The pins of pyproject.toml's tensorrt extra (TENSORRT_WHEEL overrides the TensorRT one).
"$PYTHON" -m pip install --quiet "${TENSORRT_WHEEL:-tensorrt-cu12==10.5.0}" "nvidia-cuda-runtime-cu12>=12.0,<13"
"$PYTHON" -c 'import tensorrt; print("tensorrt", tensorrt.__version__)'

"$PYTHON" -m mlapi_tools.tensorrt_plans build --require --out "$OUT"
"$PYTHON" -m mlapi_tools.tensorrt_plans compare --require --out "$OUT" | tee "$OUT/compare.md"
# Every row's max abs diff (third column) within the tolerance.
awk -F'|' -v tol="$TOLERANCE" 'NR > 2 && ($4 + 0) > tol { bad = 1; print "over tolerance:" $0 }
  END { exit bad }' "$OUT/compare.md"

SERVER=${TRITONSERVER:-/opt/tritonserver/bin/tritonserver}
if [ ! -x "$SERVER" ] || [ ! -d "$(dirname "$(dirname "$SERVER")")/backends/tensorrt" ]; then
  echo "device_check_gpu: tritonserver load skipped: no tritonserver with the tensorrt backend" \
    "(set TRITONSERVER; the NGC image nvcr.io/nvidia/tritonserver:24.10-py3 has one)"
  exit 0
fi
"$PYTHON" - "$SERVER" "$OUT" "$TOLERANCE" <<'EOF'
import subprocess, sys, time
import numpy as np
import tritonclient.http as httpclient
from mlapi_tools.local.triton_process import Ports
import onnxruntime as ort
from mlapi_tools import tensorrt_plans as plans
from pathlib import Path

server, out, tolerance = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
ports = Ports.free()
process = subprocess.Popen([server, f"--model-repository={out.resolve()}",
    f"--http-port={ports.http}", f"--grpc-port={ports.grpc}", f"--metrics-port={ports.metrics}"])
client = httpclient.InferenceServerClient(f"127.0.0.1:{ports.http}")
try:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                break
        except Exception:
            pass
        time.sleep(1)
    for model in plans.VERSIONS:
        spec = plans.plan_spec(Path("model_repository"), model)
        feeds = plans.sample_feeds(spec, 4)
        inputs = []
        for name, array in feeds.items():
            tensor = httpclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        served = client.infer(f"{model}{plans.SUFFIX}", inputs)
        names = [t.name for t in spec["outputs"]]
        cpu = dict(zip(names, ort.InferenceSession(str(spec["onnx"])).run(names, feeds)))
        diff = max(float(np.abs(served.as_numpy(n) - cpu[n]).max()) for n in names)
        print(f"served {model}{plans.SUFFIX}: max abs diff vs CPU {diff:.2e}")
        assert diff <= tolerance, f"{model}: {diff} over {tolerance}"
finally:
    process.terminate()
    process.wait(60)
EOF
echo "device_check_gpu: ok"
