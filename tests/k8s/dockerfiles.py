"""A small Dockerfile reader: stages, instructions, exec-form commands. Enough for tests."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [value for key, value in self.instructions if key == keyword]
        return values[-1] if values else None

    def all(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise LookupError(f"no stage {name}")

    def expand(self, text: str) -> str:
        """Substitute `${ARG}` / `$ARG` with the defaults of the global ARGs."""
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: self.args.get(m.group(1) or m.group(2), m.group(0)),
            text,
        )


def logical_lines(text: str) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            parts = value.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages and keyword == "ARG":
            key, _, default = value.partition("=")
            args[key] = default
        elif stages:
            stages[-1].instructions.append((keyword, value))
    return Dockerfile(args=args, stages=stages)


def exec_form(value: str | None) -> list[str]:
    """CMD/ENTRYPOINT as an argv: JSON exec form, else the shell form split like sh."""
    if value is None:
        return []
    if value.startswith("["):
        parsed = json.loads(value)
        if not all(isinstance(item, str) for item in parsed):
            raise ValueError(f"not a list of strings: {value}")
        return list(parsed)
    return shlex.split(value)
