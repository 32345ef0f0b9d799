"""Bad input over REST: 400, a message naming the field, and nothing written (no task, no job)."""

from __future__ import annotations

import httpx
import pytest

from devstack.stack import LocalStack
from tests.e2e.helpers import SEEDREAM, assert_every_waiting_job_has_a_task

VALID = {"prompt": "a quiet harbour", **SEEDREAM, "size": "1024x1024"}


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"provider": None}, "provider", "is required"),
        ({"model": None}, "model", "is required"),
        ({"model": "doubao-nonexistent"}, "model", "unknown model 'doubao-nonexistent'"),
        ({"provider": "acme"}, "provider", "unknown provider 'acme'"),
        ({"size": "999x999"}, "size", "'999x999' is not allowed"),
        ({"prompt": "   "}, "prompt", "is required"),
        ({"prompt": "x" * 5000}, "prompt", "characters long"),
        ({"user_id": None}, "user_id", "is required"),
        ({"response_format": "gif"}, "response_format", "'gif' is not allowed"),
        ({"priority": "urgent"}, "priority", "must be one of"),
        ({"model": "doubao-pro-4k"}, "model", "is a text model"),
    ],
)
def test_create_rejects_bad_field(
    rest: httpx.Client, stack: LocalStack, user_id: str, changes: dict, field: str, fragment: str
) -> None:
    body = {"user_id": user_id, **VALID, **changes}
    body = {key: value for key, value in body.items() if value is not None}
    response = rest.post("/api/v1/ai/image/task", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["success"] is False and error["code"] == "INVALID_ARGUMENT"
    assert error["message"].startswith(f"{field}: ") and fragment in error["message"], error["message"]
    assert stack.tasks().count_documents({"user_id": body.get("user_id", "")}) == 0
    assert_every_waiting_job_has_a_task(stack)


@pytest.mark.parametrize(
    ("path", "extra", "message"),
    [
        ("/api/v1/ai/image/task", {"sise": "1792x1024"}, "sise: unknown field, did you mean 'size'?"),
        ("/api/v1/ai/image/task", {"status": "completed"}, "status: unknown field (fields: prompt, user_id,"),
        (
            "/api/v1/ai/video/task",
            {"aspect_ration": "9:16"},
            "aspect_ration: unknown field, did you mean 'aspect_ratio'?",
        ),
    ],
)
def test_create_with_an_unknown_field_is_400_and_stores_nothing(
    rest: httpx.Client, stack: LocalStack, user_id: str, path: str, extra: dict, message: str
) -> None:
    model = VALID if "image" in path else {"prompt": "waves", "provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"}
    response = rest.post(path, json={"user_id": user_id, **model, **extra})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["success"] is False and error["code"] == "INVALID_ARGUMENT"
    assert error["message"].startswith(message), error["message"]
    assert stack.tasks().count_documents({"user_id": user_id}) == 0
    # The same body without the stray field is accepted: the check is about that field alone.
    assert rest.post(path, json={"user_id": user_id, **model}).status_code == 200


def test_malformed_json_is_400_in_the_public_error_shape(rest: httpx.Client, stack: LocalStack) -> None:
    before = stack.task_count()
    response = rest.post(
        "/api/v1/ai/image/task",
        content=b'{"prompt": "a cat", "user_id": ',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()
    assert error["success"] is False and error["code"] == "INVALID_ARGUMENT"
    assert error["message"]
    assert stack.task_count() == before


def test_wrong_json_type_is_400(rest: httpx.Client, user_id: str) -> None:
    response = rest.post("/api/v1/ai/image/task", json={"user_id": user_id, **VALID, "seed": "not-a-number"})
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"limit": -1}, "limit: must not be negative"),
        ({"offset": -5}, "offset: must not be negative"),
        ({"type": "audio"}, "type: must be one of"),
        ({}, "user_id: is required"),
    ],
)
def test_list_rejects_bad_query(rest: httpx.Client, user_id: str, params: dict, fragment: str) -> None:
    response = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, **params} if params else {})
    assert response.status_code == 400
    assert fragment in response.json()["message"]


def test_list_caps_limit(rest: httpx.Client, user_id: str) -> None:
    response = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "limit": 100000})
    assert response.status_code == 200
    assert response.json()["data"]["limit"] == 100


def test_unknown_path_and_query_parameter(rest: httpx.Client, user_id: str) -> None:
    unknown_path = rest.get("/api/v1/ai/nothing-here")
    assert unknown_path.status_code == 404
    assert unknown_path.json()["success"] is False
    unknown_param = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "colour": "red"})
    assert unknown_param.status_code == 400
    assert unknown_param.json()["code"] == "INVALID_ARGUMENT"


def test_unknown_task_is_404(rest: httpx.Client) -> None:
    response = rest.get("/api/v1/ai/task/result/01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "message": "task '01ARZ3NDEKTSV4RRFFQ69G5FAV' not found",
        "code": "NOT_FOUND",
    }
