"""`python -m mlapi_backend.local {serve,backends}`: run the local stack in the foreground.

``serve`` starts tritonserver on TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT
(8000/8001/8002 by default), then the API gateway on GATEWAY_PORT (8080) in front of it, and
stops both (the gateway first), with every Python stub, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from mlapi_backend.local.backend_dir import assemble
from mlapi_backend.local.triton_process import (
    LOOPBACK,
    Ports,
    TritonServer,
    terminate_with_parent,
)
from mlapi_client import access

log = logging.getLogger("mlapi.serve")


def start_gateway(server: TritonServer) -> subprocess.Popen[bytes] | None:
    """The gateway (``python -m mlapi_gateway``) on GATEWAY_PORT, pointed at ``server``."""
    if (
        importlib.util.find_spec("mlapi_gateway") is None
        or importlib.util.find_spec("fastapi") is None
    ):
        log.warning(
            "the gateway is not installed (pip install -e '.[gateway]'): serving Triton only"
        )
        return None
    port = os.environ.get("GATEWAY_PORT", "8080")
    env = {
        **os.environ,
        "MLAPI_GATEWAY_TRITON_GRPC_URL": server.grpc_url,
        "MLAPI_GATEWAY_TRITON_HTTP_URL": server.http_url,
        access.KEY_FILE_ENV: str(access.default_key_file()),
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "mlapi_gateway", "--port", port],
        env=env,
        preexec_fn=terminate_with_parent,
    )
    log.info(
        "gateway: http://127.0.0.1:%s (docs at /docs); make a key with "
        "`.venv/bin/mlapi keys create --scope predict`",
        port,
    )
    return gateway


def stop_gateway(gateway: subprocess.Popen[bytes] | None) -> None:
    if gateway is None:
        return
    if gateway.poll() is None:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
    log.info("gateway stopped (exit status %s)", gateway.returncode)


def serve(repositories: list[Path], backend_dir: Path, with_gateway: bool = True) -> int:
    server = TritonServer(
        repositories,
        backend_dir,
        ports=Ports.from_env(),
        exit_timeout_s=10,
        die_with_parent=True,
        access_key=access.ensure_key(),
        bind_address=os.environ.get("TRITON_BIND_ADDRESS", LOOPBACK),
    )
    gateway: subprocess.Popen[bytes] | None = None
    stopping = False

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("received %s: stopping tritonserver", signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server.start()
    failed = False
    try:
        if not server.wait_ready(models=("digits",), cancelled=lambda: stopping):
            raise _Interrupted
        log.info(
            "ready: HTTP http://%s  gRPC %s  metrics %s  (Ctrl-C to stop); every API but health "
            "needs the header %s with the key in %s",
            server.http_url,
            server.grpc_url,
            server.metrics_url,
            access.KEY_HEADER,
            access.default_key_file(),
        )
        if with_gateway and not stopping:
            gateway = start_gateway(server)
        while not stopping and server.process is not None and server.process.poll() is None:
            if gateway is not None and gateway.poll() is not None:
                log.error("the gateway exited (status %s): stopping", gateway.returncode)
                failed = True
                break
            time.sleep(0.2)
        if not stopping and not failed:
            log.error("tritonserver exited on its own")
            failed = True
    except _Interrupted:
        pass
    except (RuntimeError, TimeoutError) as exc:
        log.error("%s", exc)
        failed = True
    finally:  # whatever happened above, nothing is left running
        stop_gateway(gateway)
        code = server.stop()
        log.info("tritonserver stopped (exit status %s)", code)
    return 1 if failed else 0


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while waiting for the server to become ready."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve", "backends"])
    parser.add_argument(
        "--repository",
        type=Path,
        action="append",
        default=None,
        help="model repository (repeatable; default: model_repository)",
    )
    parser.add_argument("--backend-dir", type=Path, default=Path("build/backends"))
    parser.add_argument(
        "--no-gateway", action="store_true", help="serve: run Triton without the API gateway"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    if args.command == "backends":
        print(assemble(args.backend_dir))
        return 0
    repositories = args.repository or [Path("model_repository")]
    return serve(repositories, args.backend_dir, with_gateway=not args.no_gateway)


if __name__ == "__main__":
    sys.exit(main())
