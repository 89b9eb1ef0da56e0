"""The ``mlapi`` command line without a server: parsing, rendering, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlapi_client.cli import SUBCOMMANDS, build_parser, main
from mlapi_client.cli.common import (
    EXIT_CONNECTION_FAILED,
    EXIT_SERVER_ERROR,
    EXIT_USER_ERROR,
    exit_code,
)
from mlapi_client.cli.models import render_contract, render_entries
from mlapi_client.cli.predict import render_digits
from mlapi_client.errors import (
    ConnectionFailedError,
    InferenceTimeoutError,
    InvalidInputError,
    ModelNotFoundError,
    ModelUnavailableError,
    ServerError,
)
from mlapi_client.results import DigitsResult, ModelContract, ModelEntry, Prediction, TensorSpec


def test_every_registered_subcommand_is_reachable() -> None:
    parser = build_parser()
    assert len(SUBCOMMANDS) >= 2
    args = parser.parse_args(
        [
            "predict",
            "digits",
            "--image",
            "3.png",
            "--version",
            "1",
            "--top-k",
            "5",
            "--protocol",
            "grpc",
            "--url",
            "h:8001",
            "--json",
        ]
    )
    assert (args.image, args.version, args.top_k, args.protocol, args.url, args.json) == (
        Path("3.png"),
        1,
        5,
        "grpc",
        "h:8001",
        True,
    )
    assert callable(args.run)
    assert callable(parser.parse_args(["models"]).run)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["predict", "digits"])  # --image missing
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInputError("x"), EXIT_USER_ERROR),
        (ModelNotFoundError("x"), EXIT_USER_ERROR),
        (ModelUnavailableError("x"), EXIT_SERVER_ERROR),
        (InferenceTimeoutError("x"), EXIT_SERVER_ERROR),
        (ServerError("x"), EXIT_SERVER_ERROR),
        (ConnectionFailedError("x"), EXIT_CONNECTION_FAILED),
    ],
)
def test_exit_codes_separate_user_and_server_errors(error: Exception, code: int) -> None:
    assert exit_code(error) == code  # type: ignore[arg-type]


def test_unreadable_image_is_a_user_error_before_any_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "predict",
            "digits",
            "--image",
            str(tmp_path / "none.png"),
            "--url",
            "http://127.0.0.1:1",
            "--json",
        ]
    )
    assert code == EXIT_USER_ERROR
    error = json.loads(capsys.readouterr().err)
    assert error["error"] == "InvalidInputError"
    assert error["field"] == "image"


def test_bad_url_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--url", "ftp://h"]) == EXIT_USER_ERROR
    assert "unsupported URL scheme" in capsys.readouterr().err


def test_renderers() -> None:
    result = DigitsResult((Prediction("7", 0.91), Prediction("1", 0.05)), True, "2", {})
    text = render_digits(result)
    assert "prediction: 7 (score 0.9100, classifier version 2)" in text
    assert "low confidence: yes" in text
    table = render_entries(
        [ModelEntry("digits", "1", "READY"), ModelEntry("slow", "1", "UNAVAILABLE", "unloaded")]
    )
    assert table.splitlines()[0].split() == ["MODEL", "VERSION", "STATE", "REASON"]
    assert table.splitlines()[2].split() == ["slow", "1", "UNAVAILABLE", "unloaded"]
    contract = ModelContract(
        "m", ("1",), "python", 8, True, (TensorSpec("x", "INT32", (-1, 1), True),), ()
    )
    assert "  x  INT32 [-1, 1]  (optional)" in render_contract(contract)
