"""The request mix of the locust scenarios, as plain data (no locust import: unit-testable).

``Mix``: traffic against Triton's HTTP endpoint (KServe v2 JSON); ``GatewayMix``: the same
traffic through the API gateway's ``/v1`` routes. Both send:
* ``digits`` with single images of varied sizes (what users send);
* ``digits_classifier`` pinned to version 1 or 2 through the versioned route;
* a small share of bad requests (wrong dtype, image too small, unknown version) whose *expected*
  answer is a 4xx. Those are reported under their own names; only an unexpected answer (a 5xx,
  a transport error, or a 2xx to a bad request) is a failure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

IMAGE_SIDES = (8, 16, 28, 64, 128)
PINNED_VERSIONS = (1, 2)
BAD_REQUEST_SHARE = 0.03


@dataclass(frozen=True)
class Call:
    """One HTTP request of the mix and what a correct server answers."""

    name: str  # the name locust reports it under
    path: str
    body: dict[str, Any]
    expect_client_error: bool = False

    def verdict(self, status: int) -> str | None:
        """None when ``status`` is the right answer, else why the call failed."""
        if self.expect_client_error:
            if 400 <= status < 500:
                return None
            return f"expected a 4xx for a bad request, got {status}"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"


def resize_nearest(image: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour resize of a square image to ``side`` x ``side``."""
    index = np.arange(side) * image.shape[0] // side
    return image[np.ix_(index, index)]


def tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.reshape(-1).tolist(),
    }


class Mix:
    """Draws calls of the mix from a pool of held-out digits (seeded: reproducible)."""

    def __init__(self, images: np.ndarray, pixels: np.ndarray, seed: int = 0) -> None:
        self.images = images
        self.pixels = pixels
        self.rng = random.Random(seed)

    def digits_image(self) -> Call:
        side = self.rng.choice(IMAGE_SIDES)
        image = resize_nearest(self.images[self.rng.randrange(len(self.images))], side)
        body = {"inputs": [tensor("image", image[None], "UINT8")]}
        return Call(f"digits {side}x{side}", "/v2/models/digits/infer", body)

    def pinned_classifier(self) -> Call:
        version = self.rng.choice(PINNED_VERSIONS)
        row = self.pixels[self.rng.randrange(len(self.pixels))].astype(np.float32)
        body = {"inputs": [tensor("pixels", row[None], "FP32")]}
        return Call(
            f"digits_classifier v{version}",
            f"/v2/models/digits_classifier/versions/{version}/infer",
            body,
        )

    def bad_request(self) -> Call:
        kind = self.rng.randrange(3)
        if kind == 0:
            image = self.images[0].astype(np.float32)[None]
            body = {"inputs": [tensor("image", image, "FP32")]}
            return Call("expected 4xx: wrong dtype", "/v2/models/digits/infer", body, True)
        if kind == 1:
            body = {"inputs": [tensor("image", np.zeros((1, 4, 4), np.uint8), "UINT8")]}
            return Call("expected 4xx: image too small", "/v2/models/digits/infer", body, True)
        row = self.pixels[0].astype(np.float32)[None]
        body = {"inputs": [tensor("pixels", row, "FP32")]}
        return Call(
            "expected 4xx: unknown version",
            "/v2/models/digits_classifier/versions/99/infer",
            body,
            True,
        )

    def next_call(self) -> Call:
        """digits 3 : pinned classifier 1, with BAD_REQUEST_SHARE bad requests."""
        if self.rng.random() < BAD_REQUEST_SHARE:
            return self.bad_request()
        return self.digits_image() if self.rng.random() < 0.75 else self.pinned_classifier()


class GatewayMix(Mix):
    """The same mix through the gateway: JSON pixels, versioned routes, problem+json errors."""

    def digits_image(self) -> Call:
        side = self.rng.choice(IMAGE_SIDES)
        image = resize_nearest(self.images[self.rng.randrange(len(self.images))], side)
        body = {"pixels": image.tolist(), "top_k": 3}
        return Call(f"gateway digits {side}x{side}", "/v1/models/digits/predict", body)

    def pinned_classifier(self) -> Call:
        version = self.rng.choice(PINNED_VERSIONS)
        image = self.images[self.rng.randrange(len(self.images))]
        body = {"pixels": image.tolist()}
        return Call(
            f"gateway digits v{version}", f"/v1/models/digits/versions/{version}/predict", body
        )

    def bad_request(self) -> Call:
        kind = self.rng.randrange(3)
        pixels = self.images[0].tolist()
        if kind == 0:
            return Call(
                "expected 4xx: top_k out of range",
                "/v1/models/digits/predict",
                {"pixels": pixels, "top_k": 11},
                True,
            )
        if kind == 1:
            return Call(
                "expected 4xx: image too small",
                "/v1/models/digits/predict",
                {"pixels": [[0] * 4] * 4},
                True,
            )
        return Call(
            "expected 4xx: unknown model",
            "/v1/models/no_such_model/predict",
            {"pixels": pixels},
            True,
        )


@cache
def held_out_pool() -> tuple[np.ndarray, np.ndarray]:
    """(images, pixels) of 64 held-out digits, loaded once per process.

    Loading imports scikit-learn (seconds on a busy machine): the locustfile calls this at
    import, before locust's run timer starts, so that no user spends its run loading data.
    """
    from mlapi_tools.build.digits_data import load_split

    split = load_split()
    return split.test_images[:64], split.test_x[:64]


def default_mix(seed: int = 0, gateway: bool = False) -> Mix:
    images, pixels = held_out_pool()
    kind = GatewayMix if gateway else Mix
    return kind(images, pixels, seed)
