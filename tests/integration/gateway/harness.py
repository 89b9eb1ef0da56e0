"""Real processes for the gateway tests: the gateway (uvicorn subprocess), redis-server, and a
webhook receiver that verifies signatures."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mlapi_gateway.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

ROOT = Path(__file__).resolve().parents[3]
WEBHOOK_SECRET = "test-webhook-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Gateway:
    """One gateway process (``python -m mlapi_gateway``) on a free port."""

    env: dict[str, str]
    log_path: Path
    workers: int = 1
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> Gateway:
        command = [sys.executable, "-m", "mlapi_gateway", "--port", str(self.port)]
        command += ["--workers", str(self.workers), "--log-level", "info"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"gateway did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL the whole process (and its workers): a crash, no graceful shutdown."""
        if self.process is not None and self.process.poll() is None:
            for pid in _children(self.process.pid):
                os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def stub_pids(server_pid: int, model: str) -> list[int]:
    """The Python stubs of ``model``'s instances that tritonserver ``server_pid`` started.

    A stub's command line names the instance (``<model>_<group>_<index>``); other servers'
    stubs (other tests, other sessions) have another parent and are never touched.
    """
    found = []
    for pid in _children(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"triton_python_backend_stub"):
            continue
        names = [a.decode(errors="replace") for a in argv]
        if any(n.startswith(f"{model}_") and n[len(model) + 1 :].replace("_", "").isdigit()
               for n in names):  # fmt: skip
            found.append(pid)
    return found


def raw_request(port: int, head: bytes, body: bytes = b"", timeout_s: float = 30) -> socket.socket:
    """A socket that has sent ``head`` (request line and headers, CRLF-terminated) and ``body``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.sendall(head + b"\r\n" + body)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket timeout: raises)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def create_key(keys_file: Path, *scopes: str, plan: str = "default") -> str:
    """A key made by the real CLI (`mlapi keys create`), whose last word is the key."""
    args = [
        str(Path(sys.executable).with_name("mlapi")),
        "keys",
        "create",
        "--keys-file",
        str(keys_file),
    ]
    for scope in scopes:
        args += ["--scope", scope]
    out = subprocess.run(
        [*args, "--plan", plan], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout.split()[-1]


class RedisServer:
    """A throwaway redis-server on a free port (no persistence)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = self.binary()
        assert binary
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class Delivery:
    body: dict[str, Any]
    signature_ok: bool


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 recording signed POSTs; the first ``fail_first`` answer 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.deliveries: list[Delivery] = []
        self.failed = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.failed < receiver.fail_first:
                    receiver.failed += 1
                    self.send_response(500)
                    self.end_headers()
                    return
                timestamp = int(self.headers.get(TIMESTAMP_HEADER, "0"))
                ok = verify(WEBHOOK_SECRET, timestamp, raw, self.headers.get(SIGNATURE_HEADER, ""))
                receiver.deliveries.append(Delivery(json.loads(raw), ok))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval_s)
