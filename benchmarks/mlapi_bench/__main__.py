"""``python -m mlapi_bench {sweep,study,capacity}``: see ``--help`` of each."""

from __future__ import annotations

import sys

from mlapi_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
