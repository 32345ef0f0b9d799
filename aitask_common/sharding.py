"""The shard key of each collection on a sharded MongoDB, and the condition that routes a query to one shard.

A mongos sends a query to one shard only when its filter carries an equality on the shard key's (hashed) field;
a filter on `_id` alone reaches one shard only where `_id` is the shard key. The reasons, the indexes each shard
needs and the queries allowed to ask every shard are in deploy/CAPACITY.md ("MongoDB sharding");
tests/e2e/test_shard_keys.py records every query the services send and checks it against these keys.

    python -m aitask_common.sharding [DATABASE]   # the mongosh commands that shard a deployment's database
"""

from __future__ import annotations

import json
import sys
from typing import Any, Final

# Collections left out stay unsharded (on the database's primary shard): each is small, or read by scans.
SHARD_KEYS: Final[dict[str, dict[str, Any]]] = {
    # A user's lists and every per-task read and write carry user_id (the task id alone would not route).
    "tasks": {"user_id": "hashed"},
    # GridFS: a file by its id (the task id), its chunks by their file's, hashed (MongoDB's documented
    # {files_id: 1, n: 1} would send every new chunk to one shard: task ids, like ObjectIds, only grow).
    "outputs.files": {"_id": "hashed"},
    "outputs.chunks": {"files_id": "hashed"},
    "outputs.uploads": {"_id": "hashed"},
    # A user's entries live together, so the entry number and the key stay unique where they are checked.
    "ledger": {"user_id": "hashed"},
    "accounts": {"_id": "hashed"},
    # Messages are delivered by id ("msg_<task>_<event>"); a task's list of them is a rare read.
    "webhook_messages": {"_id": "hashed"},
}


def routed_by(field: str, value: Any) -> dict[str, Any]:
    """The filter condition that routes a query to the shard holding the documents whose shard key `field` is
    `value`, beside a condition (on `_id`, or on a user's bucket) that already selects only such documents.

    An $in of one value: MongoDB rewrites it to the equality it routes by, while FerretDB (the local store) keeps
    it out of the SQL it sends PostgreSQL, whose planner, given a second indexed equality, may read every entry of
    it to intersect the two (every task of a heavy user; as it did with `status`, devstack/postgres.py)."""
    return {field: {"$in": [value]}}


def owned_by(user_id: str) -> dict[str, Any]:
    """`routed_by` the user: the shard key's field in every collection sharded by user."""
    return routed_by("user_id", user_id)


def shard_commands(database: str) -> list[str]:
    """The mongosh commands that shard `database` with SHARD_KEYS (the indexes they need come from the services'
    start-up; a hashed key's index is made by the command itself)."""
    commands = [f"sh.enableSharding({json.dumps(database)})"]
    for collection, key in SHARD_KEYS.items():
        commands.append(f"sh.shardCollection({json.dumps(f'{database}.{collection}')}, {json.dumps(key)})")
    return commands


if __name__ == "__main__":
    print("\n".join(shard_commands(sys.argv[1] if len(sys.argv) > 1 else "aitask")))
