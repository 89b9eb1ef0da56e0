"""The public ``digits`` model: request parsing, version routing, classifier calls, responses.

``digits`` is a Python (BLS) model rather than an ensemble because the classifier version is
chosen per request (pinning, weighted canary, sticky keys; see traffic_policy) and every response
names the version that served it and why. The model.py adapter supplies a ClassifierBackend (BLS
calls, readiness checks, metrics); all other logic is here, unit-tested without a server.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from mlapi_backend import traffic_policy
from mlapi_backend.classifier_inputs import (
    PreparedImages,
    VersionProfile,
    legacy_profile,
    prepare,
    read_profiles,
)
from mlapi_backend.classifier_repository import repository_versions, version_folders
from mlapi_backend.errors import (
    InvalidInputError,
    MlapiBackendError,
    ModelConfigError,
    UnavailableError,
)
from mlapi_backend.model_config import ModelConfig, read_pbtxt
from mlapi_backend.postprocessing import (
    DEFAULT_LOW_CONFIDENCE_THRESHOLD,
    low_confidence_reasons,
    ood_score,
    rank,
)
from mlapi_backend.preprocessing import MAX_SIDE, MIN_SIDE, SIDE_CEILING, validate_image
from mlapi_backend.traffic_policy import Route, TrafficPolicy, routing_parameters

INPUTS = {"image": "TYPE_UINT8", "top_k": "TYPE_INT32"}
OUTPUTS = {
    "labels": "TYPE_STRING",
    "scores": "TYPE_FP32",
    "low_confidence": "TYPE_BOOL",
    "metadata": "TYPE_STRING",
}
CLASSIFIER_INPUT = "pixels"
CLASSIFIER_OUTPUT = "probabilities"
DEFAULT_POLICY = '{"weights": {"1": 100}}'

Outputs = dict[str, NDArray[Any]]
Pixels = NDArray[np.float32]  # [images, 64] or [images, 784]: the version's input kind
Probabilities = NDArray[np.float32]  # [images, classes]
# A metric update held back until a whole batch is served, and the requests it belongs to.
Record = tuple[list[int], Callable[[], None]]


class ClassifierError(MlapiBackendError):
    """A classifier call failed.

    ``unavailable``: the version is not loaded (unknown, unloaded, failed to load);
    ``overloaded``: the classifier is up but shed the call (full queue, queue timeout);
    ``crashed``: the version is loaded but its backend process died (until it is reloaded).
    """

    def __init__(
        self,
        message: str,
        unavailable: bool = False,
        overloaded: bool = False,
        crashed: bool = False,
    ) -> None:
        super().__init__(message)
        self.unavailable = unavailable
        self.overloaded = overloaded
        self.crashed = crashed


class ClassifierBackend(Protocol):
    """What the pipeline needs from the server (model.py implements it with BLS and metrics)."""

    def classify(self, version: int, pixels: Pixels) -> Probabilities: ...

    def live_versions(self, candidates: Iterable[int]) -> list[int]: ...

    def record_routes(self, version: int, reason: str, count: int) -> None: ...

    def record_shadow(
        self, primary: int, shadow: int, agreed: int, disagreed: int, failed: int
    ) -> None: ...


@dataclass(frozen=True)
class DigitsSettings:
    """What ``digits`` reads from its config and the classifier's, checked at load."""

    model_name: str
    classifier_name: str
    classifier_dir: Path
    policy: TrafficPolicy
    threshold: float
    default_top_k: int
    max_top_k: int
    labels: tuple[str, ...]
    # Image side bounds in pixels (config min_side_px / max_side_px; the gateway reads the same).
    min_side_px: int = MIN_SIDE
    max_side_px: int = MAX_SIDE
    # Versions the classifier's own config.pbtxt serves (its version_policy); empty when that
    # file is not beside this model (e.g. a model loaded through the API with its files inline).
    classifier_versions: frozenset[int] = frozenset()
    # The policy in this model's own config.pbtxt, when it parses (None otherwise): a served
    # policy that differs from it was installed through the repository API.
    repository_policy: TrafficPolicy | None = None
    # Input kind and low-confidence thresholds per classifier version (classifier_inputs), read
    # from each version folder's metrics.json at load; versions missing here get the 8x8 path.
    profiles: Mapping[int, VersionProfile] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ModelConfig, model_dir: Path) -> DigitsSettings:
        config.require_tensors(INPUTS, OUTPUTS)
        if config.max_batch_size < 1:
            raise ModelConfigError(f"model '{config.name}': needs max_batch_size >= 1")
        classifier = config.string_parameter("classifier_model", "digits_classifier")
        labels_path = model_dir / config.string_parameter(
            "classifier_labels", f"../{classifier}/labels.txt"
        )
        try:
            labels = tuple(
                line.strip() for line in labels_path.read_text().splitlines() if line.strip()
            )
        except OSError as exc:
            raise ModelConfigError(
                f"model '{config.name}': cannot read labels {labels_path}: {exc}"
            ) from exc
        max_top_k = config.int_parameter("max_top_k", 10, 1, len(labels))
        classifier_dir = (model_dir / ".." / classifier).resolve()
        min_side = config.int_parameter("min_side_px", MIN_SIDE, 1, SIDE_CEILING)
        max_side = config.int_parameter(
            "max_side_px", max(MAX_SIDE, min_side), min_side, SIDE_CEILING
        )
        threshold = config.float_parameter(
            "low_confidence_threshold", DEFAULT_LOW_CONFIDENCE_THRESHOLD, 0.0, 1.0
        )
        try:
            profiles = read_profiles(
                classifier_dir, sorted(version_folders(classifier_dir)), threshold
            )
        except ModelConfigError as exc:
            raise ModelConfigError(f"model '{config.name}': {exc}") from exc
        return cls(
            model_name=config.name,
            classifier_name=classifier,
            classifier_dir=classifier_dir,
            policy=TrafficPolicy.parse(
                config.string_parameter("traffic_policy", DEFAULT_POLICY), config.name
            ),
            threshold=threshold,
            default_top_k=config.int_parameter("default_top_k", 3, 1, max_top_k),
            max_top_k=max_top_k,
            labels=labels,
            min_side_px=min_side,
            max_side_px=max_side,
            classifier_versions=repository_versions(classifier_dir),
            repository_policy=_repository_policy(model_dir / "config.pbtxt", config.name),
            profiles=profiles,
        )

    def profile(self, version: int) -> VersionProfile:
        """Return what ``version`` is fed and how its answers are judged (8x8 if unknown)."""
        return self.profiles.get(version) or legacy_profile(version, self.threshold)

    @property
    def default_version(self) -> int:
        """The version most unpinned traffic goes to (ties: the newer version)."""
        return int(traffic_policy.default_version(self.policy.weights) or 0)

    def candidate_versions(self, extra: Iterable[int] = ()) -> set[int]:
        """Versions worth asking the server about: policy, shadow, and folders on disk."""
        return set(self.policy.named_versions) | version_folders(self.classifier_dir) | set(extra)

    @property
    def configured_versions(self) -> frozenset[int]:
        """Versions that should be live: named by the policy or by the classifier's config.

        A pinned request for one of these that is not ready is the server's fault (503), not
        the caller's (400).
        """
        return self.policy.named_versions | self.classifier_versions


def _repository_policy(path: Path, model: str) -> TrafficPolicy | None:
    if not path.is_file():
        return None
    try:
        raw = ModelConfig.from_json(read_pbtxt(path))
        return TrafficPolicy.parse(raw.string_parameter("traffic_policy", DEFAULT_POLICY), model)
    except Exception:  # a broken file on disk is not what is being served
        return None


@dataclass(frozen=True)
class ParsedRequest:
    """A valid request: its images, k, where it is routed, and its prepared classifier inputs.

    ``prepared`` caches one PreparedImages per input kind, so a request served by one version
    and shadowed or re-routed to a version of another kind is prepared once for each kind.
    """

    images: NDArray[np.uint8]  # [count, height, width], validated
    top_k: int
    route: Route
    prepared: dict[str, PreparedImages] = field(default_factory=dict, compare=False, repr=False)

    @property
    def count(self) -> int:
        return int(self.images.shape[0])

    def inputs(self, kind: str) -> PreparedImages:
        """Return the images as ``kind``'s classifier input (prepared on first use)."""
        if kind not in self.prepared:
            self.prepared[kind] = prepare(kind, self.images)
        return self.prepared[kind]


class DigitsPipeline:
    """Parse, route and classify ``digits`` requests; build their responses."""

    def __init__(self, settings: DigitsSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.rng = rng or random.Random()

    def parse(
        self,
        image: NDArray[np.uint8] | None,
        top_k: NDArray[Any] | None,
        parameters: Mapping[str, Any] | None = None,
    ) -> ParsedRequest:
        """Validate one request's tensors (batch axis first) and parameters; route; prepare.

        The images are prepared for the routed version's input kind here, so that a failure
        there fails this request alone.
        """
        s = self.settings
        if image is None:
            raise InvalidInputError(
                "image", "a UINT8 tensor [batch, height, width]", "no 'image' input"
            )
        if image.ndim != 3 or image.shape[0] < 1:
            raise InvalidInputError(
                "image",
                "shape [batch, height, width] with batch >= 1",
                f"shape {list(image.shape)}",
            )
        k = s.default_top_k
        if top_k is not None:
            values = np.asarray(top_k).reshape(-1)
            if values.size != image.shape[0] or np.unique(values).size != 1:
                raise InvalidInputError(
                    "top_k", "one value shared by every image of the request", f"{values.tolist()}"
                )
            k = int(values[0])
            if not 1 <= k <= s.max_top_k:
                raise InvalidInputError("top_k", f"an integer in 1..{s.max_top_k}", str(k))
        pinned, routing_key = routing_parameters(parameters or {})
        validate_image(image[0], min_side=s.min_side_px, max_side=s.max_side_px)
        route = s.policy.route(pinned, routing_key, self.rng.random())
        parsed = ParsedRequest(image, k, route)
        parsed.inputs(s.profile(route.version).input_kind)
        return parsed

    def check_policy(self, backend: ClassifierBackend) -> list[int] | None:
        """At load: refuse a policy naming a version that is not live; return the live versions.

        Only a policy installed through the repository API (one that differs from this
        model's config.pbtxt) is checked here, and then the server is up. The repository's own
        policy is not (None is returned): it loads at server start-up, when Triton 2.51 knows no
        load order between a BLS model and the models it calls, answers readiness checks with
        "Server not ready", and was seen to abort (boost lock_exception) when the classifier
        failed to load meanwhile. Routing then answers 503 for a version that never became
        ready. Triton marks all versions of one classifier load ready together, so "some ready,
        the policy's not" means the policy is wrong.
        """
        s = self.settings
        if s.policy == s.repository_policy:
            return None
        try:
            live = sorted(backend.live_versions(s.candidate_versions()))
        except ClassifierError:  # the server itself is still starting
            return None
        if live:
            s.policy.require_live(live, s.model_name, s.classifier_name)
        return live

    def run(
        self, parsed: Sequence[ParsedRequest | Exception], backend: ClassifierBackend
    ) -> list[Outputs | Exception]:
        """Classify every valid request (one classifier call per version) and build responses.

        Route and shadow metrics are recorded once every group is served, so a batch that
        raises (and is rerun request by request) has counted nothing; a failed update fails
        the requests it counts.
        """
        results: list[Outputs | Exception] = [
            item if isinstance(item, Exception) else RuntimeError("not classified")
            for item in parsed
        ]
        groups: dict[int, list[tuple[int, ParsedRequest]]] = {}
        for index, item in enumerate(parsed):
            if isinstance(item, ParsedRequest):
                groups.setdefault(item.route.version, []).append((index, item))
        records: list[Record] = []
        for version, members in groups.items():
            for index, outcome in self._serve_group(version, members, backend, records):
                results[index] = outcome
        for indexes, record in records:
            try:
                record()
            except Exception as exc:
                for index in indexes:
                    results[index] = exc
        return results

    def _serve_group(
        self,
        version: int,
        members: list[tuple[int, ParsedRequest]],
        backend: ClassifierBackend,
        records: list[Record],
        tried: frozenset[int] = frozenset(),
    ) -> list[tuple[int, Outputs | Exception]]:
        kind = self.settings.profile(version).input_kind
        try:
            pixels = np.concatenate([r.inputs(kind).pixels for _, r in members])
        except Exception as exc:  # preparing for a fallback kind must not escape the batch
            return [(index, exc) for index, _ in members]
        try:
            probabilities = backend.classify(version, pixels)
        except ClassifierError as exc:
            if exc.overloaded:
                return [(index, UnavailableError(str(exc))) for index, _ in members]
            if not (exc.unavailable or exc.crashed):
                return [(index, exc) for index, _ in members]
            return self._version_unavailable(
                version, members, backend, records, exc, tried | {version}
            )
        except Exception as exc:  # never let one group's failure escape and fail the batch
            failure = ClassifierError(f"{self.settings.classifier_name} version {version}: {exc!r}")
            return [(index, failure) for index, _ in members]
        shadow = self._shadow(version, members, probabilities, backend)
        if shadow is not None:
            records.append(([index for index, _ in members], shadow))
        outcomes: list[tuple[int, Outputs | Exception]] = []
        # One route update per reason for the group (each is a message to the server), naming
        # every request it counts.
        routed: dict[str, tuple[list[int], list[int]]] = {}
        offset = 0
        for index, request in members:
            count = request.count
            try:
                outcome: Outputs | Exception = self.respond(
                    request, probabilities[offset : offset + count]
                )
                indexes, counts = routed.setdefault(request.route.reason, ([], []))
                indexes.append(index)
                counts.append(count)
            except Exception as exc:  # a bug in one request's answer fails that request only
                outcome = exc
            outcomes.append((index, outcome))
            offset += count
        for reason, (indexes, counts) in routed.items():
            records.append((indexes, partial(backend.record_routes, version, reason, sum(counts))))
        return outcomes

    def _version_unavailable(
        self,
        version: int,
        members: list[tuple[int, ParsedRequest]],
        backend: ClassifierBackend,
        records: list[Record],
        error: ClassifierError,
        tried: frozenset[int],
    ) -> list[tuple[int, Outputs | Exception]]:
        """Answer the requests of a version that cannot serve: fall back, 503 or 400.

        Pinned requests get a 503 naming a configured (or crashed) version, else a 400 naming
        the live versions; routed ones fall back to a live version, else 503.
        """
        s = self.settings
        try:
            live = sorted(backend.live_versions(s.candidate_versions()))
        except ClassifierError:
            live = []
        outcomes: list[tuple[int, Outputs | Exception]] = []
        pinned = [(i, r) for i, r in members if r.route.reason == "pinned"]
        pinned_error: Exception
        if error.crashed:
            pinned_error = UnavailableError(
                f"model_version {version}: {error} (its backend process died; it serves again "
                "once reloaded)"
            )
        elif version in s.configured_versions:
            pinned_error = UnavailableError(
                f"model_version {version}: {s.classifier_name} version {version} is configured "
                f"but not ready (it failed to load, or is loading); live versions: {live}"
            )
        else:
            pinned_error = InvalidInputError(
                "model_version",
                f"a live version of {s.classifier_name}: {live}",
                f"{version}, which is not loaded",
            )
        outcomes.extend((index, pinned_error) for index, _ in pinned)
        routed = [(i, r) for i, r in members if r.route.reason != "pinned"]
        by_weight = [
            v for v, _ in sorted(self.settings.policy.weights, key=lambda vw: (-vw[1], -vw[0]))
        ]
        alternatives = [v for v in by_weight if v not in tried and v in live]
        if routed and alternatives:
            rerouted = [
                (i, replace(r, route=Route(alternatives[0], "fallback"))) for i, r in routed
            ]
            outcomes.extend(self._serve_group(alternatives[0], rerouted, backend, records, tried))
        else:
            unavailable = UnavailableError(
                f"{error}; no live version to fall back to (policy versions {sorted(by_weight)}, "
                f"tried {sorted(tried)}, live {live})"
            )
            outcomes.extend((i, unavailable) for i, _ in routed)
        return outcomes

    def _shadow(
        self,
        version: int,
        members: list[tuple[int, ParsedRequest]],
        served: Probabilities,
        backend: ClassifierBackend,
    ) -> Callable[[], None] | None:
        """Send a copy to the shadow version, compare top-1 labels, discard its answers.

        The copy is prepared for the shadow's own input kind. Returns the metric update to make (None without a shadow).
        """
        shadow = self.settings.policy.shadow
        if shadow is None or shadow == version:
            return None
        count = sum(r.count for _, r in members)
        try:
            kind = self.settings.profile(shadow).input_kind
            pixels = np.concatenate([r.inputs(kind).pixels for _, r in members])
            shadowed = backend.classify(shadow, pixels)
            agreed = int((shadowed.argmax(axis=1) == served.argmax(axis=1)).sum())
        except Exception:  # the shadow must never affect the served answer
            return partial(backend.record_shadow, version, shadow, 0, 0, count)
        return partial(backend.record_shadow, version, shadow, agreed, count - agreed, 0)

    def respond(self, request: ParsedRequest, probabilities: Probabilities) -> Outputs:
        """Ranked labels/scores, low-confidence flag and metadata for each image of a request."""
        s = self.settings
        profile = s.profile(request.route.version)
        prepared = request.inputs(profile.input_kind)
        labels, scores, flags, metadata = [], [], [], []
        for preprocessing, flag, row in zip(
            prepared.metadata, prepared.flags, probabilities, strict=True
        ):
            ranked = rank(row, request.top_k)
            top1 = float(ranked.scores[0])
            reasons = low_confidence_reasons(
                top1,
                profile.min_score,
                flag == "blank",
                not_a_digit=ranked.rest_probability,
                max_not_a_digit=profile.max_not_a_digit,
                flag=flag,
            )
            labels.append([s.labels[i].encode() for i in ranked.indices])
            scores.append(ranked.scores)
            flags.append([bool(reasons)])
            meta = {
                "model": s.model_name,
                "classifier": {"name": s.classifier_name, "version": str(request.route.version)},
                "routing": request.route.reason,
                "preprocessing": preprocessing,
                "low_confidence_threshold": profile.min_score,
                "low_confidence_reasons": reasons,
                "top1_margin": round(ranked.top1_margin, 6),
                "not_a_digit_probability": round(ranked.rest_probability, 6),
                "top1_score": round(top1, 6),
                "ood_score": round(ood_score(ranked.rest_probability), 6),
                "max_not_a_digit": profile.max_not_a_digit,
                "calibration": {
                    "temperature": profile.temperature,
                    "thresholds_from": profile.source,
                },
            }
            metadata.append([json.dumps(meta).encode()])
        return {
            "labels": np.array(labels, dtype=np.object_),
            "scores": np.stack(scores).astype(np.float32),
            "low_confidence": np.array(flags, dtype=np.bool_),
            "metadata": np.array(metadata, dtype=np.object_),
        }
