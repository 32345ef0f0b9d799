"""Compile protos/ into Python stubs with .pyi files and Envoy's descriptor set, in one step.

Include paths come from installed wheels (grpc_tools for google/protobuf,
googleapis-common-protos for google/api), never from vendored copies.
`make protos` and the Dockerfile run it on the checkout; the wheel's build hook
(hatch_build.py) calls `compile_protos` to generate the stubs into the wheel.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DESCRIPTOR = ROOT / "gateway" / "aitask.pb"


def include_options() -> list[str]:
    """protoc's -I options: our protos, google/api from its wheel, the well-known types from grpc_tools."""
    googleapis = Path(str(resources.files("google.api").joinpath("annotations.proto"))).parent.parent.parent
    well_known = Path(str(resources.files("grpc_tools").joinpath("_proto")))
    return [f"-I{PROTOS}", f"-I{googleapis}", f"-I{well_known}"]


def compile_protos(proto_files: list[str], out: Path = ROOT, descriptor: Path | None = DESCRIPTOR) -> int:
    """Run protoc once: stubs under `out` (plus the descriptor set, unless None); return its exit status."""
    relative = [str(Path(path).resolve().relative_to(PROTOS)) for path in proto_files]
    arguments = [
        "protoc",
        *include_options(),
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *([f"--descriptor_set_out={descriptor}", "--include_imports", "--include_source_info"] if descriptor else []),
        *relative,
    ]
    status = protoc.main(arguments)
    if status == 0:
        # Regular packages (not namespace ones) keep mypy and importlib happy.
        for directory in (out / "aitask").rglob("*"):
            if directory.is_dir():
                (directory / "__init__.py").touch()
        (out / "aitask" / "__init__.py").touch()
    return status


def all_protos() -> list[str]:
    """Every .proto file under protos/, sorted."""
    return sorted(str(path) for path in PROTOS.rglob("*.proto"))


def main(proto_files: list[str]) -> int:
    """`python scripts/protoc.py FILE.proto...`: stubs into the checkout, descriptor set into gateway/."""
    return compile_protos(proto_files)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
