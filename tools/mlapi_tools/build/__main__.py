"""`python -m mlapi_tools.build [--repository DIR] [--only digits|text]`: build the default models.

``digits`` is digits_classifier versions 1 and 2 (digits_models) and 3 (digits_cnn), and their
INT8 versions 4 and 5 (quantize).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mlapi_tools.build import digits_cnn, digits_models, drift_profiles, quantize, text_lm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the default models into a model repository."
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--only", choices=("digits", "text"), help="build one family (default: all)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.only in (None, "digits"):
        digits_models.build(args.repository)
        digits_cnn.build(args.repository)
        quantize.build_digits(args.repository)  # INT8 versions 4 and 5 of versions 2 and 3
        drift_profiles.write_profiles(args.repository)  # drift references of the built versions
    if args.only in (None, "text"):
        text_lm.build(args.repository)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
