"""Headless Chromium (Debian's ``chromium``) driven through its DevTools protocol.

No driver and no browser download: the browser is started with a DevTools port, and one
WebSocket (the ``websockets`` package, which uvicorn[standard] installs) evaluates scripts in
the page, awaiting their promises.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

NAMES = ("chromium", "chromium-browser")


def binary() -> str | None:
    """The Chromium executable on PATH, if any."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page, on a profile of its own."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.profile = profile
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._ids = itertools.count(1)
        port = self._port(timeout_s=60)
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert pages, "Chromium opened no page"
        self._stack = contextlib.ExitStack()
        self.socket = self._stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        )

    def _port(self, timeout_s: float) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            if marker.is_file():
                first = marker.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def command(self, method: str, timeout_s: float = 60, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are skipped)."""
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]  # type: ignore[no-any-return]

    def open(self, url: str) -> None:
        """Load ``url`` and wait until the document has loaded."""
        self.command("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while (
            self.evaluate("document.readyState") != "complete"
            or self.evaluate("location.href") != url
        ):
            assert time.monotonic() < deadline, f"{url} did not load"
            time.sleep(0.05)

    def evaluate(self, expression: str, timeout_s: float = 60) -> Any:
        """Evaluate ``expression`` in the page, await it, and return its value as JSON."""
        result = self.command(
            "Runtime.evaluate", timeout_s, expression=expression, awaitPromise=True,
            returnByValue=True,
        )  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def call(self, function: str, *args: Any, timeout_s: float = 60) -> Any:
        """Call the page's ``function`` with JSON arguments and return its awaited value."""
        return self.evaluate(f"{function}(...{json.dumps(list(args))})", timeout_s)

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
