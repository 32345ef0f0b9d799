"""Hatch build hook: generate the protobuf/gRPC stubs (aitask/) into the wheel.

The stubs are generated, never committed (.gitignore), so hatchling would leave
them out and the installed package could not import its own API. This hook runs
scripts/protoc.py's `compile_protos` into a scratch directory and force-includes
the result as the `aitask` package. Editable installs (`uv sync`) skip it: there
the checkout's own aitask/, made by `make protos`, is what gets imported.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ProtoStubsHook(BuildHookInterface):
    """Compiles protos/ and adds the stubs to a standard wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        spec = importlib.util.spec_from_file_location("aitask_protoc", root / "scripts" / "protoc.py")
        if spec is None or spec.loader is None:
            raise RuntimeError("scripts/protoc.py is missing: the stubs cannot be generated")
        protoc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(protoc)
        self._scratch = Path(tempfile.mkdtemp(prefix="aitask-stubs-"))
        status = protoc.compile_protos(protoc.all_protos(), out=self._scratch, descriptor=None)
        if status != 0:
            raise RuntimeError(f"protoc failed (exit status {status}) generating the stubs from protos/")
        build_data["force_include"][str(self._scratch / "aitask")] = "aitask"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
