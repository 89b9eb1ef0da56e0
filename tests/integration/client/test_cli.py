"""The ``mlapi`` command against the real server: text and JSON output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlapi_client.cli import main
from mlapi_client.cli.common import EXIT_CONNECTION_FAILED, EXIT_OK, EXIT_USER_ERROR
from mlapi_tools.build.digits_data import DigitsSplit
from mlapi_tools.local.triton_process import TritonServer


@pytest.fixture(scope="module")
def digit_png(split: DigitsSplit, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("cli") / "digit.png"
    Image.fromarray(np.asarray(split.test_images[1])).resize((32, 32)).save(path)
    return path, str(split.test_y[1])


def test_predict_digits_text(
    url: str, digit_png: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, truth = digit_png
    code = main(
        ["predict", "digits", "--image", str(path), "--top-k", "4", "--version", "1", "--url", url]
    )
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert out.startswith(f"prediction: {truth} (score ")
    assert "classifier version 1)" in out
    assert out.count("\n  ") == 4  # four ranked lines


def test_predict_digits_json_with_protocol_flag(
    triton: TritonServer, digit_png: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, truth = digit_png
    argv = [
        "predict",
        "digits",
        "--image",
        str(path),
        "--json",
        "--protocol",
        "grpc",
        "--url",
        triton.grpc_url,
    ]
    assert main(argv) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["predictions"][0]["label"] == truth
    assert result["model_version"] == result["metadata"]["classifier"]["version"]


def test_models_lists_and_shows_contracts(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--url", url]) == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    assert ["digits_classifier", "2", "READY"] in [line.split() for line in table]
    assert main(["models", "digits", "--json", "--url", url]) == EXIT_OK
    contract = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in contract["inputs"]] == ["image", "top_k"]


def test_exit_codes(
    url: str, digit_png: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "no_such_model", "--url", url, "--no-retry"]) == EXIT_USER_ERROR
    assert "ModelNotFoundError" in capsys.readouterr().err
    argv = [
        "predict",
        "digits",
        "--image",
        str(digit_png[0]),
        "--top-k",
        "99",
        "--url",
        url,
        "--json",
    ]
    assert main(argv) == EXIT_USER_ERROR
    error = json.loads(capsys.readouterr().err)
    assert (error["error"], error["field"]) == ("InvalidInputError", "top_k")
    scheme = url.split("://")[0]
    assert (
        main(["models", "--url", f"{scheme}://127.0.0.1:1", "--no-retry"]) == EXIT_CONNECTION_FAILED
    )


def test_installed_entry_point(triton: TritonServer, digit_png: tuple[Path, str]) -> None:
    mlapi = Path(sys.executable).with_name("mlapi")
    reply = subprocess.run(
        [
            str(mlapi),
            "predict",
            "digits",
            "--image",
            str(digit_png[0]),
            "--url",
            f"http://{triton.http_url}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert reply.returncode == EXIT_OK, reply.stderr
    assert reply.stdout.startswith(f"prediction: {digit_png[1]} ")
