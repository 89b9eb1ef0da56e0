"""Container HEALTHCHECK and Kubernetes exec probe: exit 0 when every
``http://127.0.0.1:$PORT_ENV<path>`` answers 200.

Usage: ``healthcheck.py PORT_ENV DEFAULT_PORT PATH [PATH ...]`` (the images have no curl;
Python they have). The chart's Triton readiness asks one ``/v2/models/<m>/ready`` per public
model: ``/v2/health/ready`` is true with models missing under ``--strict-readiness=false``.
"""

import os
import sys
import urllib.request


def answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: healthcheck.py PORT_ENV DEFAULT_PORT PATH [PATH ...]", file=sys.stderr)
        return 2
    port_env, default_port, *paths = argv
    base = f"http://127.0.0.1:{os.environ.get(port_env, default_port)}"
    unready = [path for path in paths if not answers_200(base + path)]
    if unready:
        print(f"not ready: {' '.join(unready)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
