"""The prompt a chat conversation becomes for a completion model (docs/openai.md).

Each message is one line ``<Role>: <text>`` (System, User or Assistant; ``developer`` reads
as System) and the prompt ends with ``Assistant:``, which the model continues. The template
is short on purpose: text_generator feeds every prompt character through a decode step and
takes at most its ``max_prompt_chars`` (256 by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
REPLY_CUE = "Assistant:"


class ChatMessage(Protocol):
    """A message as the template reads it."""

    @property
    def role(self) -> str: ...

    def text(self) -> str: ...


def render(messages: Sequence[ChatMessage]) -> str:
    """Return the prompt of ``messages``: one ``Role: text`` line each, then ``Assistant:``."""
    lines = [f"{ROLE_LABELS[m.role]}: {' '.join(m.text().split())}" for m in messages]
    return "\n".join([*lines, REPLY_CUE])
