"""digits with the parameter ``observability`` "off", in a real server: it answers, with no cost
in its metadata and none of the statistics among Triton's metrics."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from mlapi_client import access
from mlapi_tools.build.digits_data import DigitsSplit
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import MODEL_REPOSITORY, own_triton

OFF = '  { key: "observability", value: { string_value: "off" } },'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    workdir = tmp_path_factory.mktemp("observability_off")
    repo = workdir / "repository"
    repo.mkdir()
    (repo / "digits_classifier").symlink_to(MODEL_REPOSITORY / "digits_classifier")
    shutil.copytree(
        MODEL_REPOSITORY / "digits", repo / "digits", ignore=shutil.ignore_patterns("__pycache__")
    )
    config = repo / "digits" / "config.pbtxt"
    text = config.read_text()
    assert text.count("parameters [") == 1
    config.write_text(text.replace("parameters [", "parameters [\n" + OFF))
    with own_triton(workdir, [repo], models=["digits"]) as started:
        yield started


def test_digits_answers_without_cost_or_statistics(
    server: TritonServer, split: DigitsSplit
) -> None:
    client = access.with_key(httpclient.InferenceServerClient(server.http_url))
    tensor = httpclient.InferInput("image", [4, 8, 8], "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(split.test_images[:4]))
    for _ in range(3):  # both instances serve
        result = client.infer("digits", [tensor])
        rows = [json.loads(row[0]) for row in result.as_numpy("metadata")]
        assert len(rows) == 4 and all("cost" not in row for row in rows)
        assert all(row["classifier"]["version"] for row in rows)
    client.close()
    metrics = httpx.get(server.metrics_url).text
    assert "nv_inference_request_success" in metrics  # Triton's own metrics are there
    for family in ("mlapi_predictions_total", "mlapi_cost_usd_total", "mlapi_drift_flag"):
        assert family not in metrics
    assert "statistics and cost estimates off" in (server_log := _log(server))
    assert "drift watched" not in server_log


def _log(server: TritonServer) -> str:
    return (server.repositories[0].parent / "tritonserver.log").read_text(errors="replace")
