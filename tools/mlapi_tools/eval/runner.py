"""Run the served ``digits`` model, pinned to each classifier version, over the evaluation sets.

The server is either one this module starts (the launcher's TritonServer on free ports, with the
local access key) or a running one named by URL. Every image is one request, sent through the
project's client with the request parameter ``model_version``, so the answers are exactly what a
caller of that version gets: preprocessing, routing and the low-confidence rule included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlapi_client import access
from mlapi_client.async_client import AsyncClient
from mlapi_tools.eval.scoring import Answers, confusion_matrix, set_figures
from mlapi_tools.eval.sets import EvalSet
from mlapi_tools.local.triton_process import Ports, TritonServer

log = logging.getLogger(__name__)
CLASSIFIER = "digits_classifier"
# Requests in flight: the server's two digits instances stay busy without queueing for long.
CONCURRENCY = 8
READY_TIMEOUT_S = 180


@dataclass(frozen=True)
class SetResult:
    """One version's answers and figures on one set."""

    version: int
    eval_set: EvalSet
    answers: Answers

    @property
    def figures(self) -> dict[str, Any]:
        return set_figures(self.eval_set.is_digit, self.eval_set.labels, self.answers)

    @property
    def confusion(self) -> list[list[int]]:
        return confusion_matrix(self.eval_set.labels, self.answers.labels).tolist()


def built_versions(repository: Path) -> list[int]:
    """Classifier versions with a built model in the repository."""
    folder = repository / CLASSIFIER
    return sorted(
        int(p.name) for p in folder.glob("[0-9]*") if p.name.isdigit() and any(p.glob("model.*"))
    )


@contextlib.contextmanager
def started_server(repository: Path, backend_dir: Path, log_path: Path) -> Iterator[str]:
    """Start tritonserver on free ports over ``repository``; yield its HTTP URL; always stop it."""
    server = TritonServer(
        [repository],
        backend_dir,
        ports=Ports.free(),
        die_with_parent=True,
        access_key=access.ensure_key(),
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        log.info("starting tritonserver (log: %s)", log_path)
        server.start(log_file)
        try:
            server.wait_ready(timeout_s=READY_TIMEOUT_S, models=("digits", CLASSIFIER))
            yield server.http_url
        finally:
            server.stop()


async def _answer(client: AsyncClient, image: Any, version: int) -> tuple[int, float, bool, Any]:
    result = await client.digits(image, top_k=1, version=version)
    if str(result.model_version) != str(version):
        raise RuntimeError(f"pinned version {version} was served by {result.model_version}")
    label = int(result.label) if result.label.isdigit() else -1
    reasons = result.metadata.get("low_confidence_reasons", [])
    return label, result.score, result.low_confidence, reasons


async def evaluate_async(
    url: str,
    versions: Sequence[int],
    sets: Sequence[EvalSet],
    concurrency: int = CONCURRENCY,
    progress: bool = True,
) -> list[SetResult]:
    """Every version's answers on every set, ``concurrency`` requests in flight."""
    from tqdm import tqdm

    total = len(versions) * sum(len(s) for s in sets)
    results = []
    async with AsyncClient(url) as client:
        live = {int(v) for v in await client.live_versions(CLASSIFIER)}
        missing = sorted(set(versions) - live)
        if missing:
            raise RuntimeError(f"{CLASSIFIER} versions {missing} are not live (live: {live})")
        gate = asyncio.Semaphore(concurrency)

        async def one(image: Any, version: int) -> tuple[int, float, bool, Any]:
            async with gate:
                answer = await _answer(client, image, version)
            bar.update()
            return answer

        with tqdm(total=total, unit="img", disable=not progress, desc="digits") as bar:
            for version in versions:
                for eval_set in sets:
                    bar.set_postfix_str(f"v{version} {eval_set.name}")
                    rows = await asyncio.gather(*(one(img, version) for img in eval_set.images))
                    results.append(SetResult(version, eval_set, Answers.collect(rows)))
    return results


def evaluate(
    url: str, versions: Sequence[int], sets: Sequence[EvalSet], progress: bool = True
) -> list[SetResult]:
    """Synchronous evaluate_async (the command line and the tests)."""
    return asyncio.run(evaluate_async(url, versions, sets, progress=progress))
