"""`python -m mlapi_backend.local {serve,backends}`: run the local stack in the foreground.

``serve`` starts tritonserver on TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT
(8000/8001/8002 by default) and stops it, with every Python stub, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from mlapi_backend.local.backend_dir import assemble
from mlapi_backend.local.triton_process import Ports, TritonServer

log = logging.getLogger("mlapi.serve")


def serve(repositories: list[Path], backend_dir: Path) -> int:
    server = TritonServer(repositories, backend_dir, ports=Ports.from_env(), exit_timeout_s=10)
    stopping = False

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("received %s: stopping tritonserver", signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server.start()
    try:
        server.wait_ready(models=("digits",))
        log.info(
            "ready: HTTP http://%s  gRPC %s  metrics %s  (Ctrl-C to stop)",
            server.http_url,
            server.grpc_url,
            server.metrics_url,
        )
        while not stopping and server.process is not None and server.process.poll() is None:
            time.sleep(0.2)
    except (RuntimeError, TimeoutError) as exc:
        log.error("%s", exc)
        stopping = True
    code = server.stop()
    log.info("tritonserver stopped (exit status %s)", code)
    return 0 if stopping else 1


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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    if args.command == "backends":
        print(assemble(args.backend_dir))
        return 0
    return serve(args.repository or [Path("model_repository")], args.backend_dir)


if __name__ == "__main__":
    sys.exit(main())
