"""The bench's MongoDB operation counts on the stack's FerretDB, which keeps no opcounters: its serverStatus
commands, less what drivers send to keep a connection."""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from bench.harness.stack import store_operations


def test_ferretdb_counts_the_operations_sent_and_not_the_connections_own(database: Database[dict[str, Any]]) -> None:
    admin = database.client.admin
    before = store_operations(admin.command("serverStatus"))
    database["things"].insert_many([{"_id": n} for n in range(3)])  # one command
    database["things"].find_one({"_id": 1})
    database["things"].update_one({"_id": 2}, {"$set": {"seen": True}})
    admin.command("ping")
    after = store_operations(admin.command("serverStatus"))
    grown = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    # Nothing else uses this database, but the stack's services share the server: at least ours, and no ping.
    assert grown.get("insert", 0) >= 1 and grown.get("find", 0) >= 1 and grown.get("update", 0) >= 1
    assert not {"ping", "hello", "isMaster", "ismaster", "serverStatus"} & set(grown)


def test_a_mongodb_reports_its_opcounters() -> None:
    status = {"opcounters": {"insert": 5, "query": 7}, "metrics": {"commands": {"find": {"total": 7, "failed": 0}}}}
    assert store_operations(status) == {"insert": 5, "query": 7}
