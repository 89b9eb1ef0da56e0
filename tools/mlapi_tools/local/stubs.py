"""Find a local tritonserver and its Python stub processes through Linux's ``/proc``.

Every model of this project runs in a ``triton_python_backend_stub`` process (Python models and
the Python-based onnxruntime stand-in alike), a child of the server. Its command line is
``stub <repository>/<model>/<version>/<file> <shm region> <shm size> <shm growth> <server pid>
<backend dir> <ipc timeout> <instance name> <runtime>`` (python_backend r24.10, checked on the
local 2.51 server). A stub killed under the server stays a zombie until Triton reaps it, so a
zombie counts as dead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STUB_BINARY = b"triton_python_backend_stub"
SERVER_BINARY = b"tritonserver"
PROC = Path("/proc")


@dataclass(frozen=True)
class StubProcess:
    """One living Python stub and the model instance it runs."""

    pid: int
    model: str
    version: str
    instance: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.version, self.instance


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    args: list[bytes]


def _processes(proc: Path) -> Iterator[_Proc]:
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # exited while we looked
            continue
        # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        yield _Proc(int(entry.name), int(fields[1]), fields[0], args)


def find_server_pid(port: int | None = None, proc: Path = PROC) -> int | None:
    """The pid of the tritonserver serving HTTP or gRPC on ``port`` (any one when None)."""
    flags = (f"--http-port={port}".encode(), f"--grpc-port={port}".encode())
    for process in _processes(proc):
        if not process.args or not process.args[0].endswith(SERVER_BINARY):
            continue
        if port is None or any(flag in process.args for flag in flags):
            return process.pid
    return None


def server_alive(pid: int, proc: Path = PROC) -> bool:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def list_stubs(server_pid: int, proc: Path = PROC) -> list[StubProcess]:
    """The living Python stubs whose parent is ``server_pid`` (zombies are dead stubs)."""
    stubs = []
    for process in _processes(proc):
        if process.ppid != server_pid or process.state == "Z":
            continue
        args = process.args
        if len(args) < 9 or not args[0].endswith(STUB_BINARY):
            continue
        model_file = Path(args[1].decode(errors="replace"))
        stubs.append(
            StubProcess(
                pid=process.pid,
                model=model_file.parent.parent.name,
                version=model_file.parent.name,
                instance=args[8].decode(errors="replace"),
            )
        )
    return stubs
