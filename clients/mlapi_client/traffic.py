"""Read and change a public model's traffic policy on a running Triton server.

The policy is the model-config parameter ``traffic_policy`` (see mlapi_backend.traffic_policy).
Changing it reloads the model through Triton's repository API with a config override: Triton
loads the new instance while the old one keeps serving, lets in-flight requests finish, then
swaps — no restart and no failed request. A policy the model rejects fails the load and leaves the
old policy serving. The override lives in the server's memory: a restart returns to the policy
in the repository's config.pbtxt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mlapi_client import access
from mlapi_client.errors import ConnectionFailedError, InvalidInputError, MlapiError

POLICY_PARAMETER = "traffic_policy"


@dataclass(frozen=True)
class TrafficStatus:
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
    """``["1=90", "2=10"]`` -> ``{"1": 90.0, "2": 10.0}``; raises InvalidInputError on bad pairs."""
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
    if not weights or sum(weights.values()) <= 0:
        raise InvalidInputError(
            "weights: at least one version needs a share above 0", field="weights"
        )
    return weights


class TrafficController:
    """Traffic policy of one public model, over Triton's HTTP API (``host:port``)."""

    def __init__(self, url: str, model: str = "digits", timeout_s: float = 60.0) -> None:
        self.model = model
        self._client = access.with_key(
            httpclient.InferenceServerClient(url, network_timeout=timeout_s)
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TrafficController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except InferenceServerException as exc:
            raise MlapiError(f"cannot {what}: {exc.message()}", status=exc.status()) from exc
        except OSError as exc:  # refused / reset / unreachable: tritonclient lets these through
            raise ConnectionFailedError(f"cannot {what}: {exc}") from exc

    def _config(self) -> dict[str, Any]:
        return dict(
            self._call(
                f"read the config of '{self.model}'",
                lambda: self._client.get_model_config(self.model),
            )
        )

    def show(self) -> TrafficStatus:
        config = self._config()
        params: Mapping[str, Any] = config.get("parameters", {})
        policy = json.loads(
            params.get(POLICY_PARAMETER, {}).get("string_value") or '{"weights": {}}'
        )
        classifier = params.get("classifier_model", {}).get("string_value", "")
        weights = {str(k): float(v) for k, v in policy.get("weights", {}).items()}
        live = self._live_versions(classifier) if classifier else []
        default = max(weights.items(), key=lambda kv: (kv[1], int(kv[0])))[0] if weights else ""
        shadow = policy.get("shadow")
        return TrafficStatus(
            self.model, classifier, weights, None if shadow is None else str(shadow), default, live
        )

    def set(self, weights: Mapping[str, float], shadow: int | None = None) -> TrafficStatus:
        """Install a new policy (reloads the model gracefully) and return what is now in force.

        Read-modify-write of the model config: two concurrent ``set`` calls race and the last
        one wins; have one operator (or one deployment job) own a model's policy.
        """
        policy: dict[str, Any] = {"weights": dict(weights)}
        if shadow is not None:
            policy["shadow"] = int(shadow)
        config = self._config()
        config.setdefault("parameters", {})[POLICY_PARAMETER] = {"string_value": json.dumps(policy)}
        try:
            self._client.load_model(self.model, config=json.dumps(config))
        except InferenceServerException as exc:
            if exc.status() == "400":  # the model refused the policy at load time
                raise InvalidInputError(
                    f"the server refused the policy (the previous one stays in force): {exc.message()}",
                    field="traffic_policy",
                    status=exc.status(),
                ) from exc
            raise MlapiError(
                f"cannot reload '{self.model}': {exc.message()}", status=exc.status()
            ) from exc
        except OSError as exc:
            raise ConnectionFailedError(
                f"no answer while reloading '{self.model}' ({exc}); the reload may still complete: "
                "check with `mlapi traffic show`"
            ) from exc
        return self.show()

    def _live_versions(self, classifier: str) -> list[str]:
        index = self._call("read the repository index", self._client.get_model_repository_index)
        return sorted(
            (
                str(entry.get("version"))
                for entry in index
                if entry.get("name") == classifier and entry.get("state") == "READY"
            ),
            key=int,
        )
