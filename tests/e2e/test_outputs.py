"""Outputs the gateway owns (issue 18): every image and video is copied into the store before its task completes,
and served by signed links that need no API key, honour Range, and stop working when tampered with, expired, or
once the task is deleted."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import grpc
import httpx
import pytest
from google.protobuf import json_format
from gridfs import GridFSBucket

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common.outputs import CHUNK_BYTES, DEVELOPMENT_SECRET, GridFSOutputStore
from devstack.processes import ROOT
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import (
    SEEDREAM,
    faults,
    openai_videos_provider,
    restart_after_a_crash,
    stop_dispatcher,
    upstream_calls,
)
from tests.e2e.test_readme import readme_curl_commands, run_raw

SORA = {"provider": "openai-videos", "model": "sora-2"}
JIMENG_VIDEO = {"provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"}
DALL_E = {"provider": "openai", "model": "dall-e-3"}
JIMENG_IMAGE = {"provider": "volcengine", "model": "jimeng_high_aes_general_v21_L"}


@pytest.fixture
def anonymous(stack: LocalStack) -> Iterator[httpx.Client]:
    """A client with no API key at all: what an <img> tag or plain curl is."""
    with stack.rest(api_key="") as client:
        yield client


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create(rest: httpx.Client, kind: str, user_id: str, **fields: Any) -> str:
    body = {"prompt": f"outputs test {user_id}", "user_id": user_id, **fields}
    response = rest.post(f"/api/v1/ai/{kind}/task", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


def completed(rest: httpx.Client, task_id: str) -> dict[str, Any]:
    result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=90)
    assert result["status"] == "completed", result
    return result


def vendor_bytes(url: str, headers: dict[str, str] | None = None) -> bytes:
    response = httpx.get(url, headers=headers or {}, trust_env=False, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def test_an_image_is_ours_after_the_vendor_is_gone(
    stack: LocalStack, rest: httpx.Client, anonymous: httpx.Client, user_id: str
) -> None:
    task_id = create(rest, "image", user_id, **SEEDREAM, size="1024x1024")
    result = completed(rest, task_id)
    output = result["output"]
    assert output["content_type"] == "image/jpeg"
    original = vendor_bytes(result["upstream_url"])
    assert output["sha256"] == sha256(original) and int(output["size"]) == len(original)
    link = result["image_url"]
    assert link.startswith(f"http://127.0.0.1:{stack.ports.envoy}/api/v1/ai/task/{task_id}/output?expires=")

    stack.stop("simulator")
    try:
        served = anonymous.get(link)
    finally:
        stack.start("simulator")
    assert served.status_code == 200, served.text
    assert sha256(served.content) == output["sha256"]
    assert served.headers["content-type"] == "image/jpeg"
    assert served.headers["content-length"] == str(len(original))
    assert served.headers["etag"] == f'"{output["sha256"]}"'
    assert "max-age=" in served.headers["cache-control"]
    # Every read signs afresh: a later read gives a link valid for longer.
    time.sleep(1.1)
    assert rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["image_url"] != link


def test_a_sora_video_needs_our_key_upstream_and_none_here_and_seeks(
    stack: LocalStack, anonymous: httpx.Client, user_id: str
) -> None:
    stub = stack.task_stub()
    with openai_videos_provider(stack):
        task_id = wait_until(lambda: _create_sora(stub, user_id), timeout=15)
        task = wait_until(lambda: _final(stub, task_id), timeout=90)
    assert task.status == "completed", task.error_message
    assert task.upstream_url.endswith("/content")
    # The vendor's content endpoint refuses a caller without the vendor key.
    assert httpx.get(task.upstream_url, trust_env=False).status_code == 401
    key = stack.env["OPENAI_API_KEY"]
    original = vendor_bytes(task.upstream_url, {"Authorization": f"Bearer {key}"})
    assert task.output.sha256 == sha256(original) and task.output.content_type == "video/mp4"

    whole = anonymous.get(task.video_url)
    assert whole.status_code == 200 and whole.content == original
    seek = anonymous.get(task.video_url, headers={"Range": "bytes=100-1123"})
    assert seek.status_code == 206
    assert seek.headers["content-range"] == f"bytes 100-1123/{len(original)}"
    assert seek.content == original[100:1124]
    tail = anonymous.get(task.video_url, headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == original[-16:]
    beyond = anonymous.get(task.video_url, headers={"Range": f"bytes={len(original)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(original)}"
    malformed = anonymous.get(task.video_url, headers={"Range": "bytes=oops"})
    assert malformed.status_code == 200 and malformed.content == original


def _final(stub: task_service_pb2_grpc.TaskServiceStub, task_id: str) -> pb.Task | None:
    task = stub.GetTaskResult(pb.GetTaskResultRequest(task_id=task_id), timeout=10).data
    return task if task.status in ("completed", "failed") else None


def test_a_jimeng_video_over_rest_matches_the_vendor_bytes(
    stack: LocalStack, rest: httpx.Client, anonymous: httpx.Client, user_id: str
) -> None:
    result = completed(rest, create(rest, "video", user_id, **JIMENG_VIDEO, aspect_ratio="16:9"))
    original = vendor_bytes(result["upstream_url"])
    served = anonymous.get(result["video_url"])
    assert served.status_code == 200 and sha256(served.content) == sha256(original) == result["output"]["sha256"]


def test_a_base64_image_keeps_its_base64_and_is_stored_too(
    rest: httpx.Client, anonymous: httpx.Client, user_id: str
) -> None:
    result = completed(rest, create(rest, "image", user_id, **DALL_E, size="1024x1024", response_format="b64_json"))
    assert result["image_base64"] and result["upstream_url"] == ""
    served = anonymous.get(result["image_url"])
    assert served.status_code == 200 and served.content == base64.b64decode(result["image_base64"])


def test_tampered_and_expired_links_are_refused(
    stack: LocalStack, rest: httpx.Client, anonymous: httpx.Client, user_id: str
) -> None:
    task_id = create(rest, "image", user_id, **SEEDREAM, size="1024x1024")
    link = completed(rest, task_id)["image_url"]
    parts = urlsplit(link)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}

    def with_query(**changes: str) -> str:
        return f"{parts.path}?{urlencode(query | changes)}"

    longer = str(int(query["expires"]) + 3600)
    signature = query["signature"]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    other_task_id = task_id[:-1] + ("Y" if task_id[-1] != "Y" else "Z")  # a ULID may end in either
    expired_at = str(int(time.time()) - 5)
    expired_signature = hmac.new(
        DEVELOPMENT_SECRET.encode(), f"{task_id}\n{expired_at}".encode(), hashlib.sha256
    ).hexdigest()
    for refused in (
        with_query(expires=longer),
        with_query(signature=flipped),
        with_query(expires=expired_at, signature=expired_signature),
        f"/api/v1/ai/task/{task_id}/output",
        f"{parts.path.replace(task_id, other_task_id)}?{parts.query}",
    ):
        response = anonymous.get(refused)
        assert response.status_code == 403, (refused, response.text)
        assert response.json() == {
            "success": False,
            "message": "the output link is invalid or has expired",
            "code": "PERMISSION_DENIED",
        }
    assert anonymous.get(with_query()).status_code == 200


def test_delete_purges_the_output(stack: LocalStack, rest: httpx.Client, anonymous: httpx.Client, user_id: str) -> None:
    task_id = create(rest, "image", user_id, **SEEDREAM, size="1024x1024")
    link = completed(rest, task_id)["image_url"]
    database = stack.mongo()["aitask"]
    assert database["outputs.files"].count_documents({"_id": task_id}) == 1
    assert rest.delete(f"/api/v1/ai/task/{task_id}").status_code == 200
    assert database["outputs.files"].count_documents({"_id": task_id}) == 0
    assert database["outputs.chunks"].count_documents({"files_id": task_id}) == 0
    gone = anonymous.get(link)
    assert gone.status_code == 404 and gone.json()["code"] == "NOT_FOUND"


def test_with_output_store_none_a_task_keeps_the_vendors_link_and_nothing_is_stored(
    stack: LocalStack, rest: httpx.Client, anonymous: httpx.Client, user_id: str
) -> None:
    stop_dispatcher(stack)
    stack.start("dispatcher", extra_env={"OUTPUT_STORE": "none"})
    try:
        image = completed(rest, create(rest, "image", user_id, **SEEDREAM, size="1024x1024"))
        video = completed(rest, create(rest, "video", user_id, **JIMENG_VIDEO, aspect_ratio="16:9"))
    finally:
        stop_dispatcher(stack)
        stack.start("dispatcher")
    simulator = f"http://127.0.0.1:{stack.ports.simulator}/"
    for task, link in ((image, image["image_url"]), (video, video["video_url"])):
        assert "output" not in task and link.startswith(simulator), task
        assert vendor_bytes(link)  # the vendor's own link, still served by it
        stored = stack.mongo()["aitask"]["outputs.files"].count_documents({"_id": task["task_id"]})
        assert stored == 0, task["task_id"]
        expires = int(time.time()) + 60
        signature = hmac.new(DEVELOPMENT_SECRET.encode(), f"{task['task_id']}\n{expires}".encode(), "sha256")
        query = urlencode({"expires": expires, "signature": signature.hexdigest()})
        missing = anonymous.get(f"/api/v1/ai/task/{task['task_id']}/output?{query}")  # a valid link to nothing
        assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND", missing.text
    assert_in_step(stack, image["task_id"], video["task_id"])


def retention(stack: LocalStack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m dispatcher_service.retention *args` against the stack, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher_service.retention", *args],
        env=stack.env | (env or {}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def storage_check(stack: LocalStack, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`python -m dispatcher_service.retention check --json` against the stack."""
    completed_run = retention(stack, "check", "--json", *extra, env=env)
    assert completed_run.returncode in (0, 3), completed_run.stderr
    report: dict[str, Any] = json.loads(completed_run.stdout)
    return report


def assert_in_step(stack: LocalStack, *task_ids: str, env: dict[str, str] | None = None) -> None:
    report = storage_check(stack, env=env)
    assert not set(task_ids) & set(report["orphan_outputs"] + report["missing_outputs"]), report


# Retention of 5 days, for tasks and outputs: what `age_for_retention` makes old.
RETENTION_5_DAYS = {"TASK_RETENTION_DAYS": "5", "OUTPUT_RETENTION_DAYS": "5"}


def age_for_retention(stack: LocalStack, old_task: str, old_output: str) -> None:
    """Make one task 10 days old, and another's output 10 days old."""
    tasks = stack.tasks()
    long_ago = datetime.now(UTC) - timedelta(days=10)
    tasks.update_one({"_id": old_task}, {"$set": {"created": long_ago}})
    tasks.update_one({"_id": old_output}, {"$set": {"output.stored": long_ago}})


def test_an_image_whose_copy_failed_is_copied_again_not_made_again(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with faults(stack, "media.files", error_rate=1, error_status=503):
        task_id = create(rest, "image", user_id, **SEEDREAM)
        # The vendor made the image; its link answers 503, so the copy fails and the task waits for a retry.
        wait_until(lambda: (stack.tasks().find_one({"_id": task_id}) or {}).get("attempts", 0) >= 2, timeout=60)
    result = completed(rest, task_id)
    assert sha256(vendor_bytes(result["upstream_url"])) == result["output"]["sha256"]
    # The retry copied the image the first call paid for: one call to the vendor in all.
    assert upstream_calls(stack, user_id, "ark.images") == 1
    assert stack.tasks().find_one({"_id": task_id})["generated"] is None
    assert_in_step(stack, task_id)


def test_a_link_that_never_answers_fails_the_task_saying_so(stack: LocalStack, user_id: str) -> None:
    stub = stack.task_stub()
    with openai_videos_provider(stack), faults(stack, "openai.videos.content", error_rate=1, error_status=404):
        task_id = wait_until(lambda: _create_sora(stub, user_id), timeout=15)
        task = wait_until(lambda: _final(stub, task_id), timeout=90)
    assert task.status == "failed"
    assert task.error_message.startswith("the output could not be copied: the output link answered HTTP 404")
    assert not task.HasField("output") and task.video_url == ""
    assert_in_step(stack, task_id)


def test_a_dispatcher_killed_mid_copy_leaves_storage_in_step(stack: LocalStack, user_id: str) -> None:
    stub = stack.task_stub()
    try:
        with openai_videos_provider(stack):
            with stack.sim() as sim:
                sim.set_faults("openai.videos.content", latency_s=5)
            before = content_requests(stack)
            task_id = wait_until(lambda: _create_sora(stub, user_id), timeout=15)
            # Tests run one at a time: the next content request is this task's copy, held 5 s by the simulator.
            wait_until(lambda: content_requests(stack) > before, timeout=60)
            stack.kill("dispatcher")
            with stack.sim() as sim:
                sim.clear_faults()
            restart_after_a_crash(stack)
            task = wait_until(lambda: _final(stub, task_id), timeout=120)
    finally:
        restart_after_a_crash(stack)
    assert task.status == "completed", task.error_message
    with httpx.Client(trust_env=False, timeout=30) as client:
        assert sha256(client.get(task.video_url).content) == task.output.sha256
    assert_in_step(stack, task_id)


def test_retention_sweeps_old_tasks_and_old_outputs(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    old_task = create(rest, "image", user_id, **SEEDREAM, size="1024x1024")
    old_output = create(rest, "image", user_id, **SEEDREAM, size="1024x1024")
    kept = create(rest, "image", user_id, **SEEDREAM, size="1024x1024")
    for task_id in (old_task, old_output, kept):
        completed(rest, task_id)
    database = stack.mongo()["aitask"]
    age_for_retention(stack, old_task, old_output)

    swept = retention(stack, "sweep", env=RETENTION_5_DAYS)
    assert swept.returncode == 0, swept.stderr
    result = json.loads(swept.stdout)
    assert result["tasks_deleted"] >= 1 and result["outputs_deleted"] >= 1

    assert database["tasks"].count_documents({"_id": old_task}) == 0
    assert database["outputs.files"].count_documents({"_id": {"$in": [old_task, old_output]}}) == 0
    assert database["outputs.chunks"].count_documents({"files_id": {"$in": [old_task, old_output]}}) == 0
    remaining = database["tasks"].find_one({"_id": old_output})
    assert remaining is not None and "output" not in remaining and remaining["upstream_url"]
    assert database["outputs.files"].count_documents({"_id": kept}) == 1
    assert_in_step(stack, old_task, old_output, kept)


def test_the_storage_check_finds_and_repairs_what_is_out_of_step(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    orphan = create(rest, "image", user_id, **SEEDREAM, size="1024x1024")
    missing = create(rest, "image", user_id, **SEEDREAM, size="1024x1024")
    for task_id in (orphan, missing):
        completed(rest, task_id)
    database = stack.mongo()["aitask"]
    # A task removed behind the gateway's back, and a stored copy lost behind it.
    database["tasks"].delete_one({"_id": orphan})
    database["outputs.files"].delete_one({"_id": missing})
    database["outputs.chunks"].delete_many({"files_id": missing})

    report = storage_check(stack)
    assert orphan in report["orphan_outputs"] and missing in report["missing_outputs"]
    storage_check(stack, "--repair")
    assert_in_step(stack, orphan, missing)
    assert "output" not in (database["tasks"].find_one({"_id": missing}) or {"output": "gone"})


def content_requests(stack: LocalStack) -> int:
    """How many requests the simulator's OpenAI video content endpoint has received."""
    with stack.sim() as sim:
        return int(sim.stats().get("openai.videos.content", {}).get("requests", 0))


def _create_sora(stub: task_service_pb2_grpc.TaskServiceStub, user_id: str) -> str | None:
    request = pb.CreateVideoTaskRequest(prompt=f"outputs test {user_id}", user_id=user_id, aspect_ratio="16:9", **SORA)
    return _created_over_grpc(stub.CreateVideoTask, request)


def test_the_readme_output_examples_work_as_printed(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    task_id = create(rest, "image", user_id, **SEEDREAM, size="1024x1024")
    link = completed(rest, task_id)["image_url"]
    result, whole, seek = readme_curl_commands("## Outputs")
    env = {"TASK_ID": task_id, "OUTPUT_URL": link}
    assert json.loads(run_raw(result, stack, task_id))["data"]["output"]["content_type"] == "image/jpeg"
    for command, status in ((whole, "200"), (seek, "206")):
        printed = subprocess.run(
            ["bash", "-c", command],
            env={"PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1", **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert printed.startswith(f"HTTP/1.1 {status}"), printed


def test_the_gridfs_store_replaces_a_killed_runs_copy_and_deletes_by_chunk_id(stack: LocalStack) -> None:
    """Every query of a copy is by `_id` (FerretDB reads the whole chunks collection for one by files_id):
    a second copy replaces a whole or a partial earlier one, and a delete leaves nothing; chunks stored before
    chunk ids are still read and deleted."""
    database = "aitask_gridfs_store_test"
    mongo = stack.mongo()
    store = GridFSOutputStore(mongo, database)
    chunks = mongo[database]["outputs.chunks"]
    data = bytes(range(256)) * (CHUNK_BYTES * 3 // 256 + 7)  # three whole chunks and a part
    try:
        stored = store.put("whole", [data], "video/mp4", len(data))
        assert stored.sha256 == sha256(data)
        assert sorted(doc["_id"] for doc in chunks.find({"files_id": "whole"})) == [f"whole/{n}" for n in range(4)]
        # An earlier run's whole copy, never recorded on its task: replaced.
        assert store.put("whole", [data[::-1]], "video/mp4", len(data)).sha256 == sha256(data[::-1])
        assert b"".join(store.read("whole", 0, len(data) - 1)) == data[::-1]
        # A killed run's partial copy: its upload marker and its first two chunks.
        mongo[database]["outputs.uploads"].insert_one({"_id": "partial", "started": datetime.now(UTC)})
        chunks.insert_many(
            [{"_id": f"partial/{n}", "files_id": "partial", "n": n, "data": b"x" * CHUNK_BYTES} for n in range(2)]
        )
        store.put("partial", [data[:10]], "image/png", len(data))
        assert b"".join(store.read("partial", 0, 9)) == data[:10]
        assert chunks.count_documents({"files_id": "partial"}) == 1
        # Chunks with ObjectIds, as pymongo's GridFS writes them.
        GridFSBucket(mongo[database], "outputs").upload_from_stream_with_id("legacy", "legacy", data)
        assert (
            b"".join(store.read("legacy", CHUNK_BYTES - 2, CHUNK_BYTES + 1)) == data[CHUNK_BYTES - 2 : CHUNK_BYTES + 2]
        )
        for task_id in ("whole", "partial", "legacy"):
            store.delete(task_id)
        assert chunks.count_documents({}) == 0
        assert mongo[database]["outputs.files"].count_documents({}) == 0
        assert mongo[database]["outputs.uploads"].count_documents({}) == 0
        assert list(store.task_ids()) == []
    finally:
        mongo.drop_database(database)


# Every seed model that yields media; each goes through both doors.
MEDIA_MODELS = [
    pytest.param(kind, fields, door, id=f"{name}-{door}")
    for name, kind, fields in (
        ("seedream", "image", SEEDREAM | {"size": "1024x1024"}),
        ("jimeng-image", "image", JIMENG_IMAGE),
        ("dall-e-3", "image", DALL_E | {"size": "1024x1024"}),
        ("jimeng-video", "video", JIMENG_VIDEO | {"aspect_ratio": "16:9"}),
        ("sora-2", "video", SORA | {"aspect_ratio": "16:9"}),
    )
    for door in ("rest", "grpc")
]


def finished_through(stack: LocalStack, door: str, kind: str, fields: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Create a task through REST (via Envoy) or gRPC and wait for it to finish; the task as REST renders it."""
    deadline = time.monotonic() + 90
    if door == "rest":
        with stack.rest() as rest:
            task_id = wait_until(lambda: _created_over_rest(rest, kind, fields, user_id), timeout=15)
            return completed(rest, task_id)
    stub = stack.task_stub()
    create_call = stub.CreateVideoTask if kind == "video" else stub.CreateImageTask
    request_type = pb.CreateVideoTaskRequest if kind == "video" else pb.CreateImageTaskRequest
    request = request_type(prompt=f"outputs test {user_id}", user_id=user_id, **fields)
    task_id = wait_until(lambda: _created_over_grpc(create_call, request), timeout=15)
    task = wait_until(lambda: _final(stub, task_id), timeout=deadline - time.monotonic())
    assert task.status == "completed", task.error_message
    return json_format.MessageToDict(task, preserving_proto_field_name=True)


def _created_over_rest(rest: httpx.Client, kind: str, fields: dict[str, Any], user_id: str) -> str | None:
    response = rest.post(
        f"/api/v1/ai/{kind}/task", json={"prompt": f"outputs test {user_id}", "user_id": user_id, **fields}
    )
    # A task-service replica may not have read a just-started provider's catalogue yet.
    return None if response.status_code == 400 else response.json()["data"]["task_id"]


def _created_over_grpc(create_call: Any, request: Any) -> str | None:
    """The new task's id, or None while the task service has not read a just-started provider's catalogue."""
    try:
        task_id: str = create_call(request, timeout=10).data.task_id
        return task_id
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        return None


def assert_a_media_model_is_ours(
    stack: LocalStack, kind: str, fields: dict[str, Any], door: str, user_id: str
) -> dict[str, Any]:
    """The model's output, created through `door`, is stored with the vendor's exact bytes and served to anyone
    with the link after the vendor has gone, a video also by Range; the finished task."""
    with openai_videos_provider(stack) if fields["provider"] == SORA["provider"] else contextlib.nullcontext():
        task = finished_through(stack, door, kind, fields, user_id)
    if task.get("upstream_url"):
        key = stack.env["OPENAI_API_KEY"] if task["upstream_url"].endswith("/content") else ""
        original = vendor_bytes(task["upstream_url"], {"Authorization": f"Bearer {key}"} if key else None)
    else:
        original = base64.b64decode(task["image_base64"])
    assert task["output"]["sha256"] == sha256(original) and int(task["output"]["size"]) == len(original), task
    link = task[f"{kind}_url"]
    stack.stop("simulator")
    try:
        with httpx.Client(trust_env=False, timeout=30) as anyone:
            served = anyone.get(link)
            seek = anyone.get(link, headers={"Range": "bytes=10-"})
    finally:
        stack.start("simulator")
    assert served.status_code == 200 and served.content == original, served.text
    assert served.headers["content-type"] == task["output"]["content_type"]
    assert seek.status_code == 206 and seek.content == original[10:]
    return task


@pytest.mark.parametrize(("kind", "fields", "door"), MEDIA_MODELS)
def test_every_media_model_output_is_ours_on_gridfs(
    stack: LocalStack, kind: str, fields: dict[str, Any], door: str, user_id: str
) -> None:
    task = assert_a_media_model_is_ours(stack, kind, fields, door, user_id)
    assert stack.mongo()["aitask"]["outputs.files"].count_documents({"_id": task["task_id"]}) == 1
