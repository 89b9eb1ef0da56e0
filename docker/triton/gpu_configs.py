"""Rewrite a model repository's ONNX models for the GPU (the `triton` image's build stage).

Every model with ``backend: "onnxruntime"`` gets ``kind: KIND_GPU`` instance groups instead of
``KIND_CPU`` (same count, on every visible GPU); with ``--tensorrt=on`` also ONNX Runtime's
TensorRT execution provider as its GPU accelerator. Python models stay on the CPU. The source
configs keep ``KIND_CPU`` because the same files run on CPU-only hosts (triton-cpu, `make
serve`). Fails when an ONNX model has no CPU instance group to rewrite, so a config change
cannot silently leave the GPU image on the CPU.

Usage: ``python3 gpu_configs.py [--tensorrt=on|off] REPOSITORY`` (standard library only: it
runs on the NGC image's own python3).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ONNX_BACKEND = re.compile(r'^\s*backend:\s*"onnxruntime"\s*$', re.M)
INSTANCE_GROUP = re.compile(r"instance_group\s*\[(?P<body>.*?)\]", re.S)
CPU_KIND = re.compile(r"\bkind:\s*KIND_CPU\b")
TENSORRT = """
# Added by docker/triton/gpu_configs.py --tensorrt=on: ONNX Runtime's TensorRT execution
# provider builds an engine per input shape at first use (slow first requests), in FP16 with
# up to 1 GiB of builder workspace (onnxruntime_backend's accelerator parameters).
optimization { execution_accelerators {
  gpu_execution_accelerator : [ {
    name : "tensorrt"
    parameters { key: "precision_mode" value: "FP16" }
    parameters { key: "max_workspace_size_bytes" value: "1073741824" }
  } ]
} }
"""


class ConfigError(ValueError):
    """A config this script cannot rewrite safely."""


def gpu_config(text: str, name: str, tensorrt: bool = False) -> str | None:
    """The GPU version of one config.pbtxt, or None when it is not an ONNX model."""
    if not ONNX_BACKEND.search(text):
        return None
    groups = list(INSTANCE_GROUP.finditer(text))
    if len(groups) != 1:
        raise ConfigError(f"{name}: expected one instance_group, found {len(groups)}")
    body = groups[0]["body"]
    if not CPU_KIND.search(body) or "KIND_GPU" in body:
        raise ConfigError(f"{name}: instance_group has no KIND_CPU to rewrite: [{body.strip()}]")
    start, end = groups[0].span("body")
    out = text[:start] + CPU_KIND.sub("kind: KIND_GPU", body) + text[end:]
    if tensorrt:
        if re.search(r"^\s*optimization\s*\{", text, re.M):
            raise ConfigError(f"{name}: has an optimization block already")
        out = out.rstrip("\n") + "\n" + TENSORRT
    return out


def rewrite(repository: Path, tensorrt: bool = False) -> list[str]:
    """Rewrite every ONNX model of ``repository`` in place; the names of those rewritten."""
    done = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        name = config.parent.name
        rewritten = gpu_config(config.read_text(encoding="utf-8"), name, tensorrt)
        if rewritten is not None:
            config.write_text(rewritten, encoding="utf-8")
            done.append(name)
    if not done:
        raise ConfigError(f"{repository}: no ONNX model to put on the GPU")
    return done


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensorrt", choices=("on", "off"), default="off")
    parser.add_argument("repository", type=Path)
    args = parser.parse_args(argv)
    try:
        done = rewrite(args.repository, tensorrt=args.tensorrt == "on")
    except ConfigError as exc:
        print(f"gpu_configs: {exc}", file=sys.stderr)
        return 1
    print(f"gpu_configs: KIND_GPU for {', '.join(done)} (tensorrt {args.tensorrt})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
