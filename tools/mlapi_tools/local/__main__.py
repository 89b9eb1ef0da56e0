"""`python -m mlapi_tools.local {serve,supervise,backends}`: run the local stack in the foreground.

``serve`` starts tritonserver on TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT
(8000/8001/8002 by default), then the API gateway on GATEWAY_PORT (8080) in front of it and the
supervisor beside it, and stops all (the gateway first), with every Python stub, on Ctrl-C or
SIGTERM. A model version that fails to load is logged and left out; the rest serve. A
tritonserver that dies is restarted on the same ports with the same key (``--max-restarts``
within 10 minutes, then serve exits 1). ``supervise`` runs the supervisor alone (the sidecar
form): it reloads models whose Python stub died.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from mlapi_client import Client, access
from mlapi_tools.local.backend_dir import assemble
from mlapi_tools.local.healing import ReloadLimiter
from mlapi_tools.local.startup import recover_failed_loads
from mlapi_tools.local.supervisor import Supervisor, SupervisorThread
from mlapi_tools.local.supervisor_settings import SupervisorSettings
from mlapi_tools.local.triton_process import (
    LOOPBACK,
    SERVE_EXIT_TIMEOUT_S,
    Ports,
    TritonServer,
    terminate_with_parent,
)

log = logging.getLogger("mlapi.serve")


def gateway_environment(**values: object) -> dict[str, str]:
    """Environment variables that give the gateway these settings (``GatewaySettings`` fields).

    The names come from the settings object itself (its env prefix and field names), and the
    values are validated by it first, so a renamed or mistyped setting fails here, in the
    launcher, instead of being silently ignored by the gateway.
    """
    from mlapi_gateway.settings import GatewaySettings

    unknown = sorted(set(values) - set(GatewaySettings.model_fields))
    if unknown:
        raise ValueError(f"not gateway settings: {', '.join(unknown)}")
    settings = GatewaySettings(**values)  # type: ignore[arg-type]
    prefix = str(GatewaySettings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper(): str(getattr(settings, name)) for name in values}


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
        **gateway_environment(triton_grpc_url=server.grpc_url, triton_http_url=server.http_url),
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


def serve(
    repositories: list[Path],
    backend_dir: Path,
    with_gateway: bool = True,
    with_supervisor: bool = True,
    max_restarts: int = 3,
) -> int:
    server = TritonServer(
        repositories,
        backend_dir,
        ports=Ports.from_env(),
        exit_timeout_s=SERVE_EXIT_TIMEOUT_S,
        die_with_parent=True,
        access_key=access.ensure_key(),
        bind_address=os.environ.get("TRITON_BIND_ADDRESS", LOOPBACK),
    )
    gateway: subprocess.Popen[bytes] | None = None
    supervisor: SupervisorThread | None = None
    # Restarts of a dead tritonserver: 3 per 10 minutes, 1 s then 2 s apart.
    restarts = ReloadLimiter(max_restarts, window_s=600.0, initial_backoff_s=1.0)
    stopping = False
    restart_requested = threading.Event()

    def restart_for(model: str) -> None:
        log.error("restarting tritonserver: %s cannot be healed by a reload", model)
        restart_requested.set()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("received %s: stopping tritonserver", signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    failed = False
    try:
        _start_triton(server, repositories, lambda: stopping)
        if with_supervisor and not stopping:
            supervisor = _start_supervisor(server, restart_for)
        if with_gateway and not stopping:
            gateway = start_gateway(server)
        failed = not _keep_serving(
            server, gateway, repositories, restarts, restart_requested, lambda: stopping
        )
    except _Interrupted:
        pass
    except (RuntimeError, TimeoutError) as exc:
        log.error("%s", exc)
        failed = True
    finally:  # whatever happened above, nothing is left running
        stop_gateway(gateway)
        if supervisor is not None:
            supervisor.stop()
        log.info("tritonserver stopped (exit status %s)", server.stop())
    return 1 if failed else 0


def _start_supervisor(server: TritonServer, restart: Callable[[str], None]) -> SupervisorThread:
    """The stub supervisor, in a thread, watching ``server`` (``restart`` when a reload cannot heal)."""
    settings = SupervisorSettings.from_env(triton_url=f"grpc://{server.grpc_url}")
    return SupervisorThread(settings, server_pid=lambda: server.pid, restart_server=restart).start()


def _keep_serving(
    server: TritonServer,
    gateway: subprocess.Popen[bytes] | None,
    repositories: list[Path],
    restarts: ReloadLimiter,
    restart_requested: threading.Event,
    stopping: Callable[[], bool],
) -> bool:
    """Watch the server and the gateway until a stop is requested, restarting a dead server.

    False when serving had to end: the gateway exited, or the restart budget is spent.
    """
    while not stopping():
        if gateway is not None and gateway.poll() is not None:
            log.error("the gateway exited (status %s): stopping", gateway.returncode)
            return False
        alive = server.process is not None and server.process.poll() is None
        if alive and not restart_requested.is_set():
            time.sleep(0.2)
            continue
        restart_requested.clear()
        if not _stop_for_restart(server, restarts, alive):
            return False
        if not stopping():
            _start_triton(server, repositories, stopping)
    return True


def _stop_for_restart(server: TritonServer, restarts: ReloadLimiter, alive: bool) -> bool:
    """Stop what is left of the server and wait out the restart backoff.

    False when the restart budget (``restarts``) is spent: the launcher then gives up.
    """
    code = server.stop()  # also ends what is left of its process group (stubs)
    delay_s = restarts.delay_s("tritonserver", time.monotonic())
    if delay_s is None:
        log.error(
            "tritonserver exited (status %s) after %d restarts in %.0f minutes: stopping",
            code,
            restarts.max_reloads,
            restarts.window_s / 60,
        )
        return False
    log.error(
        "tritonserver %s (status %s): restarting it in %.0f s on the same ports with the same key",
        "was stopped" if alive else "exited on its own",
        code,
        delay_s,
    )
    time.sleep(delay_s)
    restarts.record("tritonserver", time.monotonic())
    return True


def _start_triton(
    server: TritonServer, repositories: list[Path], cancelled: Callable[[], bool]
) -> None:
    """Start the server, wait until it is up, and serve every model version that can serve."""
    server.start()
    if not server.wait_ready(cancelled=cancelled):
        raise _Interrupted
    with Client(server.http_url, triton_key=server.access_key) as client:
        failed = recover_failed_loads(client, repositories)
        ready = [e for e in client.list_models() if e.state == "READY"]
    if not ready:
        raise RuntimeError("tritonserver loaded no model at all: nothing to serve")
    if failed:
        log.error(
            "serving without %d model version(s) that failed to load (see above)", len(failed)
        )
    log.info(
        "ready: HTTP http://%s  gRPC %s  metrics %s  (Ctrl-C to stop); every API but health "
        "needs the header %s with the key in %s",
        server.http_url,
        server.grpc_url,
        server.metrics_url,
        access.KEY_HEADER,
        access.default_key_file(),
    )


def supervise(settings: SupervisorSettings) -> int:
    """The supervisor alone, in the foreground, until SIGINT or SIGTERM (the sidecar form)."""
    supervisor = Supervisor(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await supervisor.run(stop)

    supervisor.metrics.serve(settings)
    try:
        asyncio.run(run())
    finally:
        supervisor.metrics.close()
    log.info("supervisor stopped")
    return 0


class _Interrupted(Exception):  # noqa: N818 - a stop request, not an error
    """Ctrl-C or SIGTERM arrived while waiting for the server to become ready."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve", "supervise", "backends"])
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
    parser.add_argument(
        "--no-supervisor",
        action="store_true",
        help="serve: do not reload models whose Python stub died",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="serve: restarts of a dead tritonserver within 10 minutes before giving up",
    )
    parser.add_argument(
        "--triton-url",
        default=None,
        help="supervise: Triton's endpoint, grpc://host:port (preferred: an HTTP load holds "
        "replies to other callers) or http://host:port; a bare host:port is gRPC (default: "
        "MLAPI_SUPERVISOR_TRITON_URL, else grpc://127.0.0.1:$TRITON_GRPC_PORT, else :8001)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="supervise: serve mlapi_supervisor_* metrics on this port (0: any free port)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    if args.command == "backends":
        print(assemble(args.backend_dir))  # noqa: T201 - the command's output
        return 0
    if args.command == "supervise":
        url = args.triton_url
        if url is not None and "://" not in url:
            url = f"grpc://{url}"
        return supervise(
            SupervisorSettings.from_env(triton_url=url, metrics_port=args.metrics_port)
        )
    repositories = args.repository or [Path("model_repository")]
    return serve(
        repositories,
        args.backend_dir,
        with_gateway=not args.no_gateway,
        with_supervisor=not args.no_supervisor,
        max_restarts=args.max_restarts,
    )


if __name__ == "__main__":
    sys.exit(main())
