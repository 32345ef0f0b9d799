"""Reads the repository's Dockerfile: each stage's base, environment, command and RUN lines.

Enough of the Dockerfile grammar for our own file (exec-form CMD/ENTRYPOINT,
`ENV k=v ...`, line continuations, `FROM x AS name`), so the checks and tests
use what the images really run instead of a second copy of it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    """One `FROM ... AS name` stage, with what it inherits from a parent stage already applied."""

    name: str
    base: str
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    runs: list[str] = field(default_factory=list)

    @property
    def command(self) -> list[str]:
        """ENTRYPOINT followed by CMD: the argv the container starts with."""
        return [*self.entrypoint, *self.cmd]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, arguments = pending.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def _exec_form(arguments: str, where: str) -> list[str]:
    value = json.loads(arguments)
    if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise ValueError(f"{where}: only the exec (JSON list) form is used here: {arguments}")
    return value


def _env_pairs(arguments: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for token in shlex.split(arguments):
        name, equals, value = token.partition("=")
        if not equals:
            raise ValueError(f"ENV {arguments!r}: use the NAME=value form")
        pairs[name] = value
    return pairs


def stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Every named stage of the Dockerfile at `path`."""
    result: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, arguments in instructions(path.read_text()):
        if keyword == "FROM":
            words = arguments.split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            parent = result.get(base)
            current = Stage(name=name, base=base)
            if parent is not None:
                current.env = dict(parent.env)
                current.workdir = parent.workdir
                current.entrypoint = list(parent.entrypoint)
                current.cmd = list(parent.cmd)
                current.user = parent.user
            if name:
                result[name] = current
        elif current is None:
            continue  # global ARGs before the first FROM
        elif keyword == "ENV":
            current.env |= _env_pairs(arguments)
        elif keyword == "WORKDIR":
            current.workdir = arguments
        elif keyword == "USER":
            current.user = arguments
        elif keyword == "RUN":
            current.runs.append(arguments)
        elif keyword == "ENTRYPOINT":
            current.entrypoint = _exec_form(arguments, f"{current.name} ENTRYPOINT")
            current.cmd = []  # Docker resets an inherited CMD when ENTRYPOINT is set
        elif keyword == "CMD":
            current.cmd = _exec_form(arguments, f"{current.name} CMD")
    return result
