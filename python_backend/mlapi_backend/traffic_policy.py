"""Traffic policy of a public model over its classifier versions: weights, sticky keys, shadow.

The policy is the JSON value of the model-config parameter ``traffic_policy``::

    {"weights": {"1": 90, "2": 10}, "shadow": 2}

- ``weights``: percent of unpinned traffic per version, numbers >= 0 that sum to 100
  (within ``WEIGHT_SUM_TOLERANCE``); a version at 0 is dropped.
- ``shadow`` (optional): a version that receives a copy of every request not already served by
  it; its answers are discarded and only compared with the served ones.

At load time the model also refuses a policy naming a version (weighted or shadow) that is not
live (``require_live``), so a bad policy never replaces a working one.

Routing of one request, first rule that applies:

1. ``pinned``   the request parameter ``model_version`` names a version;
2. ``default``  the policy has a single version;
3. ``sticky``   the request parameter ``routing_key`` is hashed onto the weights, so one key
                always gets the same version while the policy is unchanged;
4. ``weighted`` a random draw by the weights.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlapi_backend.errors import InvalidInputError, ModelConfigError

MAX_ROUTING_KEY_CHARS = 256
MAX_VERSION = 2**63 - 1  # Triton model versions are int64
# Weights are percentages; the tolerance admits a policy echoed back by ``to_dict`` (6 decimals).
WEIGHT_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Route:
    """Where one request goes and why."""

    version: int
    reason: str  # pinned | default | sticky | weighted | fallback


@dataclass(frozen=True)
class TrafficPolicy:
    """How unpinned requests split between classifier versions, and the shadow version."""

    weights: tuple[tuple[int, float], ...]  # (version, share), sorted by version, shares sum to 1
    shadow: int | None = None

    @classmethod
    def single(cls, version: int) -> TrafficPolicy:
        return cls(((version, 1.0),))

    @classmethod
    def parse(cls, text: str, model: str) -> TrafficPolicy:
        """Parse and validate the JSON policy; errors name the model and the offending field."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelConfigError(
                f"model '{model}': traffic_policy is not valid JSON: {exc}"
            ) from None
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("weights"), dict)
            or not raw["weights"]
        ):
            raise ModelConfigError(
                f"model '{model}': traffic_policy needs a non-empty object 'weights' "
                f'(e.g. {{"weights": {{"1": 90, "2": 10}}}}), got {text!r}'
            )
        unknown = sorted(set(raw) - {"weights", "shadow"})
        if unknown:
            raise ModelConfigError(f"model '{model}': traffic_policy has unknown fields {unknown}")
        weights: dict[int, float] = {}
        for key, value in raw["weights"].items():
            version = _version(key, f"model '{model}': traffic_policy weight key")
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value < math.inf
            ):
                raise ModelConfigError(
                    f"model '{model}': traffic_policy weight of version {key} must be a number >= 0, got {value!r}"
                )
            if value > 0:
                weights[version] = float(value)
        total = sum(weights.values())
        if abs(total - 100.0) > WEIGHT_SUM_TOLERANCE:
            raise ModelConfigError(
                f"model '{model}': traffic_policy weights are percentages and must sum to 100, "
                f"got {total:g}"
            )
        shadow = raw.get("shadow")
        shadow_version = (
            None if shadow is None else _version(shadow, f"model '{model}': traffic_policy shadow")
        )
        shares = tuple((v, w / total) for v, w in sorted(weights.items()))
        return cls(shares, shadow_version)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "weights": {str(v): round(100 * share, 6) for v, share in self.weights}
        }
        if self.shadow is not None:
            data["shadow"] = self.shadow
        return data

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(v for v, _ in self.weights)

    @property
    def named_versions(self) -> frozenset[int]:
        """Every version the policy sends traffic to: weighted ones and the shadow."""
        shadow = {self.shadow} if self.shadow is not None else set()
        return frozenset(self.versions) | shadow

    def require_live(self, live: Iterable[int], model: str, classifier: str) -> None:
        """Refuse the policy unless every version it names is live (ready) on the server."""
        live_set = set(live)
        missing = sorted(self.named_versions - live_set)
        if missing:
            raise ModelConfigError(
                f"model '{model}': traffic_policy names {classifier} version(s) {missing}, "
                f"which are not live; live versions: {sorted(live_set)}"
            )

    def pick(self, unit: float) -> int:
        """Return the version whose cumulative-share bucket contains ``unit`` in [0, 1)."""
        edges = []
        total = 0.0
        for _, share in self.weights:
            total += share
            edges.append(total)
        index = bisect.bisect_right(edges, unit)
        return self.weights[min(index, len(self.weights) - 1)][0]

    def route(self, pinned: int | None, routing_key: str | None, draw: float) -> Route:
        """Choose the version for one request; ``draw`` is a uniform random number in [0, 1)."""
        if pinned is not None:
            return Route(pinned, "pinned")
        if len(self.weights) == 1:
            return Route(self.weights[0][0], "default")
        if routing_key is not None:
            return Route(self.pick(key_unit(routing_key)), "sticky")
        return Route(self.pick(draw), "weighted")


def default_version(
    weights: Mapping[Any, float] | Iterable[tuple[Any, float]], live: Iterable[Any] = ()
) -> str | None:
    """Return a model's "default version": one rule for the model, client and gateway.

    With a traffic policy (``weights``: version -> share, in any unit), the version most
    unpinned traffic goes to, ties to the newer version. Without one, the newest ``live``
    version (Triton's own rule for an unversioned request under the ``latest`` policy).
    ``None`` when there is neither. Versions compare as integers; the result is a string.
    """
    pairs = list(weights.items() if isinstance(weights, Mapping) else weights)
    if pairs:
        return str(max(pairs, key=lambda vw: (float(vw[1]), int(vw[0])))[0])
    versions = sorted(int(v) for v in live if str(v).isdigit())
    return str(versions[-1]) if versions else None


def key_unit(key: str) -> float:
    """Map a routing key to a stable uniform number in [0, 1) (same key, same number, anywhere)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def routing_parameters(parameters: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """Validate the request parameters ``model_version`` and ``routing_key``."""
    pinned = None
    if "model_version" in parameters:
        value = parameters["model_version"]
        try:
            pinned = _version(value, "")
        except ModelConfigError:
            raise InvalidInputError(
                "model_version", 'a positive integer version (e.g. 1 or "1")', repr(value)
            ) from None
    key = parameters.get("routing_key")
    if key is not None and (
        not isinstance(key, str) or not key or len(key) > MAX_ROUTING_KEY_CHARS
    ):
        raise InvalidInputError(
            "routing_key",
            f"a non-empty string of at most {MAX_ROUTING_KEY_CHARS} characters",
            repr(key)[:80],
        )
    return pinned, key


def _version(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ModelConfigError(f"{what} must be a positive integer version, got {value!r}")
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise ModelConfigError(
            f"{what} must be a positive integer version, got {value!r}"
        ) from None
    if not 1 <= version <= MAX_VERSION or str(version) != str(value).strip():
        raise ModelConfigError(f"{what} must be a positive integer version, got {value!r}")
    return version
