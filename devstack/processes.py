"""What each local process is: its command line, environment and how to tell it is ready.

`make run` supervises these with honcho; the tests start the same definitions
on free ports, so both exercise one configuration.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import sys
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
FERRETDB = LOCAL / "bin" / "ferretdb"
ENVOY = Path(sys.executable).with_name("envoy")
# Every simulator credential; used when no real API key is configured.
SIMULATOR_KEYS = {"ark": "sim-ark-key", "access": "sim-ak", "secret": "sim-sk", "openai": "sim-openai-key"}
REAL_KEY_VARIABLES = ("ARK_API_KEY", "VOLCENGINE_ACCESS_KEY", "OPENAI_API_KEY")


@dataclass(frozen=True)
class Ports:
    """Loopback ports of one stack."""

    envoy: int = 8080
    envoy_admin: int = 9901
    task_service: int = 50051
    task_service_2: int = 50052
    output_http: int = 50055
    output_http_2: int = 50056
    provider_volcengine: int = 50061
    provider_openai: int = 50062
    simulator: int = 9100
    redis: int = 6380
    postgres: int = 5433
    ferretdb: int = 27018
    metrics_task_service: int = 9464
    metrics_task_service_2: int = 9468
    metrics_dispatcher: int = 9465
    metrics_provider_volcengine: int = 9466
    metrics_provider_openai: int = 9467
    openai_door: int = 8090
    metrics_openai_door: int = 9469

    @classmethod
    def free(cls) -> Ports:
        """A stack of distinct ports the OS reports free right now (for tests)."""
        chosen: list[int] = []
        for _ in cls.__dataclass_fields__:
            chosen.append(free_port(avoid=chosen))
        return cls(*chosen)


# Test ports come from below the kernel's range for outgoing connections: a port from inside it
# (what binding port 0 gives) can be taken by any client's connection before the server it was
# chosen for binds it, which once killed a task service at start-up ("Address already in use").
LOWEST_TEST_PORT = 10000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on loopback `port` now."""
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_port(avoid: Container[int] = ()) -> int:
    """A loopback TCP port that is free now, below the ephemeral range, and not in `avoid`."""
    try:
        first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768  # Linux's default; macOS starts at 49152
    for _ in range(1000):
        port = random.randrange(LOWEST_TEST_PORT, max(first_ephemeral, LOWEST_TEST_PORT + 1000))
        if port in avoid:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port between {LOWEST_TEST_PORT} and {first_ephemeral}")


@dataclass
class Process:
    """One process to start: argv, extra environment, and the loopback port it listens on."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None


def uses_simulator(environment: dict[str, str]) -> bool:
    """The simulator stands in for the vendors when no real API key is configured."""
    return not any(environment.get(variable) for variable in REAL_KEY_VARIABLES)


def dotenv(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of a `.env` file (the services read it too; the environment wins over it)."""
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip().strip("'\"") for key, value in pairs}


def service_environment(ports: Ports, log_dir: Path, environment: dict[str, str]) -> dict[str, str]:
    """Variables every aitask service gets in a local stack."""
    env = {
        "MONGO_URL": f"mongodb://127.0.0.1:{ports.ferretdb}/",
        "REDIS_URL": f"redis://127.0.0.1:{ports.redis}/0",
        "TASK_SERVICE_PORT": str(ports.task_service),
        "OUTPUT_HTTP_PORT": str(ports.output_http),
        # Output links as clients reach them: through Envoy.
        "OUTPUT_PUBLIC_URL": f"http://127.0.0.1:{ports.envoy}",
        "VOLCENGINE_PORT": str(ports.provider_volcengine),
        "OPENAI_PROVIDER_PORT": str(ports.provider_openai),
        "OPENAI_COMPAT_PORT": str(ports.openai_door),
        "LOG_DIR": str(log_dir),
        "NO_PROXY": "127.0.0.1,localhost",
        # Webhook receivers on a developer's machine (and the tests') listen on loopback.
        "WEBHOOK_ALLOW_PRIVATE": "true",
    }
    if uses_simulator(environment):
        simulator = f"http://127.0.0.1:{ports.simulator}"
        env |= {
            "ARK_BASE_URL": f"{simulator}/api/v3",
            "ARK_API_KEY": SIMULATOR_KEYS["ark"],
            "VOLCENGINE_VISUAL_URL": simulator,
            "VOLCENGINE_ACCESS_KEY": SIMULATOR_KEYS["access"],
            "VOLCENGINE_SECRET_KEY": SIMULATOR_KEYS["secret"],
            "OPENAI_BASE_URL": f"{simulator}/v1",
            "OPENAI_API_KEY": SIMULATOR_KEYS["openai"],
        }
    return env


def infrastructure(ports: Ports, data_dir: Path) -> list[Process]:
    """Redis, PostgreSQL, FerretDB and Envoy, all on loopback, data under `data_dir`.

    FerretDB uses its PostgreSQL backend: measured at 10,000 tasks (bench/ferretdb),
    the SQLite backend scans the whole collection for every filter but a bare
    `_id` (a conditional update: 229 ms vs 6 ms; a user's task list: 552 ms vs 5 ms).
    """
    (data_dir / "envoy").mkdir(parents=True, exist_ok=True)
    envoy_config = data_dir / "envoy" / "envoy.json"
    return [
        redis_server(ports.redis, data_dir / "redis"),
        Process(
            "postgres",
            [sys.executable, "-m", "devstack.postgres", str(data_dir / "postgres"), str(ports.postgres)],
            port=ports.postgres,
        ),
        Process(
            "ferretdb",
            [
                str(FERRETDB),
                "-listen-addr",
                f"127.0.0.1:{ports.ferretdb}",
                "-handler",
                "postgresql",
                "-postgresql-url",
                f"postgres://postgres@127.0.0.1:{ports.postgres}/postgres",
                "-log-level",
                "warn",
            ],
            port=ports.ferretdb,
        ),
        Process(
            "envoy",
            [
                sys.executable,
                "-m",
                "devstack.envoy",
                str(envoy_config),
                str(ports.envoy),
                str(ports.envoy_admin),
                str(ports.openai_door),
                f"{ports.task_service}:{ports.output_http}",
                f"{ports.task_service_2}:{ports.output_http_2}",
            ],
            port=ports.envoy,
        ),
    ]


def redis_server(port: int, data_dir: Path) -> Process:
    """Redis on 127.0.0.1:`port`, its append-only file under `data_dir` (no snapshots)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return Process("redis", redis_server_argv(port, data_dir), port=port)


def redis_server_argv(port: int, data_dir: Path, *options: str) -> list[str]:
    """redis-server on 127.0.0.1:`port` with its append-only file under `data_dir` (no snapshots), and `options`."""
    return [
        shutil.which("redis-server") or "/usr/bin/redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--loglevel",
        "warning",
        *options,
    ]


def services(ports: Ports, workers: int = 4) -> list[Process]:
    """The aitask processes (and the upstream simulator), each `python -m <package>`."""
    python = sys.executable
    return [
        Process(
            "simulator", [python, "-m", "upstream_simulator"], {"SIMULATOR_PORT": str(ports.simulator)}, ports.simulator
        ),
        Process(
            "provider_volcengine",
            [python, "-m", "provider_volcengine"],
            {"METRICS_PORT": str(ports.metrics_provider_volcengine)},
            ports.provider_volcengine,
        ),
        Process(
            "provider_openai",
            [python, "-m", "provider_openai"],
            {"METRICS_PORT": str(ports.metrics_provider_openai)},
            ports.provider_openai,
        ),
        # Two task-service processes behind Envoy: one asyncio process is bound to one core.
        Process(
            "task_service",
            [python, "-m", "task_service"],
            {"METRICS_PORT": str(ports.metrics_task_service)},
            ports.task_service,
        ),
        Process(
            "task_service_2",
            [python, "-m", "task_service"],
            {
                "TASK_SERVICE_PORT": str(ports.task_service_2),
                "OUTPUT_HTTP_PORT": str(ports.output_http_2),
                "METRICS_PORT": str(ports.metrics_task_service_2),
            },
            ports.task_service_2,
        ),
        # OpenAI's paths (Envoy's /v1/), over both task services.
        Process(
            "openai_door",
            [python, "-m", "openai_door"],
            {
                "METRICS_PORT": str(ports.metrics_openai_door),
                "OPENAI_COMPAT_TASK_SERVICE": f"ipv4:127.0.0.1:{ports.task_service},127.0.0.1:{ports.task_service_2}",
                "OPENAI_COMPAT_OUTPUTS_URL": f"http://127.0.0.1:{ports.output_http}",
            },
            ports.openai_door,
        ),
        Process(
            "dispatcher",
            [python, "-m", "dispatcher_service"],
            {"WORKER_CONCURRENCY": str(workers), "METRICS_PORT": str(ports.metrics_dispatcher)},
            # No gRPC port: its metrics endpoint is what answers once it is up.
            port=ports.metrics_dispatcher,
        ),
    ]


def base_environment() -> dict[str, str]:
    """This process's environment with proxies bypassed for loopback."""
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env
