from __future__ import annotations

import json

import pytest

from mlapi_gateway import errors
from mlapi_gateway.problems import render, status_of


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.RequestInvalidError("bad", [errors.FieldError("body.x", "wrong", "int")]), 400),
        (errors.AuthenticationRequiredError("no key"), 401),
        (errors.ScopeMissingError("no scope"), 403),
        (errors.NotFoundError("none", ["a"]), 404),
        (errors.ConflictError("done"), 409),
        (errors.RateLimitedError("slow down", 3), 429),
        (errors.ModelFailedError("broke"), 502),
        (errors.UnavailableError("later", 5), 503),
        (errors.DeadlineExceededError("late"), 504),
        (errors.GatewayError("?"), 500),
    ],
)
def test_every_error_has_its_status_and_a_problem_document(
    error: errors.GatewayError, status: int
) -> None:
    assert status_of(error) == status
    response = render(error, "/v1/x")
    assert response.status_code == status
    assert response.media_type == "application/problem+json"
    body = json.loads(response.body)
    assert body["status"] == status and body["detail"] == error.detail
    assert body["type"].startswith("https://")


def test_headers_and_extensions() -> None:
    limited = render(errors.RateLimitedError("slow down", 3))
    assert limited.headers["Retry-After"] == "3"
    assert render(errors.UnavailableError("later", 7)).headers["Retry-After"] == "7"
    assert (
        render(errors.AuthenticationRequiredError("x"))
        .headers["WWW-Authenticate"]
        .startswith("Bearer")
    )
    invalid = json.loads(
        render(
            errors.RequestInvalidError("bad", [errors.FieldError("body.x", "wrong", "int")])
        ).body
    )
    assert invalid["errors"] == [{"field": "body.x", "message": "wrong", "expected": "int"}]
    assert json.loads(render(errors.NotFoundError("none", ["a", "b"])).body)["available"] == [
        "a",
        "b",
    ]
