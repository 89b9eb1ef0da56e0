"""Reference profiles for drift: what each digits_classifier version answers on held-out digits.

For every version folder with a model.onnx, the held-out split of scikit-learn's digits (as
uint8 8x8 images, as a caller sends them) goes through the same preparation ``digits`` serves
that version with and through the exported graph itself (onnxruntime, one thread); the served
features of each image (``mlapi_backend.drift_monitor.image_observations``) are summarised
into ``drift_profile.json`` beside the model. Deterministic: fixed split, fixed graph, values
rounded to 6 digits, keys sorted.

`python -m mlapi_tools.build.drift_profiles [--repository DIR]` rewrites them; the digits
build calls it after training.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mlapi_backend.classifier_inputs import legacy_profile, prepare, read_profiles
from mlapi_backend.classifier_repository import version_folders
from mlapi_backend.drift import Observation, ReferenceProfile
from mlapi_backend.drift_monitor import PROFILE_FILE, image_observations, profile_document
from mlapi_tools.build.digits_data import HELD_OUT_FRACTION, SPLIT_SEED, load_split

log = logging.getLogger(__name__)
MODEL_NAME = "digits_classifier"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
# The digits model's default low-confidence threshold for versions without metrics (1 and 2).
LEGACY_THRESHOLD = 0.5


def classify(model_path: Path, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    """Run one exported version on prepared pixels (onnxruntime, one intra-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0])


def held_out_observations(
    model_dir: Path, version: int, images: NDArray[np.uint8]
) -> list[Observation]:
    """The served features of ``images`` on one version, as ``digits`` computes them."""
    labels = [
        line.strip() for line in (model_dir / "labels.txt").read_text().splitlines() if line.strip()
    ]
    profile = read_profiles(model_dir, [version], LEGACY_THRESHOLD).get(version)
    kind = (profile or legacy_profile(version, LEGACY_THRESHOLD)).input_kind
    prepared = prepare(kind, images)
    probabilities = classify(model_dir / str(version) / "model.onnx", prepared.pixels)
    top = probabilities.argmax(axis=1)
    names = [labels[i] for i in top]
    scores = probabilities[np.arange(len(top)), top]
    return image_observations(images.shape, prepared, names, scores)


def write_profiles(repository: Path) -> dict[int, Path]:
    """Write ``drift_profile.json`` beside every built version; return the files written."""
    model_dir = repository / MODEL_NAME
    images = load_split().test_images
    written = {}
    for version in sorted(version_folders(model_dir)):
        if not (model_dir / str(version) / "model.onnx").is_file():
            continue
        observations = held_out_observations(model_dir, version, images)
        profile = ReferenceProfile.build(observations)
        source = {
            "data": "scikit-learn digits, held-out split",
            "split_seed": SPLIT_SEED,
            "held_out_fraction": HELD_OUT_FRACTION,
            "images": len(observations),
        }
        document = _rounded(profile_document(profile, source))
        path = model_dir / str(version) / PROFILE_FILE
        text = json.dumps(document, indent=1, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        written[version] = path
        log.info(
            "drift profile: version %d, %d held-out images -> %s", version, len(observations), path
        )
    return written


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Write the reference profiles of a repository's digits_classifier versions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    write_profiles(args.repository)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
