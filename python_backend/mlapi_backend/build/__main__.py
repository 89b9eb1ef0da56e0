"""`python -m mlapi_backend.build [--repository DIR]`: build every default model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mlapi_backend.build import digits_models, text_lm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the default models into a model repository.")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    digits_models.build(args.repository)
    text_lm.build(args.repository)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
