"""The client's committed stubs are what protos/ generates today, and load beside the gateway's own."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "client" / "src" / "aitask_client" / "_proto"


def test_the_committed_client_stubs_are_up_to_date(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import protoc  # noqa: PLC0415 - scripts/ is no package
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert protoc.compile_client_stubs(tmp_path) == 0
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted(path.name for path in STUBS.iterdir() if path.is_file())
    _, different, _ = filecmp.cmpfiles(tmp_path, STUBS, names, shallow=False)
    assert different == [], "client stubs are stale: run `make protos` and commit client/src/aitask_client/_proto"


def test_both_copies_of_the_stubs_load_in_one_process() -> None:
    # One identical file in protobuf's pool: a service that uses the client imports both without a clash.
    code = (
        "from aitask.v1 import task_service_pb2 as a\n"
        "from aitask_client._proto import task_service_pb2 as b\n"
        "assert a.Task.DESCRIPTOR is b.Task.DESCRIPTOR\n"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode == 0
