"""`env.example` and the README's settings table are made from the settings classes and stay in step with them;
`make run` says what a `.env` changes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

from devstack.__main__ import dotenv_report
from devstack.processes import ROOT
from devstack.settings_doc import GROUPS, env_example, variables


def test_env_example_and_readme_table_are_in_step() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack.settings_doc", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("title", "settings_class", "base"), GROUPS, ids=[group[1].__name__ for group in GROUPS])
def test_every_documented_variable_is_the_one_the_class_reads(
    title: str, settings_class: type[BaseSettings], base: type[BaseSettings] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    documented = variables(settings_class, base)
    assert documented, title
    probed = 0
    for variable in documented:
        # Set the variable to a value other than its default, and see the class read it into its field.
        field = settings_class.model_fields[variable.field]
        annotation = field.annotation
        value: object
        if annotation is str:
            # Values these two accept: a level name, and a queue shard's number.
            value = {"LOG_LEVEL": "warning", "QUEUE_SHARDS_SERVED": "0"}.get(variable.name, "probe-value")
        elif annotation is int:
            # Within an upper bound too (a nice value stops at 19), and unlike any default.
            upper = next((bound.le for bound in field.metadata if getattr(bound, "le", None) is not None), None)
            value = 12345 if upper is None else upper
        elif annotation is float:
            # Within a ratio's bounds too, and unlike any default.
            value = 0.4375 if any(getattr(bound, "le", None) == 1 for bound in field.metadata) else 12345.0
        else:
            continue
        monkeypatch.setenv(variable.name, str(value))
        assert getattr(settings_class(_env_file=None), variable.field) == value, variable.name  # type: ignore[call-arg]
        monkeypatch.delenv(variable.name)
        probed += 1
    assert probed >= len(documented) // 2


def test_a_setting_without_a_docstring_is_refused() -> None:
    class Undocumented(BaseSettings):
        model_config = SettingsConfigDict(use_attribute_docstrings=True)

        documented: int = 1
        """Says what it does."""
        silent: int = 2

    with pytest.raises(ValueError, match="Undocumented.silent has no docstring"):
        variables(Undocumented, None)


def test_env_example_leaves_every_value_commented_out() -> None:
    # An active line would set, for every process at once, a value meant for one (each has its own METRICS_PORT).
    lines = [line for line in env_example().splitlines() if line and not line.startswith("#")]
    assert lines == []


def test_make_run_reports_what_a_dotenv_changes() -> None:
    report = dotenv_report(
        {"AI_TIMEOUT": "30", "REDIS_URL": "redis://elsewhere/0", "LOG_LEVEL": "DEBUG"},
        stack_env={"REDIS_URL": "redis://127.0.0.1:6380/0"},
        environment={"LOG_LEVEL": "INFO"},
    )
    assert report.splitlines() == [
        "aitask: .env found; it overrides the defaults of: AI_TIMEOUT",
        "  ignored, set in the environment instead: LOG_LEVEL",
        "  ignored, make run sets them for its own stack: REDIS_URL",
    ]
    assert dotenv_report({}, {}, {}) == ""
