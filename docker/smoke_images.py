"""Run the built triton-cpu and gateway images with buildah and predict one digit through both.

Each image runs as `buildah run` of a working container (chroot isolation: the host's network,
so every port is a free one chosen here) with the image's own ENTRYPOINT, environment and user.
Prints what it checked and the prediction; exits non-zero on the first failure. Run by
docker/build-images.sh (`make images`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from mlapi_client import access
from mlapi_gateway.keys import new_key
from mlapi_tools.build.digits_data import load_split
from mlapi_tools.local.triton_process import Ports

BUILDAH = ["buildah", "--storage-driver", "vfs"]  # the store docker/build-images.sh builds into
READY_TIMEOUT_S = 600.0  # triton-cpu loads four models with Python stubs; a loaded 2-CPU host


def buildah(*args: str) -> str:
    return subprocess.run([*BUILDAH, *args], check=True, capture_output=True, text=True).stdout


def image_command(image: str) -> list[str]:
    config = json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]
    return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]


@contextlib.contextmanager
def container(image: str) -> Iterator[str]:
    name = buildah("from", "--pull-never", image).strip()
    try:
        yield name
    finally:
        buildah("rm", name)


def run_in(name: str, env: dict[str, str], command: list[str]) -> subprocess.CompletedProcess[str]:
    flags = [f"--env={k}={v}" for k, v in env.items()]
    return subprocess.run(
        [*BUILDAH, "run", "--isolation", "chroot", *flags, name, "--", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextlib.contextmanager
def started(name: str, env: dict[str, str], command: list[str], log: Path) -> Iterator[None]:
    """``command`` in container ``name`` in the background; SIGTERM to its group at the end."""
    flags = [f"--env={k}={v}" for k, v in env.items()]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*BUILDAH, "run", "--isolation", "chroot", *flags, name, "--", *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(url: str, headers: dict[str, str], what: str, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, headers=headers, timeout=5).status_code == 200:
                return time.monotonic() - start
        time.sleep(1)
    sys.exit(
        f"FAIL: {what} not ready after {READY_TIMEOUT_S:.0f} s; log:\n{log.read_text()[-3000:]}"
    )


def check(ok: bool, message: str) -> None:
    print(("ok    " if ok else "FAIL  ") + message, flush=True)
    if not ok:
        sys.exit(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True)
    args = parser.parse_args()
    triton_image = f"localhost/triton-mlapi/triton-cpu:{args.version}"
    gateway_image = f"localhost/triton-mlapi/gateway:{args.version}"
    ports, gateway_port = Ports.free(), Ports.free().http
    triton_key = secrets.token_urlsafe(32)
    api_key, record = new_key(["predict"], name="smoke")
    logs = Path(tempfile.mkdtemp(prefix="mlapi-smoke-"))
    triton_env = {
        "TRITON_HTTP_PORT": str(ports.http),
        "TRITON_GRPC_PORT": str(ports.grpc),
        "TRITON_METRICS_PORT": str(ports.metrics),
        "MLAPI_TRITON_KEY": triton_key,
    }
    gateway_env = {
        "GATEWAY_PORT": str(gateway_port),
        "MLAPI_GATEWAY_TRITON_HTTP_URL": f"127.0.0.1:{ports.http}",
        "MLAPI_GATEWAY_TRITON_GRPC_URL": f"127.0.0.1:{ports.grpc}",
        "MLAPI_TRITON_KEY": triton_key,
        "MLAPI_GATEWAY_KEYS_JSON": json.dumps({"keys": [record.to_dict()]}),
    }
    with container(triton_image) as triton, container(gateway_image) as gateway:
        for name in (triton, gateway):
            uid = run_in(name, {}, ["id", "-u"]).stdout.strip()
            check(uid == "10001", f"{name}: runs as uid {uid} (non-root)")
            tools = run_in(name, {}, ["sh", "-c", "command -v gcc cc pip pip3 apt-get-build-dep"])
            check(tools.stdout.strip() == "", f"{name}: no compiler or pip on PATH")
        shipped = run_in(triton, {}, ["python3", "-c", "import mlapi_tools"])
        check(shipped.returncode != 0, "triton-cpu: mlapi_tools (build code, launcher) not shipped")
        sidecar = run_in(gateway, {}, ["python", "-m", "mlapi_tools.local", "supervise", "--help"])
        check(sidecar.returncode == 0, "gateway: the supervisor sidecar command starts")
        build_code = run_in(gateway, {}, ["python", "-c", "import mlapi_tools.build"])
        check(build_code.returncode != 0, "gateway: mlapi_tools.build (model building) not shipped")
        no_key = run_in(triton, {}, image_command(triton_image))
        check(no_key.returncode == 64, "triton-cpu: refuses to start without an access key")

        triton_log, gateway_log = logs / "triton.log", logs / "gateway.log"
        with started(triton, triton_env, image_command(triton_image), triton_log):
            base = f"http://127.0.0.1:{ports.http}"
            key_headers = access.http_headers(triton_key)
            waited = wait_for(f"{base}/v2/models/digits/ready", key_headers, "triton", triton_log)
            check(True, f"triton-cpu: digits ready after {waited:.0f} s on {base}")
            denied = httpx.get(f"{base}/v2/models/digits", timeout=10).status_code
            check(denied != 200, f"triton-cpu: metadata without the key refused ({denied})")
            health = run_in(triton, triton_env, image_healthcheck(triton_image))
            check(health.returncode == 0, "triton-cpu: HEALTHCHECK command passes")
            with started(gateway, gateway_env, image_command(gateway_image), gateway_log):
                url = f"http://127.0.0.1:{gateway_port}"
                waited = wait_for(f"{url}/readyz", {}, "gateway", gateway_log)
                check(True, f"gateway: ready after {waited:.0f} s on {url}")
                health = run_in(gateway, gateway_env, image_healthcheck(gateway_image))
                check(health.returncode == 0, "gateway: HEALTHCHECK command passes")
                split = load_split()
                image, label = split.test_images[0], int(split.test_y[0])
                start = time.monotonic()
                reply = httpx.post(
                    f"{url}/v1/models/digits/predict",
                    json={"pixels": image.tolist()},
                    headers={"Authorization": f"Bearer {api_key}"},
                    timeout=30,
                )
                elapsed_ms = (time.monotonic() - start) * 1000
                check(
                    reply.status_code == 200,
                    f"predict: HTTP {reply.status_code} {reply.text[:300]}",
                )
                body = reply.json()
                best = body["predictions"][0]
                check(best["label"] == str(label), f"predict: digit {label} -> {best['label']}")
                print(
                    f"smoke predict via gateway -> triton-cpu: true {label}, predicted "
                    f"{best['label']} (score {best['score']:.4f}, digits version "
                    f"{body['model_version']}), {elapsed_ms:.0f} ms",
                    flush=True,
                )
    return 0


def image_healthcheck(image: str) -> list[str]:
    config = json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]
    test = config["Healthcheck"]["Test"]
    if test[0] != "CMD":
        raise SystemExit(f"{image}: HEALTHCHECK is not exec-form CMD: {test}")
    return list(test[1:])


if __name__ == "__main__":
    sys.exit(main())
