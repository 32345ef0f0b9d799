"""Compile protos/ into Python stubs with .pyi files and Envoy's descriptor set, in one step.

Include paths come from installed wheels (grpc_tools for google/protobuf,
googleapis-common-protos for google/api), never from vendored copies.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "gateway" / "aitask.pb"


def main(proto_files: list[str]) -> int:
    """Run protoc once for stubs and descriptor set; return its exit status."""
    googleapis = Path(resources.files("google.api").joinpath("annotations.proto")).parent.parent.parent
    well_known = Path(resources.files("grpc_tools").joinpath("_proto"))
    relative = [str(Path(path).resolve().relative_to(ROOT / "protos")) for path in proto_files]
    arguments = [
        "protoc",
        f"-I{ROOT / 'protos'}",
        f"-I{googleapis}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--descriptor_set_out={DESCRIPTOR}",
        "--include_imports",
        "--include_source_info",
        *relative,
    ]
    status = protoc.main(arguments)
    if status == 0:
        # Regular packages (not namespace ones) keep mypy and importlib happy.
        for directory in (ROOT / "aitask").rglob("*"):
            if directory.is_dir():
                (directory / "__init__.py").touch()
        (ROOT / "aitask" / "__init__.py").touch()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
