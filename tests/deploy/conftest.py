"""Fixtures for the deployment tests: rendered overlays, and Redis + FerretDB for the image commands."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.check import OVERLAYS, kustomize_build
from deploy.dockerfile import ROOT
from devstack.processes import Ports, infrastructure
from devstack.stack import LocalStack


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """`kustomize build` of every overlay, by overlay name (installs the pinned kustomize if needed)."""
    subprocess.run(["make", "--no-print-directory", "-f", "deploy/deploy.mk", "tools-kustomize"], cwd=ROOT, check=True)
    return {overlay.name: kustomize_build(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def datastores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A local stack's datastores (its infrastructure but Envoy) on free loopback ports; tests start the rest."""
    stack = LocalStack(Ports.free(), tmp_path_factory.mktemp("deploy-stack"), workers=2)
    try:
        for process in infrastructure(stack.ports, stack.data_dir):
            if process.name != "envoy":
                stack.start(process.name)
        yield stack
    finally:
        stack.stop_all()
