"""A real Prometheus (Debian's package) on a free port with the chart's rule file, scraping
given targets, and a small client for its query API: ``make monitor`` beside ``make serve``,
and the monitoring tests (tests/deploy)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
BINARY = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.25
) -> T:
    """The first truthy value of ``predicate()``; TimeoutError naming ``what`` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


class Prometheus:
    """``prometheus`` scraping ``targets`` (job -> (host:port, metrics path, labels)) every
    ``scrape_interval_s`` and evaluating ``rule_file`` as often."""

    def __init__(
        self,
        workdir: Path,
        rule_file: Path,
        targets: Mapping[str, tuple[str, str, Mapping[str, str]]],
        scrape_interval_s: float = 1.0,
        port: int | None = None,
    ) -> None:
        if BINARY is None:
            raise RuntimeError("prometheus is not installed: `make system-deps` installs it")
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        interval = f"{int(scrape_interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(rule_file)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": path,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": [address], "labels": dict(labels)}],
                }
                for job, (address, path, labels) in targets.items()
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def attach(cls, port: int) -> Prometheus:
        """A client of a Prometheus already listening on ``port`` (``start`` is not for it)."""
        client = cls.__new__(cls)
        client.port = port
        client.process = None
        return client

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> Prometheus:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(BINARY),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._ready, timeout_s, f"prometheus ready on {self.url}\n{self.log()}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Instant query: one value per series, keyed by its labels as ``k=v,...``."""
        result = self.api("query", query=expr)["result"]
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
            for r in result
        }

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def rule_health(self) -> dict[str, str]:
        groups = self.api("rules")["groups"]
        return {
            r.get("name", ""): f"{r['health']} {r.get('lastError', '')}".strip()
            for g in groups
            for r in g["rules"]
        }

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
