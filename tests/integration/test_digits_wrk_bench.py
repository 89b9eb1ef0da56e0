"""make bench-digits' script against its own real tritonserver: it runs and counts what it drove.

No timing is asserted (the machine is shared): every window must have served requests with no
error reply, and the server's CPU over a window must be positive and counted per request.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "wrk" / "digits_bench.py"

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@pytest.mark.timeout(600)
def test_a_short_run_reports_both_targets_at_each_connection_count(tmp_path):
    output = tmp_path / "digits_wrk.json"
    command = [sys.executable, str(SCRIPT), "--connections", "1,4", "--duration-s", "1"]
    command += ["--rounds", "1", "--pool", "4", "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())
    windows = report["windows"]
    assert sorted((w["connections"], w["target"]) for w in windows) == [
        (1, "digits"),
        (1, "digits_classifier"),
        (4, "digits"),
        (4, "digits_classifier"),
    ]
    for window in windows:
        assert window["requests"] > 0 and window["non_2xx"] == 0, window
        assert window["socket_errors"] == 0, window
        assert window["server_cpu_ms_per_request"] > 0, window
    assert report["settings"]["version"] == 3 and report["revision"]
    assert "| 4 | digits |" in report["summary"]


def test_the_binary_request_body_is_what_tritonclient_sends():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import digits_bench
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from tritonclient.http import InferInput
    from tritonclient.http._utils import _get_inference_request

    image = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
    body, header_length = digits_bench.binary_body(
        [("image", image, "UINT8")], {"model_version": 3}
    )
    header = json.loads(body[:header_length])
    assert header["inputs"][0] == {
        "name": "image",
        "shape": [1, 8, 8],
        "datatype": "UINT8",
        "parameters": {"binary_data_size": 64},
    }
    assert header["parameters"] == {"binary_data_output": True, "model_version": 3}
    assert body[header_length:] == image.tobytes()
    tensor = InferInput("image", [1, 8, 8], "UINT8")
    tensor.set_data_from_numpy(image, binary_data=True)
    expected, expected_length = _get_inference_request(
        [tensor], "", None, 0, False, False, 0, None, {"model_version": 3}
    )
    assert json.loads(expected[:expected_length]) == header
    assert body[header_length:] == expected[expected_length:]
