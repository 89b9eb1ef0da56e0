"""The INT8 classifier versions (4: static QDQ of 2, 5: static QDQ of 3) on a real server of their
own (the canary changes digits' policy): they load and answer, lose at most half a point of
accuracy on held-out digits against their FP32 source, an unversioned direct request reaches the
highest version (5, documented in the config), and a canary to an INT8 version goes through the
traffic machinery."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from mlapi_backend.model_config import read_pbtxt
from mlapi_client import access
from mlapi_client.traffic import TrafficController
from mlapi_tools.build.digits_data import preprocessed
from mlapi_tools.build.quantize import SERVED
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import own_triton

from .conftest import MODEL_REPOSITORY, PUBLIC_MODELS

FOLDER = MODEL_REPOSITORY / "digits_classifier"
MAX_LOSS_POINTS = 0.5

pytestmark = pytest.mark.skipif(
    not all((FOLDER / str(v) / "model.onnx").is_file() for v in SERVED),
    reason="the INT8 digits_classifier versions are not built: `make models` builds them",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with own_triton(tmp_path_factory.mktemp("int8"), models=PUBLIC_MODELS) as triton:
        yield triton


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = access.with_key(grpcclient.InferenceServerClient(server.grpc_url))
    yield client
    client.close()


def _digits(client, image: np.ndarray, **parameters) -> dict:
    tensor = grpcclient.InferInput("image", [1, *image.shape], "UINT8")
    tensor.set_data_from_numpy(image[None])
    result = client.infer("digits", [tensor], parameters=parameters or None)
    metadata = json.loads(result.as_numpy("metadata")[0, 0])
    return {"label": int(result.as_numpy("labels")[0, 0]), **metadata}


def _label(client, image: np.ndarray, **parameters) -> int:
    return int(_digits(client, image, **parameters)["label"])


def test_the_config_names_the_int8_versions_and_they_answer(client) -> None:
    named = read_pbtxt(FOLDER / "config.pbtxt")["version_policy"]["specific"]["versions"]
    assert {str(v) for v in SERVED} <= set(named)
    for version, (source, method) in SERVED.items():
        assert client.is_model_ready("digits_classifier", str(version))
        metrics = json.loads((FOLDER / str(version) / "metrics.json").read_text())
        assert metrics["quantization"]["source_version"] == source
        assert metrics["quantization"]["method"] == method


def test_int8_of_version_2_loses_at_most_half_a_point_served(client, split) -> None:
    pixels = preprocessed(list(split.test_images))
    accuracy = {}
    for version in (2, 4):
        predicted = []
        for chunk in np.array_split(pixels, 3):  # max_batch_size 256
            tensor = grpcclient.InferInput("pixels", list(chunk.shape), "FP32")
            tensor.set_data_from_numpy(chunk)
            result = client.infer("digits_classifier", [tensor], model_version=str(version))
            predicted.append(result.as_numpy("probabilities").argmax(axis=1))
        accuracy[version] = float((np.concatenate(predicted) == split.test_y).mean())
    assert accuracy[2] > 0.9  # a real classifier, so the delta means something
    assert 100 * (accuracy[2] - accuracy[4]) <= MAX_LOSS_POINTS, accuracy


def test_int8_of_version_3_loses_at_most_half_a_point_through_digits(client, split) -> None:
    images = list(split.test_images)
    labels = {}
    with ThreadPoolExecutor(4) as pool:
        for v in ("3", "5"):
            answers = pool.map(functools.partial(_label, client, model_version=v), images)
            labels[v] = list(answers)
    accuracy = {v: float((np.array(p) == split.test_y).mean()) for v, p in labels.items()}
    assert accuracy["3"] > 0.8
    assert 100 * (accuracy["3"] - accuracy["5"]) <= MAX_LOSS_POINTS, accuracy


def test_build_measured_the_same_bound_on_every_held_out_set() -> None:
    for version in SERVED:
        held_out = json.loads((FOLDER / str(version) / "metrics.json").read_text())
        for name, figures in held_out["quantization"]["held_out"].items():
            assert figures["delta_points"] >= -MAX_LOSS_POINTS, (version, name, figures)


def test_an_unversioned_direct_request_reaches_the_highest_version(client) -> None:
    tensor = grpcclient.InferInput("pixels", [1, 784], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 784), np.float32))
    assert client.infer("digits_classifier", [tensor]).get_response().model_version == "5"


def test_a_canary_to_an_int8_version_through_the_traffic_policy(server, client, split) -> None:
    images = list(split.test_images[:120])
    with TrafficController(server.http_url, "digits") as traffic:
        try:
            status = traffic.set({"3": 80, "5": 20})
            assert status.default_version == "3"
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda i: _digits(client, i), images))
        finally:
            traffic.set({"2": 100})  # the shipped policy
    served = Counter((a["classifier"]["version"], a["routing"]) for a in answers)
    assert served[("5", "weighted")] > 0 and served[("3", "weighted")] > 0, served
    assert sum(served.values()) == len(images)
