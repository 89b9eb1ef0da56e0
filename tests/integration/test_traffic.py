"""Traffic migration between classifier versions on a real server of its own (policy changes must
not leak into other tests): weighted split, sticky keys, pinning, shadow agreement, live policy
changes, and version load/retire under steady traffic with zero failed requests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mlapi_backend.model_config import read_pbtxt
from mlapi_client import access
from mlapi_client.errors import InvalidInputError
from mlapi_client.traffic import TrafficController
from mlapi_tools.build.digits_data import preprocessed
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import own_triton

from .conftest import MODEL_REPOSITORY, PUBLIC_MODELS

IMAGE = np.zeros((1, 8, 8), dtype=np.uint8)
IMAGE[0, 1:7, 3:5] = 255
# Each phase of the steady-traffic test lasts until this many requests were served in it (a
# count, not a duration: a loaded machine serves fewer per second), within the timeout.
PHASE_REQUESTS = 25
PHASE_TIMEOUT_S = 120.0
# A version no config names: "not live" whatever has been built.
NOT_LIVE = 9


def _served_versions() -> list[int]:
    """Classifier versions the shipped config names and the build has produced (live at start)."""
    folder = MODEL_REPOSITORY / "digits_classifier"
    named = read_pbtxt(folder / "config.pbtxt")["version_policy"]["specific"]["versions"]
    return [int(v) for v in named if (folder / str(v) / "model.onnx").is_file()]


SERVED = _served_versions()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with own_triton(tmp_path_factory.mktemp("traffic"), models=PUBLIC_MODELS) as triton:
        yield triton


@pytest.fixture
def traffic(server: TritonServer) -> Iterator[TrafficController]:
    with TrafficController(server.http_url, "digits") as controller:
        yield controller
        controller.set({"2": 100})  # the shipped policy, for the next test


def _digits(client, image=IMAGE, **parameters):
    tensor = grpcclient.InferInput("image", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image)
    result = client.infer("digits", [tensor], parameters=parameters or None)
    return result, json.loads(result.as_numpy("metadata")[0, 0])


def _many(server: TritonServer, count: int, make_parameters=lambda i: {}) -> list[dict]:
    client = access.with_key(grpcclient.InferenceServerClient(server.grpc_url))
    try:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda i: _digits(client, **make_parameters(i))[1], range(count)))
    finally:
        client.close()


def _metric(server: TritonServer, name: str) -> dict[tuple, float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=30).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            values[
                tuple(
                    sorted(
                        p.split("=", 1)[0] + "=" + p.split("=", 1)[1].strip('"')
                        for p in labels.split(",")
                    )
                )
            ] = float(value)
    return values


def test_weighted_split_matches_the_policy(server, traffic, report_figure):
    status = traffic.set({"1": 70, "2": 30})
    assert status.weights == {"1": 70.0, "2": 30.0}
    metas = _many(server, 2000)
    counts = Counter(m["classifier"]["version"] for m in metas)
    share = counts["1"] / len(metas)
    report_figure("weighted split 70/30 over 2000 requests: v1 share", f"{share:.3f}")
    assert abs(share - 0.70) <= 0.03
    assert {m["routing"] for m in metas} == {"weighted"}


def test_sticky_keys_never_flip(server, traffic):
    traffic.set({"1": 50, "2": 50})
    metas = _many(server, 600, lambda i: {"routing_key": f"user-{i % 200}"})
    by_key: dict[int, set[str]] = {}
    for i, meta in enumerate(metas):
        by_key.setdefault(i % 200, set()).add(meta["classifier"]["version"])
        assert meta["routing"] == "sticky"
    assert all(len(versions) == 1 for versions in by_key.values())
    share = sum(v == {"1"} for v in by_key.values()) / len(by_key)
    assert 0.35 <= share <= 0.65  # keys spread over both versions


def test_pinned_version_beats_policy_and_unknown_version_names_live_ones(server, traffic):
    traffic.set({"2": 100})
    client = access.with_key(grpcclient.InferenceServerClient(server.grpc_url))
    try:
        _, meta = _digits(client, model_version="1")
        assert (meta["classifier"]["version"], meta["routing"]) == ("1", "pinned")
        with pytest.raises(InferenceServerException) as info:
            _digits(client, model_version="9")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "model_version" in info.value.message() and str(SERVED) in info.value.message()
    finally:
        client.close()


def test_shadow_agreement_is_counted_and_responses_unchanged(server, traffic, split):
    images = split.test_images
    pixels = preprocessed(list(images))
    predictions = {}
    for version in (1, 2):
        path = MODEL_REPOSITORY / "digits_classifier" / str(version) / "model.onnx"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        predictions[version] = session.run(["probabilities"], {"pixels": pixels})[0].argmax(axis=1)
    expected_agree = int((predictions[1] == predictions[2]).sum())

    client = access.with_key(grpcclient.InferenceServerClient(server.grpc_url))
    try:
        traffic.set({"2": 100})
        plain = [_digits(client, img[None])[0].as_numpy("labels")[0].tolist() for img in images]
        before = _metric(server, "mlapi_shadow_comparisons_total")
        traffic.set({"2": 100}, shadow=1)
        shadowed = [_digits(client, img[None])[0].as_numpy("labels")[0].tolist() for img in images]
    finally:
        client.close()
    assert shadowed == plain  # the shadow never changes what callers get
    after = _metric(server, "mlapi_shadow_comparisons_total")

    def delta(outcome: str) -> float:
        key = tuple(sorted(["model=digits", "primary=2", "shadow=1", f"outcome={outcome}"]))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("agree") == expected_agree
    assert delta("disagree") == len(images) - expected_agree
    assert delta("error") == 0


def test_policy_change_takes_effect_when_set_returns(server, traffic, report_figure):
    traffic.set({"2": 100})
    started = time.monotonic()
    status = traffic.set({"1": 100})
    elapsed = time.monotonic() - started
    report_figure("policy change (reload of digits) took", f"{elapsed:.2f}s")
    assert elapsed < 30
    assert status.default_version == "1"
    metas = _many(server, 100)
    assert {m["classifier"]["version"] for m in metas} == {"1"}


def _load_digits_with_policy(server: TritonServer, policy: dict) -> None:
    """Reload digits with ``policy`` through the repository API, bypassing the client's checks."""
    http = access.with_key(httpclient.InferenceServerClient(server.http_url))
    try:
        config = http.get_model_config("digits")
        config["parameters"]["traffic_policy"] = {"string_value": json.dumps(policy)}
        http.load_model("digits", config=json.dumps(config))
    finally:
        http.close()


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ({"weights": {"9": 100}}, f"version(s) [9], which are not live; live versions: {SERVED}"),
        ({"weights": {"2": 100}, "shadow": 7}, "version(s) [7], which are not live"),
        ({"weights": {"1": 60, "2": 30}}, "must sum to 100, got 90"),
        ({"weights": {"1": 0}}, "must sum to 100, got 0"),
    ],
)
def test_the_model_refuses_a_bad_policy_and_the_old_one_keeps_serving(
    server, traffic, policy, fragment
):
    traffic.set({"1": 100})
    with pytest.raises(InferenceServerException) as info:
        _load_digits_with_policy(server, policy)
    assert info.value.status() == "400"
    assert fragment in info.value.message()
    assert traffic.show().weights == {"1": 100.0}
    metas = _many(server, 50)
    assert {(m["classifier"]["version"], m["routing"]) for m in metas} == {("1", "default")}


def test_the_client_refuses_before_reloading(server, traffic):
    traffic.set({"1": 60, "2": 40})
    live = ", ".join(str(v) for v in SERVED)
    with pytest.raises(
        InvalidInputError,
        match=re.escape(f"version(s) {NOT_LIVE}, which are not live; live versions: {live}"),
    ):
        traffic.set({str(NOT_LIVE): 100})
    with pytest.raises(InvalidInputError, match="not live"):
        traffic.set({"1": 100}, shadow=7)
    with pytest.raises(InvalidInputError, match="must sum to 100, got 110"):
        traffic.set({"1": 60, "2": 50})
    assert traffic.show().weights == {"1": 60.0, "2": 40.0}
    assert _many(server, 10)  # still serving


def test_show_reports_default_and_live_versions(traffic):
    status = traffic.set({"1": 90, "2": 10}, shadow=2)
    assert status.default_version == "1"
    assert status.shadow == "2"
    assert status.live_versions == [str(v) for v in SERVED]


def test_load_and_retire_versions_under_steady_traffic_loses_nothing(
    server, traffic, report_figure
):
    """Steady traffic while version 3 is loaded, takes over, and versions 1 and 2 are retired."""
    http = access.with_key(httpclient.InferenceServerClient(server.http_url))
    classifier_dir = MODEL_REPOSITORY / "digits_classifier"
    files = {
        f"file:{v}/model.onnx": (classifier_dir / str(v) / "model.onnx").read_bytes()
        for v in (1, 2)
    }
    # The built version 3 when there is one (digits prepares 3's input as its metrics.json
    # says), else a copy of version 1 (no metrics.json for 3: digits sends it 8x8 pixels).
    built_v3 = classifier_dir / "3" / "model.onnx"
    files["file:3/model.onnx"] = (
        built_v3.read_bytes() if 3 in SERVED else files["file:1/model.onnx"]
    )
    files["file:labels.txt"] = (classifier_dir / "labels.txt").read_bytes()
    config = http.get_model_config("digits_classifier")

    def load_versions(versions: list[int]) -> None:
        config["version_policy"] = {"specific": {"versions": versions}}
        kept = {k: v for k, v in files.items() if not k[5].isdigit() or int(k[5]) in versions}
        http.load_model("digits_classifier", config=json.dumps(config), files=kept)

    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []

    def drive() -> None:
        client = access.with_key(grpcclient.InferenceServerClient(server.grpc_url))
        try:
            while not stop.is_set():
                try:
                    _, meta = _digits(client)
                    outcomes[f"v{meta['classifier']['version']}/{meta['routing']}"] += 1
                except InferenceServerException as exc:
                    failures.append(exc.message())
        finally:
            client.close()

    def served_by(*keys: str, count: int = PHASE_REQUESTS) -> None:
        """Wait until ``count`` more requests were answered by ``keys`` (any, when none)."""

        def answered() -> int:
            return sum(n for k, n in list(outcomes.items()) if not keys or k in keys)

        target = answered() + count
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while answered() < target:
            assert not failures, failures[:3]
            assert time.monotonic() < deadline, f"{keys or 'any'}: {dict(outcomes)}"
            stop.wait(0.05)

    drivers = [threading.Thread(target=drive) for _ in range(4)]
    for thread in drivers:
        thread.start()
    try:
        served_by()  # steady traffic
        load_versions([1, 2, 3])  # new version joins
        traffic.set({"2": 50, "3": 50})  # canary
        served_by("v3/weighted")
        load_versions([1, 2])  # the canary is pulled while the policy still names it
        served_by("v2/fallback")  # requests drawn for v3 are served by v2
        load_versions([1, 2, 3])
        traffic.set({"3": 100})  # full migration
        load_versions([3])  # retire 1 and 2
        served_by("v3/default", "v3/weighted")
    finally:
        stop.set()
        for thread in drivers:
            thread.join()
        http.load_model("digits_classifier")  # back to the repository's config and files
        traffic.set({"2": 100})
        http.close()
    total = sum(outcomes.values()) + len(failures)
    report_figure(
        "requests during load/canary/retire",
        f"{total} sent, {len(failures)} failed, {dict(outcomes)}",
    )
    assert not failures, failures[:3]
    assert total > 100
    assert any(key.startswith("v3/") for key in outcomes)
    assert outcomes["v2/fallback"] > 0  # requests drawn for the pulled canary were served by v2


def _mlapi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "mlapi"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_show_and_set(server, traffic):
    url = f"http://{server.http_url}"
    done = _mlapi(
        "traffic", "set", "digits", "1=60", "2=40", "--shadow", "2", "--url", url, "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["weights"] == {"1": 60.0, "2": 40.0}
    shown = _mlapi("traffic", "show", "digits", "--url", url)
    assert shown.returncode == 0, shown.stderr
    assert "v1 60.0%, v2 40.0%" in shown.stdout and "shadow:         v2" in shown.stdout
    assert f"live versions:  {', '.join(f'v{v}' for v in SERVED)}" in shown.stdout
    bad = _mlapi("traffic", "set", "digits", "1=lots", "--url", url)
    assert bad.returncode == 2 and "1=lots" in bad.stderr
    assert traffic.show().weights == {"1": 60.0, "2": 40.0}


def test_cli_refuses_a_version_that_is_not_live_and_bad_sums(server, traffic):
    """`mlapi traffic set digits 9=100` with v9 not loaded: refused, nothing reloaded."""
    traffic.set({"1": 60, "2": 40})
    url = f"http://{server.http_url}"
    dead = _mlapi("traffic", "set", "digits", f"{NOT_LIVE}=100", "--url", url)
    assert dead.returncode == 2, dead.stderr
    live = ", ".join(str(v) for v in SERVED)
    assert f"version(s) {NOT_LIVE}, which are not live; live versions: {live}" in dead.stderr
    short = _mlapi("traffic", "set", "digits", "1=50", "2=40", "--url", f"grpc://{server.grpc_url}")
    assert short.returncode == 2 and "must sum to 100, got 90" in short.stderr
    assert traffic.show().weights == {"1": 60.0, "2": 40.0}
    metas = _many(server, 200)
    assert {m["classifier"]["version"] for m in metas} == {"1", "2"}
