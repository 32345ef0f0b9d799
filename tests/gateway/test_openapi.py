"""The OpenAPI document (issue 16 item 7): committed up to date with the protos, served by Envoy without an API
key, and proven against the live stack: schemathesis sends generated requests to every operation it
describes and checks that each answer is one the document allows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.strategies import SearchStrategy
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack.stack import LocalStack
from gateway.config import OPENAPI_DOCUMENT, OPENAPI_PATH
from tests.conftest import wait_for_status

ROOT = Path(__file__).resolve().parents[2]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Keeps the whole run near half a minute on a loaded machine.
EXAMPLES_PER_OPERATION = 15


def test_the_committed_document_is_generated_from_the_protos() -> None:
    checked = subprocess.run(
        [sys.executable, "scripts/openapi.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr


def test_envoy_serves_the_document_to_anyone(stack: LocalStack) -> None:
    with stack.rest(api_key="") as anonymous:
        response = anonymous.get(OPENAPI_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(OPENAPI_DOCUMENT.read_text())
    with stack.rest(api_key="") as anonymous:
        # Only the document is open: the API itself still wants a key.
        assert anonymous.get("/api/v1/ai/models").status_code == 401


def test_every_answer_conforms_to_the_document(stack: LocalStack) -> None:
    """Each operation of the served document: its examples, then generated requests (schemathesis's Python API:
    its pytest plugin's lazy fixtures do not run on pytest 9). Every answer must be documented, match its
    schema, and not be a server error."""
    document, call = served_document(stack)
    operations = [result.ok() for result in document.get_all_operations()]
    paths = json.loads(OPENAPI_DOCUMENT.read_text())["paths"]
    # Every operation but the document's own, which schemathesis leaves out (the test above covers it).
    assert {operation.label for operation in operations} == {
        f"{verb.upper()} {path}" for path, verbs in paths.items() for verb in verbs if path != OPENAPI_PATH
    }
    failures: dict[str, str] = {}
    try:
        for operation in operations:
            try:
                for explicit in operation.get_strategies_from_examples():
                    run_cases(explicit, 1, call)
                run_cases(operation.as_strategy(), EXAMPLES_PER_OPERATION, call)
            except (Exception, BaseExceptionGroup) as failure:  # collected, to report every operation that fails
                failures[operation.label] = str(failure)[:3000]
    finally:
        # A generated priority that exists would have paused it: the stack is shared.
        with stack.rest() as rest:
            for priority in ("critical", "default", "low"):
                rest.post(f"/api/v1/admin/queues/{priority}/resume", json={})
    assert not failures, "\n\n".join(f"{label}:\n{failure}" for label, failure in failures.items())


def test_a_real_tasks_answers_conform(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    """What generated requests rarely reach: a task that exists, pending and then final, in every answer."""
    document, call = served_document(stack)
    body = {"prompt": "Say hello.", "user_id": user_id, "provider": "openai", "model": "gpt-5.5", "max_tokens": 50}
    created = call(document["/api/v1/ai/text/task"]["POST"].Case(body=body, media_type="application/json"))
    task = {"task_id": created.json()["data"]["task_id"]}
    result = document["/api/v1/ai/task/result/{task_id}"]["GET"]
    call(result.Case(path_parameters=task))
    wait_for_status(rest, task["task_id"], {"completed"})
    assert call(result.Case(path_parameters=task)).json()["data"]["usage"]["total_tokens"] > 0
    call(document["/api/v1/ai/tasks"]["GET"].Case(query={"user_id": user_id}))
    events = document["/api/v1/ai/task/{task_id}/events"]["GET"]
    as_array = call(events.Case(path_parameters=task)).json()
    streamed = call(events.Case(path_parameters=task, headers={"Accept": "text/event-stream"}))
    # A final task: one event, the same either way.
    data = [line.removeprefix(b"data: ") for line in streamed.content.splitlines() if line.startswith(b"data: ")]
    assert [json.loads(event) for event in data] == as_array and as_array[0]["event"] == "final"
    assert call(document["/api/v1/ai/task/{task_id}/cancel"]["POST"].Case(path_parameters=task)).status_code == 409
    call(document["/api/v1/ai/task/{task_id}"]["DELETE"].Case(path_parameters=task))


def served_document(stack: LocalStack) -> tuple[schemathesis.BaseSchema, Callable[[schemathesis.Case], Any]]:
    """The document as Envoy serves it, and a function that sends a case with the admin key and validates
    the answer."""
    base_url = f"http://127.0.0.1:{stack.ports.envoy}"
    headers = {"Authorization": f"Bearer {stack.admin_key}"}

    def call(case: schemathesis.Case) -> Any:
        return case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=70)

    return schemathesis.openapi.from_url(base_url + OPENAPI_PATH), call


def run_cases(
    strategy: SearchStrategy[schemathesis.Case], examples: int, call: Callable[[schemathesis.Case], Any]
) -> None:
    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case: schemathesis.Case) -> None:
        call(case)

    conforms()
