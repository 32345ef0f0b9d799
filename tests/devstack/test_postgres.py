"""FerretDB's lookups by field are served by an index in the local PostgreSQL (devstack.postgres; needs the stack)."""

from __future__ import annotations

from devstack.stack import LocalStack


def tasks_table(stack: LocalStack) -> str:
    table = stack.ferretdb_table("tasks")
    assert table, "the task service creates the tasks collection at start-up"
    return table


def test_task_lookups_by_id_and_user_use_an_index_not_a_table_scan(stack: LocalStack) -> None:
    table = tasks_table(stack)
    for field in ("_id", "user_id"):
        # The shape of FerretDB 1.x's pushed-down equality filter, with the key as a constant as in a custom plan.
        # enable_seqscan=off: the table is small, so only "no usable index" would still give a Seq Scan.
        query = f"EXPLAIN SELECT _jsonb FROM aitask.\"{table}\" WHERE _jsonb->'{field}' @> '\"x\"'"
        plan = stack.psql(f"SET enable_seqscan = off; {query}")
        assert "Index Scan" in plan and "Seq Scan" not in plan, plan
    assert stack.psql("SHOW plan_cache_mode").strip() == "force_custom_plan"


def test_a_transition_finds_its_task_by_id_alone(stack: LocalStack) -> None:
    # The dispatcher's conditional updates filter on _id and status. With an index on status the planner
    # intersected the two, or read every pending task to find one.
    table = tasks_table(stack)
    condition = "_jsonb->'_id' @> '\"x\"' AND _jsonb->'status' @> '\"pending\"'"
    query = f'EXPLAIN SELECT _jsonb FROM aitask."{table}" WHERE {condition}'
    plan = stack.psql(f"SET enable_seqscan = off; {query}")
    conditions = [line for line in plan.splitlines() if "Index Cond" in line]
    assert conditions and all("'_id'" in line and "'status'" not in line for line in conditions), plan


def test_gin_twins_skip_the_pending_list(stack: LocalStack) -> None:
    # With fastupdate on, every lookup scans GIN's pending list, which grows with each write until a vacuum.
    options = stack.psql(
        "SELECT coalesce(array_to_string(c.reloptions, ','), '') FROM pg_index i JOIN pg_class c "
        "ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'gin' "
        "AND c.relnamespace = 'aitask'::regnamespace",
    ).split()
    assert options and all(option == "fastupdate=off" for option in options), options
