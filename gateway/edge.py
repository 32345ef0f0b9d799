"""Edge hardening of the Envoy config that gateway/config.py renders: what an Internet-facing Envoy needs
beyond routing, following Envoy's "Configuring Envoy as an edge proxy" guidance.

- limits: per-connection buffers, HTTP/2 stream and window sizes, idle and header timeouts, headers with
  underscores refused, paths normalised, circuit breakers on the task-service cluster, and the overload
  manager (heap and connection count) so a flood degrades instead of killing the process;
- the client address: `use_remote_address` (with `xff_num_trusted_hops` behind a load balancer), an
  `x-request-id` kept from the caller or made, and sent back in every response;
- optional: JSON access logs on stdout (never the Authorization header), CORS for configured origins, a
  per-IP token bucket for requests without credentials, and a probe listener that serves only `/ready` and
  `/stats/prometheus` from the admin interface (which stays on loopback).

`apply_edge` edits a rendered bootstrap in place; `EdgeOptions` holds what a deployment chooses.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TYPE = "type.googleapis.com/"
PROBE_PATHS = ("/ready", "/stats/prometheus")
ADMIN_CLUSTER = "envoy_admin"
# Envoy's edge guidance: small per-connection buffers and HTTP/2 windows bound the memory one client can pin.
BUFFER_LIMIT_BYTES = 32 * 1024
HTTP2_LIMITS = {
    "max_concurrent_streams": 100,
    "initial_stream_window_size": 65536,
    "initial_connection_window_size": 1048576,
}
MAX_CONNECTIONS = 25000
# What every access-log line holds (Envoy command operators); request headers other than these are never logged.
ACCESS_LOG_FIELDS = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "method": "%REQ(X-AITASK-CLIENT-METHOD?:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS(NUMBER)%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "user_agent": "%REQ(USER-AGENT)%",
}
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "authorization, content-type, x-request-id, x-grpc-web, grpc-timeout, prefer"
CORS_EXPOSED = "x-request-id, grpc-status, grpc-message, retry-after"


@dataclass(frozen=True)
class EdgeOptions:
    """What a deployment chooses; the defaults keep a local stack as it was (no extra listener, no logs)."""

    admin_port: int = 9901
    probe_host: str = "127.0.0.1"
    probe_port: int = 0
    access_log: bool = False
    cors_origins: Sequence[str] = field(default_factory=tuple)
    anonymous_per_ip_per_second: int = 0
    xff_trusted_hops: int = 0
    max_heap_bytes: int = 0


def _connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def access_log() -> list[dict[str, Any]]:
    """One JSON object per request on stdout."""
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"json_format": ACCESS_LOG_FIELDS},
            },
        }
    ]


def client_method_header() -> dict[str, Any]:
    """Note the client's method before any filter runs: the transcoder turns every REST call into a POST."""
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "mutations": [
                {
                    "append": {
                        "header": {"key": "x-aitask-client-method", "value": "%REQ(:METHOD)%"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                }
            ],
        },
    }


def cors(origins: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CORS filter and the virtual host's policy: exactly `origins` may call from a browser."""
    policy = {
        "@type": TYPE + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": origin} for origin in origins],
        "allow_methods": CORS_METHODS,
        "allow_headers": CORS_HEADERS,
        "expose_headers": CORS_EXPOSED,
        "max_age": "600",
    }
    http_filter = {
        "name": "envoy.filters.http.cors",
        "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.cors.v3.Cors"},
    }
    return http_filter, policy


def anonymous_rate_limit(per_second: int) -> dict[str, Any]:
    """A token bucket per client address for requests without an Authorization header (a flood of them
    costs the task service a MongoDB-free 401 each, but still a call); keyed requests are the task
    service's per-key limit's."""
    actions = [
        {
            "actions": [
                {
                    "header_value_match": {
                        "descriptor_key": "anonymous",
                        "descriptor_value": "yes",
                        "expect_match": False,
                        "headers": [{"name": "authorization", "present_match": True}],
                    }
                },
                {"remote_address": {}},
            ]
        }
    ]
    bucket = {"max_tokens": per_second, "tokens_per_fill": per_second, "fill_interval": "1s"}
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "unused"}
    http_filter = {
        # Its own name: the Envoy-wide flood guard (gateway/config.py) may sit beside it.
        "name": "aitask.anonymous_per_ip",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "anonymous_per_ip",
            # Requests that match no descriptor (those with credentials) pass: this bucket is never empty.
            "token_bucket": {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000, "fill_interval": "1s"},
            "filter_enabled": always,
            "filter_enforced": always,
            "descriptors": [
                {"entries": [{"key": "anonymous", "value": "yes"}, {"key": "remote_address"}], "token_bucket": bucket}
            ],
            # One bucket per address, the least recently used dropped beyond this many.
            "max_dynamic_descriptors": 100_000,
            "rate_limits": actions,
            "rate_limited_as_resource_exhausted": True,
        },
    }
    return http_filter


def probe_listener(host: str, port: int) -> dict[str, Any]:
    """A listener that answers only GET /ready and /stats/prometheus, from the admin interface."""
    routes: list[dict[str, Any]] = [
        {
            "match": {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
            "route": {"cluster": ADMIN_CLUSTER, "timeout": "5s"},
        }
        for path in PROBE_PATHS
    ]
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    manager = {
        "@type": TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "probes",
        "codec_type": "HTTP1",
        "route_config": {"name": "probes", "virtual_hosts": [{"name": "probes", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "name": "probes",
        "address": {"socket_address": {"address": host, "port_value": port}},
        # Kubelet and Prometheus must get through even when the overload manager refuses clients.
        "ignore_global_conn_limit": True,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def admin_cluster(admin_port: int) -> dict[str, Any]:
    """Envoy's own admin interface on loopback, as an upstream for the probe listener."""
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def overload_manager(max_heap_bytes: int) -> dict[str, Any]:
    """Refuse new connections past MAX_CONNECTIONS; with a heap budget, shrink the heap then stop taking
    requests as it fills, instead of being OOM-killed."""
    monitors: list[dict[str, Any]] = [
        {
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": TYPE
                + "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": MAX_CONNECTIONS,
            },
        }
    ]
    actions: list[dict[str, Any]] = []
    if max_heap_bytes:
        heap = "envoy.resource_monitors.fixed_heap"
        monitors.append(
            {
                "name": heap,
                "typed_config": {
                    "@type": TYPE + "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": max_heap_bytes,
                },
            }
        )
        actions = [
            {"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": heap, "threshold": {"value": 0.95}}]},
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": [{"name": heap, "threshold": {"value": 0.98}}],
            },
        ]
    return {"refresh_interval": "0.25s", "resource_monitors": monitors, "actions": actions}


def apply_edge(config: dict[str, Any], options: EdgeOptions) -> dict[str, Any]:
    """Harden a rendered bootstrap in place (and return it)."""
    resources = config["static_resources"]
    listener = resources["listeners"][0]
    listener["per_connection_buffer_limit_bytes"] = BUFFER_LIMIT_BYTES
    manager = _connection_manager(config)
    manager.update(
        {
            "use_remote_address": True,
            "xff_num_trusted_hops": options.xff_trusted_hops,
            # Keep a caller's (or the load balancer's) request id, make one otherwise; clients see it.
            "preserve_external_request_id": True,
            "always_set_request_id_in_response": True,
            "normalize_path": True,
            "merge_slashes": True,
            "request_headers_timeout": "10s",
            "common_http_protocol_options": {
                "idle_timeout": "3600s",
                "headers_with_underscores_action": "REJECT_REQUEST",
            },
            "http2_protocol_options": dict(HTTP2_LIMITS),
            # Routes that stream for long (WatchTask) set their own idle timeout.
            "stream_idle_timeout": "300s",
        }
    )
    if options.access_log:
        manager["access_log"] = access_log()
        manager["early_header_mutation_extensions"] = [client_method_header()]
    virtual_host = manager["route_config"]["virtual_hosts"][0]
    leading_filters: list[dict[str, Any]] = []
    if options.cors_origins:
        cors_filter, policy = cors(options.cors_origins)
        leading_filters.append(cors_filter)
        virtual_host.setdefault("typed_per_filter_config", {})["envoy.filters.http.cors"] = policy
    if options.anonymous_per_ip_per_second > 0:
        leading_filters.append(anonymous_rate_limit(options.anonymous_per_ip_per_second))
    manager["http_filters"][:0] = leading_filters
    for cluster in resources["clusters"]:
        cluster["per_connection_buffer_limit_bytes"] = BUFFER_LIMIT_BYTES
        cluster["circuit_breakers"] = {
            "thresholds": [{"max_connections": 10000, "max_pending_requests": 10000, "max_requests": 10000}]
        }
    if options.probe_port:
        resources["listeners"].append(probe_listener(options.probe_host, options.probe_port))
        resources["clusters"].append(admin_cluster(options.admin_port))
    config["overload_manager"] = overload_manager(options.max_heap_bytes)
    return config


def add_edge_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m gateway.config` options for the optional edge parts."""
    parser.add_argument("--probe-host", default="127.0.0.1", help="address of the /ready + /stats/prometheus listener")
    parser.add_argument("--probe-port", type=int, default=0, help="port of that listener (0: none)")
    parser.add_argument("--access-log", action="store_true", help="JSON access log lines on stdout")
    parser.add_argument("--cors-origin", dest="cors_origins", action="append", default=[], help="allowed web origin")
    parser.add_argument(
        "--anonymous-rate-limit-per-ip", type=int, default=0, help="requests/s per client without credentials (0: off)"
    )
    parser.add_argument("--xff-trusted-hops", type=int, default=0, help="proxies in front that append X-Forwarded-For")
    parser.add_argument("--max-heap-bytes", type=int, default=0, help="heap budget of the overload manager (0: none)")


def edge_options(arguments: dict[str, Any]) -> EdgeOptions:
    """Take the edge options out of parsed `arguments` (they stay the other options)."""
    return EdgeOptions(
        probe_host=arguments.pop("probe_host"),
        probe_port=arguments.pop("probe_port"),
        access_log=arguments.pop("access_log"),
        cors_origins=tuple(arguments.pop("cors_origins")),
        anonymous_per_ip_per_second=arguments.pop("anonymous_rate_limit_per_ip"),
        xff_trusted_hops=arguments.pop("xff_trusted_hops"),
        max_heap_bytes=arguments.pop("max_heap_bytes"),
    )
