"""Renders Envoy's configuration (JSON, which Envoy reads as YAML) for one deployment.

Local runs, tests and Kubernetes differ only in addresses, ports and paths, so
one function builds them all: REST and native gRPC share one listener.

    python -m gateway.config --out .local/envoy.json [--listen-port 8080 ...]
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.edge import EdgeOptions, add_edge_arguments, apply_edge, edge_options

HERE = Path(__file__).resolve().parent
TASK_SERVICE = "aitask.v1.TaskService"
ADMIN_SERVICE = "aitask.v1.AdminService"
TYPE_PREFIX = "type.googleapis.com/"
# Transcoded REST requests carry this header; native gRPC calls do not.
TRANSCODED = {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": True}}}
NOT_GRPC = {
    "header_filter": {
        "header": {
            "name": "content-type",
            "string_match": {"prefix": "application/grpc"},
            "invert_match": True,
            "treat_missing_header_as_empty": True,
        }
    }
}
# Envoy's own errors (bad JSON or an unknown field, unknown path, a request too slow or too large, no
# upstream), in the public error shape.
LOCAL_REPLY_CODES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    408: "REQUEST_TIMEOUT",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    431: "HEADERS_TOO_LARGE",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# A create or get may wait up to this long for its task (task_service.prefer.MAX_WAIT_SECONDS): the route's
# timeout leaves room for the work around the wait.
MAX_WAIT_SECONDS = 60
ROUTE_TIMEOUT_SECONDS = MAX_WAIT_SECONDS + 15
# WatchTask streams last as long as their task: no route timeout, no idle timeout (a video may run for many
# minutes between two events, and the transcoder cannot send an SSE comment to keep a stream busy). The task
# service ends every stream when its task is final or deleted; a client that goes away resets it.
WATCH_METHOD_PATH = f"/{TASK_SERVICE}/WatchTask"
WATCH_EVENTS_PATH = r"^/api/v1/ai/task/[^/]+/events$"


# The OpenAI-compatible door (openai_door/) serves OpenAI's own paths under this prefix, in OpenAI's shapes: plain
# HTTP to its own cluster, no transcoding. An image or chat request waits up to OPENAI_COMPAT_WAIT_SECONDS (120 by
# default) for its task: the route's timeout leaves room above the longest wait a deployment should configure.
OPENAI_DOOR_PREFIX = "/v1/"
OPENAI_DOOR_TIMEOUT_SECONDS = 300

# A task's stored output by signed link (task_service.output_http): plain HTTP, served by each task service's
# output server beside its gRPC port, streamed both ways (a 500 MiB video is never buffered) with no route
# timeout; a download that stalls for OUTPUT_IDLE_TIMEOUT is cut.
OUTPUT_PATH = r"^/api/v1/ai/task/[^/]+/output$"
OUTPUT_CLUSTER = "task_service_output"
# The operator's console (task_service/console/): static files from the same HTTP servers, same origin as the API.
CONSOLE_PREFIX = "/console"
OUTPUT_IDLE_TIMEOUT = "60s"


# The REST API's OpenAPI document, served by Envoy (`_openapi_route`); Envoy's default cap on a direct
# response is 4 KiB.
OPENAPI_PATH = "/api/v1/openapi.json"
OPENAPI_DOCUMENT = HERE / "openapi.json"
OPENAPI_MAX_BYTES = 256 * 1024


# Envoy asks each task service for its health this often: a stopping one reports NOT_SERVING and goes on
# serving for longer than interval + timeout (aitask_common.grpc_server.BALANCED_DRAIN_SECONDS), so Envoy
# has stopped sending it requests before it stops listening. A NOT_SERVING answer takes a host out at once.
HEALTH_CHECK_INTERVAL_SECONDS = 1
HEALTH_CHECK_TIMEOUT_SECONDS = 1
# A request that never reached a task service (refused connection, stream refused or reset before the request
# went out) is safe to send again, even a create: to another host.
RETRY_POLICY = {
    "retry_on": "connect-failure,refused-stream,reset-before-request",
    "num_retries": 3,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 3,
}
# A task service that refuses or resets connections (killed, restarting) is taken out for a few seconds after
# two such failures, before its health check notices. Only failures of Envoy's own connection to it count: a
# 503 the service answers (its MongoDB or Redis is down) is the same on every host, and ejecting one would
# only load the others.
OUTLIER_DETECTION = {
    "split_external_local_origin_errors": True,
    "consecutive_local_origin_failure": 2,
    "enforcing_consecutive_local_origin_failure": 100,
    "enforcing_consecutive_5xx": 0,
    "enforcing_consecutive_gateway_failure": 0,
    "enforcing_success_rate": 0,
    "enforcing_local_origin_success_rate": 0,
    "interval": "1s",
    "base_ejection_time": "5s",
    "max_ejection_percent": 50,
}


def body_fields() -> list[dict[str, Any]]:
    """Per REST method and path of TaskService and AdminService whose body is the request message: the path as a Lua
    pattern, every field name the transcoder accepts (proto and JSON spellings) and the proto names."""
    from google.api import annotations_pb2  # the stubs exist wherever the config is rendered

    from aitask.v1 import task_service_pb2

    routes = []
    services = task_service_pb2.DESCRIPTOR.services_by_name
    for method in [*services["TaskService"].methods, *services["AdminService"].methods]:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if rule.body != "*" or verb not in ("post", "put", "patch"):
            continue
        # Literal parts escaped for a Lua pattern, each {variable} one path segment.
        literal_parts = re.split(r"\{[^}]*\}", getattr(rule, verb))
        path = "[^/]+".join(re.sub(r"([%^$().\[\]*+\-?])", r"%\1", part) for part in literal_parts)
        names = [field.name for field in method.input_type.fields]
        accepted = sorted({*names, *(field.json_name for field in method.input_type.fields)})
        routes.append({"method": verb.upper(), "pattern": f"^{path}$", "fields": accepted, "names": names})
    return routes


def _lua_source() -> str:
    """The Lua filter: the unknown-field check on requests, the error envelope on responses."""
    rows = []
    for route in body_fields():
        fields = ", ".join(f"[{json.dumps(name)}] = true" for name in route["fields"])
        names = ", ".join(json.dumps(name) for name in route["names"])
        method, pattern = json.dumps(route["method"]), json.dumps(route["pattern"])
        rows.append(f"  {{method = {method}, pattern = {pattern}, fields = {{{fields}}}, names = {{{names}}}}}")
    table = ",\n".join(rows)
    return "\n".join(
        [
            f"BODY_FIELDS = {{\n{table}\n}}",
            (HERE / "unknown_fields.lua").read_text(),
            (HERE / "error_body.lua").read_text(),
        ]
    )


def _local_rate_limit(per_second: int) -> list[dict[str, Any]]:
    """Envoy's own flood guard: one token bucket for the whole listener, before any other work (none when 0).
    Per-key limits are the task service's; this only caps what one Envoy lets through at all."""
    if per_second <= 0:
        return []
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "unused"}
    return [
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "local_rate_limit",
                "token_bucket": {"max_tokens": per_second, "tokens_per_fill": per_second, "fill_interval": "1s"},
                "filter_enabled": always,
                "filter_enforced": always,
            },
        }
    ]


def _openapi_route() -> dict[str, Any]:
    """GET /api/v1/openapi.json: the committed document (scripts/openapi.py), answered by Envoy itself and
    inline, so the image and the Kubernetes ConfigMap need no extra file. No API key: it is public."""
    document = json.dumps(json.loads(OPENAPI_DOCUMENT.read_text()), separators=(",", ":"))
    if len(document) > OPENAPI_MAX_BYTES:
        raise ValueError(f"{OPENAPI_DOCUMENT.name} is {len(document)} bytes: raise OPENAPI_MAX_BYTES")
    return {
        "match": {"path": OPENAPI_PATH, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
        "direct_response": {"status": 200, "body": {"inline_string": document}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        # The transcoder would refuse a path that is no RPC's.
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "disabled": True,
            }
        },
    }


def _openai_door_route() -> dict[str, Any]:
    """/v1/...: to the door, streamed both ways (chat's SSE chunks, video content), without the transcoder."""
    return {
        "match": {"prefix": OPENAI_DOOR_PREFIX},
        "route": {"cluster": "openai_door", "timeout": f"{OPENAI_DOOR_TIMEOUT_SECONDS}s"},
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "disabled": True,
            }
        },
    }


def _single_host_cluster(name: str, cluster_type: str, host: str, port: int, **options: Any) -> dict[str, Any]:
    """A cluster of one address (a DNS name in Kubernetes, resolved to every pod with STRICT_DNS)."""
    return {
        "name": name,
        "type": cluster_type,
        "connect_timeout": "2s",
        **options,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
            ],
        },
    }


def _openai_door_cluster(cluster_type: str, host: str, port: int) -> dict[str, Any]:
    """The door's instances, over HTTP/1.1 (Envoy pools its connections to them)."""
    return _single_host_cluster(
        "openai_door", cluster_type, host, port, lb_policy="LEAST_REQUEST", outlier_detection=OUTLIER_DETECTION
    )


# gRPC upstreams: HTTP/2.
HTTP2_OPTIONS: dict[str, Any] = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def _tracing() -> dict[str, Any]:
    """Every request traced, its context passed on in W3C `traceparent` headers."""
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": "otlp_collector"}, "timeout": "2s"},
                "service_name": "envoy",
            },
        },
        "spawn_upstream_span": True,
    }


def _otlp_cluster(cluster_type: str, host: str, port: int) -> dict[str, Any]:
    """The trace collector's OTLP/gRPC port."""
    return _single_host_cluster(
        "otlp_collector", cluster_type, host, port, typed_extension_protocol_options=HTTP2_OPTIONS
    )


def _output_server_route(path_match: dict[str, Any]) -> dict[str, Any]:
    """GET (and HEAD) of a task's output or of the console's files: to the task services' HTTP servers, past the
    transcoder (no RPC has these paths), the buffer (bodies stream) and the Lua filter (the server answers the
    error envelope)."""
    disabled = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
    return {
        "match": path_match
        | {"headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "^(GET|HEAD)$"}}}]},
        "route": {
            "cluster": OUTPUT_CLUSTER,
            "timeout": "0s",
            "idle_timeout": OUTPUT_IDLE_TIMEOUT,
            "retry_policy": RETRY_POLICY,
        },
        "typed_per_filter_config": {
            name: disabled
            for name in (
                "envoy.filters.http.grpc_json_transcoder",
                "envoy.filters.http.buffer",
                "envoy.filters.http.lua",
            )
        },
    }


def _local_reply_mapper(status: int, code: str) -> dict[str, Any]:
    return {
        "filter": {
            "and_filter": {
                "filters": [
                    {
                        "status_code_filter": {
                            "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": "unused"}}
                        }
                    },
                    {"or_filter": {"filters": [TRANSCODED, NOT_GRPC]}},
                ]
            }
        },
        "body_format_override": {
            "json_format": {"success": False, "message": "%LOCAL_REPLY_BODY%", "code": code},
        },
    }


def render(
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = 8080,
    admin_host: str = "127.0.0.1",
    admin_port: int = 9901,
    task_service_host: str = "127.0.0.1",
    task_service_ports: Sequence[int] = (50051,),
    openai_door_host: str = "127.0.0.1",
    openai_door_port: int = 8090,
    output_ports: Sequence[int] = (50055,),
    descriptor: str = str(HERE / "aitask.pb"),
    cluster_type: str = "STATIC",
    max_request_bytes: int = 65536,
    max_response_bytes: int = 32 * 1024 * 1024,
    request_timeout_seconds: float = 30.0,
    local_rate_limit_per_second: int = 0,
    edge: EdgeOptions | None = None,
    otlp_host: str = "",
    otlp_port: int = 4317,
) -> dict[str, Any]:
    """The whole Envoy bootstrap as a dict, hardened for the edge (gateway/edge.py; `edge` adds the optional
    parts: probe listener, access log, CORS, per-IP limit). With `otlp_host`, Envoy starts a trace for every
    request and sends its spans there over OTLP/gRPC (aitask_common/tracing.py)."""
    print_options = {"preserve_proto_field_names": True, "always_print_primitive_fields": True}
    transcoder = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        "proto_descriptor": descriptor,
        "services": [TASK_SERVICE, ADMIN_SERVICE],
        "print_options": print_options,
        "convert_grpc_status": True,
        "request_validation_options": {"reject_unknown_method": True, "reject_unknown_query_parameters": True},
        "max_response_body_size": max_response_bytes,
    }
    to_task_service = {"cluster": "task_service", "timeout": f"{ROUTE_TIMEOUT_SECONDS}s", "retry_policy": RETRY_POLICY}
    to_watch = to_task_service | {"timeout": "0s", "idle_timeout": "0s"}
    no_buffer = {
        "envoy.filters.http.buffer": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "disabled": True,
        }
    }
    routes = [
        _output_server_route({"safe_regex": {"regex": OUTPUT_PATH}}),
        _output_server_route({"path_separated_prefix": CONSOLE_PREFIX}),
        {
            # WatchTask, native or transcoded (the transcoder rewrites the path to this one and routes again).
            "match": {"path": WATCH_METHOD_PATH},
            "route": to_watch,
            "typed_per_filter_config": no_buffer,
        },
        {
            # GET .../events with `Accept: text/event-stream`: Server-Sent Events, one `data:` line per TaskEvent.
            # A per-route transcoder config replaces the filter's whole config, so it repeats all of it. Without
            # that Accept header the path gets the transcoder's default, one JSON array streamed message by message.
            "match": {
                "safe_regex": {"regex": WATCH_EVENTS_PATH},
                "headers": [{"name": "accept", "string_match": {"contains": "text/event-stream"}}],
            },
            "route": to_watch,
            "typed_per_filter_config": no_buffer
            | {
                "envoy.filters.http.grpc_json_transcoder": transcoder
                | {"print_options": print_options | {"stream_sse_style_delimited": True}}
            },
        },
        {
            # Reflection is a bidirectional stream (grpcurl keeps it open): it cannot be buffered.
            "match": {
                "prefix": "/grpc.reflection.",
                "headers": [{"name": "content-type", "string_match": {"prefix": "application/grpc"}}],
            },
            "route": to_task_service,
            "typed_per_filter_config": no_buffer,
        },
        {
            # Native gRPC: unary requests, buffered like REST bodies, so max_request_bytes caps them too.
            "match": {
                "prefix": "/",
                "headers": [{"name": "content-type", "string_match": {"prefix": "application/grpc"}}],
            },
            "route": to_task_service,
        },
        _openapi_route(),
        _openai_door_route(),
        {"match": {"prefix": "/"}, "route": to_task_service},
    ]
    http_filters = [*_local_rate_limit(local_rate_limit_per_second)]
    http_filters += [
        {
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": max_request_bytes,
            },
        },
        {
            # Before the transcoder: it sees request bodies as the client sent them, and responses after
            # the transcoder made them (encoders run in reverse).
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": _lua_source()},
            },
        },
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder},
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        },
    ]
    connection_manager = {
        "@type": TYPE_PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "route_config": {
            "name": "aitask",
            "virtual_hosts": [{"name": "aitask", "domains": ["*"], "routes": routes}],
            "max_direct_response_body_size_bytes": OPENAPI_MAX_BYTES,
        },
        "http_filters": http_filters,
        # A client that does not finish sending its request in time gets a 408 (and frees the connection).
        "request_timeout": f"{request_timeout_seconds:g}s",
        "local_reply_config": {
            "mappers": [_local_reply_mapper(status, code) for status, code in LOCAL_REPLY_CODES.items()]
        },
    }
    cluster = {
        "name": "task_service",
        "type": cluster_type,
        # Several task-service processes (one per core locally): the least busy gets the next request.
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": "2s",
        "outlier_detection": OUTLIER_DETECTION,
        "typed_extension_protocol_options": HTTP2_OPTIONS,
        "load_assignment": {
            "cluster_name": "task_service",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": task_service_host, "port_value": p}}}}
                        for p in task_service_ports
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": f"{HEALTH_CHECK_TIMEOUT_SECONDS}s",
                "interval": f"{HEALTH_CHECK_INTERVAL_SECONDS}s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": TASK_SERVICE},
            }
        ],
    }
    output_cluster = {
        "name": OUTPUT_CLUSTER,
        "type": cluster_type,
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": "2s",
        "outlier_detection": OUTLIER_DETECTION,
        "load_assignment": {
            "cluster_name": OUTPUT_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": task_service_host, "port_value": p}}}}
                        for p in output_ports
                    ]
                }
            ],
        },
    }
    bootstrap: dict[str, Any] = {
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "aitask",
                    "address": {"socket_address": {"address": listen_host, "port_value": listen_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                cluster,
                output_cluster,
                _openai_door_cluster(cluster_type, openai_door_host, openai_door_port),
            ],
        },
    }
    if otlp_host:
        connection_manager["tracing"] = _tracing()
        bootstrap["static_resources"]["clusters"].append(_otlp_cluster(cluster_type, otlp_host, otlp_port))
    return apply_edge(bootstrap, replace(edge or EdgeOptions(), admin_port=admin_port))


def main() -> None:
    """Write a rendered configuration to --out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=8080)
    parser.add_argument("--admin-host", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--task-service-host", default="127.0.0.1")
    parser.add_argument("--task-service-port", dest="task_service_ports", type=int, nargs="+", default=[50051])
    parser.add_argument("--openai-door-host", default="127.0.0.1")
    parser.add_argument("--openai-door-port", type=int, default=8090)
    parser.add_argument("--output-port", dest="output_ports", type=int, nargs="+", default=[50055])
    parser.add_argument("--descriptor", default=str(HERE / "aitask.pb"))
    parser.add_argument("--cluster-type", default="STATIC", choices=["STATIC", "STRICT_DNS"])
    parser.add_argument("--local-rate-limit-per-second", type=int, default=0, help="Envoy-wide request cap (0: off)")
    parser.add_argument("--otlp-host", default="", help="trace collector (OTLP/gRPC); empty: no traces")
    parser.add_argument("--otlp-port", type=int, default=4317)
    add_edge_arguments(parser)
    options = vars(parser.parse_args())
    options["edge"] = edge_options(options)
    out = options.pop("out")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(render(**options), indent=2))


if __name__ == "__main__":
    main()
