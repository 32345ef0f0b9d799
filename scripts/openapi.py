"""Generate gateway/openapi.json, the REST API's OpenAPI 3 document, from the protos (`make protos`).

gnostic's protoc-gen-openapi (built into .local/bin by scripts/install-deps.sh) reads the
`google.api.http` annotations; what it writes is then corrected to what Envoy really sends:

- names as the protos spell them (the transcoder prints with `preserve_proto_field_names`);
- every field without presence is always there (`always_print_primitive_fields`: "", 0, false, []), so it
  is required; message fields and proto3 `optional` ones are left out when unset; no other field appears;
- errors, whoever makes them (the task service through the transcoder, or Envoy itself), are
  `{"success": false, "message", "code"}` (gateway/error_body.lua, the local reply mappers in gateway/config.py);
- the events path answers Server-Sent Events with `Accept: text/event-stream`, else one JSON array;
- the `Prefer` and `Idempotency-Key` headers, the `Preference-Applied` answer, and Bearer API keys;
- this document's own path, which needs no key.

The document is committed, so building the wheel or an image needs no Go; Envoy serves it inline
(gateway/config.py). `python scripts/openapi.py --check` fails when it is out of date.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from google.protobuf.descriptor import Descriptor  # noqa: E402
from protoc import include_options  # noqa: E402

from aitask.v1 import task_service_pb2  # noqa: E402
from gateway.config import LOCAL_REPLY_CODES, OPENAPI_DOCUMENT, OPENAPI_PATH  # noqa: E402

PLUGIN = ROOT / ".local" / "bin" / "protoc-gen-openapi"
PROTO = "aitask/v1/task_service.proto"
EVENTS_PATH = "/api/v1/ai/task/{task_id}/events"
# The plugin's options: proto field names, enums as strings, short schema names, and our own error
# responses instead of google.rpc.Status.
PLUGIN_OPTIONS = "naming=proto,enum_type=string,fq_schema_naming=false,default_response=false"
CREATE_OPERATIONS = ("TaskService_CreateImageTask", "TaskService_CreateVideoTask", "TaskService_CreateTextTask")
WAIT_OPERATIONS = (*CREATE_OPERATIONS, "TaskService_GetTaskResult")
# gRPC status names (what the task service answers) and Envoy's own local-reply codes.
CODES = [code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK]
CODES += sorted(set(LOCAL_REPLY_CODES.values()) - set(CODES))
ERROR_BODY = {
    "type": "object",
    "description": "Every error, whether the task service or Envoy made it.",
    "required": ["success", "message", "code"],
    "additionalProperties": False,
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "message": {"type": "string", "description": "What went wrong; names the field for a bad request."},
        "code": {"type": "string", "enum": CODES, "description": "The gRPC status name (or Envoy's own reason)."},
    },
}
ERROR_STATUSES = {
    "400": "A field is wrong (the message names it), or the JSON is malformed or has an unknown field.",
    "401": "No API key, or an unknown or revoked one.",
    "403": "The API key may act only for its own user.",
    "404": "No such task (another user's task is not found either), or no such path.",
    "409": "A conflict: the idempotency key was used for another request, or the task is already final.",
    "413": "The request body is too large.",
    "429": "Too many requests for this key, or too many tasks in flight for the user.",
    "503": "A store the call needs is unreachable; retry later.",
    "default": "Any other error, in the same shape.",
}
PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`wait=N`: answer when the task is final or after N seconds (at most 60), whichever is first."
    " The wait applied is echoed in `Preference-Applied`.",
    "schema": {"type": "string", "pattern": "^wait=[0-9]{1,3}$"},
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retried create safe (as the body's `idempotency_key`): 1-200 printable characters.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$"},
}
# Requests that succeed on `make run` (documentation, and schemathesis's explicit examples).
BODY_EXAMPLES = {
    "TaskService_CreateImageTask": {
        "prompt": "a lighthouse at dusk",
        "user_id": "user-1",
        "provider": "volcengine",
        "model": "doubao-seedream-3-0-t2i-250415",
        "size": "1024x1024",
    },
    "TaskService_CreateVideoTask": {
        "prompt": "waves rolling onto a beach",
        "user_id": "user-1",
        "provider": "volcengine",
        "model": "jimeng_vgfm_t2v_l20",
        "aspect_ratio": "16:9",
    },
    "TaskService_CreateTextTask": {
        "prompt": "Say hello in French.",
        "user_id": "user-1",
        "provider": "openai",
        "model": "gpt-5.5",
        "max_tokens": 100,
    },
}
PARAMETER_EXAMPLES = {"user_id": "user-1", "type": "image", "task_id": "01KBHD6XAMP1E0000000000000"}
PREFERENCE_APPLIED = {
    "description": "The `Prefer: wait=N` honoured, capped at 60.",
    "schema": {"type": "string"},
}


def generate() -> dict[str, Any]:
    """The corrected document."""
    if not PLUGIN.exists():
        raise SystemExit(f"{PLUGIN} is missing: run `make install`")
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                *include_options(),
                f"--plugin=protoc-gen-openapi={PLUGIN}",
                # The plugin wants a Go import path, which our protos do not carry (they need none).
                f"--openapi_out={PLUGIN_OPTIONS},M{PROTO}=aitask.local/{Path(PROTO).parent}:{scratch}",
                PROTO,
            ],
            check=True,
            cwd=ROOT,
        )
        generated = yaml.safe_load((Path(scratch) / "openapi.yaml").read_text())
    return correct(generated)


def correct(document: dict[str, Any]) -> dict[str, Any]:
    """Turn the plugin's document into what Envoy serves."""
    document["info"] = {
        "title": "aitask API",
        "version": "v1",
        "description": "Asynchronous AI generation: create a task, get its id at once, then read, wait for or"
        " watch it. The same API is native gRPC (aitask.v1.TaskService) on the same port.",
    }
    schemas = document["components"]["schemas"]
    for name in ("Status", "GoogleProtobufAny"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_BODY
    messages = task_service_pb2.DESCRIPTOR.message_types_by_name
    for name, schema in schemas.items():
        if name in messages:
            _exact(schema, messages[name])
    document["components"]["responses"] = {
        status: {
            "description": reason,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status, reason in ERROR_STATUSES.items()
    }
    document["components"]["securitySchemes"] = {
        "ApiKey": {"type": "http", "scheme": "bearer", "description": "An API key from `make api-key`."}
    }
    document["security"] = [{"ApiKey": []}]
    for path in document["paths"].values():
        for operation in path.values():
            _correct_operation(operation)
    _stream_events(document["paths"][EVENTS_PATH]["get"])
    document["paths"][OPENAPI_PATH] = {
        "get": {
            "tags": ["TaskService"],
            "operationId": "OpenApiDocument",
            "description": "This document. Needs no API key.",
            "security": [],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
            },
        }
    }
    _tidy_descriptions(document)
    return document


def _exact(schema: dict[str, Any], message: Descriptor) -> None:
    """Exactly the fields the transcoder prints: those without presence always; `data` of a successful
    answer always (the servicer sets it)."""
    always = [field.name for field in message.fields if not field.has_presence]
    if message.name.endswith("Response") and "data" in message.fields_by_name:
        always.append("data")
    if always:
        schema["required"] = always
    schema["additionalProperties"] = False


def _correct_operation(operation: dict[str, Any]) -> None:
    operation["responses"].update({status: {"$ref": f"#/components/responses/{status}"} for status in ERROR_STATUSES})
    operation_id = operation["operationId"]
    for parameter in operation.get("parameters", []):
        if parameter["name"] in PARAMETER_EXAMPLES:
            parameter["example"] = PARAMETER_EXAMPLES[parameter["name"]]
    if operation_id in BODY_EXAMPLES:
        operation["requestBody"]["content"]["application/json"]["example"] = BODY_EXAMPLES[operation_id]
    if operation_id in WAIT_OPERATIONS:
        operation.setdefault("parameters", []).append(PREFER)
        operation["responses"]["200"]["headers"] = {"Preference-Applied": PREFERENCE_APPLIED}
    if operation_id in CREATE_OPERATIONS:
        operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY)


SSE_EVENT = {
    "type": "object",
    "description": "One Server-Sent Event; its `data` is one TaskEvent as JSON.",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "A TaskEvent (#/components/schemas/TaskEvent) as JSON."},
        "event": {"type": "string", "description": "Not sent: the default, `message`."},
    },
}


def _stream_events(operation: dict[str, Any]) -> None:
    """A server stream: SSE with `Accept: text/event-stream`, else every event in one JSON array."""
    event = {"$ref": "#/components/schemas/TaskEvent"}
    operation["responses"]["200"] = {
        "description": "The task's events, the current state first and the final state last, then the stream"
        " ends. With `Accept: text/event-stream`: Server-Sent Events, one `data:` line of a TaskEvent each."
        " Otherwise one JSON array of every event, sent when the task is final.",
        "content": {
            # Before OpenAPI 3.2 a stream's schema describes each event.
            "text/event-stream": {"schema": SSE_EVENT},
            "application/json": {"schema": {"type": "array", "items": event}},
        },
    }


def _tidy_descriptions(node: Any) -> None:
    """Proto comments wrap lines; a description reads as one paragraph."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = " ".join(line.strip() for line in value.splitlines())
            else:
                _tidy_descriptions(value)
    elif isinstance(node, list):
        for item in node:
            _tidy_descriptions(item)


def render() -> str:
    """The document as committed."""
    return json.dumps(generate(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    committed = OPENAPI_DOCUMENT.relative_to(ROOT)
    parser.add_argument("--check", action="store_true", help=f"fail if {committed} is out of date")
    check = parser.parse_args().check
    text = render()
    if not check:
        OPENAPI_DOCUMENT.write_text(text)
    elif not OPENAPI_DOCUMENT.exists() or OPENAPI_DOCUMENT.read_text() != text:
        print(f"{committed} is out of date: run `make protos`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
