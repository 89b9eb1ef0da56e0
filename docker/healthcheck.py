"""Container HEALTHCHECK: exit 0 when ``http://127.0.0.1:$PORT_ENV<path>`` answers 200.

Usage: ``healthcheck.py PORT_ENV DEFAULT_PORT PATH`` (the images have no curl; Python they have).
"""

import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    port_env, default_port, path = argv
    url = f"http://127.0.0.1:{os.environ.get(port_env, default_port)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            return 0 if reply.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
