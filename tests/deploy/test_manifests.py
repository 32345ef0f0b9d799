"""What the rendered Kubernetes manifests promise, checked against the code they deploy.

Schema validity is deploy/check.py's job (test_checks.py); these tests check
meaning: hardening, probes, grace periods, scaling, secrets, metrics and who
may talk to whom.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from aitask_common.queues import QUEUE_ORDER
from aitask_common.settings import ServiceSettings
from deploy.check import K8S_ENVOY_CONFIG
from deploy.dockerfile import stages
from dispatcher_service.schedule import queue
from dispatcher_service.settings import DispatcherSettings
from provider_openai.settings import OpenAISettings
from provider_volcengine.settings import VolcengineSettings
from task_service.settings import TaskServiceSettings
from tests.deploy.helpers import Pod, containers, env_value, ingress_allowed, objects, pods, port_number, selects
from upstream_simulator.settings import SimulatorSettings

Documents = list[dict[str, Any]]
OVERLAYS = ["dev", "prod"]
# The aitask services every overlay deploys, with the settings class each runs with.
SETTINGS: dict[str, type[ServiceSettings]] = {
    "task-service": TaskServiceSettings,
    "dispatcher": DispatcherSettings,
    "provider-volcengine": VolcengineSettings,
    "provider-openai": OpenAISettings,
}
GRPC_SERVICES = ["task-service", "provider-volcengine", "provider-openai"]
API_KEYS = {"ARK_API_KEY", "VOLCENGINE_ACCESS_KEY", "VOLCENGINE_SECRET_KEY", "OPENAI_API_KEY"}
MONITORING = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, {})


def _deployment(documents: Documents, name: str) -> dict[str, Any]:
    return objects(documents, "Deployment")[name]


def _aitask_config(documents: Documents) -> dict[str, Any]:
    """The ConfigMap every service reads (its generated name carries a hash)."""
    config_maps = objects(documents, "ConfigMap")
    return next(document for name, document in config_maps.items() if name.startswith("aitask-config"))


def _container(documents: Documents, name: str) -> dict[str, Any]:
    return next(container for deployment, _, container in containers(documents) if deployment == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_and_bounded(rendered: dict[str, Documents], overlay: str) -> None:
    found = list(containers(rendered[overlay]))
    assert {"envoy", *SETTINGS} <= {name for name, _, _ in found}
    for name, pod, container in found:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["enableServiceLinks"] is False, name  # TASK_SERVICE_PORT=tcp://... would break settings
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)
        service_accounts = objects(rendered[overlay], "ServiceAccount")
        assert service_accounts[pod["serviceAccountName"]]["automountServiceAccountToken"] is False, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_run_as_the_user_their_dockerfile_target_sets(rendered: dict[str, Documents], overlay: str) -> None:
    targets = stages()
    checked = 0
    for _, pod, container in containers(rendered[overlay]):
        target = container["image"].rsplit("/", 1)[-1].split(":")[0].removeprefix("aitask-")
        if target not in targets:
            continue  # dev's MongoDB and Redis come from their own images
        user, _, group = targets[target].user.partition(":")
        assert (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])) == (user, group)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_logs_and_temporary_files_go_to_emptydirs(rendered: dict[str, Documents], overlay: str) -> None:
    config = _aitask_config(rendered[overlay])
    assert config["data"]["LOG_DIR"] == "/tmp/logs"
    for name in SETTINGS:
        pod = _deployment(rendered[overlay], name)["spec"]["template"]["spec"]
        mounts = {mount["mountPath"]: mount["name"] for mount in pod["containers"][0]["volumeMounts"]}
        empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
        assert mounts.get("/tmp") in empty_dirs and mounts.get("/tmp/logs") in empty_dirs, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_probe_native_grpc_health_on_their_port(rendered: dict[str, Documents], overlay: str) -> None:
    for name in GRPC_SERVICES:
        container = _container(rendered[overlay], name)
        grpc_port = port_number(container, "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, (name, probe)
        # A dependency outage takes a pod out of rotation well before it gets it restarted.
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        assert (
            readiness["periodSeconds"] * readiness["failureThreshold"]
            < liveness["periodSeconds"] * liveness["failureThreshold"]
        ), name
        # The start-up probe outlasts the 60 s the services wait for MongoDB and Redis.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] > 60, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pod_environment_parses_into_the_ports_it_declares(
    rendered: dict[str, Documents], overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    documents = rendered[overlay]
    monkeypatch.chdir(tmp_path)  # no .env file: only the pod's environment counts
    config = _aitask_config(documents)
    for name, settings_class in SETTINGS.items():
        container = _container(documents, name)
        # What the process sees: the image's ENV, then the ConfigMap, then the container's env.
        environment = dict(stages()[name].env) | config["data"]
        environment |= {entry["name"]: entry.get("value", "from-a-secret") for entry in container["env"]}
        with monkeypatch.context() as patch:
            for variable in list(os.environ):
                patch.delenv(variable)
            for variable, value in environment.items():
                patch.setenv(variable, value)
            settings = settings_class().model_dump()
        metrics = port_number(container, "metrics")
        assert (settings["metrics_host"], settings["metrics_port"]) == ("0.0.0.0", metrics), name
        annotations = _deployment(documents, name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(metrics),
            "prometheus.io/path": "/metrics",
        }, name
        assert settings["shutdown_grace"] == float(env_value(container, "SHUTDOWN_GRACE"))
        if name in GRPC_SERVICES:
            assert (settings["host"], settings["port"]) == ("0.0.0.0", port_number(container, "grpc")), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_envoy_is_scraped_on_its_admin_port(rendered: dict[str, Documents], overlay: str) -> None:
    envoy = _deployment(rendered[overlay], "envoy")
    admin = json.loads(K8S_ENVOY_CONFIG.read_text())["admin"]["address"]["socket_address"]
    assert admin["address"] == "0.0.0.0"
    assert port_number(envoy["spec"]["template"]["spec"]["containers"][0], "admin") == admin["port_value"]
    annotations = envoy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(admin["port_value"])
    assert annotations["prometheus.io/path"] == "/stats/prometheus"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_envoy_reads_its_configmap_and_reaches_a_headless_task_service(
    rendered: dict[str, Documents], overlay: str
) -> None:
    documents = rendered[overlay]
    pod = _deployment(documents, "envoy")["spec"]["template"]["spec"]
    command = stages()["envoy"].command
    config_path = command[command.index("-c") + 1]
    mount = next(mount for mount in pod["containers"][0]["volumeMounts"] if config_path.startswith(mount["mountPath"]))
    volume = next(volume for volume in pod["volumes"] if volume["name"] == mount["name"])
    config_map = objects(documents, "ConfigMap")[volume["configMap"]["name"]]
    config = json.loads(config_map["data"][config_path.removeprefix(mount["mountPath"] + "/")])
    assert config == json.loads(K8S_ENVOY_CONFIG.read_text())

    cluster = config["static_resources"]["clusters"][0]
    assert cluster["type"] == "STRICT_DNS" and cluster["lb_policy"] == "LEAST_REQUEST"
    protocol = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in protocol["explicit_http_config"]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    service = objects(documents, "Service")[address["address"]]
    assert service["spec"]["clusterIP"] == "None", "STRICT_DNS needs the pod IPs: a headless Service"
    assert selects(
        {"matchLabels": service["spec"]["selector"]},
        _deployment(documents, "task-service")["spec"]["template"]["metadata"]["labels"],
    )
    assert address["port_value"] == port_number(_container(documents, "task-service"), "grpc")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_shutdown_grace(rendered: dict[str, Documents], overlay: str) -> None:
    for name in SETTINGS:
        pod = _deployment(rendered[overlay], name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        shutdown_grace = float(env_value(container, "SHUTDOWN_GRACE"))
        assert pod["terminationGracePeriodSeconds"] > pre_stop + shutdown_grace, name
    assert (
        _deployment(rendered[overlay], "dispatcher")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    )
    # Envoy leaves rotation only after Envoy's DNS refresh would drop a stopping task-service pod.
    task_service = _container(rendered[overlay], "task-service")
    assert task_service["lifecycle"]["preStop"]["sleep"]["seconds"] >= 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_service_and_a_disruption_budget(rendered: dict[str, Documents], overlay: str) -> None:
    documents = rendered[overlay]
    services = objects(documents, "Service").values()
    budgets = objects(documents, "PodDisruptionBudget").values()
    for name, deployment in objects(documents, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(selects({"matchLabels": service["spec"]["selector"]}, labels) for service in services), name
        if name in {"envoy", *SETTINGS}:
            assert any(
                selects(budget["spec"]["selector"], labels) and budget["spec"]["maxUnavailable"] == 1
                for budget in budgets
            ), name


def test_providers_advertise_their_pod_ip(rendered: dict[str, Documents]) -> None:
    for overlay in OVERLAYS:
        for name in ("provider-volcengine", "provider-openai"):
            container = _container(rendered[overlay], name)
            assert env_value(container, "HOST") == "0.0.0.0"
            assert env_value(container, "ADVERTISE_HOST") == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_task_service_scales_on_cpu(rendered: dict[str, Documents]) -> None:
    for overlay in OVERLAYS:
        autoscaler = objects(rendered[overlay], "HorizontalPodAutoscaler")["task-service"]["spec"]
        assert autoscaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "task-service"}
        assert autoscaler["metrics"][0]["resource"]["name"] == "cpu"
        assert "replicas" not in _deployment(rendered[overlay], "task-service")["spec"], "the autoscaler owns it"


def test_keda_scales_the_dispatcher_on_every_rq_queue(rendered: dict[str, Documents]) -> None:
    documents = rendered["prod"]
    scaled = objects(documents, "ScaledObject")["dispatcher"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "dispatcher"
    redis_triggers = [trigger["metadata"] for trigger in scaled["triggers"] if trigger["type"] == "redis"]
    # The list keys RQ really uses, from the code that enqueues (the client never connects here).
    unconnected = Redis()
    assert [trigger["listName"] for trigger in redis_triggers] == [queue(unconnected, name).key for name in QUEUE_ORDER]
    dispatcher = _container(documents, "dispatcher")
    for trigger in redis_triggers:
        assert env_value(dispatcher, trigger["addressFromEnv"]) == {
            "secretKeyRef": {"name": "aitask-datastores", "key": "REDIS_ADDRESS"}
        }
        assert int(trigger["listLength"]) > 0
    assert "replicas" not in _deployment(documents, "dispatcher")["spec"], "KEDA owns it"
    # Development clusters need not run KEDA.
    assert "ScaledObject" not in {document["kind"] for document in rendered["dev"]}


def test_production_references_secrets_it_does_not_contain(rendered: dict[str, Documents]) -> None:
    documents = rendered["prod"]
    assert not objects(documents, "Secret"), "production Secrets are created out of band, never rendered"
    referenced: dict[str, set[str]] = {}
    for _, _, container in containers(documents):
        for entry in container.get("env", []):
            reference = entry.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                assert entry["name"] == reference["key"]
                referenced.setdefault(reference["name"], set()).add(reference["key"])
    assert referenced == {"aitask-api-keys": API_KEYS, "aitask-datastores": {"MONGO_URL", "REDIS_URL", "REDIS_ADDRESS"}}
    # Each key is a setting some provider reads.
    provider_fields = set(VolcengineSettings.model_fields) | set(OpenAISettings.model_fields)
    assert {key.lower() for key in API_KEYS} <= provider_fields


def test_development_secrets_hold_only_simulator_keys(rendered: dict[str, Documents]) -> None:
    secrets = {name.rsplit("-", 1)[0]: secret for name, secret in objects(rendered["dev"], "Secret").items()}
    keys = {key: base64.b64decode(value).decode() for key, value in secrets["aitask-api-keys"]["data"].items()}
    simulator = SimulatorSettings()
    assert keys == {
        "ARK_API_KEY": simulator.ark_api_key,
        "VOLCENGINE_ACCESS_KEY": simulator.volc_access_key,
        "VOLCENGINE_SECRET_KEY": simulator.volc_secret_key,
        "OPENAI_API_KEY": simulator.openai_api_key,
    }
    config = _aitask_config(rendered["dev"])
    for variable in ("ARK_BASE_URL", "VOLCENGINE_VISUAL_URL", "OPENAI_BASE_URL"):
        assert config["data"][variable].startswith("http://upstream-simulator:9100")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_only_the_intended_callers(rendered: dict[str, Documents], overlay: str) -> None:
    documents = rendered[overlay]
    workload = pods(documents)
    namespace = workload["envoy"].namespace
    outside = Pod("elsewhere", {}, {})

    def allowed(source: str | Pod, target: str, port: str) -> bool:
        return ingress_allowed(
            documents, workload[source] if isinstance(source, str) else source, workload[target], port
        )

    providers = ["provider-volcengine", "provider-openai"]
    assert allowed(outside, "envoy", "http")
    assert not allowed(outside, "envoy", "admin")
    assert allowed("envoy", "task-service", "grpc")
    not_envoy: list[str | Pod] = ["dispatcher", *providers, outside]
    for caller in not_envoy:
        assert not allowed(caller, "task-service", "grpc"), caller
    for provider in providers:
        assert allowed("dispatcher", provider, "grpc")
        not_dispatcher: list[str | Pod] = ["envoy", "task-service", outside]
        for caller in not_dispatcher:
            assert not allowed(caller, provider, "grpc"), (caller, provider)
    for name in SETTINGS:
        assert allowed(MONITORING, name, "metrics"), name
        assert not allowed(Pod(namespace, {}, {}), name, "metrics"), name
    assert allowed(MONITORING, "envoy", "admin")
    if overlay == "dev":
        for store, port in (("mongodb", "mongodb"), ("redis", "redis")):
            assert allowed("task-service", store, port)
            assert not allowed(outside, store, port)
        assert allowed("provider-openai", "upstream-simulator", "http")


def test_images_are_pinned_per_environment(rendered: dict[str, Documents]) -> None:
    for overlay, tag in (("dev", ":dev"), ("prod", ":0.1.0")):
        for name, _, container in containers(rendered[overlay]):
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), (overlay, name, image)
            if name in {"envoy", *SETTINGS}:
                assert image.endswith(tag), (overlay, name, image)
