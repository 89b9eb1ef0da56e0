"""Routes of the async jobs: submit (202 + Location), poll, cancel.

This is where the job store's failures become HTTP answers: an unreachable store is a 503
with Retry-After, never a 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mlapi_gateway import errors
from mlapi_gateway.auth import Principal
from mlapi_gateway.jobs.store import Job, StoreUnavailableError
from mlapi_gateway.routes import json_response
from mlapi_gateway.schemas import JobCreate, JobView, parse_as
from mlapi_gateway.services import Services, read_body, services
from mlapi_gateway.webhooks import FIELD, check_target

router = APIRouter(tags=["jobs"])


@contextlib.contextmanager
def _store(svc: Services) -> Iterator[None]:
    try:
        yield
    except StoreUnavailableError as exc:
        raise errors.UnavailableError(
            "the job store is unavailable; retry later", svc.settings.retry_after_s
        ) from exc


async def _check_webhook(svc: Services, url: str) -> None:
    if not svc.settings.webhook_secret:
        raise errors.RequestInvalidError(
            "webhooks are disabled on this gateway",
            [
                errors.FieldError(
                    FIELD,
                    "this gateway has no webhook secret (MLAPI_GATEWAY_WEBHOOK_SECRET is not "
                    "set), so it cannot sign webhooks",
                    "no webhook_url (poll GET /v1/jobs/{id}), or ask the operator to set the "
                    "secret",
                )
            ],
        )
    await check_target(url, svc.runner.allow)


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobView,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}}},
        }
    },
)
async def create_job(request: Request) -> Response:
    """Queue one input or a batch for ``model``; the answer's ``id`` is polled at Location."""
    svc = services(request)
    principal = await svc.gate.admit(request, "predict")
    job = parse_as(JobCreate, await read_body(request, svc.settings.max_body_bytes))
    assert isinstance(job, JobCreate)
    request.state.model = job.model
    adapter = svc.inference.adapter(job.model)
    if len(job.inputs) > svc.settings.jobs_max_inputs:
        raise errors.RequestInvalidError(
            "too many inputs",
            [
                errors.FieldError(
                    "body.inputs",
                    f"{len(job.inputs)} inputs",
                    f"at most {svc.settings.jobs_max_inputs}",
                )
            ],
        )
    if job.webhook_url is not None:
        await _check_webhook(svc, job.webhook_url)
    problems: list[errors.FieldError] = []
    for index, item in enumerate(job.inputs):
        try:
            await adapter.check(adapter.parse(item), job.version)  # what the model would refuse
        except errors.RequestInvalidError as exc:
            problems += [
                errors.FieldError(
                    e.field.replace("body", f"body.inputs.{index}", 1), e.message, e.expected
                )
                for e in exc.errors
            ]
    if problems:
        raise errors.RequestInvalidError("some inputs are invalid", problems)
    with _store(svc):
        created = await svc.jobs.create(
            principal.id, job.model, job.version, job.inputs, job.webhook_url
        )
    location = f"/v1/jobs/{created.id}"
    return json_response(created.view(), 202, headers={"Location": location})


async def _owned(svc: Services, principal: Principal, job_id: str) -> Job:
    with _store(svc):
        job = await svc.jobs.get(job_id)
    if job is None or (job.owner != principal.id and "admin" not in principal.scopes):
        raise errors.NotFoundError(f"no job '{job_id}' (it may have expired)")
    return job


@router.get("/v1/jobs/{job_id}", response_model=JobView)
async def get_job(request: Request, job_id: str) -> Response:
    """Status, progress, and the results once finished (until they expire)."""
    svc = services(request)
    principal = await svc.gate.admit(request, "predict")
    job = await _owned(svc, principal, job_id)
    return json_response(job.view())


@router.delete("/v1/jobs/{job_id}", response_model=JobView)
async def cancel_job(request: Request, job_id: str) -> Response:
    """Cancel a queued or running job (409 when it already finished)."""
    svc = services(request)
    principal = await svc.gate.admit(request, "predict")
    job = await _owned(svc, principal, job_id)
    with _store(svc):
        if not await svc.jobs.cancel(job_id):
            raise errors.ConflictError(f"job '{job_id}' already finished as {job.status}")
        cancelled = await svc.jobs.get(job_id)
    return json_response(cancelled.view() if cancelled else {"id": job_id, "status": "cancelled"})
