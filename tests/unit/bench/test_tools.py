"""perf_analyzer inputs and commands, the locust request mix, wrk output parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlapi_bench.capacity import parse_wrk
from mlapi_bench.perf_analyzer import INPUT_DIR, MODELS, STREAMING_MODELS, input_data
from mlapi_bench.perf_analyzer_runs import command
from mlapi_bench.scenarios import BAD_REQUEST_SHARE, Call, GatewayMix, Mix, resize_nearest


@pytest.mark.parametrize("model", sorted({*MODELS, *STREAMING_MODELS}))
def test_committed_perf_analyzer_inputs_are_current(model: str) -> None:
    committed = json.loads((INPUT_DIR / f"{model}.json").read_text())
    assert committed == json.loads(json.dumps(input_data(model)))


def test_perf_analyzer_input_entries_have_content_and_shape() -> None:
    entry = input_data("digits")["data"][0]["image"]
    assert entry["shape"] == [8, 8]
    assert len(entry["content"]) == 64
    assert all(0 <= v <= 255 for v in entry["content"])
    pixels = input_data("digits_classifier")["data"][0]["pixels"]
    assert pixels["shape"] == [64]


def test_a_perf_analyzer_run_is_one_level_into_its_own_csv() -> None:
    run = command("digits", "grpc", "host:8001", 4, 1000, Path("out/pa_c4.csv"))
    assert Path(run[0]).name == "perf_analyzer"
    assert run[1:7] == ["-m", "digits", "-i", "grpc", "-u", "host:8001"]
    assert run[run.index("--concurrency-range") + 1] == "4:4"
    assert run[run.index("-f") + 1] == "out/pa_c4.csv"
    assert "-x" not in run  # digits chooses its classifier itself
    pinned = command("digits_classifier", "http", "h:1", 1, 1000, Path("x.csv"))
    assert pinned[pinned.index("-x") + 1] == "2"  # the version its 8x8 inputs are for


def test_verdicts_separate_expected_4xx_from_failures() -> None:
    good = Call("digits 8x8", "/v2/models/digits/infer", {})
    bad = Call("expected 4xx: x", "/v2/models/digits/infer", {}, expect_client_error=True)
    assert good.verdict(200) is None
    assert good.verdict(400) == "HTTP 400"
    assert good.verdict(0) == "HTTP 0"  # transport failure
    assert bad.verdict(400) is None
    assert bad.verdict(404) is None
    assert "got 200" in str(bad.verdict(200))
    assert "got 500" in str(bad.verdict(500))


def test_resize_nearest_keeps_the_image_and_reaches_any_side() -> None:
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert resize_nearest(image, 8).tolist() == image.tolist()
    big = resize_nearest(image, 28)
    assert big.shape == (28, 28)
    assert big[0, 0] == 0 and big[-1, -1] == 63


def test_mix_is_seeded_and_has_a_small_share_of_bad_requests() -> None:
    images = np.zeros((4, 8, 8), np.uint8)
    pixels = np.zeros((4, 64), np.float32)
    first, second = Mix(images, pixels, seed=5), Mix(images, pixels, seed=5)
    assert [first.next_call().name for _ in range(20)] == [
        second.next_call().name for _ in range(20)
    ]
    mix = Mix(images, pixels, seed=1)
    calls = [mix.next_call() for _ in range(4000)]
    bad = sum(c.expect_client_error for c in calls) / len(calls)
    assert bad == pytest.approx(BAD_REQUEST_SHARE, abs=0.01)
    assert {c.name.split()[0] for c in calls} == {"digits", "digits_classifier", "expected"}
    body = next(c for c in calls if c.name.startswith("digits ")).body["inputs"][0]
    assert body["datatype"] == "UINT8" and body["shape"][0] == 1


WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8000
  1 threads and 64 connections
  Latency Distribution
     50%    3.10ms
     75%    4.00ms
     90%    5.20ms
     99%   12.50ms
  52000 requests in 5.00s, 9.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  10400.12
Transfer/sec:      1.80MB
"""


def test_parse_wrk_output() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests_per_s == pytest.approx(10400.12)
    assert result.p50_us == pytest.approx(3100.0)
    assert result.p99_us == pytest.approx(12500.0)
    assert result.non_2xx == 7
    assert result.socket_errors == 3
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("garbage")


def test_streaming_generator_inputs_and_flags() -> None:
    entry = input_data("text_generator")["data"][0]
    assert entry["text_input"]["shape"] == [1] and isinstance(
        entry["text_input"]["content"][0], str
    )
    assert entry["max_tokens"]["content"] == [32]
    assert "--streaming" in command("text_generator", "grpc", "h:1", 1, 1000, Path("x.csv"), True)
    assert "--streaming" not in command("digits", "grpc", "h:1", 1, 1000, Path("x.csv"))


def test_gateway_mix_uses_v1_routes_and_json_pixels() -> None:
    images = np.arange(4 * 64, dtype=np.uint8).reshape(4, 8, 8)
    mix = GatewayMix(images, np.zeros((4, 64), np.float32), seed=2)
    calls = [mix.next_call() for _ in range(2000)]
    assert all(c.path.startswith("/v1/models/") for c in calls)
    good = next(
        c for c in calls if c.name.startswith("gateway digits ") and "x" in c.name.split()[-1]
    )
    side = int(good.name.split()[-1].split("x")[0])
    assert np.asarray(good.body["pixels"]).shape == (side, side)
    pinned = {c.path for c in calls if c.name.startswith("gateway digits v")}
    assert pinned == {
        "/v1/models/digits/versions/1/predict",
        "/v1/models/digits/versions/2/predict",
    }
    bad = [c for c in calls if c.expect_client_error]
    assert bad and all(c.name.startswith("expected 4xx:") for c in bad)
    assert {c.name for c in bad} == {
        "expected 4xx: top_k out of range",
        "expected 4xx: image too small",
        "expected 4xx: unknown model",
    }
