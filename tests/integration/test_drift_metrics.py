"""Drift and prediction distributions of ``digits``, driven with known traffic through a real server.

The server serves copies of digits and digits_classifier whose traffic policy routes unpinned
requests to version 3 (95 %) and 2 (5 %), so that unloading version 3 makes its traffic fall
back to version 2: the switch of served version the drift watch must see. Every check waits
until the statistics thread has counted all images sent so far, then reads the drift flag.
The thread's results reach Triton's metrics when an instance next executes: while waiting, the
checks send refused requests (an image too small), which change no window and no prediction.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from mlapi_backend.model_config import read_pbtxt
from mlapi_client import Client, access
from mlapi_tools.build.digits_data import DigitsSplit
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import MODEL_REPOSITORY, own_triton
from tests.integration.conftest import DigitsCaller

POLICY = {"weights": {"3": 95, "2": 5}}
IMAGES_PER_REQUEST = 10
MAX_SHIFTED_IMAGES = 2000
TOO_SMALL = np.zeros((1, 4, 4), dtype=np.uint8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    workdir = tmp_path_factory.mktemp("drift")
    repo = workdir / "repository"
    for name in ("digits", "digits_classifier"):
        shutil.copytree(
            MODEL_REPOSITORY / name, repo / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    for version in (1, 2, 3):
        assert (repo / "digits_classifier" / str(version) / "drift_profile.json").is_file(), (
            "no drift profile: run `make models`"
        )
    config = repo / "digits" / "config.pbtxt"
    text = config.read_text()
    old = '{\\"weights\\": {\\"2\\": 100}}'
    assert old in text
    config.write_text(text.replace(old, json.dumps(json.dumps(POLICY))[1:-1]))
    with own_triton(workdir, [repo], models=["digits"]) as started:
        yield started


@pytest.fixture(scope="module")
def caller(server: TritonServer) -> Iterator[DigitsCaller]:
    client = access.with_key(httpclient.InferenceServerClient(server.http_url))
    yield DigitsCaller("http", client)
    client.close()


def scrape(server: TritonServer) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(httpx.get(server.metrics_url).text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def nudge(caller: DigitsCaller) -> None:
    """Send one refused request: its execute publishes what the statistics thread queued."""
    with pytest.raises(Exception, match="image"):
        caller.infer("digits", {"image": TOO_SMALL})


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(k) == v for k, v in labels.items())
    )


class Traffic:
    """Sends digits images and reads the drift flag once the statistics have seen them all."""

    def __init__(self, server: TritonServer, caller: DigitsCaller) -> None:
        self.server = server
        self.caller = caller
        self.sent = 0
        self.requests = 0
        self.base = total(scrape(server), "mlapi_predictions_total")

    def send(self, images: np.ndarray) -> None:
        for start in range(0, len(images), IMAGES_PER_REQUEST):
            batch = images[start : start + IMAGES_PER_REQUEST]
            self.caller.infer("digits", {"image": np.ascontiguousarray(batch)})
            self.sent += len(batch)
            self.requests += 1

    def flag(self, version: str = "3", timeout_s: float = 60) -> bool:
        """Whether any instance flags ``version`` once every image sent is counted."""
        deadline = time.monotonic() + timeout_s
        while True:
            samples = scrape(self.server)
            if total(samples, "mlapi_predictions_total") - self.base >= self.sent:
                break
            assert time.monotonic() < deadline, "the statistics thread never caught up"
            time.sleep(0.1)
            nudge(self.caller)
        return any(
            value == 1
            for labels, value in samples.get("mlapi_drift_flag", [])
            if labels.get("version") == version
        )


def clean(split: DigitsSplit, rng: np.random.Generator, count: int) -> np.ndarray:
    return split.test_images[rng.integers(0, len(split.test_y), count)]


def until_alarm(traffic: Traffic, make: callable, step: int = 20) -> tuple[int, int]:
    """Images and requests of shifted traffic until the flag rises."""
    images, requests = traffic.sent, traffic.requests
    while traffic.sent - images < MAX_SHIFTED_IMAGES:
        traffic.send(make(step))
        if traffic.flag():
            return traffic.sent - images, traffic.requests - requests
    pytest.fail(f"no alarm after {MAX_SHIFTED_IMAGES} shifted images")


def until_clear(traffic: Traffic, split: DigitsSplit, rng: np.random.Generator) -> None:
    for _ in range(40):
        traffic.send(clean(split, rng, 100))
        if not traffic.flag():
            return
    pytest.fail("the alarm never cleared on held-out traffic")


def test_held_out_traffic_is_quiet_and_each_shift_raises_the_alarm(
    server: TritonServer, caller: DigitsCaller, split: DigitsSplit, report_figure
) -> None:
    rng = np.random.default_rng(15)
    traffic = Traffic(server, caller)
    checks = []
    for _ in range(30):  # 1500 held-out images, the window (500 per instance) checked every 50
        traffic.send(clean(split, rng, 50))
        checks.append(traffic.flag())
    assert not any(checks), f"held-out traffic alarmed at checks {np.flatnonzero(checks)}"
    samples = scrape(server)
    p_values = [v for labels, v in samples["mlapi_drift_p_value"] if labels["version"] == "3"]
    assert p_values and all(0 <= p <= 1 for p in p_values)

    keep = np.isin(split.test_y, [0, 1, 2, 3, 4])
    prior = split.test_images[keep]

    def noisy(n: int) -> np.ndarray:
        images = clean(split, rng, n).astype(np.float64)
        return np.clip(images + rng.normal(0, 40, images.shape), 0, 255).astype(np.uint8)

    shifts = {
        "class-prior shift (digits 0-4 only)": lambda n: prior[rng.integers(0, len(prior), n)],
        "inverted images": lambda n: 255 - clean(split, rng, n),
        "noisy images (Gaussian, sd 40 grey levels)": noisy,
    }
    for name, make in shifts.items():
        images, requests = until_alarm(traffic, make)
        report_figure(f"drift alarm after, {name}", f"{images} images ({requests} requests)")
        until_clear(traffic, split, rng)

    with Client(server.http_url) as client:
        config = read_pbtxt(Path(server.repositories[0]) / "digits_classifier" / "config.pbtxt")
        config["version_policy"] = {"specific": {"versions": [1, 2]}}
        client.load_model("digits_classifier", config)
        assert "3" not in client.live_versions("digits_classifier")
    images, requests = until_alarm(traffic, lambda n: clean(split, rng, n))
    report_figure(
        "drift alarm after, switch of served version (3 unloaded, its traffic on 2)",
        f"{images} images ({requests} requests)",
    )


def test_prediction_distributions_are_counted_per_version(
    server: TritonServer, caller: DigitsCaller, split: DigitsSplit
) -> None:
    before = scrape(server)
    images = split.test_images[:40]
    caller.infer("digits", {"image": images}, parameters={"model_version": 2})
    blank = np.zeros((1, 16, 16), dtype=np.uint8)
    caller.infer("digits", {"image": blank}, parameters={"model_version": 2})
    with pytest.raises(Exception, match="image"):
        caller.infer("digits", {"image": np.zeros((1, 4, 4), dtype=np.uint8)})
    deadline = time.monotonic() + 60
    nudges = 0
    while True:
        after = scrape(server)
        served = total(after, "mlapi_predictions_total", version="2") - total(
            before, "mlapi_predictions_total", version="2"
        )
        if served >= 41:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
        nudge(caller)
        nudges += 1
    assert served == 41

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("mlapi_top1_score_images_total", version="2", le="+Inf") == 41
    assert delta("mlapi_blank_images_total", version="2") == 1
    assert delta("mlapi_low_confidence_total", version="2", reason="blank_image") == 1
    assert delta("mlapi_low_confidence_images_total", version="2") >= 1
    assert 1 <= delta("mlapi_rejected_inputs_total", field="image") <= 1 + nudges
    predicted = {
        labels["label"]: v
        for labels, v in after["mlapi_predictions_total"]
        if labels["version"] == "2"
    }
    assert set(predicted) <= {str(d) for d in range(10)}
