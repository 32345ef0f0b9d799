"""The Dockerfile builds from what the build context holds, and ships every service package."""

from __future__ import annotations

import fnmatch
import shlex
import tomllib

from deploy.dockerfile import DOCKERFILE, ROOT, instructions, stages

DOCKERIGNORE = ROOT / ".dockerignore"


def _ignored(path: str) -> bool:
    """.dockerignore's verdict on a context path: the last matching pattern wins, `!` re-includes."""
    verdict = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        include = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
        if pattern.startswith("**/"):
            matched = any(fnmatch.fnmatch(part, pattern.removeprefix("**/")) for part in parts)
        else:
            matched = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if matched:
            verdict = not include
    return verdict


def _context_copies() -> list[str]:
    """Sources of every COPY that reads the build context (not another stage or image)."""
    sources = []
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        words = shlex.split(arguments)
        if keyword == "COPY" and not any(word.startswith("--from=") for word in words):
            sources += [word for word in words[:-1] if not word.startswith("--")]
    return sources


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    sources = _context_copies()
    assert "uv.lock" in sources and "protos/" in sources
    for source in sources:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), f"COPY {source}: no such path"
        files = (
            [path]
            if (ROOT / path).is_file()
            else [str(file.relative_to(ROOT)) for file in (ROOT / path).rglob("*") if file.is_file()]
        )
        shipped = [file for file in files if "__pycache__" not in file and not file.endswith(".pb")]
        assert shipped and not any(_ignored(file) for file in shipped), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (
        ".venv/bin/python",
        ".local/bin/kustomize",
        ".env",
        "gateway/aitask.pb",
        "aitask/v1/x_pb2.py",
        "tests/conftest.py",
        "task_service/__pycache__/server.cpython-311.pyc",
    ):
        assert _ignored(path), path
    assert not _ignored("task_service/server.py")


def test_runtime_image_holds_every_package_the_project_ships() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    runtime_copies = set()
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        words = shlex.split(arguments)
        if keyword == "COPY" and "--from=build" in words:
            runtime_copies.add(words[-1].rstrip("/"))
    assert packages <= runtime_copies, f"not in the runtime image: {packages - runtime_copies}"
    # The generated stubs come from the build stage's protoc run, as `make protos` makes them.
    build = stages()["build"]
    assert any("scripts/protoc.py" in run for run in build.runs)


def test_images_install_no_local_or_dev_dependency_group() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    default_groups = set(pyproject["tool"]["uv"]["default-groups"])
    assert {"local", "dev"} <= default_groups  # what a checkout's `uv sync` installs, and an image must not
    syncs = [shlex.split(run) for run in stages()["build"].runs if "uv sync" in run]
    assert syncs, "the build stage installs nothing with uv sync"
    for words in syncs:
        assert "--no-default-groups" in words and "--frozen" in words, " ".join(words)
        groups = {words[index + 1] for index, word in enumerate(words) if word == "--group"}
        assert groups <= {"build"}, f"an image gets the dependency groups {groups}"
    # The last sync, the environment the runtime stage copies, has no group at all (no grpcio-tools).
    assert "--group" not in syncs[-1]


def test_every_final_image_carries_oci_labels_from_the_build() -> None:
    labelled: dict[str, set[str]] = {}
    stage = ""
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stage = arguments.split()[-1]
        elif keyword == "LABEL":
            labelled.setdefault(stage, set()).update(word.split("=")[0] for word in shlex.split(arguments))
    # Every Python image inherits the runtime stage's labels; Envoy's image has its own.
    for name in ("runtime", "envoy"):
        assert {
            "org.opencontainers.image.title",
            "org.opencontainers.image.version",
            "org.opencontainers.image.revision",
        } <= labelled.get(name, set()), name
    makefile = (ROOT / "deploy" / "deploy.mk").read_text()
    assert "--build-arg IMAGE_VERSION=$(IMAGE_TAG) --build-arg IMAGE_REVISION=$(IMAGE_REVISION)" in makefile
    # The metadata each build writes is what deploy-pin-images reads.
    assert "--metadata-file $(IMAGE_METADATA)/$*.json" in makefile
    assert "deploy.pin_images $(IMAGE_METADATA)" in makefile
