from __future__ import annotations

import json

import pytest

from mlapi_gateway import errors
from mlapi_gateway.problems import render, status_of


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.RequestInvalid("bad", [errors.FieldError("body.x", "wrong", "int")]), 400),
        (errors.AuthenticationRequired("no key"), 401),
        (errors.ScopeMissing("no scope"), 403),
        (errors.NotFound("none", ["a"]), 404),
        (errors.Conflict("done"), 409),
        (errors.RateLimited("slow down", 3), 429),
        (errors.ModelFailed("broke"), 502),
        (errors.Unavailable("later", 5), 503),
        (errors.DeadlineExceeded("late"), 504),
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
    limited = render(errors.RateLimited("slow down", 3))
    assert limited.headers["Retry-After"] == "3"
    assert render(errors.Unavailable("later", 7)).headers["Retry-After"] == "7"
    assert (
        render(errors.AuthenticationRequired("x")).headers["WWW-Authenticate"].startswith("Bearer")
    )
    invalid = json.loads(
        render(errors.RequestInvalid("bad", [errors.FieldError("body.x", "wrong", "int")])).body
    )
    assert invalid["errors"] == [{"field": "body.x", "message": "wrong", "expected": "int"}]
    assert json.loads(render(errors.NotFound("none", ["a", "b"])).body)["available"] == ["a", "b"]
