"""Every variable the processes read, from their settings classes: `env.example` and the README's table.

    python -m devstack.settings_doc          # rewrite both
    python -m devstack.settings_doc --check  # exit 1 if either is out of step (the tests run this)

Each group lists the fields its class adds or whose default it changes; a field's docstring is its
description, so a setting documented nowhere cannot exist.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from aitask_common.output_settings import OutputSettings
from aitask_common.provider import ProviderSettings
from aitask_common.settings import ServiceSettings
from aitask_common.webhook_settings import WebhookSettings
from devstack.processes import ROOT
from dispatcher_service.settings import DispatcherSettings
from openai_door.settings import OpenAIDoorSettings
from provider_openai.settings import OpenAISettings
from provider_volcengine.settings import VolcengineSettings
from task_service.settings import TaskServiceSettings
from upstream_simulator.settings import SimulatorSettings

ENV_EXAMPLE = ROOT / "env.example"
README = ROOT / "README.md"
TABLE_START = "<!-- settings table: python -m devstack.settings_doc -->"
TABLE_END = "<!-- end of settings table -->"

# (title, class, its base: fields the base already lists are left out unless their default changes)
GROUPS: list[tuple[str, type[BaseSettings], type[BaseSettings] | None]] = [
    ("every service", ServiceSettings, None),
    ("webhooks (task service and dispatcher)", WebhookSettings, ServiceSettings),
    ("outputs (task service, dispatcher and the storage tools)", OutputSettings, WebhookSettings),
    ("task service (`python -m task_service`)", TaskServiceSettings, OutputSettings),
    ("dispatcher (`python -m dispatcher_service`)", DispatcherSettings, OutputSettings),
    ("OpenAI-compatible door (`python -m openai_door`)", OpenAIDoorSettings, ServiceSettings),
    ("every provider", ProviderSettings, ServiceSettings),
    ("Volcengine provider (`python -m provider_volcengine`)", VolcengineSettings, ProviderSettings),
    ("OpenAI provider (`python -m provider_openai`)", OpenAISettings, ProviderSettings),
    (
        "upstream simulator (`python -m upstream_simulator`; `make run` starts it when no vendor key is set)",
        SimulatorSettings,
        None,
    ),
]


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, the settings field it fills, its default as .env would spell it,
    and what it does."""

    name: str
    field: str
    default: str
    description: str


def variable_name(settings_class: type[BaseSettings], name: str, field: FieldInfo) -> str:
    """The variable a field reads: its first alias, else its name with the class's prefix, upper case."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0].upper()
    if isinstance(alias, str):
        return alias.upper()
    return (str(settings_class.model_config.get("env_prefix", "")) + name).upper()


def spelled(value: Any) -> str:
    """A default as a .env line would give it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def variables(settings_class: type[BaseSettings], base: type[BaseSettings] | None) -> list[Variable]:
    """The variables a group documents."""
    found = []
    for name, field in settings_class.model_fields.items():
        inherited = base.model_fields.get(name) if base else None
        if inherited is not None and inherited.default == field.default and inherited.description == field.description:
            continue
        if not field.description:
            raise ValueError(f"{settings_class.__name__}.{name} has no docstring: say what the setting does")
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        description = " ".join(field.description.split())
        found.append(Variable(variable_name(settings_class, name, field), name, spelled(default), description))
    return found


def env_example() -> str:
    """The whole `env.example`."""
    lines = [
        "# Every variable aitask's processes read, with its default. Copy this file to .env and uncomment what you",
        "# change: the processes read .env from their working folder, and the environment wins over it.",
        "# Generated from the settings classes by `python -m devstack.settings_doc`; a test keeps it in step.",
    ]
    for title, settings_class, base in GROUPS:
        lines += ["", f"# --- {title.replace('`', '')}"]
        for variable in variables(settings_class, base):
            lines += [f"# {variable.description}", f"# {variable.name}={variable.default}"]
    return "\n".join(lines) + "\n"


def readme_table() -> str:
    """The README's settings table, between its markers."""
    rows = [TABLE_START, "", "| variable | default | what it does |", "|---|---|---|"]
    for title, settings_class, base in GROUPS:
        rows.append(f"| **{title}** | | |")
        for variable in variables(settings_class, base):
            default = f"`{variable.default}`" if variable.default else "–"
            rows.append(f"| `{variable.name}` | {default} | {variable.description.replace('|', '/')} |")
    return "\n".join([*rows, "", TABLE_END])


def readme_with_table(readme: str) -> str:
    """The README with its settings table replaced by the generated one."""
    start, end = readme.index(TABLE_START), readme.index(TABLE_END) + len(TABLE_END)
    return readme[:start] + readme_table() + readme[end:]


def main() -> int:
    """Rewrite `env.example` and the README's table, or with --check report whether they are in step."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a file is out of step")
    check = parser.parse_args().check
    wanted = {ENV_EXAMPLE: env_example(), README: readme_with_table(README.read_text())}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of step with the settings classes: python -m devstack.settings_doc")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
