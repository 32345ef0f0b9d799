"""SeaweedFS (`weed server -s3`) on loopback: the S3-compatible output store the tests run against
(OUTPUT_STORE=s3). Apache-2.0, built from the Go module proxy through tools/seaweedfs by scripts/install-deps.sh.

One process runs the master, a volume server, the filer and the S3 gateway, every port chosen free and bound to
127.0.0.1. Without an IAM configuration its S3 API accepts any access key.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx

from devstack.processes import LOCAL, free_port

WEED = LOCAL / "bin" / "weed"
STARTUP_SECONDS = 90.0


class SeaweedS3:
    """`with SeaweedS3() as s3:` a running S3 endpoint at `s3.url`, its data removed at exit."""

    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="aitask-seaweedfs-"))
        ports: list[int] = []
        for _ in range(8):
            ports.append(free_port(avoid=ports))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
        self.port = s3
        self.argv = [
            str(WEED),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=20",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The S3 endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SeaweedS3:
        if not WEED.exists():
            raise RuntimeError(f"{WEED} is missing: run scripts/install-deps.sh (it builds tools/seaweedfs)")
        self._log = (self.data_dir / "weed.log").open("wb")
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"weed server did not start: {(self.data_dir / 'weed.log').read_text()[-2000:]}")
            time.sleep(0.3)
        return self

    def _answers(self) -> bool:
        """Whether the S3 API answers a bucket listing (it does once the filer and a volume server are up)."""
        try:
            return httpx.get(self.url, timeout=2, trust_env=False).status_code < 500
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)
