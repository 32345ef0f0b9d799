"""The client library (issue 19) against the real stack through Envoy: every call, sync and asyncio, each error
as its exception, `run` of every served model, and downloads whose SHA-256 is the output's."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aitask_client import (
    NO_RETRIES,
    AsyncClient,
    Client,
    Conflict,
    InvalidArgument,
    NotFound,
    PaymentRequired,
    RateLimited,
    Task,
    TaskFailed,
    Unauthenticated,
    WaitTimeout,
    WebhookVerificationError,
    task_of,
    verify_webhook,
)

from devstack.stack import LocalStack
from tests.client.conftest import gateway_url
from tests.conftest import wait_until
from tests.e2e.helpers import SEEDREAM, faults
from tests.e2e.test_billing import PRICES
from tests.e2e.test_cancel import IMAGES, VIDEO_SUBMIT
from tests.e2e.test_models import SERVED
from tests.e2e.test_webhooks import Receiver, receiver  # noqa: F401 - a fixture

SEEDREAM_MODEL = SEEDREAM["model"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_call_of_the_sync_client(client: Client, user_id: str, tmp_path: Path) -> None:
    created = client.create_image("a red fox in the snow", model=SEEDREAM_MODEL, size="1024x1024", seed=3)
    assert isinstance(created, Task) and created.status == "pending" and created.type == "image"
    assert created.parameters.size == "1024x1024" and created.parameters.seed == 3

    task = client.wait(created, timeout=60)
    assert task.status == "completed" and task.done and task.url and task.output is not None
    again = client.get(task.id)
    assert (again.id, again.status, again.output) == (task.id, task.status, task.output) and task.user_id == user_id

    assert [listed.id for listed in client.list(type="image")] == [task.id]
    assert list(client.list(type="text")) == []
    assert SEEDREAM_MODEL in {model.model for model in client.models("image")}
    assert {model.type for model in client.models("video")} == {"video"}

    saved = client.download(task, tmp_path)
    assert saved.parent == tmp_path and saved.stem == task.id and saved.suffix in (".png", ".jpg", ".webp")
    assert sha256_of(saved) == task.output.sha256

    with pytest.raises(Conflict, match="is completed"):
        client.cancel(task)
    client.delete(task)
    with pytest.raises(NotFound) as missing:
        client.get(task)
    assert task.id in missing.value.message and missing.value.code == "NOT_FOUND"


def test_credits_balance_ledger_and_payment_required(stack: LocalStack, client: Client, user_id: str) -> None:
    before = client.balance()
    assert before.user_id == user_id and before.available == before.balance - before.reserved
    task = client.run(SEEDREAM_MODEL, "a priced fox")
    settled = wait_until(lambda: (now := client.balance()).reserved == 0 and now, timeout=30)
    price = PRICES[("volcengine", SEEDREAM_MODEL)].per_image
    assert before.balance - settled.balance == price
    newest = client.ledger(limit=2)
    assert [(entry.reason, entry.task_id) for entry in newest] == [("settle", task.id), ("reserve", task.id)]
    assert newest[0].amount == -price and newest[0].balance_after == settled.balance and newest[0].time is not None
    # Short of credit: PaymentRequired, with the cost and what is available.
    with stack.rest() as rest:
        rest.post("/api/v1/admin/credits", json={"user_id": user_id, "amount": -(settled.available - 5)})
    with pytest.raises(PaymentRequired) as refused:
        client.create_image("too dear", model=SEEDREAM_MODEL)
    assert (refused.value.cost, refused.value.available, refused.value.code) == (price, 5, "PAYMENT_REQUIRED")


def test_every_call_of_the_asyncio_client(stack: LocalStack, api_key: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(gateway_url(stack), api_key) as client:
            created = await client.create_text("a haiku about queues", model="gpt-5.5", max_tokens=40)
            assert created.status == "pending" and created.parameters.max_tokens == 40
            events = [event async for event in client.watch(created)]
            assert events[-1].type == "final" and events[-1].task.status == "completed"
            task = await client.wait(created, timeout=30)
            assert task.text and task.usage is not None and task.usage.total_tokens > 0
            assert (await client.get(task.id)).text == task.text
            assert [listed.id async for listed in client.list()] == [task.id]
            assert "gpt-5.5" in {model.model for model in await client.models("text")}
            saved = await client.download(task, tmp_path / "haiku.txt")
            assert saved.read_text() == task.text

            image = await client.run(SEEDREAM_MODEL, "a lighthouse", size="1024x1024")
            assert image.status == "completed" and image.type == "image"
            path = await client.download(image, tmp_path)
            assert image.output is not None and sha256_of(path) == image.output.sha256

            with pytest.raises(InvalidArgument) as bad:
                await client.create_image("x", model=SEEDREAM_MODEL, size="7x7")
            assert bad.value.field == "size"
            await client.delete(task)
            with pytest.raises(NotFound):
                await client.get(task)
            secret = await client.webhook_secret()
            assert secret.secret.startswith("whsec_")
            assert (await client.rotate_webhook_secret()).previous_secret == secret.secret

            with faults(stack, VIDEO_SUBMIT, latency_s=3.0):
                video = await client.create_video("waves", model="jimeng_vgfm_t2v_l20", aspect_ratio="16:9")
                assert video.type == "video" and video.parameters.aspect_ratio == "16:9"
                cancelled = await client.cancel(video)
            assert cancelled.status == "cancelled"

    asyncio.run(scenario())


@pytest.mark.parametrize(("provider", "model"), SERVED, ids=[model.name for _, model in SERVED])
def test_run_of_every_served_model(client: Client, provider: str, model: Any, tmp_path: Path) -> None:
    task = client.run(model.name, "a calm sea at dawn", provider=provider, timeout=120)
    assert task.status == "completed" and task.model == model.name and task.type == model.task_type
    if model.task_type == "text":
        assert task.text
        return
    # Media: the gateway keeps a copy, and the download is byte for byte that copy.
    assert task.output is not None and task.output.size > 0
    saved = client.download(task, tmp_path)
    assert saved.stat().st_size == task.output.size and sha256_of(saved) == task.output.sha256


def test_a_download_whose_link_expired_uses_a_fresh_one(client: Client, tmp_path: Path) -> None:
    task = client.run(SEEDREAM_MODEL, "kept for a while", size="1024x1024")
    stale = dataclasses.replace(task, image_url=re.sub(r"expires=\d+", "expires=1", task.image_url))
    assert stale.image_url != task.image_url
    saved = client.download(stale, tmp_path)  # the stale link answers 403; the client reads the task again
    assert task.output is not None and sha256_of(saved) == task.output.sha256


def test_watch_sees_a_task_move_from_its_current_state_to_final(stack: LocalStack, client: Client) -> None:
    with faults(stack, IMAGES, latency_s=2.0):
        task = client.create_image("slow", model=SEEDREAM_MODEL)
        events = list(client.watch(task))
    assert events[0].task.status in ("pending", "processing") and events[-1].type == "final"
    assert [event.task.status for event in events][-1] == "completed"
    assert all(event.type != "final" for event in events[:-1])


def test_wait_times_out_and_a_cancelled_run_raises_task_failed(stack: LocalStack, client: Client) -> None:
    with faults(stack, IMAGES, latency_s=5.0), ThreadPoolExecutor(1) as background:
        task = client.create_image("slow", model=SEEDREAM_MODEL)
        with pytest.raises(WaitTimeout) as late:
            client.wait(task, timeout=1)
        assert late.value.task.id == task.id and not late.value.task.done
        cancelled = client.cancel(task)
        assert cancelled.status == "cancelled" and cancelled.cancel_reason == "user"
        assert client.cancel(task).status == "cancelled"  # cancelling twice is no error

        running = background.submit(client.run, SEEDREAM_MODEL, "slow too")
        second = wait_until(lambda: [t for t in client.list(status="processing") if t.prompt == "slow too"])[0]
        client.cancel(second)
        with pytest.raises(TaskFailed) as failed:
            running.result(timeout=30)
    assert failed.value.task.id == second.id and failed.value.task.status == "cancelled"


def test_list_pages_for_the_caller_and_filters_by_status(client: Client) -> None:
    made = [client.create_text(f"count {n}", model="gpt-5.5") for n in range(5)]
    for task in made:
        client.wait(task, timeout=30)
    listed = list(client.list(page_size=2))
    assert [task.id for task in listed] == [task.id for task in reversed(made)]
    assert len(list(client.list(status="completed", page_size=2))) == 5
    assert list(client.list(status="failed")) == []


def test_errors_are_exceptions_with_code_message_and_field(stack: LocalStack, client: Client, user_id: str) -> None:
    with pytest.raises(InvalidArgument) as bad:
        client.create_image("x", model=SEEDREAM_MODEL, size="7x7")
    assert (bad.value.code, bad.value.field) == ("INVALID_ARGUMENT", "size") and "7x7" in bad.value.message
    with pytest.raises(InvalidArgument) as unknown:
        client.run("no-such-model", "x")
    assert unknown.value.field == "model"
    with pytest.raises(NotFound):
        client.get("01JD7ZQ8X4M2T3V5W6Y7Z8A9BC")
    with Client(gateway_url(stack), "ak_nope_nope", retry=NO_RETRIES) as stranger, pytest.raises(Unauthenticated):
        stranger.get("01JD7ZQ8X4M2T3V5W6Y7Z8A9BC")

    limited_key = stack.create_api_key(user_id, rate_limit=1)
    with Client(gateway_url(stack), limited_key, retry=NO_RETRIES) as limited:
        limited.models()
        with pytest.raises(RateLimited) as throttled:
            limited.models()
    assert throttled.value.retry_after is not None and throttled.value.retry_after > 0


def test_the_environment_configures_a_client(stack: LocalStack, api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITASK_URL", gateway_url(stack))
    monkeypatch.setenv("AITASK_API_KEY", api_key)
    with Client() as client:
        assert client.models("text")
    monkeypatch.delenv("AITASK_URL")
    with pytest.raises(ValueError, match="AITASK_URL"):
        Client()


def test_a_webhook_verifies_with_the_users_secret(
    client: Client,
    receiver: Receiver,  # noqa: F811 - the fixture
) -> None:
    secret = client.webhook_secret().secret
    task = client.create_image("signed", model=SEEDREAM_MODEL, webhook_url=receiver.url)
    delivered = wait_until(lambda: receiver.received, timeout=30)[0]
    message = verify_webhook(delivered.body, delivered.headers, secret)
    assert message["type"] == "task.completed" and task_of(message).id == task.id
    assert task_of(message).status == "completed"
    # A receiver mid-rotation passes both secrets; a forged body fails with either.
    rotated = client.rotate_webhook_secret()
    assert rotated.previous_secret == secret
    assert verify_webhook(delivered.body.encode(), delivered.headers, [rotated.secret, secret]) == message
    with pytest.raises(WebhookVerificationError):
        verify_webhook(delivered.body.replace("completed", "failed"), delivered.headers, secret)
