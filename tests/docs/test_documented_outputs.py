"""What the docs show a command printing is what the server prints (seeded, deterministic runs).

docs/streaming.md shows the replies of curl calls to ``text_generator``; sampling is seeded or
greedy there, so the server must answer exactly that. Each shown event or reply is compared
field by field; ``...`` in the doc stands for events left out.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mlapi_client import access
from mlapi_tools.local.triton_process import TritonServer

ROOT = Path(__file__).resolve().parents[2]
CURL = re.compile(
    r"^\$ curl [^\n]*?(/v2/models/text_generator/(generate_stream|generate))\b.*?-d '([^']*)'\n"
    r"(.*?)(?=^\$ |^```)",
    re.MULTILINE | re.DOTALL,
)


def documented_calls() -> list[tuple[str, dict[str, Any], list[str]]]:
    """(path, body, shown output lines) of every successful curl call in docs/streaming.md."""
    text = (ROOT / "docs" / "streaming.md").read_text()
    calls = []
    for match in CURL.finditer(text):
        shown = [line for line in match.group(4).splitlines() if line.strip()]
        if any(line.startswith("HTTP/") for line in shown):
            continue  # an error example: its status line is checked by the gateway and SSE tests
        calls.append((match.group(1), json.loads(match.group(3)), shown))
    return calls


CALLS = documented_calls()


def test_the_doc_shows_a_stream_and_a_whole_reply() -> None:
    assert sorted(path.rsplit("/", 1)[1] for path, _, _ in CALLS) == ["generate", "generate_stream"]


def _post(server: TritonServer, path: str, body: dict[str, Any]) -> str:
    request = urllib.request.Request(
        f"http://{server.http_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **access.http_headers(access.read_key())},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        return str(reply.read().decode())


@pytest.mark.parametrize(("path", "body", "shown"), CALLS, ids=[p for p, _, _ in CALLS])
def test_documented_reply_is_the_servers(
    triton: TritonServer, path: str, body: dict[str, Any], shown: list[str]
) -> None:
    answer = _post(triton, path, body)
    if path.endswith("generate_stream"):
        events = [json.loads(line[len("data: ") :]) for line in answer.splitlines() if line]
        documented = [json.loads(line[len("data: ") :]) for line in shown if line != "..."]
        gap = shown.index("...") if "..." in shown else len(shown)
        head, tail = documented[:gap], documented[gap:]
        text = "".join(event.get("text_output", "") for event in events)
        assert events[: len(head)] == head, text
        assert events[len(events) - len(tail) :] == tail, f"{text!r}; last: {events[-1]}"
    else:
        (line,) = shown
        assert json.loads(answer) == json.loads(line)
