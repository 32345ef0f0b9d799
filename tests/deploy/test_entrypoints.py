"""Each image's command, run as a local process, starts its service and answers its health check.

No container engine runs here, so the images are checked through what they
would run: each Dockerfile target's CMD and ENV (WORKDIR mapped onto this
checkout, listening on free loopback ports, with a local stack's environment),
its Compose health-check command, and its answer to SIGTERM. Envoy's image
command and the Kubernetes preStop drain run against the real Envoy binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis import Redis
from rq import Worker

from aitask_common.grpc_server import LIVENESS
from aitask_common.queues import QUEUE_ORDER
from aitask_common.registry import read_instances
from deploy.dockerfile import ROOT, stages
from devstack.processes import free_port
from devstack.stack import LocalStack
from tests.conftest import wait_until
from tests.deploy.helpers import (
    compose_service_for,
    container_to_local_ports,
    containers,
    local_image_environment,
    localise_ports,
    objects,
    render_image_envoy,
    service_stages,
    start_image_envoy,
)

STAGES = stages()
SERVICE_TARGETS = sorted(service_stages(STAGES))
STARTUP_SECONDS = 60.0
HEALTHCHECK_SCRIPT = ROOT / "deploy" / "docker" / "healthcheck.py"


def _compose_healthcheck(target: str, mapping: dict[int, int]) -> list[str]:
    """The Compose health check of `target`'s service, as a local command on local ports."""
    _, service = compose_service_for(target)
    words = service["healthcheck"]["test"]
    assert words[0] == "CMD", f"{target}: health check must be exec form"
    words = [str(HEALTHCHECK_SCRIPT) if word == "/app/healthcheck.py" else word for word in words[1:]]
    return localise_ports(words, mapping)


def _rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        status = Path(f"/proc/{current}/status")
        if not status.exists():
            continue
        match = re.search(r"VmRSS:\s+(\d+)", status.read_text())
        total += int(match.group(1)) if match else 0
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            pending += [int(child) for child in children.read_text().split()]
    return total


class ImageProcess:
    """One Dockerfile target's command running locally."""

    def __init__(self, target: str, stack: LocalStack, scratch: Path, overrides: dict[str, str] | None = None) -> None:
        self.target = target
        self.stage = STAGES[target]
        self.mapping = container_to_local_ports(stack.ports)
        _, self.compose = compose_service_for(target)
        scratch.mkdir(parents=True, exist_ok=True)
        image_env = local_image_environment(self.stage, stack.env, scratch)
        compose_env = {name: str(value) for name, value in self.compose.get("environment", {}).items()}
        self.env = (
            stack.env
            | image_env
            | {
                # Tests bind loopback only; the images' 0.0.0.0 is what changes.
                "HOST": "127.0.0.1",
                "METRICS_HOST": "127.0.0.1",
                "SIMULATOR_HOST": "127.0.0.1",
                "SIMULATOR_PORT": str(stack.ports.simulator),
                "WORKER_CONCURRENCY": "2",
            }
        )
        self.scratch = scratch
        if target == "dispatcher":
            self.env["WORKER_DEADLINE_DIR"] = str(scratch / "worker-deadlines")
        self.env |= overrides or {}
        if "METRICS_PORT" in compose_env:
            self.env["METRICS_PORT"] = str(self.mapping[int(compose_env["METRICS_PORT"])])
        argv = list(self.stage.command)
        executable = shutil.which(argv[0], path=self.env["PATH"])
        assert executable, f"{target}: {argv[0]} not found on the image's PATH ({self.env['PATH']})"
        self.argv = [executable, *argv[1:]]
        self.log_path = scratch / f"{target}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """Run the Compose health check against this process."""
        return subprocess.run(
            _compose_healthcheck(self.target, self.mapping), env=self.env, capture_output=True, text=True, timeout=30
        )

    def wait_healthy(self) -> None:
        """Until the Compose health check passes; fail if the process dies or never gets there."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                pytest.fail(f"{self.target} exited with {self.popen.returncode}:\n{self.log()}")
            if self.healthcheck().returncode == 0:
                self._assert_it_answered()
                return
            time.sleep(0.3)
        pytest.fail(f"{self.target} not healthy after {STARTUP_SECONDS} s:\n{self.log()}")

    def _assert_it_answered(self) -> None:
        """The health check's port is this process's: another listener there would pass the check for it."""
        port = re.search(r":(\d+)", " ".join(_compose_healthcheck(self.target, self.mapping)[-2:]))
        assert port, f"{self.target}: no port in its health check"
        sockets = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port.group(1)}"], capture_output=True, text=True, check=True
        ).stdout
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", sockets)}
        assert self.popen.pid in owners, f"{self.target}: port {port.group(1)} answered by another process: {sockets}"

    def terminate(self, timeout: float) -> tuple[int, bool]:
        """SIGTERM to the main process only, as a container runtime sends it to PID 1.

        Returns the exit status and whether any process it started outlived it (a container's
        end would kill those mid-work).
        """
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
            pytest.fail(f"{self.target} still running {timeout} s after SIGTERM:\n{self.log()}")
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            return status, False
        return status, True


def _container_of(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(container for deployment, _, container in containers(documents) if deployment == name)


def _grpc_status(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_every_service_has_an_image_target_and_compose_service() -> None:
    expected = [
        "task-service",
        "dispatcher",
        "provider-volcengine",
        "provider-openai",
        "openai-door",
        "upstream-simulator",
    ]
    assert sorted(expected) == SERVICE_TARGETS
    for target in SERVICE_TARGETS:
        name, service = compose_service_for(target)
        assert service["image"].endswith(f"aitask-{target}:${{IMAGE_TAG:-dev}}"), name
        assert STAGES[target].user not in ("", "0", "root") and not STAGES[target].user.startswith("0:")


@pytest.mark.parametrize("target", SERVICE_TARGETS)
def test_image_command_starts_a_healthy_service(
    target: str, datastores: LocalStack, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    process = ImageProcess(target, datastores, tmp_path)
    try:
        process.wait_healthy()
        check = _compose_healthcheck(target, process.mapping)
        kind, address = check[-2], check[-1]
        if kind == "grpc":
            port = int(address.rsplit(":", 1)[1])
            assert _grpc_status(port) == health_pb2.HealthCheckResponse.SERVING
        if target.startswith("provider-"):
            addresses = {instance.address for instance in read_instances(datastores.redis())}
            assert f"127.0.0.1:{port}" in addresses, f"{target} did not register itself: {addresses}"
        if target == "dispatcher":
            # Its health check is the metrics port, served before the workers start: they register soon after.
            redis = Redis(port=datastores.ports.redis)
            concurrency = int(process.env["WORKER_CONCURRENCY"])

            def all_registered() -> list[Worker] | None:
                workers = Worker.all(connection=redis)
                return workers if len(workers) == concurrency else None

            workers = wait_until(all_registered)
            assert all(worker.queue_names() == [str(name) for name in QUEUE_ORDER] for worker in workers)
            # Kubernetes' liveness command passes: each worker keeps a deadline file, none is overdue.
            liveness = _container_of(rendered["prod"], "dispatcher")["livenessProbe"]["exec"]["command"]
            deadlines = Path(process.env["WORKER_DEADLINE_DIR"])
            wait_until(lambda: len(list(deadlines.glob("[0-9]*"))) == len(workers))
            local = [
                str(HEALTHCHECK_SCRIPT) if word == "/app/healthcheck.py" else word.replace("/tmp", str(process.scratch))
                for word in liveness
            ]
            assert local[-1] == str(deadlines)
            assert subprocess.run([sys.executable, *local[1:]], capture_output=True, timeout=30).returncode == 0
        if target == "upstream-simulator":
            assert "upstream simulator listening on http://127.0.0.1:" in process.log()
        # The memory limit in Kubernetes leaves room above what the process uses at rest.
        limits = {
            name: container["resources"]["limits"]["memory"] for name, _, container in containers(rendered["dev"])
        }
        rss_mib = _rss_kib(process.popen.pid) / 1024
        limit_mib = (
            int(limits[target].removesuffix("Mi"))
            if limits[target].endswith("Mi")
            else 1024 * int(limits[target].removesuffix("Gi"))
        )
        assert rss_mib < 0.6 * limit_mib, f"{target}: {rss_mib:.0f} MiB at rest against a {limit_mib} MiB limit"
    finally:
        grace = float(process.env.get("SHUTDOWN_GRACE", "10")) + 10
        status, left_behind = process.terminate(timeout=grace)
    assert status == 0, f"{target} exited with {status} on SIGTERM:\n{process.log()}"
    assert not left_behind, f"{target} exited before the processes it started"
    if target.startswith("provider-"):
        assert not any(instance.address.endswith(f":{port}") for instance in read_instances(datastores.redis()))
    # A health check of a stopped service must fail, or Compose could never notice one.
    assert process.healthcheck().returncode != 0


@pytest.mark.parametrize("target", ["task-service", "provider-openai"])
def test_with_its_datastores_down_a_service_is_live_and_waits_unready(
    target: str, datastores: LocalStack, tmp_path: Path
) -> None:
    # Nothing listens on these ports: the pod would have been restarted in a loop before.
    dead = {"MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    process = ImageProcess(target, datastores, tmp_path, dead)
    try:
        readiness = _compose_healthcheck(target, process.mapping)
        liveness = [*readiness, LIVENESS]

        def live() -> bool:
            assert process.popen.poll() is None, f"{target} exited:\n{process.log()}"
            return subprocess.run(liveness, env=process.env, capture_output=True, timeout=30).returncode == 0

        wait_until(live, timeout=STARTUP_SECONDS)
        # Several readiness checks later: still running, still live, still not ready.
        time.sleep(5)
        assert live()
        assert subprocess.run(readiness, env=process.env, capture_output=True, timeout=30).returncode == 1
    finally:
        status, _ = process.terminate(timeout=float(process.env.get("SHUTDOWN_GRACE", "10")) + 10)
    assert status == 0, process.log()


# --- Envoy: the image's command, its Compose health check and the Kubernetes preStop drain ---------
def _admin_ready(admin_port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=2, trust_env=False).status_code
    except httpx.TransportError:
        return 0


@pytest.fixture
def image_envoy(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """Envoy started with the image's command on a config rendered with the image's arguments,
    except loopback addresses, free ports and the local descriptor."""
    listen_port, admin_port, probe_port = free_port(), free_port(), free_port()
    overrides = {
        "--listen-host": "127.0.0.1",
        "--listen-port": str(listen_port),
        "--admin-host": "127.0.0.1",
        "--admin-port": str(admin_port),
        "--probe-host": "127.0.0.1",
        "--probe-port": str(probe_port),
        "--task-service-host": "localhost",
    }
    render_image_envoy(tmp_path / "envoy.json", overrides)
    log_path = tmp_path / "envoy.log"
    popen = start_image_envoy(tmp_path / "envoy.json", log_path)
    deadline = time.monotonic() + STARTUP_SECONDS
    while _admin_ready(admin_port) != 200:
        if popen.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"envoy did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    try:
        yield popen, listen_port, admin_port
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()


@pytest.mark.slow  # waits out the preStop drain: 15 s by design
def test_envoy_image_command_health_check_and_prestop_drain(
    image_envoy: tuple[subprocess.Popen[bytes], int, int], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    popen, listen_port, admin_port = image_envoy
    mapping = {9901: admin_port}
    _, service = compose_service_for("envoy")
    healthcheck = localise_ports(service["healthcheck"]["test"][1:], mapping)
    assert subprocess.run(healthcheck, capture_output=True, timeout=10).returncode == 0

    pod = objects(rendered["prod"], "Deployment")["envoy"]["spec"]["template"]["spec"]
    pre_stop = localise_ports(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"], mapping)
    started = time.monotonic()
    hook = subprocess.Popen(pre_stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while _admin_ready(admin_port) == 200 and time.monotonic() < started + 5:
            time.sleep(0.1)
        assert _admin_ready(admin_port) == 503, "Envoy still reports ready after the preStop hook began"
        assert subprocess.run(healthcheck, capture_output=True, timeout=10).returncode != 0
        # Still answering, but telling every client to reconnect elsewhere.
        response = httpx.get(f"http://127.0.0.1:{listen_port}/api/v1/ai/tasks", timeout=5, trust_env=False)
        assert response.headers.get("connection") == "close"
        assert hook.wait(timeout=pod["terminationGracePeriodSeconds"]) == 0
    finally:
        if hook.poll() is None:
            hook.kill()
            hook.wait()
    # The hook and SIGTERM's stop both fit in the pod's grace period.
    os.killpg(popen.pid, signal.SIGTERM)
    popen.wait(timeout=10)
    assert time.monotonic() - started < pod["terminationGracePeriodSeconds"]


def test_dashboard_alerts_and_autoscaler_query_metrics_that_exist(
    image_envoy: tuple[subprocess.Popen[bytes], int, int], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    _, _, admin_port = image_envoy
    exposed = httpx.get(f"http://127.0.0.1:{admin_port}/stats/prometheus", timeout=5, trust_env=False).text
    envoy_names = set(re.findall(r"^# TYPE (\S+)", exposed, re.MULTILINE))
    # Every service's modules (metrics.py, and the collectors that live beside what they read).
    packages = (
        "aitask_common",
        "task_service",
        "dispatcher_service",
        "openai_door",
        "provider_openai",
        "provider_volcengine",
    )
    source = "\n".join(path.read_text() for package in packages for path in (ROOT / package).glob("*.py"))
    aitask_names = set(re.findall(r'"(aitask_[a-z_]+)"', source))
    histograms = set(re.findall(r'Histogram\(\s*"(aitask_[a-z_]+)"', source))
    dashboard = json.loads((ROOT / "deploy" / "compose" / "grafana" / "dashboards" / "aitask.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert expressions
    # The alert rules and KEDA's Prometheus trigger too: a renamed metric would silence an alert.
    (alerts,) = objects(rendered["prod"], "PrometheusRule").values()
    rule_expressions = [rule["expr"] for group in alerts["spec"]["groups"] for rule in group["rules"]]
    scaled = objects(rendered["prod"], "ScaledObject")["dispatcher"]["spec"]["triggers"]
    rule_expressions += [trigger["metadata"]["query"] for trigger in scaled if trigger["type"] == "prometheus"]
    # Their `job` labels are the pods' names (the PodMonitor's jobLabel).
    jobs = set(objects(rendered["prod"], "Deployment"))
    for expression in rule_expressions:
        for job in re.findall(r'job=~?"([^"]+)"', expression):
            assert any(re.fullmatch(job, name) for name in jobs), (job, expression)
    expressions += rule_expressions
    queried: set[str] = set()
    for expression in expressions:
        # Metric names only: drop label matchers and grouping clauses, which hold label names.
        bare = re.sub(r"\{[^}]*\}|\b(?:by|without)\s*\([^)]*\)", "", expression)
        queried |= set(re.findall(r"\b((?:aitask|envoy)_[a-z_]+)\b", bare))
    assert any(name.startswith("envoy_") for name in queried) and any(name.startswith("aitask_") for name in queried)
    for name in queried:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        if name.startswith("envoy_"):
            assert base in envoy_names, f"dashboard queries {name}, which Envoy does not expose"
        else:
            assert name in aitask_names or base in histograms, f"dashboard queries {name}, which no service defines"
    # Variables a provisioned dashboard cannot resolve would leave panels empty.
    assert set(re.findall(r"\$(\w+)", " ".join(expressions))) <= {"__rate_interval"}
