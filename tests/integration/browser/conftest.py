"""A gateway with a CORS allow-list, pages on other loopback origins, and headless Chromium."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlapi_tools.local.triton_process import TritonServer
from tests.integration.gateway.conftest import gateway_env
from tests.integration.gateway.harness import Gateway, create_key

from .chromium import Browser, binary

HERE = Path(__file__).resolve().parent


class PageServer:
    """Serves this folder (page.html) on a loopback port: an origin of its own."""

    def __init__(self) -> None:
        handler = functools.partial(_QuietHandler, directory=str(HERE))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def pages() -> Iterator[tuple[PageServer, PageServer]]:
    """The listed origin's page server, and one of an origin not on the list."""
    listed, unlisted = PageServer(), PageServer()
    yield listed, unlisted
    listed.close()
    unlisted.close()


@pytest.fixture(scope="session")
def browser_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser-gateway")


@pytest.fixture(scope="session")
def browser_key(browser_dir: Path) -> str:
    return create_key(browser_dir / "keys.json", "predict")


@pytest.fixture(scope="session")
def cors_gateway(
    triton: TritonServer, browser_dir: Path, browser_key: str, pages: tuple[PageServer, PageServer]
) -> Iterator[Gateway]:
    env = gateway_env(
        triton,
        browser_dir,
        cors_allow_origins=json.dumps([pages[0].origin]),
        stream_token_ttl_s=20,
    )
    server = Gateway(env, browser_dir / "gateway.log").start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    executable = binary()
    if executable is None:
        if shutil.which("apt-get") is None:
            pytest.skip("Debian's chromium cannot be installed here (no apt-get)")
        pytest.fail("chromium is not installed: run `make system-deps` as root")
    browser = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()
