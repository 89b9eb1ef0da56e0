"""The public ``digits`` pipeline against its served classifier version, called directly.

Starts its own tritonserver (free ports, the real model repository), then drives both targets
with wrk (one thread, HTTP on loopback, KServe binary tensors as tritonclient sends them) at each
connection count, interleaved (pipeline, classifier, pipeline, classifier, ...), so both see the
same machine load. Each window reports req/s, p50/p99 and the server's CPU per request: user +
system time of tritonserver and every process under it (the Python stubs), from /proc.

    .venv/bin/python benchmarks/wrk/digits_bench.py --version 3 --connections 1,16,64

The digits payloads are held-out 8x8 digits blown up to ``--side`` pixels; the classifier's are
the same images as that version's own input (what the pipeline would send it). Writes a JSON
file with the git revision and settings, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "benchmarks" / "wrk" / "digits.lua"
TICKS_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Window:
    target: str
    connections: int
    round: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_request: float
    non_2xx: int
    socket_errors: int


def process_tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of ``root`` and all its live descendants (from /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / TICKS_S
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0.0) for pid in tree)


def binary_body(inputs: list[tuple[str, np.ndarray, str]], parameters: dict) -> tuple[bytes, int]:
    """A KServe v2 binary-tensor request body (binary outputs) and its JSON header's length."""
    header = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": array.nbytes},
            }
            for name, array, datatype in inputs
        ],
    }
    # Outputs come back binary too, as tritonclient asks when no outputs are named.
    header["parameters"] = {"binary_data_output": True, **parameters}
    head = json.dumps(header).encode()
    return head + b"".join(np.ascontiguousarray(a).tobytes() for _, a, _ in inputs), len(head)


def write_manifest(directory: Path, name: str, path: str, bodies: list[tuple[bytes, int]]) -> Path:
    lines = []
    for i, (body, header_length) in enumerate(bodies):
        file = directory / f"{name}-{i}.bin"
        file.write_bytes(body)
        lines.append(f"{path} {header_length} {file}")
    manifest = directory / f"{name}.manifest"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def payloads(version: int, side: int, count: int, directory: Path) -> dict[str, Path]:
    """Manifests for ``digits`` (pinned to ``version``) and ``digits_classifier`` ``version``."""
    from mlapi_backend.classifier_inputs import prepare, read_profiles
    from mlapi_bench.payloads import upscale
    from mlapi_tools.build.digits_data import load_split

    images = load_split().test_images[:count]
    classifier_dir = ROOT / "model_repository" / "digits_classifier"
    kind = read_profiles(classifier_dir, [version], 0.5)[version].input_kind
    digits, classifier = [], []
    for image in images:
        big = upscale(image, side)[None]
        digits.append(binary_body([("image", big, "UINT8")], {"model_version": version}))
        pixels = prepare(kind, big).pixels.astype(np.float32)
        classifier.append(binary_body([("pixels", pixels, "FP32")], {}))
    return {
        "digits": write_manifest(directory, "digits", "/v2/models/digits/infer", digits),
        "digits_classifier": write_manifest(
            directory,
            "classifier",
            f"/v2/models/digits_classifier/versions/{version}/infer",
            classifier,
        ),
    }


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, manifest: Path, connections: int, duration_s: int, key: str) -> dict:
    from mlapi_client import access

    command = [
        shutil.which("wrk") or "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(LUA),
        f"http://{url}",
        "--",
        str(manifest),
        access.KEY_HEADER,
        key,
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=duration_s + 60
    ).stdout

    def latency(pct: str) -> float:
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        return float(match.group(1)) * _UNITS_MS[match.group(2)] if match else float("nan")

    total = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if total is None or rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {
        "requests": int(total.group(1)),
        "requests_per_s": float(rate.group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(x) for x in sockets.groups()) if sockets else 0,
    }


def measure(server, manifests: dict[str, Path], args: argparse.Namespace, key: str) -> list[Window]:
    windows = []
    for connections in args.connections:
        for manifest in manifests.values():  # warm-up, not reported
            run_wrk(server.http_url, manifest, connections, 2, key)
        for round_ in range(args.rounds):
            for target, manifest in manifests.items():
                before = process_tree_cpu_s(server.pid)
                result = run_wrk(server.http_url, manifest, connections, args.duration_s, key)
                cpu_s = process_tree_cpu_s(server.pid) - before
                per_request = 1e3 * cpu_s / max(1, result["requests"])
                windows.append(
                    Window(
                        target,
                        connections,
                        round_,
                        server_cpu_ms_per_request=round(per_request, 4),
                        **result,
                    )
                )
                print(
                    f"c{connections:<3} {target:<18} {result['requests_per_s']:8.0f} req/s  "
                    f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                    f"cpu {per_request:.3f} ms/req  non-2xx {result['non_2xx']}",
                    flush=True,
                )
    return windows


def summary(windows: list[Window]) -> str:
    lines = [
        "| connections | target | req/s | p50 ms | p99 ms | server CPU ms/req | ratio digits/classifier |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key: dict[tuple[int, str], list[Window]] = {}
    for w in windows:
        by_key.setdefault((w.connections, w.target), []).append(w)
    for (connections, target), group in by_key.items():
        rate = statistics.median(w.requests_per_s for w in group)
        other = by_key.get((connections, "digits_classifier"), group)
        ratio = rate / statistics.median(w.requests_per_s for w in other)
        lines.append(
            f"| {connections} | {target} | {rate:.0f} | "
            f"{statistics.median(w.p50_ms for w in group):.2f} | "
            f"{statistics.median(w.p99_ms for w in group):.2f} | "
            f"{statistics.median(w.server_cpu_ms_per_request for w in group):.3f} | "
            f"{ratio:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, default=3)
    parser.add_argument("--side", type=int, default=64, help="digits image side (multiple of 8)")
    parser.add_argument("--pool", type=int, default=32, help="distinct payloads cycled")
    parser.add_argument(
        "--connections", type=lambda s: [int(c) for c in s.split(",")], default=[1, 16, 64]
    )
    parser.add_argument("--duration-s", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "bench" / "digits_wrk.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (`make system-deps` installs Debian's wrk)", file=sys.stderr)
        return 2
    from mlapi_client import access
    from mlapi_tools.local.triton_process import Ports, TritonServer

    key = access.ensure_key()
    server = TritonServer(
        [ROOT / "model_repository"],
        ROOT / "build" / "bench-backends",
        ports=Ports.free(),
        exit_timeout_s=5,
        access_key=key,
    )
    with tempfile.TemporaryDirectory(prefix="digits-wrk-") as tmp:
        manifests = payloads(args.version, args.side, args.pool, Path(tmp))
        with open(Path(tmp) / "tritonserver.log", "wb") as log_file:
            server.start(log_file)
            try:
                server.wait_ready(timeout_s=180)
                started = time.time()
                load_start = os.getloadavg()
                windows = measure(server, manifests, args, key)
            finally:
                server.stop()
    table = summary(windows)
    print(table)
    print(f"load average (1/5/15 min) at start {load_start}, at end {os.getloadavg()}")
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "revision": revision,
                "started": started,
                "cpus": os.cpu_count(),
                "load_average": {"start": load_start, "end": os.getloadavg()},
                "settings": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                },
                "windows": [asdict(w) for w in windows],
                "summary": table,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
