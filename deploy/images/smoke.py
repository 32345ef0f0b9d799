"""Starts an image's command in the image's own filesystem and checks it: the task service's health, Envoy's config.

`podman run` cannot start a container in this sandbox (crun cannot set RLIMIT_NPROC), so this does by hand the
part of a container runtime the check needs: it mounts the image (`podman image mount`), gives it /proc, /dev and a
tmpfs /tmp in a private mount namespace (`unshare --mount`), and chroots into it as the image's user, in its working
directory, with its environment and its ENTRYPOINT + CMD. The network namespace stays the host's (as with
`--network host`), so the task service reaches devstack's Redis and FerretDB, started here on free loopback ports,
and answers gRPC health on one. Envoy's image runs its command with `--mode validate`: its own binary checks its
config and descriptor set.

    python -m deploy.images.smoke task-service localhost/aitask-task-service:offline
    python -m deploy.images.smoke envoy localhost/aitask-envoy:offline
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitask_common.grpc_server import LIVENESS
from devstack.processes import Ports, free_port
from devstack.stack import LocalStack

STARTUP_SECONDS = 60.0
STOP_SECONDS = 30.0
# Runs in the new mount namespace: the mounts a container runtime would make, then the image's command as its user.
CHROOT_SCRIPT = """
root=$1 user=$2 workdir=$3; shift 3
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
exec chroot --userspec="$user" "$root" /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "$@"
"""


@dataclass
class ImageConfig:
    """What a container runtime takes from an image's config to start it."""

    env: dict[str, str]
    command: list[str]
    workdir: str
    user: str

    @classmethod
    def inspect(cls, image: str) -> ImageConfig:
        """The config of a local image, from `podman image inspect`."""
        output = subprocess.run(["podman", "image", "inspect", image], check=True, capture_output=True, text=True)
        config: dict[str, Any] = json.loads(output.stdout)[0]["Config"]
        env = dict(entry.partition("=")[::2] for entry in config.get("Env") or [])
        command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        # A numeric user:group, as chroot --userspec takes it; root when the image names none.
        user = config.get("User") or "0:0"
        return cls(env=env, command=command, workdir=config.get("WorkingDir") or "/", user=user)


def chrooted(root: str, config: ImageConfig, extra_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The image's command, started in `root` (its mounted filesystem) with the image's environment plus `extra_env`."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    argv = [unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", CHROOT_SCRIPT, "sh"]
    with log.open("wb") as output:
        return subprocess.Popen(
            [*argv, root, config.user, config.workdir, *config.command],
            env=config.env | extra_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def health_status(port: int, service: str) -> int:
    """The gRPC health status of `service` on 127.0.0.1:`port` (UNKNOWN while it does not answer)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)
        return int(reply.status)


def wait_serving(process: subprocess.Popen[bytes], port: int, services: tuple[str, ...]) -> float:
    """Seconds until every health service name answers SERVING; raises if the process exits or time runs out."""
    started = time.monotonic()
    pending = list(services)
    while pending:
        if process.poll() is not None:
            raise RuntimeError(f"the command exited with {process.returncode} before it was healthy")
        if time.monotonic() - started > STARTUP_SECONDS:
            raise RuntimeError(f"not SERVING after {STARTUP_SECONDS:.0f} s: health names {pending}")
        if health_status(port, pending[0]) == health_pb2.HealthCheckResponse.SERVING:
            pending.pop(0)
        else:
            time.sleep(0.2)
    return time.monotonic() - started


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as a container runtime sends it to PID 1; SIGKILL the group if it outstays STOP_SECONDS."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"still running {STOP_SECONDS:.0f} s after SIGTERM") from None


@contextmanager
def mounted(image: str) -> Iterator[str]:
    """The image's filesystem (read-only), mounted by podman for the length of the block."""
    root = subprocess.run(["podman", "image", "mount", image], check=True, stdout=subprocess.PIPE, text=True)
    try:
        yield root.stdout.strip()
    finally:
        subprocess.run(["podman", "image", "unmount", image], check=False, capture_output=True)


def _output(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def check_task_service(image: str, workdir: Path) -> None:
    """Start the task-service image's command against a local Redis and FerretDB, check liveness and readiness."""
    config = ImageConfig.inspect(image)
    print(f"{image}: {' '.join(config.command)} as {config.user} in {config.workdir}")
    stack = LocalStack(Ports.free(), workdir)
    try:
        for name in ("redis", "postgres", "ferretdb"):
            stack.start(name)
        grpc_port, metrics_port = free_port(), free_port()
        environment = {
            "REDIS_URL": stack.env["REDIS_URL"],
            "MONGO_URL": stack.env["MONGO_URL"],
            "TASK_SERVICE_PORT": str(grpc_port),
            "METRICS_PORT": str(metrics_port),
        }
        log = workdir / "task-service.log"
        with mounted(image) as root:
            process = chrooted(root, config, environment, log)
            try:
                seconds = wait_serving(process, grpc_port, (LIVENESS, ""))
            except RuntimeError as error:
                process.kill()
                process.wait()
                raise RuntimeError(f"{error}; its output:\n{_output(log)}") from None
            print(f"health {LIVENESS!r} and '' SERVING on 127.0.0.1:{grpc_port} after {seconds:.1f} s")
            status = stop(process)
        if status != 0:
            raise RuntimeError(f"exited with {status} on SIGTERM:\n{_output(log)}")
        print("stopped on SIGTERM with status 0")
    finally:
        stack.stop_all()


def check_envoy(image: str, workdir: Path) -> None:
    """Validate the Envoy image's config with the image's own Envoy: its command plus `--mode validate`."""
    config = ImageConfig.inspect(image)
    config.command += ["--mode", "validate"]
    print(f"{image}: {' '.join(config.command)} as {config.user} in {config.workdir}")
    log = workdir / "envoy.log"
    with mounted(image) as root:
        process = chrooted(root, config, {}, log)
        try:
            status = process.wait(STARTUP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(f"no verdict after {STARTUP_SECONDS:.0f} s:\n{_output(log)}") from None
    if status != 0 or " OK" not in log.read_text(errors="replace"):
        raise RuntimeError(f"validation failed ({status}):\n{_output(log)}")
    print(log.read_text(errors="replace").strip().splitlines()[-1])


CHECKS = {"task-service": check_task_service, "envoy": check_envoy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=sorted(CHECKS), help="which image it is")
    parser.add_argument("image", help="e.g. localhost/aitask-task-service:offline")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aitask-image-smoke-") as workdir:
        try:
            CHECKS[arguments.check](arguments.image, Path(workdir))
        except (RuntimeError, subprocess.CalledProcessError) as error:
            sys.exit(f"{arguments.image}: {error}")


if __name__ == "__main__":
    main()
