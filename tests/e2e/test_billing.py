"""The credit ledger end to end (issue 21), through REST via Envoy and native gRPC, against the simulator: each
seed model costs its catalogue price, a create short of credit is 402 and stores nothing, failures and cancels
are refunded, and a user reads only their own credits."""

from __future__ import annotations

import math
import time
from typing import Any

import grpc
import httpx
import openai
import pytest
from google.rpc import error_details_pb2, status_pb2

from aitask.v1 import task_service_pb2 as pb
from aitask_common.provider import load_catalogue
from devstack.processes import ROOT
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM, faults
from tests.e2e.test_cancel import cancel, dispatcher_stopped

PRICES = {
    (catalogue.provider, model.name): model.price
    for path in ("provider_volcengine", "provider_openai")
    for catalogue in [load_catalogue(ROOT / path / "catalogue.toml")]
    for model in catalogue.models
}


def balance(rest: httpx.Client, user_id: str) -> dict[str, Any]:
    response = rest.get("/api/v1/billing/balance", params={"user_id": user_id})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def ledger(rest: httpx.Client, user_id: str, **params: object) -> list[dict[str, Any]]:
    response = rest.get("/api/v1/billing/ledger", params={"user_id": user_id, **params})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["data"]["entries"]
    return entries


def settled(rest: httpx.Client, user_id: str) -> dict[str, Any]:
    """The balance once nothing is held (the reconciler settles each pass)."""
    return wait_until(lambda: (now := balance(rest, user_id))["reserved"] == "0" and now, timeout=30)


def grant(rest: httpx.Client, user_id: str, amount: int, **fields: object) -> httpx.Response:
    return rest.post("/api/v1/admin/credits", json={"user_id": user_id, "amount": amount, **fields})


def create(rest: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return rest.post(f"/api/v1/ai/{path}/task", json=body)


SEED_TASKS = [
    ("image", "volcengine", "doubao-seedream-3-0-t2i-250415", {}),
    ("image", "volcengine", "jimeng_high_aes_general_v21_L", {}),
    ("video", "volcengine", "jimeng_vgfm_t2v_l20", {}),
    ("text", "volcengine", "doubao-pro-4k", {"max_tokens": 200}),
    ("image", "openai", "dall-e-3", {}),
    ("text", "openai", "gpt-4", {"max_tokens": 200}),
]


@pytest.mark.parametrize(("path", "provider", "model", "fields"), SEED_TASKS, ids=[task[2] for task in SEED_TASKS])
def test_each_seed_model_costs_its_catalogue_price(
    rest: httpx.Client, user_id: str, path: str, provider: str, model: str, fields: dict[str, Any]
) -> None:
    before = balance(rest, user_id)
    body = {"prompt": f"priced {user_id}", "user_id": user_id, "provider": provider, "model": model, **fields}
    response = create(rest, path, body)
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["task_id"]
    task = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)
    assert task["status"] == "completed"
    after = settled(rest, user_id)
    price = PRICES[(provider, model)]
    if path == "text":
        # Settled by the tokens the simulator reported, not the max_tokens estimate reserved.
        usage = task["usage"]
        cost = math.ceil(
            (
                usage["prompt_tokens"] * price.per_1k_input_tokens
                + usage["completion_tokens"] * price.per_1k_output_tokens
            )
            / 1000
        )
        assert usage["completion_tokens"] > 0
    else:
        cost = price.per_image or price.per_video
    assert cost > 0 and int(before["balance"]) - int(after["balance"]) == cost
    # The catalogue shows the price.
    listed = rest.get("/api/v1/ai/models", params={"type": path}).json()["data"]["models"]
    shown = next(entry["price"] for entry in listed if (entry["provider"], entry["model"]) == (provider, model))
    assert {name: int(value) for name, value in shown.items() if int(value)} == {
        field.name: value for field, value in price.ListFields()
    }
    reserve, release = ledger(rest, user_id, limit=2)[::-1]
    assert (reserve["reason"], release["reason"]) == ("reserve", "settle")
    assert reserve["task_id"] == release["task_id"] == task_id and int(release["amount"]) == -cost
    assert int(reserve["held"]) == -int(release["held"]) >= cost


def test_a_create_short_of_credit_is_402_and_stores_nothing(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    available = int(balance(rest, user_id)["available"])
    assert grant(rest, user_id, -(available - 10), note="leave 10").status_code == 200
    price = PRICES[("volcengine", SEEDREAM["model"])].per_image
    response = create(rest, "image", {"prompt": "too dear", "user_id": user_id, **SEEDREAM})
    assert response.status_code == 402, response.text
    body = response.json()
    assert body == {
        "success": False,
        "code": "PAYMENT_REQUIRED",
        "message": f"insufficient credit: this task costs {price} credits, 10 available",
    }
    assert stack.tasks().count_documents({"user_id": user_id}) == 0
    assert balance(rest, user_id) == {"user_id": user_id, "balance": "10", "reserved": "0", "available": "10"}
    # Native gRPC: FAILED_PRECONDITION whose ErrorInfo says why.
    with pytest.raises(grpc.RpcError) as refused:
        stack.task_stub().CreateImageTask(pb.CreateImageTaskRequest(prompt="too dear", user_id=user_id, **SEEDREAM))
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    details = dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "PAYMENT_REQUIRED" and dict(info.metadata) == {"cost": str(price), "available": "10"}
    # Credits granted: the same create is accepted.
    assert grant(rest, user_id, price).status_code == 200
    assert create(rest, "image", {"prompt": "affordable", "user_id": user_id, **SEEDREAM}).status_code == 200


def test_a_failed_task_is_refunded(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    before = balance(rest, user_id)
    with faults(stack, "ark.images", error_rate=1.0, error_status=400):
        response = create(rest, "image", {"prompt": f"fails {user_id}", "user_id": user_id, **SEEDREAM})
        task_id = response.json()["data"]["task_id"]
        assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "failed"
    assert settled(rest, user_id)["balance"] == before["balance"]
    assert ledger(rest, user_id, limit=1)[0]["reason"] == "refund"


def test_a_task_cancelled_before_it_ran_is_refunded(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    before = balance(rest, user_id)
    with dispatcher_stopped(stack):
        response = create(rest, "image", {"prompt": f"cancelled {user_id}", "user_id": user_id, **SEEDREAM})
        task_id = response.json()["data"]["task_id"]
        assert int(balance(rest, user_id)["reserved"]) > 0
        assert cancel(rest, task_id).status_code == 200
    assert settled(rest, user_id)["balance"] == before["balance"]
    assert ledger(rest, user_id, limit=1)[0]["reason"] == "refund"


def test_a_task_past_its_deadline_is_refunded(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    before = balance(rest, user_id)
    body = {"prompt": f"too late {user_id}", "user_id": user_id, "deadline_seconds": 1, **SEEDREAM}
    with dispatcher_stopped(stack):
        task_id = create(rest, "image", body).json()["data"]["task_id"]
        time.sleep(1.5)
    task = wait_for_status(rest, task_id, {"cancelled", "completed", "failed"})
    assert (task["status"], task["cancel_reason"]) == ("cancelled", "deadline")
    assert settled(rest, user_id)["balance"] == before["balance"]
    assert ledger(rest, user_id, limit=1)[0]["reason"] == "refund"


def test_a_deleted_task_is_settled_as_a_cancel_in_its_status(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    before = balance(rest, user_id)
    with dispatcher_stopped(stack):
        response = create(rest, "image", {"prompt": f"deleted {user_id}", "user_id": user_id, **SEEDREAM})
        task_id = response.json()["data"]["task_id"]
        assert rest.delete(f"/api/v1/ai/task/{task_id}").status_code == 200
        # Refunded at once (it never reached the vendor), with nothing left held.
        assert balance(rest, user_id) == before
        assert [entry["reason"] for entry in ledger(rest, user_id, limit=2)] == ["refund", "reserve"]


def test_a_user_reads_only_their_own_credits_and_only_admins_grant(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    key = stack.create_api_key(user_id, name="billing")
    headers = {"Authorization": f"Bearer {key}"}
    own = rest.get("/api/v1/billing/balance", headers=headers)
    assert own.status_code == 200 and own.json()["data"]["user_id"] == user_id
    assert rest.get("/api/v1/billing/balance", params={"user_id": "someone-else"}, headers=headers).status_code == 403
    assert rest.get("/api/v1/billing/ledger", params={"user_id": "someone-else"}, headers=headers).status_code == 403
    refused = rest.post("/api/v1/admin/credits", json={"user_id": user_id, "amount": 5}, headers=headers)
    assert refused.status_code == 403 and refused.json()["code"] == "PERMISSION_DENIED"
    # An admin's grant, retried with its grant_id, grants once.
    first = grant(rest, user_id, 5, note="retried", grant_id="g-1")
    again = grant(rest, user_id, 5, note="retried", grant_id="g-1")
    assert first.status_code == again.status_code == 200 and first.json()["data"] == again.json()["data"]
    grants = [entry for entry in ledger(rest, user_id, limit=100) if entry["note"] == "retried"]
    assert len(grants) == 1 and grants[0]["amount"] == "5"
    assert grant(rest, user_id, 0).json()["code"] == "INVALID_ARGUMENT"
    bad = rest.get("/api/v1/billing/ledger", params={"user_id": user_id, "limit": 101})
    assert bad.status_code == 400 and "limit" in bad.json()["message"]


def test_the_openai_door_answers_spent_credit_as_openai_does(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    available = int(balance(rest, user_id)["available"])
    assert grant(rest, user_id, -available, note="spent").status_code == 200
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{stack.ports.envoy}/v1",
        api_key=stack.create_api_key(user_id, name="billing door"),
        http_client=httpx.Client(trust_env=False),
        max_retries=0,
    )
    with client, pytest.raises(openai.RateLimitError) as refused:
        client.images.generate(model="dall-e-3", prompt="no credit")
    assert refused.value.code == "insufficient_quota" and "insufficient credit" in refused.value.message
    assert stack.tasks().count_documents({"user_id": user_id}) == 0
