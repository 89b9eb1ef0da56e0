"""Schemathesis (every check, every phase) against a real gateway's /openapi.json with a valid
key, in front of the session's tritonserver: no answer >= 500, the spec matches what is sent,
and predict is reached with real digit images.

The run is schemathesis's own command (``st run``) in a subprocess; this module is also its
hooks module (``hooks`` in the generated config): schema-valid digits bodies get the pixels or
PNG of a real digit, so positive cases reach the model rather than its 400 for noise.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from PIL import Image

from mlapi_tools.build.digits_data import load_split

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[3]
CALLS_ENV = "MLAPI_FUZZ_CALLS_FILE"
MAX_EXAMPLES = 25  # per operation and phase: ~1,000 cases, ~10 s here; the bound is 120 s
RUN_TIMEOUT_S = 120
# Operations whose body is checked against the model's own contract at run time (tensor names,
# dtypes, shapes from Triton's metadata) or names a model in the body: a schema-valid body can
# still be refused with a 400 naming the field. The typed digits paths get no such allowance.
MODEL_CHECKED = r"^/v1/models/\{model\}/|^/v1/jobs$"


@functools.cache
def _digits() -> list[tuple[list[list[int]], str]]:
    """A few held-out digits as (rows, base64 PNG)."""
    split = load_split()
    out = []
    for image in split.test_images[:8]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        out.append((image.tolist(), base64.b64encode(buffer.getvalue()).decode()))
    return out


@schemathesis.hook.apply_to(path_regex=r"^/v1/models/digits/")
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """A schema-valid digits body gets a real digit in place of generated noise."""
    body = case.body
    if case.meta is None or case.meta.generation.mode.is_negative or not isinstance(body, dict):
        return case
    pick = zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode()) % len(_digits())
    rows, png = _digits()[pick]
    if isinstance(body.get("pixels"), list):
        case.body = {**body, "pixels": rows}
    elif isinstance(body.get("image"), str):
        case.body = {**body, "image": png}
    return case


@schemathesis.hook
def after_call(
    context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response
) -> None:
    """One line per call (method, path template, status) for the test to count."""
    target = os.environ.get(CALLS_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as calls:
            calls.write(f"{case.method} {case.operation.path} {response.status_code}\n")


def _config(tmp_path: Path, key: str) -> Path:
    lines = [
        'hooks = "tests.integration.fuzz.test_gateway_schema"',
        "seed = 20261201",  # reproducible in CI; change it to explore further
        "max-failures = 25",
        "request-timeout = 30",
        "max-stream-events = 16",
        f'headers = {{ Authorization = "Bearer {key}" }}',
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        'database = "none"',
        "[[operations]]",
        f"include-path-regex = '{MODEL_CHECKED}'",
        "checks.positive_data_acceptance.expected-statuses = "
        '["2xx", "400", "401", "403", "404", "409", "429"]',
    ]
    path = tmp_path / "schemathesis.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_gateway_matches_its_openapi_and_never_answers_5xx(
    fuzz_gateway_url: str, fuzz_key: str, tmp_path: Path
) -> None:
    calls_file = tmp_path / "calls.txt"
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(_config(tmp_path, fuzz_key)),
        "run",
        f"{fuzz_gateway_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
    ]
    env = {**os.environ, CALLS_ENV: str(calls_file), "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    start = time.monotonic()
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    elapsed_s = time.monotonic() - start
    calls = [line.split() for line in calls_file.read_text().splitlines()]
    statuses = Counter(int(status) for _, _, status in calls)
    digits_ok = sum(1 for _, path, status in calls if path.startswith("/v1/models/digits/") and status == "200")  # fmt: skip
    generated = re.search(r"(\d+) generated", run.stdout)
    log.warning(
        "schemathesis: %s cases generated, %d calls in %.1f s; statuses %s; digits 200s: %d",
        generated.group(1) if generated else "?", len(calls), elapsed_s,
        dict(sorted(statuses.items())), digits_ok,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
    assert not [s for s in statuses if s >= 500], statuses
    assert digits_ok >= 10, "predict was not reached with valid images"
    assert elapsed_s < RUN_TIMEOUT_S


def test_a_known_digit_is_answered_after_fuzzing(fuzz_gateway_url: str, fuzz_key: str) -> None:
    rows, png = _digits()[0]
    label = str(load_split().test_y[0])
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    for body in ({"pixels": rows}, {"image": png}):
        reply = httpx.post(
            f"{fuzz_gateway_url}/v1/models/digits/predict", json=body, headers=headers, timeout=30
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"][0]["label"] == label


@pytest.fixture(scope="module")
def fuzz_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    from ..gateway.harness import create_key

    return create_key(tmp_path_factory.getbasetemp() / "fuzz-keys.json", "predict", "admin")


@pytest.fixture(scope="module")
def fuzz_gateway_url(
    triton: Any, tmp_path_factory: pytest.TempPathFactory, fuzz_key: str
) -> Iterator[str]:
    """A gateway exposing the public models only, with limits no fuzzing run reaches."""
    from ..gateway.conftest import gateway_env
    from ..gateway.harness import Gateway

    workdir = tmp_path_factory.mktemp("fuzz-gateway")
    env = gateway_env(
        triton,
        workdir,
        models=json.dumps(["digits", "text_generator"]),
        plans=json.dumps({"default": {"rate_per_s": 1e6, "burst": 1_000_000}}),
        keys_file=tmp_path_factory.getbasetemp() / "fuzz-keys.json",
        webhook_secret="",  # no outbound calls: webhook jobs are refused (400)
    )
    gateway = Gateway(env, workdir / "gateway.log").start()
    yield gateway.url
    assert gateway.stop() == 0, gateway.log()
