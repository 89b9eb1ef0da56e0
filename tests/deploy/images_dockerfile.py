"""A small Dockerfile reader for the image tests: stages, instructions, ENV, exec forms.

It understands what docker/*/Dockerfile use (comments, backslash continuations, ARG defaults,
``FROM ... AS``, ``KEY=value`` ENV and LABEL pairs, JSON exec forms) and refuses the rest, so a
Dockerfile the tests cannot read fails loudly instead of passing unread.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the instruction, continuations joined
    comments: tuple[str, ...]  # the comment lines directly above it
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of ENTRYPOINT / CMD / HEALTHCHECK CMD; refuses the shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1].strip() if " CMD " in f" {text}" else ""
        value = json.loads(text)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"line {self.line}: {self.keyword} is not an exec-form array")
        return value

    def pairs(self) -> dict[str, str]:
        """``KEY=value`` pairs of ENV, LABEL or ARG (quotes removed)."""
        out = {}
        for word in shlex.split(self.args):
            if "=" not in word:
                if self.keyword == "ARG":
                    out[word] = ""
                    continue
                raise ValueError(f"line {self.line}: {self.keyword} needs KEY=value, got {word!r}")
            key, value = word.split("=", 1)
            out[key] = value
        return out


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        if not found:
            raise AssertionError(f"stage {self.name or self.base}: no {keyword}")
        return found[-1]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for instruction in self.all("ENV"):
            out.update(instruction.pairs())
        return out

    def labels(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            out.update(instruction.pairs())
        return out


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]
    text: str

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def resolve(self, value: str) -> str:
        """``${NAME}`` / ``$NAME`` of a global ARG replaced by its default."""
        for name, default in self.global_args.items():
            value = value.replace(f"${{{name}}}", default).replace(f"${name}", default)
        return value


KNOWN = {
    "ARG", "FROM", "RUN", "COPY", "ENV", "LABEL", "USER", "WORKDIR", "EXPOSE", "HEALTHCHECK",
    "ENTRYPOINT", "CMD",
}  # fmt: skip


def parse(path: Path) -> Dockerfile:
    lines = path.read_text().splitlines()
    instructions: list[Instruction] = []
    comments: list[str] = []
    i = 0
    while i < len(lines):
        raw = lines[i].strip()
        start = i + 1
        i += 1
        if not raw:
            comments = []
            continue
        if raw.startswith("#"):
            comments.append(raw.lstrip("#").strip())
            continue
        parts = [raw]
        while parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1]
            while i < len(lines) and lines[i].strip().startswith("#"):
                i += 1  # comments inside a continued instruction are dropped, as Docker does
            parts.append(lines[i].strip())
            i += 1
        keyword, _, args = " ".join(parts).partition(" ")
        keyword = keyword.upper()
        if keyword not in KNOWN:
            raise ValueError(f"{path}:{start}: instruction {keyword} is not understood here")
        instructions.append(Instruction(keyword, " ".join(args.split()), tuple(comments), start))
        comments = []
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"{path}:{instruction.line}: only ARG may precede FROM")
            global_args.update(instruction.pairs())
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(path, global_args, stages, path.read_text())
