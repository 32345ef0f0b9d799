"""FerretDB's lookups by field are served by an index in the local PostgreSQL (devstack.postgres)."""

from __future__ import annotations

import subprocess

from tests.stack import LocalStack


def psql(stack: LocalStack, sql: str) -> str:
    command = ["psql", "-h", "127.0.0.1", "-p", str(stack.ports.postgres), "-U", "postgres", "-At", "-c", sql]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_task_lookups_by_id_and_user_use_an_index_not_a_table_scan(stack: LocalStack) -> None:
    table = psql(
        stack, "SELECT _jsonb->>'table' FROM aitask._ferretdb_database_metadata WHERE _jsonb->>'_id' = 'tasks'"
    ).strip()
    assert table, "the task service creates the tasks collection at start-up"
    for field in ("_id", "user_id"):
        # The shape of FerretDB 1.x's pushed-down equality filter, with the key as a constant as in a custom plan.
        # enable_seqscan=off: the table is small, so only "no usable index" would still give a Seq Scan.
        query = f"EXPLAIN SELECT _jsonb FROM aitask.\"{table}\" WHERE _jsonb->'{field}' @> '\"x\"'"
        plan = psql(stack, f"SET enable_seqscan = off; {query}")
        assert "Index Scan" in plan and "Seq Scan" not in plan, plan
    assert psql(stack, "SHOW plan_cache_mode").strip() == "force_custom_plan"


def test_gin_twins_skip_the_pending_list(stack: LocalStack) -> None:
    # With fastupdate on, every lookup scans GIN's pending list, which grows with each write until a vacuum.
    options = psql(
        stack,
        "SELECT coalesce(array_to_string(c.reloptions, ','), '') FROM pg_index i JOIN pg_class c "
        "ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'gin' "
        "AND c.relnamespace = 'aitask'::regnamespace",
    ).split()
    assert options and all(option == "fastupdate=off" for option in options), options
