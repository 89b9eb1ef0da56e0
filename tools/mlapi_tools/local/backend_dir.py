"""Assemble the backend directory the local tritonserver (from the nvidia-pytriton wheel) needs.

Layout produced under ``dest``::

    python/libtriton_python.so            the Python backend shipped in the wheel
    python/triton_python_backend_utils.py
    python/triton_python_backend_stub     the stub built for *this* interpreter's Python
    onnxruntime/model.py                  the project's Python-based onnxruntime stand-in

Triton loads ``onnxruntime/model.py`` as a Python-based backend because no native
``libtriton_onnxruntime.so`` is present; the shared library and stub are found in ``python/``.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import mlapi_backend

PROJECT_BACKENDS = Path(mlapi_backend.__file__).resolve().parents[1] / "backends"


@dataclass(frozen=True)
class TritonInstall:
    """Where the nvidia-pytriton wheel put tritonserver and its pieces."""

    root: Path

    @classmethod
    def find(cls) -> TritonInstall:
        try:
            import pytriton
        except ImportError as exc:
            raise RuntimeError(
                "tritonserver is not installed: run `make install` (it installs nvidia-pytriton)"
            ) from exc
        return cls(Path(pytriton.__file__).resolve().parent / "tritonserver")

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def library_dir(self) -> Path:
        """The wheel's bundled shared libraries (must be on LD_LIBRARY_PATH)."""
        return self.root.parents[1] / "nvidia_pytriton.libs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "caches"

    def stub(self, version: tuple[int, int] | None = None) -> Path:
        major, minor = version or sys.version_info[:2]
        path = (
            self.root / "python_backend_stubs" / f"{major}.{minor}" / "triton_python_backend_stub"
        )
        if not path.is_file():
            raise RuntimeError(
                f"no Triton Python backend stub for Python {major}.{minor} at {path}"
            )
        return path


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    tmp.replace(dst)


def assemble(dest: Path, install: TritonInstall | None = None) -> Path:
    """Create or refresh ``dest`` (idempotent; files are replaced atomically when they differ)."""
    install = install or TritonInstall.find()
    python_backend = install.root / "backends" / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _copy_if_changed(python_backend / name, dest / "python" / name)
    _copy_if_changed(install.stub(), dest / "python" / "triton_python_backend_stub")
    for backend in sorted(p for p in PROJECT_BACKENDS.iterdir() if (p / "model.py").is_file()):
        _copy_if_changed(backend / "model.py", dest / backend.name / "model.py")
    return dest
