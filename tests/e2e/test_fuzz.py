"""Property-based fuzzing of every REST endpoint through Envoy: never a 5xx, and a rejected request writes nothing.

Bodies mix plausible values (real providers, models, users) with arbitrary JSON
of every type, so requests get past the first checks and into the deeper ones.
The task count is taken before and after each request: only a 200 may add a task
(a create) or remove one (a delete). Bounded (max_examples per endpoint) to stay fast.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from aitask_common.provider import load_catalogue
from devstack.stack import LocalStack
from tests.e2e.helpers import assert_every_waiting_job_has_a_task

ROOT = Path(__file__).resolve().parents[2]
MODELS = [
    model.name
    for package in ("provider_volcengine", "provider_openai")
    for model in load_catalogue(ROOT / package / "catalogue.toml").models
]
FUZZ_USER = f"fuzz-{uuid.uuid4().hex[:8]}"
OTHER_USER = f"fuzz-other-{uuid.uuid4().hex[:8]}"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written to the checkout
    suppress_health_check=[HealthCheck.too_slow],
)

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
plausible_fields = {
    "prompt": st.sampled_from(["a cat", " ", "", "x" * 5000, "a\u0000b", '{"$gt": ""}']),
    "user_id": st.sampled_from([FUZZ_USER, OTHER_USER, "", "bad user", "$where", "a\nb", "x" * 129]),
    "provider": st.sampled_from(["volcengine", "openai", "", "acme"]),
    "model": st.sampled_from([*MODELS, "", "nope"]),
    "size": st.sampled_from(["1024x1024", "1280x720", "1024x1792", "0x0", ""]),
    "aspect_ratio": st.sampled_from(["16:9", "1:1", "2:1", ""]),
    "response_format": st.sampled_from(["url", "b64_json", "gif"]),
    "priority": st.sampled_from(["critical", "default", "low", "urgent"]),
    "seed": st.sampled_from([-2, -1, 0, 7, 2**31 - 1, 2**31, 2**63, 1.5, "7"]),
    "max_tokens": st.sampled_from([-1, 0, 1, 5, 10**6, "5"]),
    "temperature": st.sampled_from([-1.0, 0.0, 0.2, 1.0, 2.5, 1e308, "0.2"]),
    "idempotency_key": st.text(max_size=210),
}
VALID_BODIES = {
    "image": {
        "prompt": "a cat",
        "user_id": FUZZ_USER,
        "provider": "volcengine",
        "model": "doubao-seedream-3-0-t2i-250415",
    },
    "video": {"prompt": "waves", "user_id": FUZZ_USER, "provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"},
    "text": {"prompt": "hello", "user_id": FUZZ_USER, "provider": "openai", "model": "gpt-4"},
}
bodies = st.fixed_dictionaries(
    {}, optional={field: strategy | json_values for field, strategy in plausible_fields.items()}
).flatmap(lambda known: st.dictionaries(st.text(max_size=12), json_values, max_size=2).map(lambda extra: extra | known))
# h11 refuses header values with surrounding whitespace: strip, as any HTTP client would.
printable_header = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=210).map(str.strip)
path_values = st.text(max_size=60) | st.sampled_from(["", ".", "..", "%00", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "a/b"])


@pytest.fixture(scope="module")
def keys(stack: LocalStack) -> dict[str, str]:
    """Which Authorization a fuzzed request may carry, by name."""
    user_key = stack.create_api_key(FUZZ_USER, name="fuzz", rate_limit=0)
    return {"admin": f"Bearer {stack.admin_key}", "user": f"Bearer {user_key}", "garbage": "Bearer ak_x"}


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[httpx.Client]:
    """A client that sends no key of its own: each example picks one."""
    with stack.rest(api_key="") as rest:
        yield rest


def auth_headers(keys: dict[str, str], who: str, idempotency: str | None) -> dict[str, str]:
    headers = {} if who == "none" else {"Authorization": keys[who]}
    if idempotency is not None:
        headers["Idempotency-Key"] = idempotency
    return headers


who = st.sampled_from(["admin", "admin", "user", "user", "none", "garbage"])


def send_and_check(stack: LocalStack, client: httpx.Client, request: httpx.Request, change_on_success: int) -> None:
    """Send `request`: never a 5xx; the task count moves by `change_on_success` only on a 200 (0 for a replay)."""
    before = stack.task_count()
    response = client.send(request)
    after = stack.task_count()
    event(f"HTTP {response.status_code}")  # the spread of answers shows in --hypothesis-show-statistics
    assert response.status_code < 500, (request.method, str(request.url), response.status_code, response.text)
    if response.status_code != 200:
        assert after == before, (request.method, str(request.url), response.status_code, response.text)
        assert response.json()["success"] is False
        return
    replayed = response.json().get("message") == "task already created with this idempotency key"
    assert after - before == (0 if replayed else change_on_success), (str(request.url), response.text)


@st.composite
def near_valid_bodies(draw: st.DrawFn, task_type: str) -> dict:
    """A valid create body with up to three fields dropped or replaced, and maybe an unknown field."""
    body = dict(VALID_BODIES[task_type])
    for field in draw(st.sets(st.sampled_from(sorted(plausible_fields)), max_size=3)):
        change = draw(st.sampled_from(["drop", "plausible", "any"]))
        if change == "drop":
            body.pop(field, None)
        else:
            body[field] = draw(plausible_fields[field] if change == "plausible" else json_values)
    return draw(st.dictionaries(st.text(max_size=12), json_values, max_size=1)) | body


@pytest.mark.parametrize("task_type", ["image", "video", "text"])
@FUZZ
@given(data=st.data(), who=who, idempotency=st.none() | st.sampled_from(["k1", "k2"]) | printable_header)
def test_fuzz_create(
    stack: LocalStack,
    client: httpx.Client,
    keys: dict,
    task_type: str,
    data: st.DataObject,
    who: str,
    idempotency: str | None,
) -> None:
    body = data.draw(near_valid_bodies(task_type) | bodies | json_values)
    request = client.build_request(
        "POST", f"/api/v1/ai/{task_type}/task", json=body, headers=auth_headers(keys, who, idempotency)
    )
    send_and_check(stack, client, request, change_on_success=1)


@FUZZ
@given(raw=st.binary(max_size=200), who=who)
def test_fuzz_create_with_arbitrary_bytes(
    stack: LocalStack, client: httpx.Client, keys: dict, raw: bytes, who: str
) -> None:
    headers = auth_headers(keys, who, None) | {"Content-Type": "application/json"}
    request = client.build_request("POST", "/api/v1/ai/image/task", content=raw, headers=headers)
    send_and_check(stack, client, request, change_on_success=1)


@pytest.fixture(scope="module")
def real_task_ids(stack: LocalStack) -> list[str]:
    """Tasks of the fuzz user (whose key is in play) and of another user, for ids that exist."""
    ids = []
    with stack.rest() as rest:
        for user_id in (FUZZ_USER, FUZZ_USER, OTHER_USER, OTHER_USER):
            body = {"prompt": "target", "user_id": user_id, "provider": "openai", "model": "gpt-4"}
            ids.append(rest.post("/api/v1/ai/text/task", json=body).json()["data"]["task_id"])
    return ids


@FUZZ
@given(data=st.data(), who=who)
def test_fuzz_get_result(
    stack: LocalStack, client: httpx.Client, keys: dict, real_task_ids: list[str], data: st.DataObject, who: str
) -> None:
    task_id = data.draw(path_values | st.sampled_from(real_task_ids))
    path = f"/api/v1/ai/task/result/{quote(task_id, safe='')}"
    send_and_check(stack, client, client.build_request("GET", path, headers=auth_headers(keys, who, None)), 0)


@FUZZ
@given(data=st.data(), who=who)
def test_fuzz_delete(
    stack: LocalStack, client: httpx.Client, keys: dict, real_task_ids: list[str], data: st.DataObject, who: str
) -> None:
    task_id = data.draw(path_values | st.sampled_from(real_task_ids))
    path = f"/api/v1/ai/task/{quote(task_id, safe='')}"
    send_and_check(stack, client, client.build_request("DELETE", path, headers=auth_headers(keys, who, None)), -1)


query_values = st.text(max_size=30) | st.integers().map(str) | st.sampled_from([FUZZ_USER, OTHER_USER, "image", "0"])
known_params = st.dictionaries(st.sampled_from(["user_id", "type", "limit", "offset"]), query_values)
# Unknown parameters are a 400 at Envoy: only some examples carry one, so most reach the service.
list_params = known_params | st.tuples(
    known_params, st.dictionaries(st.text(max_size=8), query_values, max_size=2)
).map(lambda pair: pair[1] | pair[0])


@FUZZ
@given(params=list_params, who=who)
def test_fuzz_list(stack: LocalStack, client: httpx.Client, keys: dict, params: dict, who: str) -> None:
    request = client.build_request("GET", "/api/v1/ai/tasks", params=params, headers=auth_headers(keys, who, None))
    send_and_check(stack, client, request, 0)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    prefix=st.sampled_from(["/api/v1/ai/", "/api/v1/ai/task/", "/aitask.v1.TaskService/", "/"]),
    rest_of_path=path_values,
    body=st.none() | json_values,
    who=who,
)
def test_fuzz_any_route(
    stack: LocalStack,
    client: httpx.Client,
    keys: dict,
    method: str,
    prefix: str,
    rest_of_path: str,
    body: object,
    who: str,
) -> None:
    content = None if body is None or method in ("GET", "HEAD") else json.dumps(body).encode()
    path = prefix + quote(rest_of_path, safe="/")
    request = client.build_request(method, path, content=content, headers=auth_headers(keys, who, None))
    before = stack.task_count()
    response = client.send(request)
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, (method, path, response.status_code, response.text)
    if response.status_code != 200:
        assert stack.task_count() == before


def test_fuzzing_left_no_job_without_a_task(stack: LocalStack) -> None:
    assert_every_waiting_job_has_a_task(stack)
