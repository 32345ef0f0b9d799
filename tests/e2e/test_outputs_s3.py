"""Outputs on the S3-compatible store (OUTPUT_STORE=s3) against a real SeaweedFS that the test starts: the same
contract as on GridFS (tests/e2e/test_outputs.py), through REST via Envoy and gRPC."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from aitask.v1 import task_service_pb2 as pb
from devstack.seaweedfs import SeaweedS3
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM
from tests.e2e.test_outputs import (
    MEDIA_MODELS,
    RETENTION_5_DAYS,
    age_for_retention,
    assert_a_media_model_is_ours,
    assert_in_step,
    retention,
)

JIMENG_VIDEO = {"provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"}
BUCKET = "aitask-outputs-test"
# Every process that reads or writes outputs.
OUTPUT_PROCESSES = ("task_service", "task_service_2", "dispatcher")


def _restart(stack: LocalStack, env: dict[str, str]) -> None:
    for name in OUTPUT_PROCESSES:
        stack.stop(name)
        stack.start(name, env)
    stack.wait_for_rest()


@dataclass(frozen=True)
class Bucket:
    """The test bucket: a client on it, and the environment that points a process at it."""

    client: Any
    env: dict[str, str]


@pytest.fixture(scope="module")
def s3(stack: LocalStack) -> Iterator[Bucket]:
    """The stack's task services and dispatcher on a SeaweedFS bucket; back on GridFS afterwards."""
    with SeaweedS3() as seaweed:
        credentials = {"S3_ACCESS_KEY": "aitask-test", "S3_SECRET_KEY": "aitask-test-secret"}
        env = {"OUTPUT_STORE": "s3", "S3_ENDPOINT_URL": seaweed.url, "S3_BUCKET": BUCKET, **credentials}
        _restart(stack, env)
        try:
            client = boto3.client(
                "s3",
                endpoint_url=seaweed.url,
                aws_access_key_id=credentials["S3_ACCESS_KEY"],
                aws_secret_access_key=credentials["S3_SECRET_KEY"],
                region_name="us-east-1",
            )
            yield Bucket(client, env)
        finally:
            _restart(stack, {})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_image_lives_in_the_bucket_and_outlives_the_vendor(
    stack: LocalStack, rest: httpx.Client, s3: Bucket, user_id: str
) -> None:
    body = {"prompt": f"s3 outputs {user_id}", "user_id": user_id, **SEEDREAM, "size": "1024x1024"}
    task_id = rest.post("/api/v1/ai/image/task", json=body).json()["data"]["task_id"]
    result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=90)
    assert result["status"] == "completed", result
    original = httpx.get(result["upstream_url"], trust_env=False).content
    stored = s3.client.get_object(Bucket=BUCKET, Key=task_id)
    assert sha256(stored["Body"].read()) == sha256(original) == result["output"]["sha256"]
    assert stored["ContentType"] == "image/jpeg"

    stack.stop("simulator")
    try:
        served = httpx.get(result["image_url"], trust_env=False, timeout=30)
    finally:
        stack.start("simulator")
    assert served.status_code == 200 and served.content == original
    assert served.headers["etag"] == f'"{result["output"]["sha256"]}"'

    assert rest.delete(f"/api/v1/ai/task/{task_id}").status_code == 200
    with pytest.raises(ClientError):
        s3.client.head_object(Bucket=BUCKET, Key=task_id)
    assert httpx.get(result["image_url"], trust_env=False).status_code == 404


def test_a_video_over_grpc_seeks_and_refuses_a_tampered_link(stack: LocalStack, s3: Bucket, user_id: str) -> None:
    stub = stack.task_stub()
    request = pb.CreateVideoTaskRequest(
        prompt=f"s3 seek {user_id}", user_id=user_id, aspect_ratio="16:9", **JIMENG_VIDEO
    )
    task_id = stub.CreateVideoTask(request, timeout=10).data.task_id

    def final() -> pb.Task | None:
        task = stub.GetTaskResult(pb.GetTaskResultRequest(task_id=task_id), timeout=10).data
        return task if task.status in ("completed", "failed") else None

    task = wait_until(final, timeout=90)
    assert task.status == "completed", task.error_message
    original = httpx.get(task.upstream_url, trust_env=False).content
    assert sha256(original) == task.output.sha256
    with httpx.Client(trust_env=False, timeout=30) as client:
        seek = client.get(task.video_url, headers={"Range": "bytes=1000-"})
        assert seek.status_code == 206 and seek.content == original[1000:]
        assert seek.headers["content-range"] == f"bytes 1000-{len(original) - 1}/{len(original)}"
        tampered = client.get(task.video_url.replace("signature=", "signature=0"))
        assert tampered.status_code == 403 and tampered.json()["code"] == "PERMISSION_DENIED"


@pytest.mark.parametrize(("kind", "fields", "door"), MEDIA_MODELS)
def test_every_media_model_output_is_ours_in_the_bucket(
    stack: LocalStack, s3: Bucket, kind: str, fields: dict[str, Any], door: str, user_id: str
) -> None:
    task = assert_a_media_model_is_ours(stack, kind, fields, door, user_id)
    stored = s3.client.get_object(Bucket=BUCKET, Key=task["task_id"])
    assert sha256(stored["Body"].read()) == task["output"]["sha256"]
    assert stored["ContentType"] == task["output"]["content_type"]


def test_retention_sweeps_old_outputs_and_tasks_from_the_bucket(stack: LocalStack, s3: Bucket, user_id: str) -> None:
    old_task, old_output, kept = (
        assert_a_media_model_is_ours(stack, "image", SEEDREAM | {"size": "1024x1024"}, "rest", user_id)["task_id"]
        for _ in range(3)
    )
    age_for_retention(stack, old_task, old_output)
    swept = retention(stack, "sweep", env=s3.env | RETENTION_5_DAYS)
    assert swept.returncode == 0, swept.stderr
    for gone in (old_task, old_output):
        with pytest.raises(ClientError):
            s3.client.head_object(Bucket=BUCKET, Key=gone)
    tasks = stack.tasks()
    assert tasks.count_documents({"_id": old_task}) == 0
    remaining = tasks.find_one({"_id": old_output})
    assert remaining is not None and "output" not in remaining and remaining["upstream_url"]
    assert s3.client.head_object(Bucket=BUCKET, Key=kept)["ContentLength"] > 0
    assert_in_step(stack, old_task, old_output, kept, env=s3.env)
