"""Read and change a public model's traffic policy on a running Triton server.

The policy is the model-config parameter ``traffic_policy`` (see mlapi_backend.traffic_policy).
Changing it reloads the model through Triton's repository API with a config override: Triton
loads the new instance while the old one keeps serving, lets in-flight requests finish, then
swaps — no restart and no failed request. The override lives in the server's memory: a restart
returns to the policy in the repository's config.pbtxt.

A policy is checked twice. Here, before any reload: weights are percentages that sum to 100, and
every version the policy names (weighted or shadow) must be live. Then by the model at load
time, with the same rules, so a policy sent around this client is refused too; a refused policy
fails the load and leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mlapi_backend.traffic_policy import default_version
from mlapi_client.async_client import AsyncClient, Retry
from mlapi_client.errors import ConnectionFailedError, InvalidInputError, MlapiError

POLICY_PARAMETER = "traffic_policy"
CLASSIFIER_PARAMETER = "classifier_model"
# Weights are percentages; the tolerance admits shares printed with a few decimals.
WEIGHT_SUM_TOLERANCE = 1e-3

T = TypeVar("T")


@dataclass(frozen=True)
class TrafficStatus:
    """A public model's traffic policy, default version and live classifier versions."""

    model: str
    classifier: str
    weights: dict[str, float]
    shadow: str | None
    default_version: str
    live_versions: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "classifier": self.classifier,
            "weights": self.weights,
            "shadow": self.shadow,
            "default_version": self.default_version,
            "live_versions": self.live_versions,
        }


def parse_weights(pairs: list[str]) -> dict[str, float]:
    """Parse ``["1=90", "2=10"]`` into ``{"1": 90.0, "2": 10.0}``.

    Raises InvalidInputError on bad pairs or when the shares do not sum to 100.
    """
    weights: dict[str, float] = {}
    for pair in pairs:
        version, sep, share = pair.partition("=")
        try:
            value = float(share)
            ok = bool(sep) and version.isdigit() and int(version) > 0 and 0 <= value < math.inf
        except ValueError:
            ok = False
        if not ok:
            raise InvalidInputError(
                f"weight {pair!r}: expected VERSION=SHARE, e.g. 1=90", field="weights"
            )
        weights[str(int(version))] = value
    check_weights(weights)
    return weights


def check_weights(weights: Mapping[str, float]) -> None:
    """Shares are percentages of unpinned traffic: they must sum to 100."""
    total = sum(weights.values())
    if abs(total - 100.0) > WEIGHT_SUM_TOLERANCE:
        shown = " ".join(f"{v}={w:g}" for v, w in weights.items()) or "none"
        raise InvalidInputError(
            f"weights: shares are percentages and must sum to 100, got {total:g} ({shown})",
            field="weights",
        )


def check_live(
    weights: Mapping[str, float], shadow: int | None, live: list[str], classifier: str
) -> None:
    """Refuse a policy that sends traffic (or a shadow copy) to a version that is not live."""
    named = {str(int(v)) for v, w in weights.items() if w > 0}
    if shadow is not None:
        named.add(str(int(shadow)))
    missing = sorted(named - set(live), key=int)
    if missing:
        raise InvalidInputError(
            f"the policy names {classifier} version(s) {', '.join(missing)}, which are not live; "
            f"live versions: {', '.join(live) or 'none'} (nothing was changed)",
            field="weights",
        )


class AsyncTrafficController:
    """Traffic policy of one public model, through a project client (which sends the access key).

    The caller owns ``client`` (the gateway shares its own; the CLI's wrapper opens one).
    ``retry`` applies to the reads (the reload itself is never retried).
    """

    def __init__(self, client: AsyncClient, model: str = "digits", *, retry: Retry = None) -> None:
        self.model = model
        self._client = client
        self._retry = retry

    async def show(self) -> TrafficStatus:
        """Return the policy in force, its default version and the classifier's live versions."""
        config = await self._config()
        params: Mapping[str, Any] = config.get("parameters", {})
        policy = json.loads(
            params.get(POLICY_PARAMETER, {}).get("string_value") or '{"weights": {}}'
        )
        classifier = params.get(CLASSIFIER_PARAMETER, {}).get("string_value", "")
        weights = {str(k): float(v) for k, v in policy.get("weights", {}).items()}
        live = await self._client.live_versions(classifier, retry=self._retry) if classifier else []
        default = default_version(weights) or ""
        shadow = policy.get("shadow")
        return TrafficStatus(
            self.model, classifier, weights, None if shadow is None else str(shadow), default, live
        )

    async def set(self, weights: Mapping[str, float], shadow: int | None = None) -> TrafficStatus:
        """Install a new policy (reloads the model gracefully) and return what is now in force.

        Refused before any reload (InvalidInputError, field ``weights``) when the shares do not
        sum to 100 or a named version is not live. Read-modify-write of the model config: two
        concurrent ``set`` calls race and the last one wins; have one operator (or one
        deployment job) own a model's policy.
        """
        check_weights(weights)
        config = await self._config()
        params = config.setdefault("parameters", {})
        classifier = params.get(CLASSIFIER_PARAMETER, {}).get("string_value", "")
        if classifier:
            live = await self._client.live_versions(classifier, retry=self._retry)
            check_live(weights, shadow, live, classifier)
        policy: dict[str, Any] = {"weights": dict(weights)}
        if shadow is not None:
            policy["shadow"] = int(shadow)
        params[POLICY_PARAMETER] = {"string_value": json.dumps(policy)}
        try:
            await self._client.load_model(self.model, config)
        except InvalidInputError as exc:  # the model refused the policy at load time
            raise InvalidInputError(
                f"the server refused the policy (the previous one stays in force): {exc.message}",
                field="traffic_policy",
                status=exc.status,
            ) from exc
        except ConnectionFailedError as exc:
            raise ConnectionFailedError(
                f"no answer while reloading '{self.model}' ({exc.message}); the reload may still "
                "complete: check with `mlapi traffic show`"
            ) from exc
        except MlapiError as exc:
            raise MlapiError(
                f"cannot reload '{self.model}': {exc.message}", status=exc.status
            ) from exc
        return await self.show()

    async def _config(self) -> dict[str, Any]:
        return await self._client.model_config(self.model, retry=self._retry)


class TrafficController:
    """Blocking form of AsyncTrafficController (the CLI's), on a private event loop."""

    def __init__(
        self,
        url: str,
        model: str = "digits",
        timeout_s: float = 60.0,
        triton_key: str | None = None,
    ) -> None:
        self.model = model
        self._loop = asyncio.new_event_loop()
        self._client = AsyncClient(url, timeout_s=timeout_s, triton_key=triton_key)
        self._async = AsyncTrafficController(self._client, model)

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(call)

    def show(self) -> TrafficStatus:
        """See AsyncTrafficController.show."""
        return self._run(self._async.show())

    def set(self, weights: Mapping[str, float], shadow: int | None = None) -> TrafficStatus:
        """See AsyncTrafficController.set."""
        return self._run(self._async.set(weights, shadow))

    def close(self) -> None:
        if not self._loop.is_closed():
            try:
                self._run(self._client.close())
            finally:
                self._loop.close()

    def __enter__(self) -> TrafficController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
