"""`make run` writes the local stack's URLs to .local/stack.env; the operator CLIs read them, services never do."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitask_common.settings import LOCAL_STACK_ENV, ServiceSettings, load_settings
from devstack.__main__ import write_stack_env
from devstack.processes import Ports, service_environment
from dispatcher_service import queue_admin
from task_service import api_keys
from task_service.settings import TaskServiceSettings

STACK_REDIS = "redis://127.0.0.1:6380/0"
STACK_MONGO = "mongodb://127.0.0.1:27018/"


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the stack.env `make run` writes with its default ports, and no variables set."""
    for variable in ("REDIS_URL", "MONGO_URL", "MONGO_DATABASE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    ports = Ports()
    write_stack_env(tmp_path / LOCAL_STACK_ENV, ports, service_environment(ports, tmp_path / "logs", {}))
    return tmp_path


def test_make_run_writes_the_stack_urls(checkout: Path) -> None:
    lines = (checkout / ".local" / "stack.env").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert values["REDIS_URL"] == STACK_REDIS and values["MONGO_URL"] == STACK_MONGO
    assert values["AITASK_REST_URL"] == "http://127.0.0.1:8080" and values["AITASK_GRPC_ADDRESS"] == "127.0.0.1:8080"


def test_operator_settings_come_from_stack_env_when_the_environment_lacks_them(checkout: Path) -> None:
    settings = load_settings(ServiceSettings, local_stack=True)
    assert (settings.redis_url, settings.mongo_url) == (STACK_REDIS, STACK_MONGO)
    assert load_settings(TaskServiceSettings, local_stack=True).mongo_url == STACK_MONGO


def test_services_never_read_stack_env(checkout: Path) -> None:
    settings = load_settings(ServiceSettings)
    assert (settings.redis_url, settings.mongo_url) == ("redis://127.0.0.1:6379/0", "mongodb://127.0.0.1:27017/")


def test_the_environment_wins_then_stack_env_then_dot_env(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (checkout / ".env").write_text("REDIS_URL=redis://dotenv:6379/0\nMONGO_DATABASE=from-dotenv\n")
    monkeypatch.setenv("MONGO_URL", "mongodb://elsewhere:27017/")
    settings = load_settings(ServiceSettings, local_stack=True)
    assert settings.mongo_url == "mongodb://elsewhere:27017/"  # the environment
    assert settings.redis_url == STACK_REDIS  # stack.env over .env: the running stack ignores .env's URLs
    assert settings.mongo_database == "from-dotenv"  # .env still fills the rest


def test_queue_admin_finds_the_local_redis(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []

    def from_url(url: str, **_: object) -> None:
        used.append(url)
        raise ValueError("stop here")

    monkeypatch.setattr(queue_admin.Redis, "from_url", from_url)
    assert queue_admin.main(["status"]) == 2
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/1")
    queue_admin.main(["status"])
    assert used == [STACK_REDIS, "redis://elsewhere:6379/1"]


def test_api_key_cli_finds_the_local_mongo(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []

    async def fake_main(arguments: object, settings: TaskServiceSettings) -> int:
        used.append(settings.mongo_url)
        return 0

    monkeypatch.setattr(api_keys, "_main", fake_main)
    with pytest.raises(SystemExit) as exited:
        api_keys.main(["list"])
    assert exited.value.code == 0 and used == [STACK_MONGO]
