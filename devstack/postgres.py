"""Initialise a PostgreSQL data directory if needed, then become `postgres` on it (FerretDB's backend).

    python -m devstack.postgres DATA_DIR PORT

PostgreSQL refuses to run as root, so as root both steps run as the `postgres`
user (setpriv keeps the process tree flat, so signals reach the server).

FerretDB 1.x filters with `_jsonb->$key @> $value`, which the btree indexes it
creates (`(_jsonb->'field')`) cannot serve: every lookup by `_id` scanned the whole
table (about 40 ms at 100,000 tasks). An event trigger installed at initdb gives
the leading field of each such index a GIN twin on the same expression, which
serves `@>`, and custom plans let the planner see the key behind `$key`. The
twins skip GIN's pending list (`fastupdate = off`): every lookup scans that list,
and with it on, a claim plus a completion cost twice as much after 6,000 tasks.
`status` gets no twin: the dispatcher's transitions filter on `_id` and `status`,
and with a twin the planner intersected both indexes, or (after an ANALYZE taken
while nothing was pending) scanned every pending task, 0.9 ms against 0.06 ms at
3,000 pending. The queries for tasks in flight (the reconciler's every 10 s) ask
for `in_flight: true` instead, a field only tasks in flight carry, whose twin
finds them without reading the final ones (by status, they cost a sequential
scan: 854 ms at 1,000,000 tasks).
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


# Run once, in single-user mode, right after initdb (statements end with ";" and a blank line).
GIN_TWIN_TRIGGER = r"""
CREATE FUNCTION public.ferretdb_gin_twin() RETURNS event_trigger LANGUAGE plpgsql AS $body$
DECLARE
    created record;
    field text;
    twin text;
BEGIN
    FOR created IN SELECT i.indrelid::regclass AS tab, pg_get_indexdef(i.indexrelid) AS def
                   FROM pg_event_trigger_ddl_commands() AS c JOIN pg_index AS i ON i.indexrelid = c.objid LOOP
        -- The leading field of a btree index FerretDB made: (((_jsonb -> 'field'::text)) ...
        -- Not status: the dispatcher filters on it beside _id, and a GIN on it tempted the planner
        -- into reading every pending task to find one.
        field := substring(created.def FROM $re$USING btree \(\(\(_jsonb -> '([^']+)'::text\)\)$re$);
        twin := format('USING gin (((_jsonb -> %L::text)))', field);
        IF field IS NOT NULL AND field <> 'status' AND NOT EXISTS (
            SELECT FROM pg_index WHERE indrelid = created.tab AND pg_get_indexdef(indexrelid) LIKE '%' || twin || '%'
        ) THEN
            EXECUTE format('CREATE INDEX ON %s USING gin ((_jsonb -> %L)) WITH (fastupdate = off)', created.tab, field);
        END IF;
    END LOOP;
END
$body$;

CREATE EVENT TRIGGER ferretdb_gin_twin ON ddl_command_end WHEN TAG IN ('CREATE INDEX')
    EXECUTE FUNCTION public.ferretdb_gin_twin();

"""


def install_gin_twins(data_dir: Path) -> None:
    """Install the event trigger (server not running yet: single-user mode)."""
    subprocess.run(
        as_postgres_user([binary("postgres"), "--single", "-j", "-D", str(data_dir), "postgres"]),
        input=GIN_TWIN_TRIGGER,
        text=True,
        check=True,
        stdout=subprocess.DEVNULL,
    )


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
        install_gin_twins(data_dir)
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
            "-c",
            "plan_cache_mode=force_custom_plan",
            *os.environ.get("POSTGRES_EXTRA_ARGS", "").split(),
        ]
    )
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
