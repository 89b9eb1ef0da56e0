"""``python -m mlapi_gateway``: serve the gateway with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile

import uvicorn

from mlapi_gateway.access import logging_config


def main(argv: list[str] | None = None) -> int:
    """Serve the gateway with uvicorn; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", 8080)))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GATEWAY_WORKERS", 1)))
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    multiproc_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers: /metrics adds up every worker's samples from this directory.
        multiproc_dir = tempfile.mkdtemp(prefix="mlapi-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal; with these
    # handlers that re-raise is a no-op, so a requested stop exits with status 0.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    try:
        uvicorn.run(
            "mlapi_gateway.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="mlapi_gateway.server:HttpProtocol",  # httptools, one write per answer
            log_level=args.log_level,
            access_log=False,  # the gateway writes its own (mlapi_gateway.access)
            log_config=logging_config(args.log_level),
            timeout_graceful_shutdown=10,
        )
    finally:
        if multiproc_dir:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
