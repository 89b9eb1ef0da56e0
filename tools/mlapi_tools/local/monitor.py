"""`python -m mlapi_tools.local.monitor`: a Prometheus beside a running ``make serve``.

It scrapes tritonserver's metrics port, the gateway's ``/metrics`` and the supervisor's port
(when it serves one) every 5 s, evaluates the chart's recording and alert rules
(deploy/helm/triton-mlapi/files/prometheus/rules.yaml), prints its URL and runs until Ctrl-C.
Each target gets the labels the chart's ServiceMonitor gives it (namespace, pod, container),
so the rules and the dashboard's queries run unchanged.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from mlapi_tools.local.prometheus import BINARY, Prometheus

ROOT = Path(__file__).resolve().parents[3]
RULES_FILE = ROOT / "deploy" / "helm" / "triton-mlapi" / "files" / "prometheus" / "rules.yaml"


def targets(
    triton_metrics_port: int, gateway_port: int | None, supervisor_port: int | None
) -> dict[str, tuple[str, str, dict[str, str]]]:
    """The scrape targets of a local stack, labelled as the chart's ServiceMonitor does."""
    found = {
        "triton": (f"127.0.0.1:{triton_metrics_port}", "/metrics",
                   {"namespace": "local", "pod": "triton", "container": "tritonserver"}),
    }  # fmt: skip
    if gateway_port:
        found["gateway"] = (f"127.0.0.1:{gateway_port}", "/metrics",
                            {"namespace": "local", "pod": "gateway", "container": "gateway"})  # fmt: skip
    if supervisor_port:
        found["supervisor"] = (f"127.0.0.1:{supervisor_port}", "/metrics",
                               {"namespace": "local", "pod": "triton", "container": "supervisor"})  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> int:
    """Run Prometheus in the foreground until SIGINT or SIGTERM; return the exit status."""
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=int(env.get("MONITOR_PORT", 9090)))
    parser.add_argument(
        "--triton-metrics-port", type=int, default=int(env.get("TRITON_METRICS_PORT", 8002))
    )
    parser.add_argument("--gateway-port", type=int, default=int(env.get("GATEWAY_PORT", 8080)))
    parser.add_argument(
        "--supervisor-port",
        type=int,
        default=int(env["MLAPI_SUPERVISOR_METRICS_PORT"])
        if env.get("MLAPI_SUPERVISOR_METRICS_PORT")
        else None,
    )
    parser.add_argument("--data-dir", type=Path, default=Path("build/monitor"))
    parser.add_argument("--scrape-interval-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    if BINARY is None:
        sys.stderr.write("prometheus is not installed: `make system-deps` installs Debian's\n")
        return 2
    args.data_dir.mkdir(parents=True, exist_ok=True)
    prometheus = Prometheus(
        args.data_dir,
        RULES_FILE,
        targets(args.triton_metrics_port, args.gateway_port, args.supervisor_port),
        scrape_interval_s=args.scrape_interval_s,
        port=args.port,
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, on_signal)
    prometheus.start()
    try:
        print(f"Prometheus: {prometheus.url} (rules loaded; Ctrl-C stops)", flush=True)  # noqa: T201
        while not stop.wait(1.0):
            if prometheus.process is None or prometheus.process.poll() is not None:
                sys.stderr.write(f"prometheus exited:\n{prometheus.log()}\n")
                return 1
    finally:
        prometheus.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
