"""Request bodies of the OpenAI-compatible routes, and the parameters they refuse.

A parameter the project's models cannot honour is refused (400 naming it) unless it has its
neutral value (e.g. ``presence_penalty: 0``, ``n: 1``): nothing that would change the output
is ever ignored silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from mlapi_gateway import errors

# Parameters of OpenAI's API that these routes do not implement, with the values that mean
# "not used" (accepted, since they change nothing).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, False),
    "response_format": (None, {"type": "text"}),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "metadata": (None, {}),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "audio": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "dimensions": (None,),
}

Text = Annotated[str, StringConstraints(min_length=1)]


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class Sampling(BaseModel):
    """What completions and chat completions share: the model and its sampling parameters.

    The model checks the values (ranges, stop-string limits) and its refusal names the
    parameter; these types only make sure each reaches it as what it is.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: Text
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted: names the end user, changes nothing

    def stops(self) -> list[str] | None:
        """Return ``stop`` as a list (None: no stop strings)."""
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else self.stop

    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionBody(Sampling):
    """POST /completions: one prompt (a string, or a list holding one string)."""

    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]

    def prompt_text(self) -> str:
        """Return the one prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(BaseModel):
    """A text part of a message's content (the only kind of part accepted)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class Message(BaseModel):
    """One chat message: a role and text content (tool calls, images and audio are refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """Return the message's text (its parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatBody(Sampling):
    """POST /chat/completions: the conversation, rendered to one prompt (chat_template)."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: int | None = None

    def token_limit(self) -> int | None:
        """Return the completion budget (``max_completion_tokens`` is the newer name)."""
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


class EmbeddingBody(BaseModel):
    """POST /embeddings: one text or a list of texts; floats or base64 of float32."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Text
    input: Text | Annotated[list[Text], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    def texts(self) -> list[str]:
        """Return the inputs as a list."""
        return [self.input] if isinstance(self.input, str) else self.input


def parse_body(schema: type[BaseModel], raw: bytes) -> Any:
    """Validate ``raw`` JSON as ``schema``; refuse unknown parameters that are not neutral.

    Raise RequestInvalidError whose first field is the parameter (``messages.0.role``).
    """
    try:
        body = schema.model_validate_json(raw)
    except ValidationError as exc:
        problems: dict[str, errors.FieldError] = {}  # one per parameter (union members repeat)
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"] if not _is_union_tag(part))
            problems.setdefault(where, errors.FieldError(where or "body", _message(error)))
        first = next(iter(problems.values()))
        raise errors.RequestInvalidError(
            f"invalid parameter '{first.field}': {first.message}", list(problems.values())
        ) from exc
    unsupported = [
        name
        for name, value in (body.model_extra or {}).items()
        if value not in NEUTRAL.get(name, ())
    ]
    if unsupported:
        raise errors.RequestInvalidError(
            f"unsupported parameter{'s' if len(unsupported) > 1 else ''}: "
            f"{', '.join(unsupported)} (docs/openai.md lists what is supported)",
            [errors.FieldError(name, "not supported by this API") for name in unsupported],
        )
    return body


def _is_union_tag(part: object) -> bool:
    # pydantic names the union member it tried (``str``, ``constrained-str``, ``list[...]``)
    # in the location; parameter names are identifiers.
    if not isinstance(part, str):
        return False
    return part in ("str", "int", "float", "bool", "list", "dict") or not part.isidentifier()


def _message(error: Any) -> str:
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON: {error.get('ctx', {}).get('error', '')}".rstrip(": ")
    if error.get("type") == "missing":
        return "required"
    return str(error.get("msg", "invalid value"))
