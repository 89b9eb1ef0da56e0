"""helm test: one real prediction through the gateway with the test key (exit 0 = it worked).

Sends an 8x8 "1" to the digits model and checks that the top prediction is a 1.
Standard library only, so it runs in any image with Python 3.
"""

import json
import os
import sys
import urllib.request

ONE = (
    [[0, 0, 0, 255, 255, 0, 0, 0], [0, 0, 255, 255, 255, 0, 0, 0]]
    + [[0, 0, 0, 255, 255, 0, 0, 0]] * 5
    + [[0, 0, 255, 255, 255, 255, 0, 0]]
)


def _api_key() -> str:
    """The key from the file MLAPI_API_KEY_FILE (a mounted Secret), else MLAPI_API_KEY."""
    path = os.environ.get("MLAPI_API_KEY_FILE")
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return os.environ["MLAPI_API_KEY"]


def main() -> int:
    url = os.environ["GATEWAY_URL"].rstrip("/") + "/v1/models/digits/predict"
    request = urllib.request.Request(
        url,
        data=json.dumps({"pixels": ONE, "top_k": 3}).encode(),
        headers={
            "Authorization": "Bearer " + _api_key(),
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        body = json.load(reply)
        version = reply.headers.get("X-Model-Version")
    predictions = body.get("predictions") or []
    if not predictions or str(predictions[0].get("label")) != "1":
        print(f"unexpected prediction: {body}", file=sys.stderr)
        return 1
    top = predictions[0]
    print(f"predicted {top['label']} (score {top['score']:.3f}) with digits version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
