"""A model's log of unexpected failures, throttled so that a systematic fault cannot flood it.

A bug that every request provokes (a broken dependency, a bad deployment) fails each of them
the same way. Each failure still gets its own error response; the log gets the first traceback
of each kind (exception type and the place it was raised) per interval, and then one line
counting the repeats it did not log.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# One traceback per kind of failure per minute: enough to see a new fault at once, and a
# systematic one costs a line a minute instead of one per request.
TRACEBACK_INTERVAL_S = 60.0


@dataclass
class _Window:
    opened: float
    log: Callable[[str], None]
    repeats: int = 0


def failure_kind(error: BaseException) -> tuple[str, str]:
    """Return the exception's type and the place (file:line) it was raised ("" if never raised)."""
    frames = traceback.extract_tb(error.__traceback__)
    place = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return type(error).__qualname__, place


class FailureLog:
    """Logs a model's unexpected failures: one traceback per kind per interval, repeats counted.

    ``logger`` is ``pb_utils.Logger`` inside Triton. One instance per model instance keeps the
    counts between ``execute`` calls.
    """

    def __init__(
        self,
        logger: Any,
        model: str,
        interval_s: float = TRACEBACK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.model = model
        self.interval_s = interval_s
        self.clock = clock
        self._windows: dict[tuple[str, str, str], _Window] = {}

    def request_failed(self, request_id: str, error: BaseException, what: str = "failed") -> None:
        """Log, at error level with its traceback, a request's unexpected failure."""
        log = self.logger.log_error
        if self._first((what, *failure_kind(error)), log):
            trace = "".join(traceback.format_exception(error)).rstrip()
            log(f"{self.model}: request '{request_id}' {what}:\n{trace}")

    def batch_failed(self, size: int, error: Exception, consequence: str) -> None:
        """Log, as a warning, that a batch step raised and what is done about it."""
        log = self.logger.log_warn
        if self._first((f"batch: {consequence}", *failure_kind(error)), log):
            log(
                f"{self.model}: a batch of {size} failed ({type(error).__name__}: {error}); "
                f"{consequence}"
            )

    def flush(self) -> None:
        """Log the repeat count of every interval that has ended, and forget those intervals."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            if now - window.opened >= self.interval_s:
                del self._windows[key]
                if window.repeats:
                    what, name, place = key
                    window.log(
                        f"{self.model}: {window.repeats} more of the same ({what}, {name} at "
                        f"{place or 'an unknown place'}) in {now - window.opened:.0f} s; "
                        "their tracebacks were not logged"
                    )

    def _first(self, key: tuple[str, str, str], log: Callable[[str], None]) -> bool:
        """Whether ``key`` opens a new interval (log it); otherwise count it as a repeat."""
        self.flush()
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(self.clock(), log)
            return True
        window.repeats += 1
        return False
