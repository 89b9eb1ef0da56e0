"""perf_analyzer support: its ``--input-data`` JSON files and the sweep commands it runs.

perf_analyzer is the raw baseline: NVIDIA's C++ load generator over tritonclient's C++ library,
no Python and not the project's client (which the mlapi_bench harness measures). It ships in
the tritonclient wheel (perf_analyzer_runs runs it). The input files hold real held-out digits
(not perf_analyzer's random data, which the digits model would flag low-confidence and a cache
could not reuse) and are committed under benchmarks/perf_analyzer/;
`python -m mlapi_bench.perf_analyzer` rewrites them.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from mlapi_bench.payloads import IDENTITY_MODEL, payloads
from mlapi_bench.stack import ROOT
from mlapi_client import access

INPUT_DIR = ROOT / "benchmarks" / "perf_analyzer"
ENTRIES = 8
# The models with committed input files (the streaming ones below run over gRPC only).
MODELS = ("digits", "digits_classifier", IDENTITY_MODEL)


# The streaming text generator (decoupled, max_batch_size 0: full shapes, no batch axis).
STREAMING_MODELS = ("text_generator",)
PROMPTS = (
    "The server",
    "A model repository",
    "To load a model",
    "The client sends",
    "Each request",
)
MAX_TOKENS = 32


def input_data(model: str) -> dict[str, Any]:
    """perf_analyzer's ``{"data": [...]}``: one entry per request, batch axis left out."""
    if model in STREAMING_MODELS:
        return {
            "data": [
                {
                    "text_input": {"content": [prompt], "shape": [1]},
                    "max_tokens": {"content": [MAX_TOKENS], "shape": [1]},
                }
                for prompt in PROMPTS
            ]
        }
    entries = []
    for payload in payloads(model, count=ENTRIES):
        entry = {}
        for name, array in payload.items():
            sample = array[0]
            entry[name] = {"content": sample.reshape(-1).tolist(), "shape": list(sample.shape)}
        entries.append(entry)
    return {"data": entries}


def write_inputs(directory: Path = INPUT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in (*MODELS, *STREAMING_MODELS):
        path = directory / f"{model}.json"
        path.write_text(json.dumps(input_data(model), separators=(",", ":")) + "\n")
        written.append(path)
    return written


def key_header(protocol: str, key: str | None = None) -> list[str]:
    """perf_analyzer's ``-H name:value`` presenting Triton's access key (none without a key)."""
    key = key if key is not None else access.read_key()
    headers = access.grpc_headers(key) if protocol == "grpc" else access.http_headers(key)
    return [arg for name, value in headers.items() for arg in ("-H", f"{name}:{value}")]


def main() -> int:
    for path in write_inputs():
        print(path.relative_to(ROOT))
    from mlapi_bench.perf_analyzer_runs import command

    example = command("digits", "grpc", "127.0.0.1:8001", 1, 3000, Path("pa_digits_grpc.csv"))
    key = access.read_key()
    shown = shlex.join(example).replace(key, "<key>") if key else shlex.join(example)
    print("e.g.", shown, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
