"""Start, probe and stop a real local tritonserver process (used by `make serve` and the tests)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mlapi_client import access
from mlapi_tools.local.backend_dir import TritonInstall, assemble

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
# 64 MiB, allocated at start; used only by models whose config enables response_cache.
RESPONSE_CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def from_env(cls) -> Ports:
        return cls(
            http=int(os.environ.get("TRITON_HTTP_PORT", 8000)),
            grpc=int(os.environ.get("TRITON_GRPC_PORT", 8001)),
            metrics=int(os.environ.get("TRITON_METRICS_PORT", 8002)),
        )

    @classmethod
    def free(cls) -> Ports:
        """Three ports the OS reports free right now (bound together so they are distinct)."""
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.socket()) for _ in range(3)]
            for sock in socks:
                sock.bind(("127.0.0.1", 0))
            http, grpc, metrics = (sock.getsockname()[1] for sock in socks)
        return cls(http, grpc, metrics)


@dataclass
class TritonServer:
    """One tritonserver process in its own process group, so stopping it leaves nothing behind."""

    repositories: Sequence[Path]
    backend_dir: Path
    ports: Ports = field(default_factory=Ports.from_env)
    extra_args: Sequence[str] = ()
    exit_timeout_s: int = 15
    # Bytes of the server's local response cache (--cache-config local,size=...). Only models
    # whose config says ``response_cache { enable: true }`` use it (docs/caching.md says which).
    response_cache_bytes: int = RESPONSE_CACHE_BYTES
    # SIGTERM the server when the thread that started it dies (even by SIGKILL), so a killed
    # launcher or test run leaves no server behind. Linux only; leave it off when starting the
    # server from a short-lived thread.
    die_with_parent: bool = False
    install: TritonInstall = field(default_factory=TritonInstall.find)
    # Every API but health needs this key (mlapi_client.access); None leaves Triton open, which
    # only purpose-built tests of the restriction itself should do.
    access_key: str | None = None
    # Loopback unless deliberately opened (e.g. "0.0.0.0" inside a container behind a
    # NetworkPolicy): Triton itself binds every interface when not told otherwise.
    bind_address: str = LOOPBACK
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        """The server process's pid while it runs (None before start and after stop)."""
        return self.process.pid if self.process is not None else None

    @property
    def _host(self) -> str:
        return LOOPBACK if self.bind_address in ("0.0.0.0", "::", "") else self.bind_address

    @property
    def http_url(self) -> str:
        return f"{self._host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self._host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._host}:{self.ports.metrics}/metrics"

    def command(self) -> list[str]:
        repos = [f"--model-repository={Path(r).resolve()}" for r in self.repositories]
        return [
            str(self.install.binary),
            *repos,
            f"--backend-directory={self.backend_dir.resolve()}",
            f"--cache-directory={self.install.cache_dir}",
            f"--cache-config=local,size={self.response_cache_bytes}",
            f"--http-address={self.bind_address}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.bind_address}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.bind_address}",
            f"--metrics-port={self.ports.metrics}",
            *(access.restriction_args(self.access_key) if self.access_key else ()),
            # Explicit control lets versions be loaded/unloaded and configs overridden at run time.
            "--model-control-mode=explicit",
            "--load-model=*",
            # 2.51 aborts start-up when any model fails to load (status -6, "failed to load all
            # models"); false keeps the others serving (the launcher reports and recovers the
            # failed ones: mlapi_tools.local.startup).
            "--exit-on-error=false",
            # Ready = up (HTTP answers only after the start-up loads). Non-strict, so that a
            # model that failed to load does not take the whole server out of rotation.
            "--strict-readiness=false",
            # Every config in the repositories is complete. With auto-complete on (Triton's
            # default), the Python backend starts an extra stub per model version at each load
            # just to ask it for a config, then sleeps 1 s on it (python_backend r24.10
            # StubLauncher::UpdateHealth): a healing reload of digits_classifier took 1.48 s
            # with it and 0.71 s without, and every start-up pays the same second per model.
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = str(self.install.library_dir)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The Python stub finds its packages (numpy, onnxruntime, mlapi_backend) through the
        # first python3 on PATH: make that this interpreter's environment.
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        return env

    def start(self, log_file: IO[bytes] | None = None) -> None:
        assemble(self.backend_dir, self.install)
        if self.bind_address != LOOPBACK:
            log.warning(
                "tritonserver listens on %s, not loopback: every host that reaches these ports "
                "can call it (the access key still guards all but health)",
                self.bind_address,
            )
        if self.access_key is None:
            log.warning(
                "tritonserver starts WITHOUT an access key: its model-repository API "
                "lets any caller load and run code"
            )
        shown = " ".join(self.command())
        if self.access_key:
            shown = shown.replace(self.access_key, "<key>")
        log.info("starting tritonserver: %s", shown)
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file is not None else None,
            start_new_session=True,
            preexec_fn=terminate_with_parent if self.die_with_parent else None,
        )

    def _ok(self, path: str) -> bool:
        try:
            request = urllib.request.Request(
                f"http://{self.http_url}{path}", headers=access.http_headers(self.access_key)
            )
            with urllib.request.urlopen(request, timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def is_ready(self, models: Sequence[str] = ()) -> bool:
        """Server ready and, when given, each of ``models`` ready."""
        paths = ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in models)]
        return all(self._ok(path) for path in paths)

    def wait_ready(
        self,
        timeout_s: float = 120.0,
        models: Sequence[str] = (),
        cancelled: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Block until ready (True) or ``cancelled()`` (False); raise if the server dies or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with status {self.process.returncode} before it was ready"
                )
            if self.is_ready(models):
                return True
            if cancelled():
                return False
            time.sleep(0.25)
        raise TimeoutError(f"tritonserver not ready on {self.http_url} after {timeout_s:.0f}s")

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL the whole process group."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        timeout_s = timeout_s if timeout_s is not None else self.exit_timeout_s + 10
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop within %.0fs; killing it", timeout_s)
        # Python stubs are in the server's process group; make sure none outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent thread exits."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


# `make serve` gives the server this much time to finish in-flight requests on SIGTERM
# (mlapi_tools.local.__main__.serve); images and the chart use the same.
SERVE_EXIT_TIMEOUT_S = 10


def server_args(
    repositories: Sequence[Path],
    backend_dir: Path,
    install_root: Path,
    access_key: str,
    ports: Ports | None = None,
    bind_address: str = "0.0.0.0",
    exit_timeout_s: int = SERVE_EXIT_TIMEOUT_S,
) -> list[str]:
    """The flags (no binary) that ``TritonServer.command()`` gives a server at these paths.

    For places that start tritonserver without the launcher (the images' entrypoint, the Helm
    chart), so they can be checked against, or generated from, the one definition of the flags.
    ``install_root`` is the tritonserver install (``bin/``, ``caches/``), e.g. /opt/tritonserver.
    """
    server = TritonServer(
        repositories,
        backend_dir,
        ports=ports if ports is not None else Ports(),
        exit_timeout_s=exit_timeout_s,
        install=TritonInstall(install_root),
        access_key=access_key,
        bind_address=bind_address,
    )
    return server.command()[1:]
