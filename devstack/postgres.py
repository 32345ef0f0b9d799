"""Initialise a PostgreSQL data directory if needed, then become `postgres` on it (FerretDB's backend).

    python -m devstack.postgres DATA_DIR PORT

PostgreSQL refuses to run as root, so as root both steps run as the `postgres`
user (setpriv keeps the process tree flat, so signals reach the server).
"""

from __future__ import annotations

import glob
import os
import pwd
import subprocess
import sys
from pathlib import Path


def binary(name: str) -> str:
    """The newest installed PostgreSQL server binary called `name`."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda path: int(path.split("/")[4]))
    if not candidates:
        raise SystemExit("PostgreSQL is not installed: run scripts/install-deps.sh")
    return candidates[-1]


def as_postgres_user(argv: list[str]) -> list[str]:
    """argv, wrapped to drop root privileges when we have them."""
    if os.getuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def main() -> None:
    """initdb (first run only), then exec postgres on loopback."""
    data_dir, port = Path(sys.argv[1]), sys.argv[2]
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(data_dir, account.pw_uid, account.pw_gid)
        data_dir.chmod(0o700)
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run(
            as_postgres_user(
                [
                    binary("initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    argv = as_postgres_user(
        [
            binary("postgres"),
            "-D",
            str(data_dir),
            "-p",
            port,
            "-h",
            "127.0.0.1",
            "-k",
            str(data_dir),
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
            "-c",
            "logging_collector=off",
            *os.environ.get("POSTGRES_EXTRA_ARGS", "").split(),
        ]
    )
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
