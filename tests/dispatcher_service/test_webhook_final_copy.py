"""A worker's final webhook message (aitask_common.webhooks.record_change): the worker indexes its id as due and
leaves a copy of the task as its final write returned it, so the delivery loop renders the message without
reading MongoDB; a task too large to copy is indexed alone (the loop reads it from MongoDB)."""

from __future__ import annotations

import uuid
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo import MongoClient

from aitask_common.events import EventKind
from aitask_common.tasks import utcnow
from aitask_common.webhooks import (
    DUE_KEY,
    FINAL_COPY_MAX_BYTES,
    MESSAGES_COLLECTION,
    final_copy_key,
    final_message_id,
    record_change,
)
from devstack.stack import LocalStack


def final_task(**fields: Any) -> dict[str, Any]:
    return {
        "_id": uuid.uuid4().hex,
        "user_id": "copy-user",
        "type": "text",
        "status": "completed",
        "text_result": "hello",
        "updated": utcnow().replace(microsecond=0),  # BSON keeps milliseconds
        "webhook_url": "http://127.0.0.1:9/hook",
        "webhook_events": ["final"],
    } | fields


def test_a_final_message_is_indexed_with_a_copy_of_its_task_unless_the_task_is_too_large(stack: LocalStack) -> None:
    redis = stack.redis()
    client: MongoClient[dict[str, Any]] = MongoClient(f"mongodb://127.0.0.1:{stack.ports.ferretdb}/")
    database = client["aitask"]
    small, large = final_task(), final_task(text_result="x" * FINAL_COPY_MAX_BYTES)
    try:
        for document in (small, large):
            record_change(
                database["tasks"], database[MESSAGES_COLLECTION], document["_id"], document["user_id"],
                EventKind.FINAL, document, redis,
            )  # fmt: skip
        copy = redis.get(final_copy_key(small["_id"]))
        assert copy is not None and bson.decode(copy, CodecOptions(tz_aware=True)) == small
        assert 0 < redis.ttl(final_copy_key(small["_id"])) <= 600
        assert redis.get(final_copy_key(large["_id"])) is None
        for document in (small, large):
            assert redis.zscore(DUE_KEY, final_message_id(document["_id"])) is not None
            # Nothing stored in MongoDB: the loop stores the message with its first attempt.
            assert database[MESSAGES_COLLECTION].find_one({"_id": final_message_id(document["_id"])}) is None
    finally:
        for document in (small, large):
            redis.delete(final_copy_key(document["_id"]))
            redis.zrem(DUE_KEY, final_message_id(document["_id"]))
        client.close()
