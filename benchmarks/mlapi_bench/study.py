"""The batching study: one running server, model configs switched through the repository API.

For each model and each variant (dynamic batching off or on with a queue delay and preferred
batch sizes, one or two instances) the model is reloaded with its served config changed in
``dynamic_batching`` and ``instance_group`` only, checked, and swept over concurrency. The
shipped config is restored at the end, whatever happened.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlapi_bench.stack import MODEL_REPOSITORY, config_dict, control_client
from mlapi_client import MlapiError

log = logging.getLogger(__name__)


class StudyError(RuntimeError):
    """A variant could not be applied to the server (load failed, or it served something else)."""


@dataclass(frozen=True)
class Variant:
    """A scheduling setting of one model: batching off (``queue_delay_us`` None) or on."""

    queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 1

    @property
    def label(self) -> str:
        text = "batching off" if self.queue_delay_us is None else f"delay {self.queue_delay_us}us"
        if self.preferred_batch_sizes:
            text += " pref " + ",".join(map(str, self.preferred_batch_sizes))
        return text + f" x{self.instances}"

    def apply(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with its dynamic batching and instance group replaced by this variant's."""
        changed = copy.deepcopy(config)
        changed.pop("dynamic_batching", None)
        if self.queue_delay_us is not None:
            batching: dict[str, Any] = {"max_queue_delay_microseconds": self.queue_delay_us}
            if self.preferred_batch_sizes:
                batching["preferred_batch_size"] = list(self.preferred_batch_sizes)
            changed["dynamic_batching"] = batching
        changed["instance_group"] = [{"kind": "KIND_CPU", "count": self.instances}]
        return changed

    def matches(self, served: dict[str, Any]) -> bool:
        """Whether a config read back from the server is this variant."""
        batching = served.get("dynamic_batching")
        count = sum(int(group.get("count", 1)) for group in served.get("instance_group", []))
        if count != self.instances:
            return False
        if self.queue_delay_us is None:
            return batching is None
        if batching is None:
            return False
        delay = int(batching.get("max_queue_delay_microseconds", 0))
        preferred = tuple(int(x) for x in batching.get("preferred_batch_size", []))
        # Without preferred sizes the server fills in its own (max_batch_size): not ours to check.
        wanted = self.preferred_batch_sizes or preferred
        return delay == self.queue_delay_us and preferred == wanted


FULL_VARIANTS = (
    Variant(None),
    Variant(0),
    Variant(100),
    Variant(500),
    Variant(2000),
    Variant(500, (4, 8)),
    Variant(None, instances=2),
    Variant(500, instances=2),
)
QUICK_VARIANTS = (Variant(None), Variant(100), Variant(500))


class ModelSwitcher:
    """Reloads one model with a variant of its served config on an explicit-mode server.

    Through the project's client (repository API: load with a config override, model config).
    """

    def __init__(self, http_url: str, model: str) -> None:
        self.client = control_client(http_url)
        self.model = model
        try:
            self.shipped = self.client.model_config(model)
        except MlapiError:
            self.client.close()
            raise

    def use(self, variant: Variant) -> None:
        log.info("reloading %s with %s", self.model, variant.label)
        try:
            self.client.load_model(self.model, config=variant.apply(self.shipped))
        except MlapiError as exc:
            raise StudyError(f"{self.model} refused {variant.label}: {exc}") from exc
        served = self.client.model_config(self.model)
        if not variant.matches(served):
            raise StudyError(
                f"{self.model} serves {served.get('dynamic_batching')} x "
                f"{served.get('instance_group')} instead of {variant.label}"
            )

    def restore(self, shipped_config: dict[str, Any]) -> None:
        """Reload the model with its shipped config (an override, so the reload always happens)."""
        log.info("restoring %s to its repository config", self.model)
        self.client.load_model(self.model, config=shipped_config)

    def close(self) -> None:
        self.client.close()


@contextmanager
def switching(http_url: str, model: str) -> Iterator[ModelSwitcher]:
    switcher = ModelSwitcher(http_url, model)
    try:
        yield switcher
    finally:
        try:
            switcher.restore(config_dict(MODEL_REPOSITORY / model / "config.pbtxt"))
        finally:
            switcher.close()


def best_variant(rows: Sequence[dict[str, Any]], concurrency: float) -> dict[str, Any]:
    """The row with the highest throughput at ``concurrency`` (ties: lower p99)."""
    candidates = [r for r in rows if r["level"] == concurrency]
    if not candidates:
        raise ValueError(f"no measurement at concurrency {concurrency}")
    return max(candidates, key=lambda r: (r["throughput_per_s"], -r["p99_us"]))
