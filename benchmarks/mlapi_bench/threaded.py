"""Blocking load from threads: the benchmark scripts' windows of concurrent tritonclient calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_threads(worker: Callable[[], None], count: int) -> float:
    """Run ``worker`` on ``count`` threads at once; return the seconds until all returned."""
    threads = [threading.Thread(target=worker) for _ in range(count)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - began
