"""Keep numpy's OpenBLAS to one thread inside a Python stub that runs many small matrix products.

numpy's wheels bundle OpenBLAS, which starts a thread per core and lets idle threads spin
waiting for the next product. digits resamples each image with a few small matrix products
(area_resize), so those threads spin between requests: through digits (version 3, wrk over
HTTP, 2 shared CPUs) the server spent 7.5 ms of CPU per request at 1 connection and 3.5 ms at
16, against 3.5 and 2.4 ms with OpenBLAS at one thread, for the same answers. The stub inherits
the server's environment, which the model does not control, and numpy has loaded OpenBLAS
before model.py runs, so the limit is set through OpenBLAS's own C API, found in the loaded
libraries (as threadpoolctl does). An ``OPENBLAS_NUM_THREADS`` in the environment wins.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

# OpenBLAS's setter in its builds: plain, 64-bit-integer (numpy's wheels), scipy's wheels.
SETTERS = (
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
)
GETTERS = tuple(name.replace("set_num", "get_num") for name in SETTERS)
MAPS = Path("/proc/self/maps")


def loaded_openblas() -> list[str]:
    """Return the paths of the OpenBLAS libraries loaded in this process (Linux; else none)."""
    try:
        lines = MAPS.read_text().splitlines()
    except OSError:
        return []
    paths = {line.split()[-1] for line in lines if "openblas" in line.rsplit("/", 1)[-1].lower()}
    return sorted(p for p in paths if p.startswith("/"))


def _function(path: str, names: tuple[str, ...]) -> Any:
    """Return the first of ``names`` that the library at ``path`` exports (None if none)."""
    library = ctypes.CDLL(path)
    for name in names:
        function = getattr(library, name, None)
        if function is not None:
            return function
    return None


def blas_threads() -> dict[str, int]:
    """Return the threads each loaded OpenBLAS uses, by library path."""
    found = {}
    for path in loaded_openblas():
        getter = _function(path, GETTERS)
        if getter is not None:
            found[path] = int(getter())
    return found


def limit_blas_threads(count: int = 1) -> dict[str, int]:
    """Set every loaded OpenBLAS to ``count`` threads unless OPENBLAS_NUM_THREADS is set.

    Returns the libraries limited and their previous thread counts (empty when none is loaded
    or the environment decides).
    """
    if os.environ.get("OPENBLAS_NUM_THREADS"):
        return {}
    before = blas_threads()
    for path in before:
        setter = _function(path, SETTERS)
        if setter is not None:
            setter(count)
    return before
