"""deploy/check.sh passes on the repository, and each of its checks rejects what it must."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import check
from deploy.dockerfile import ROOT
from tests.deploy.helpers import COMPOSE, objects

Documents = list[dict[str, Any]]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "kubernetes",
            ["kubernetes: overlay dev:", "kubernetes: overlay prod:", "kubernetes: overlay prod-gateway-api:"],
        ),
        ("compose", ["compose: deploy/compose/compose.yaml: 0 problems"]),
        ("envoy", ["envoy: image config: OK", "envoy: kubernetes config: OK"]),
    ],
)
def test_check_script_passes(name: str, expected: list[str]) -> None:
    result = subprocess.run([str(ROOT / "deploy" / "check.sh"), name], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in expected:
        assert line in result.stdout
    assert "deploy checks: passed (0 problems)" in result.stdout


def test_check_script_fails_on_an_unknown_check() -> None:
    result = subprocess.run([str(ROOT / "deploy" / "check.sh"), "helm"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2


def test_every_overlay_is_checked(rendered: dict[str, Documents]) -> None:
    overlays = {"dev", "prod", "prod-gateway-api", "prod-queue-shards"}
    assert {overlay.name for overlay in check.OVERLAYS} == overlays == set(rendered)
    assert {path.name for path in check.COMPOSE_FILES} == {"compose.yaml", "compose.vendors.yaml"}


def test_kubernetes_validation_is_strict(rendered: dict[str, Documents]) -> None:
    deployment = copy.deepcopy(objects(rendered["prod"], "Deployment")["task-service"])
    assert check.kubernetes_errors([deployment]) == []

    unknown_field = copy.deepcopy(deployment)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert any("readinesProbe" in error for error in check.kubernetes_errors([unknown_field]))

    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = 50051
    assert check.kubernetes_errors([wrong_type])

    no_schema = {"apiVersion": "monitoring.coreos.com/v1", "kind": "Probe", "metadata": {"name": "x"}}
    assert any("no schema" in error for error in check.kubernetes_errors([no_schema]))


def test_scaled_objects_are_validated_against_the_keda_schema(rendered: dict[str, Documents]) -> None:
    scaled = objects(rendered["prod"], "ScaledObject")["dispatcher"]
    assert check.kubernetes_errors([scaled]) == []

    numeric = copy.deepcopy(scaled)
    numeric["spec"]["triggers"][0]["metadata"]["listLength"] = 8  # KEDA wants strings
    assert any(
        "listLength" in error or "is not of type 'string'" in error for error in check.kubernetes_errors([numeric])
    )

    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["maxReplicas"] = 3
    assert any("maxReplicas" in error for error in check.kubernetes_errors([misspelt]))

    inverted = copy.deepcopy(scaled)
    inverted["spec"]["minReplicaCount"] = 50
    assert any("minReplicaCount" in error for error in check.kubernetes_errors([inverted]))


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("TriggerAuthentication", ["spec", "secretTargetRef", 0, "secret"], "aitask-datastores"),
        ("PodMonitor", ["spec", "podMetricsEndpoints", 0, "targetPort"], {"not": "a port"}),
        ("PrometheusRule", ["spec", "groups", 0, "rules", 0, "for"], "ten minutes"),
        ("GRPCRoute", ["spec", "rules", 0, "matches", 0, "method", "verb"], "GET"),
        ("HTTPRoute", ["spec", "rules", 0, "backendRefs", 0, "port"], "eighty"),
        ("Gateway", ["spec", "listeners", 0, "protocol"], 443),
    ],
)
def test_custom_resources_are_validated_against_their_crds(
    rendered: dict[str, Documents], kind: str, path: list[Any], value: Any
) -> None:
    overlay = "prod-gateway-api" if kind in ("GRPCRoute", "HTTPRoute", "Gateway") else "prod"
    document = copy.deepcopy(next(iter(objects(rendered[overlay], kind).values())))
    assert check.kubernetes_errors([document]) == []
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    assert check.kubernetes_errors([document]), f"a broken {kind} passed"


def test_alert_rules_go_through_promtool(rendered: dict[str, Documents]) -> None:
    rule = copy.deepcopy(objects(rendered["prod"], "PrometheusRule")["aitask"])
    assert check.prometheus_rule_errors([rule]) == []
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["expr"] = "max by (queue (aitask_queue_depth)"
    errors = check.prometheus_rule_errors([broken])
    assert errors and "PrometheusRule/aitask: promtool check rules" in errors[0]


def test_every_alert_fires_in_its_unit_tests_when_it_should(rendered: dict[str, Documents]) -> None:
    rule = objects(rendered["prod"], "PrometheusRule")["aitask"]
    backlog = rule["spec"]["groups"][0]["rules"][0]
    assert backlog["alert"] == "AitaskQueueBacklog"
    # An alert that fires sooner than its tests say.
    hasty = copy.deepcopy(rule)
    hasty["spec"]["groups"][0]["rules"][0]["for"] = "5m"
    (error,) = check.prometheus_rule_errors([hasty])
    assert "promtool test rules" in error and "alertname: AitaskQueueBacklog, time: 9m" in error
    # An alert no test shows firing.
    untested = copy.deepcopy(rule)
    untested["spec"]["groups"][0]["rules"].append(backlog | {"alert": "AitaskNewAlert"})
    assert check.prometheus_rule_errors([untested]) == [
        "alert AitaskNewAlert: no test in alerts_test.yaml shows it firing"
    ]


def test_compose_publishes_on_loopback_and_requires_api_keys_with_vendor_keys() -> None:
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            # Envoy may be opened to the network on purpose (ENVOY_BIND); nothing is by default.
            assert port.startswith(("127.0.0.1:", "${ENVOY_BIND:-127.0.0.1}:")), (name, port)
    assert any(port.startswith("${ENVOY_BIND:-127.0.0.1}:") for port in COMPOSE["services"]["envoy"]["ports"])
    vendors = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.vendors.yaml").read_text())
    # Real vendor keys mean real bills: the task service then requires API keys, whatever ENVIRONMENT says.
    assert vendors["services"]["task-service"]["environment"]["ENVIRONMENT"] == "production"
    keyed = {
        name for name, service in vendors["services"].items() if any("KEY" in key for key in service["environment"])
    }
    assert keyed == {"provider-volcengine", "provider-openai"}


def test_compose_validation_rejects_what_docker_compose_would(tmp_path: Path) -> None:
    assert check.compose_errors(COMPOSE) == []
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["dispatcher"]["stop_grace"] = "60s"
    assert any("stop_grace" in error for error in check.compose_errors(broken))
    wrong_type = copy.deepcopy(COMPOSE)
    wrong_type["services"]["envoy"]["ports"] = "8080:8080"
    assert check.compose_errors(wrong_type)


def test_envoy_validation_rejects_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "envoy.json"
    check.render_image_envoy_config(config, str(ROOT / "gateway" / "aitask.pb"))
    assert check.envoy_validate(config)[0]

    data = json.loads(config.read_text())
    data["static_resources"]["clusters"][0]["lb_policy"] = "ROUND_ROBBIN"
    config.write_text(json.dumps(data))
    ok, output = check.envoy_validate(config)
    assert not ok and "ROUND_ROBBIN" in output

    # As the image renders it, the descriptor path only exists inside the image.
    check.render_image_envoy_config(config)
    assert not check.envoy_validate(config)[0]


def test_envoy_check_fails_when_the_configmap_drifts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drifted = tmp_path / "envoy.json"
    data = json.loads(check.K8S_ENVOY_CONFIG.read_text())
    data["static_resources"]["clusters"][0]["connect_timeout"] = "9s"
    drifted.write_text(json.dumps(data))
    monkeypatch.setattr(check, "K8S_ENVOY_CONFIG", drifted)
    errors = check.check_envoy()
    assert len(errors) == 1 and "differs from the image's config" in errors[0]


def test_the_keda_schema_is_what_its_generator_makes() -> None:
    schema = json.loads((check.SCHEMAS / "keda-scaledobject-v1alpha1.json").read_text())
    assert schema["properties"]["apiVersion"] == {"const": "keda.sh/v1alpha1"}
    assert schema["properties"]["kind"] == {"const": "ScaledObject"}
    trigger = schema["properties"]["spec"]["properties"]["triggers"]["items"]
    assert trigger["additionalProperties"] is False
    assert trigger["properties"]["metadata"]["additionalProperties"] == {"type": "string"}
    assert "KEDA v2" in schema["$comment"]


def test_compose_spec_schema_is_the_upstream_file() -> None:
    schema = json.loads((check.SCHEMAS / "compose-spec.json").read_text())
    assert schema["$id"] == "compose_spec.json" and schema["title"] == "Compose Specification"
    assert "services" in schema["properties"]


def test_prometheus_scrapes_every_service_and_envoy() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target: job.get("metrics_path", "/metrics")
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {}
    for name, service in COMPOSE["services"].items():
        port = service.get("environment", {}).get("METRICS_PORT")
        if port:
            expected[f"{name}:{port}"] = "/metrics"
    expected["envoy:9902"] = "/stats/prometheus"
    assert len(expected) == 6
    assert targets == expected
    assert COMPOSE["services"]["prometheus"]["profiles"] == ["monitoring"]
    assert COMPOSE["services"]["grafana"]["profiles"] == ["monitoring"]


def test_grafana_provisions_the_dashboard_from_the_mounted_folder() -> None:
    grafana = COMPOSE["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"] if volume.startswith("./"))
    compose_dir = ROOT / "deploy" / "compose"
    host_dirs = {container: compose_dir / host for host, container in mounts.items()}
    providers = yaml.safe_load((host_dirs["/etc/grafana/provisioning"] / "dashboards" / "aitask.yaml").read_text())
    dashboards_path = providers["providers"][0]["options"]["path"]
    dashboards = sorted(host_dirs[dashboards_path].glob("*.json"))
    assert [path.name for path in dashboards] == ["aitask.json"]
    dashboard = json.loads(dashboards[0].read_text())
    datasources = yaml.safe_load(
        (host_dirs["/etc/grafana/provisioning"] / "datasources" / "prometheus.yaml").read_text()
    )
    uid = datasources["datasources"][0]["uid"]
    assert all(panel["datasource"]["uid"] == uid for panel in dashboard["panels"])
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards_path}/aitask.json"
