"""What the rendered Kubernetes manifests promise, checked against the code they deploy.

Schema validity is deploy/check.py's job (test_checks.py); these tests check
meaning: hardening, probes, grace periods, scaling, secrets, metrics and who
may talk to whom.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis
from rq.queue import Queue

from aitask_common.grpc_server import LIVENESS, OVERALL
from aitask_common.queue_shards import QueueShards, configured
from aitask_common.queues import QUEUE_ORDER
from aitask_common.rq_shards import shard_queue
from aitask_common.settings import ServiceSettings
from deploy import pin_images, queue_shards
from deploy.check import K8S_ENVOY_CONFIG, kustomize_build
from deploy.dockerfile import ROOT, stages
from dispatcher_service.settings import DispatcherSettings
from openai_door.settings import OpenAIDoorSettings
from provider_openai.settings import OpenAISettings
from provider_volcengine.settings import VolcengineSettings
from task_service.settings import TaskServiceSettings
from tests.deploy.helpers import (
    COMPOSE,
    Pod,
    containers,
    egress_allowed,
    env_value,
    ingress_allowed,
    objects,
    pods,
    port_number,
    selects,
)
from upstream_simulator.settings import SimulatorSettings

Documents = list[dict[str, Any]]
OVERLAYS = ["dev", "prod"]
PRODUCTION = ["prod", "prod-gateway-api"]
# The aitask services every overlay deploys, with the settings class each runs with.
SETTINGS: dict[str, type[ServiceSettings]] = {
    "task-service": TaskServiceSettings,
    "dispatcher": DispatcherSettings,
    "provider-volcengine": VolcengineSettings,
    "provider-openai": OpenAISettings,
    "openai-door": OpenAIDoorSettings,
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
def test_logs_go_to_stdout_only_and_temporary_files_to_a_bounded_emptydir(
    rendered: dict[str, Documents], overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Log files in an emptyDir filled it in hours under load and got pods evicted.
    config = _aitask_config(rendered[overlay])
    assert "LOG_DIR" not in config["data"]
    monkeypatch.chdir(tmp_path)
    for source in (config["data"], stages()["task-service"].env):
        monkeypatch.setenv("LOG_FILE", source["LOG_FILE"])
        assert ServiceSettings().log_file is False
    for name in SETTINGS:
        pod = _deployment(rendered[overlay], name)["spec"]["template"]["spec"]
        mounts = {mount["mountPath"]: mount["name"] for mount in pod["containers"][0]["volumeMounts"]}
        assert set(mounts) == {"/tmp"}, name
        (tmp,) = [volume for volume in pod["volumes"] if volume["name"] == mounts["/tmp"]]
        assert "sizeLimit" in tmp["emptyDir"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_probe_liveness_and_readiness_separately(rendered: dict[str, Documents], overlay: str) -> None:
    for name in GRPC_SERVICES:
        container = _container(rendered[overlay], name)
        grpc_port = port_number(container, "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, (name, probe)
        # A datastore outage (or one at start-up, which is waited for) must never restart a pod: liveness and
        # start-up ask for the health name that only says the process works; readiness for the overall one.
        assert container["livenessProbe"]["grpc"]["service"] == LIVENESS, name
        assert container["startupProbe"]["grpc"]["service"] == LIVENESS, name
        assert container["readinessProbe"]["grpc"].get("service", OVERALL) == OVERALL, name
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        assert (
            readiness["periodSeconds"] * readiness["failureThreshold"]
            < liveness["periodSeconds"] * liveness["failureThreshold"]
        ), name


def test_dispatcher_liveness_reads_the_workers_deadlines(rendered: dict[str, Documents]) -> None:
    for overlay in OVERLAYS:
        container = _container(rendered[overlay], "dispatcher")
        command = container["livenessProbe"]["exec"]["command"]
        assert command[:3] == ["python", "/app/healthcheck.py", "workers"]
        assert command[3] == env_value(container, "WORKER_DEADLINE_DIR")
        assert command[3].startswith("/tmp/"), "the root filesystem is read-only"
        # The parent's /metrics, served before the wait for the datastores, is only the start-up probe.
        assert container["startupProbe"]["httpGet"]["port"] == "metrics"


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
def test_envoy_admin_stays_on_loopback_and_probes_use_the_stats_listener(
    rendered: dict[str, Documents], overlay: str
) -> None:
    envoy = _deployment(rendered[overlay], "envoy")
    config = json.loads(K8S_ENVOY_CONFIG.read_text())
    # /quitquitquit and friends were reachable from the monitoring namespace.
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    container = envoy["spec"]["template"]["spec"]["containers"][0]
    assert {port["name"] for port in container["ports"]} == {"http", "stats"}
    (probes,) = [listener for listener in config["static_resources"]["listeners"] if listener["name"] == "probes"]
    address = probes["address"]["socket_address"]
    assert address["port_value"] == port_number(container, "stats") and address["address"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "stats"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "stats"}
    annotations = envoy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(address["port_value"])
    assert annotations["prometheus.io/path"] == "/stats/prometheus"
    service = objects(rendered[overlay], "Service")["envoy"]
    assert service["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"


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
    # A scale-down must not kill a worker mid-call (the vendor would be paid twice): the grace outlasts RQ's job
    # timeout, which holds the upstream call (AI_TIMEOUT) and the outcome's write.
    dispatcher = _deployment(rendered[overlay], "dispatcher")["spec"]["template"]["spec"]
    outcome_write_seconds = DispatcherSettings.model_fields["outcome_write_seconds"].default
    ai_timeout = float(_aitask_config(rendered[overlay])["data"]["AI_TIMEOUT"])
    assert ai_timeout + outcome_write_seconds <= Queue.DEFAULT_TIMEOUT
    assert dispatcher["terminationGracePeriodSeconds"] >= Queue.DEFAULT_TIMEOUT + 15
    assert COMPOSE["services"]["dispatcher"]["stop_grace_period"] == f"{dispatcher['terminationGracePeriodSeconds']}s"
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


@pytest.mark.parametrize("overlay", PRODUCTION)
def test_keda_scales_the_dispatcher_on_jobs_queued_and_running(rendered: dict[str, Documents], overlay: str) -> None:
    documents = rendered[overlay]
    scaled = objects(documents, "ScaledObject")["dispatcher"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "dispatcher"
    # Jobs running count too, or a scale-down could pick a pod whose workers are all busy.
    (prometheus,) = [trigger["metadata"] for trigger in scaled["triggers"] if trigger["type"] == "prometheus"]
    assert 'state=~"queued|started"' in prometheus["query"] and "aitask_queue_depth" in prometheus["query"]
    assert "max by" in prometheus["query"], "every dispatcher pod exports the same depth: never sum over pods"
    assert 'job="dispatcher"' in prometheus["query"]
    assert scaled["fallback"]["replicas"] >= 1 and scaled["fallback"]["failureThreshold"] >= 1
    redis_triggers = [trigger for trigger in scaled["triggers"] if trigger["type"] == "redis"]
    # The list keys RQ really uses, from the code that enqueues (the client never connects here).
    unconnected = Redis()
    assert [trigger["metadata"]["listName"] for trigger in redis_triggers] == [
        shard_queue(unconnected, name, 0).key for name in QUEUE_ORDER
    ]
    # Redis credentials come through a TriggerAuthentication from the datastores Secret, not the pod's env.
    authentications = objects(documents, "TriggerAuthentication")
    for trigger in redis_triggers:
        assert "addressFromEnv" not in trigger["metadata"] and int(trigger["metadata"]["listLength"]) > 0
        auth = authentications[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        assert {(ref["parameter"], ref["name"], ref["key"]) for ref in auth} == {
            ("address", "aitask-datastores", "REDIS_ADDRESS"),
            ("password", "aitask-datastores", "REDIS_PASSWORD"),
        }
    dispatcher = _container(documents, "dispatcher")
    assert not [
        entry for entry in dispatcher["env"] if entry["name"].startswith("REDIS_") and entry["name"] != "REDIS_URL"
    ]
    assert "replicas" not in _deployment(documents, "dispatcher")["spec"], "KEDA owns it"


def test_each_queue_shard_has_its_own_dispatcher_scaled_on_its_own_jobs(
    rendered: dict[str, Documents], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert {path.name: path.read_text() for path in queue_shards.COMPONENT.iterdir()} == queue_shards.component(
        3, cluster=False
    ), "run `python -m deploy.queue_shards 3`"
    documents = rendered["prod-queue-shards"]
    config = _aitask_config(documents)["data"]
    shards = QueueShards.layout(int(config["QUEUE_SHARDS"]), cluster=False)
    deployments = {name: d for name, d in objects(documents, "Deployment").items() if name.startswith("dispatcher")}
    image = {_container(documents, name)["image"] for name in deployments}
    assert image == {_container(rendered["prod"], "dispatcher")["image"]}
    monkeypatch.chdir(tmp_path)
    served: dict[int, str] = {}
    for name, deployment in deployments.items():
        environment = config | {entry["name"]: entry.get("value", "x") for entry in _container(documents, name)["env"]}
        with monkeypatch.context() as patch:
            for variable, value in environment.items():
                patch.setenv(variable, value)
            (shard,) = DispatcherSettings().served_shards
        assert shard not in served, (name, served)
        served[shard] = name
        # No other dispatcher Deployment's selector takes this one's pods.
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        others = [other for other in deployments.values() if other is not deployment]
        assert not any(selects(other["spec"]["selector"], labels) for other in others), name
    assert sorted(served) == list(shards.shards())
    unconnected = Redis()
    with configured(shards):
        for scaled in objects(documents, "ScaledObject").values():
            shard = next(s for s, name in served.items() if name == scaled["spec"]["scaleTargetRef"]["name"])
            triggers = scaled["spec"]["triggers"]
            (prometheus,) = [trigger["metadata"]["query"] for trigger in triggers if trigger["type"] == "prometheus"]
            assert f'shard="{shard}"' in prometheus and "max by (queue, shard, state)" in prometheus
            assert [trigger["metadata"]["listName"] for trigger in triggers if trigger["type"] == "redis"] == [
                shard_queue(unconnected, name, shard).key for name in QUEUE_ORDER
            ]
    assert len(objects(documents, "ScaledObject")) == shards.count
    # On a Redis Cluster, KEDA's redis-cluster scaler reads the lists, with every node's address.
    on_cluster = list(yaml.safe_load_all(queue_shards.component(3, cluster=True)["shards.yaml"]))
    cluster_triggers = [t for d in on_cluster if d["kind"] == "ScaledObject" for t in d["spec"]["triggers"]]
    assert {t["type"] for t in cluster_triggers} == {"prometheus", "redis-cluster"}
    assert {t["authenticationRef"]["name"] for t in cluster_triggers if t["type"] == "redis-cluster"} == {
        d["metadata"]["name"] for d in on_cluster if d["kind"] == "TriggerAuthentication"
    }


def test_on_a_redis_cluster_every_deployment_that_reads_redis_gets_the_cluster_urls(tmp_path: Path) -> None:
    """`python -m deploy.queue_shards 3 --cluster`, rendered over overlays/prod: each Deployment reading REDIS_URL
    also reads REDIS_CLUSTER_URLS from the same Secret (a service given only one would split its keys wrongly)."""
    queue_shards.write(tmp_path / "components" / "queue-shards", queue_shards.component(3, cluster=True))
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    prod = Path(os.path.relpath(ROOT / "deploy" / "k8s" / "overlays" / "prod", overlay))
    overlay.joinpath("kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [str(prod)], "components": ["../components/queue-shards"]})
    )
    readers: dict[str, list[dict[str, Any]]] = {}
    for name, _, container in containers(kustomize_build(overlay)):
        variables = {entry["name"]: entry for entry in container.get("env", [])}
        if "REDIS_URL" in variables:
            readers[name] = [variables["REDIS_URL"], variables.get("REDIS_CLUSTER_URLS", {})]
    assert {"dispatcher", "dispatcher-shard-1", "dispatcher-shard-2", "task-service"} <= set(readers)
    for name, (single, cluster) in readers.items():
        secret = single["valueFrom"]["secretKeyRef"]["name"]
        assert cluster.get("valueFrom", {}).get("secretKeyRef") == {"name": secret, "key": "REDIS_CLUSTER_URLS"}, name


def test_development_runs_without_keda(rendered: dict[str, Documents]) -> None:
    assert not {"ScaledObject", "TriggerAuthentication"} & {document["kind"] for document in rendered["dev"]}


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
                # A provider pod starts with the keys it has: a missing vendor key must not block it.
                assert reference.get("optional", False) is (reference["name"] == "aitask-api-keys"), entry
    assert referenced == {
        "aitask-api-keys": API_KEYS,
        "aitask-datastores": {"MONGO_URL", "REDIS_URL", "WEBHOOK_SECRET_KEY"},
    }
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
    assert allowed("envoy", "task-service", "grpc")
    assert allowed("openai-door", "task-service", "grpc")
    not_envoy: list[str | Pod] = ["dispatcher", *providers, outside]
    for caller in not_envoy:
        assert not allowed(caller, "task-service", "grpc"), caller
    # OpenAI's /v1/ paths reach the door through Envoy alone.
    assert allowed("envoy", "openai-door", "http")
    for caller in ["task-service", "dispatcher", *providers, outside]:
        assert not allowed(caller, "openai-door", "http"), caller
    for provider in providers:
        assert allowed("dispatcher", provider, "grpc")
        # The task service: the admin API's health check of each instance.
        assert allowed("task-service", provider, "grpc")
        not_dispatcher: list[str | Pod] = ["envoy", "openai-door", outside]
        for caller in not_dispatcher:
            assert not allowed(caller, provider, "grpc"), (caller, provider)
    for name in SETTINGS:
        assert allowed(MONITORING, name, "metrics"), name
        assert not allowed(Pod(namespace, {}, {}), name, "metrics"), name
    assert allowed(MONITORING, "envoy", "stats")
    assert not allowed(outside, "envoy", "stats")
    if overlay == "dev":
        for store, port in (("mongodb", "mongodb"), ("redis", "redis")):
            assert allowed("task-service", store, port)
            assert not allowed(outside, store, port)
            # Only the services that use a datastore reach it.
            for caller in ("envoy", "upstream-simulator"):
                assert not allowed(caller, store, port), (caller, store)
        assert allowed("provider-openai", "upstream-simulator", "http")
        assert not allowed("envoy", "upstream-simulator", "http")


KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
VENDOR_IP, PRIVATE_IP, DATASTORE_IP = "203.0.113.10", "10.20.30.40", "198.51.100.7"


@pytest.mark.parametrize("overlay", [*OVERLAYS, "prod-gateway-api"])
def test_egress_reaches_dns_datastores_and_vendors_only(rendered: dict[str, Documents], overlay: str) -> None:
    documents = rendered[overlay]
    workload = pods(documents)

    def reaches(source: str, port: int | str, target: str | None = None, ip: str | None = None) -> bool:
        pod = workload[target] if target else None
        number = pod.ports[port] if pod is not None and isinstance(port, str) else int(port)
        return egress_allowed(documents, workload[source], number, target=pod, ip=ip)

    for name in workload:
        assert egress_allowed(documents, workload[name], 53, target=KUBE_DNS, protocol="UDP"), name
        assert not reaches(name, 443, ip=PRIVATE_IP), name
    assert reaches("envoy", "grpc", "task-service")
    for port in (443, 27017, 6379):
        assert not reaches("envoy", port, ip=VENDOR_IP), port
    assert not reaches("envoy", "grpc", "provider-openai")
    assert reaches("dispatcher", "grpc", "provider-openai") and reaches("dispatcher", "grpc", "provider-volcengine")
    assert reaches("task-service", "grpc", "provider-openai")  # the admin API's health checks
    assert reaches("envoy", "http", "openai-door") and reaches("openai-door", "grpc", "task-service")
    assert reaches("openai-door", "outputs", "task-service")
    assert not reaches("openai-door", "grpc", "provider-openai")
    providers = ["provider-openai", "provider-volcengine"]
    if overlay == "dev":
        for name in ("task-service", "dispatcher", *providers):
            assert reaches(name, "redis", "redis"), name
        assert reaches("task-service", "mongodb", "mongodb") and reaches("dispatcher", "mongodb", "mongodb")
        for name in ("envoy", "upstream-simulator"):
            assert not reaches(name, "mongodb", "mongodb") and not reaches(name, "redis", "redis"), name
        for name in providers:
            assert reaches(name, "http", "upstream-simulator") and not reaches(name, 443, ip=VENDOR_IP), name
        assert reaches("openai-door", "redis", "redis")
        assert not reaches("upstream-simulator", 443, ip=VENDOR_IP)
    else:
        for name in ("task-service", "dispatcher", *providers):
            assert reaches(name, 6379, ip=DATASTORE_IP), name
        assert reaches("task-service", 27017, ip=DATASTORE_IP) and reaches("dispatcher", 27017, ip=DATASTORE_IP)
        for name in providers:
            assert reaches(name, 443, ip=VENDOR_IP) and not reaches(name, 80, ip=VENDOR_IP), name
        assert not reaches("task-service", 443, ip=VENDOR_IP)
        # The door remembers retry keys in Redis, and reads video content from the task services, never a vendor.
        assert not reaches("openai-door", 443, ip=VENDOR_IP) and reaches("openai-door", 6379, ip=DATASTORE_IP)
        # Webhook receivers are anywhere public, over https or http (never a private address: checked above).
        assert reaches("dispatcher", 443, ip=VENDOR_IP) and reaches("dispatcher", 80, ip=VENDOR_IP)


def test_images_are_pinned_per_environment(rendered: dict[str, Documents]) -> None:
    for overlay, tag in (("dev", ":dev"), ("prod", ":0.1.0")):
        for name, _, container in containers(rendered[overlay]):
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), (overlay, name, image)
            if name in {"envoy", *SETTINGS}:
                assert image.endswith(tag), (overlay, name, image)


def test_production_image_names_are_the_ones_the_build_tags(rendered: dict[str, Documents]) -> None:
    # deploy.mk tags $(IMAGE_PREFIX)aitask-<target>:$(IMAGE_TAG); the overlay must name the same images.
    makefile = (ROOT / "deploy" / "deploy.mk").read_text()
    assert "--tag $(IMAGE_PREFIX)aitask-$*:$(IMAGE_TAG)" in makefile
    for name, _, container in containers(rendered["prod"]):
        assert container["image"] == f"registry.example.com/aitask-{name}:0.1.0", container["image"]


def test_production_serves_https_through_an_ingress_or_the_gateway_api(rendered: dict[str, Documents]) -> None:
    service = objects(rendered["prod"], "Service")["envoy"]
    service_port = service["spec"]["ports"][0]
    ingresses = objects(rendered["prod"], "Ingress")
    assert ingresses
    for name, ingress in ingresses.items():
        assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"], name
        hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
        assert hosts <= {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]} and hosts, name
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {"name": "envoy", "port": {"name": service_port["name"]}}
    grpc_paths = {path["path"] for rule in ingresses["aitask-grpc"]["spec"]["rules"] for path in rule["http"]["paths"]}
    assert {"/aitask.v1.TaskService/", "/aitask.v1.AdminService/"} <= grpc_paths
    assert ingresses["aitask-grpc"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"

    documents = rendered["prod-gateway-api"]
    assert not objects(documents, "Ingress")
    gateway = objects(documents, "Gateway")["aitask"]
    assert gateway["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    (listener,) = gateway["spec"]["listeners"]
    assert listener["protocol"] == "HTTPS" and listener["tls"]["certificateRefs"]
    routes = [*objects(documents, "HTTPRoute").values(), *objects(documents, "GRPCRoute").values()]
    assert {route["kind"] for route in routes} == {"HTTPRoute", "GRPCRoute"}
    for route in routes:
        assert route["spec"]["parentRefs"] == [{"name": "aitask", "sectionName": listener["name"]}]
        for rule in route["spec"]["rules"]:
            assert rule["backendRefs"] == [{"name": "envoy", "port": service_port["port"]}]
    (grpc_route,) = objects(documents, "GRPCRoute").values()
    methods = {match["method"]["service"] for rule in grpc_route["spec"]["rules"] for match in rule["matches"]}
    assert "aitask.v1.TaskService" in methods


@pytest.mark.parametrize("overlay", PRODUCTION)
def test_a_pod_monitor_scrapes_every_pod(rendered: dict[str, Documents], overlay: str) -> None:
    documents = rendered[overlay]
    (monitor,) = objects(documents, "PodMonitor").values()
    endpoints = {endpoint["port"]: endpoint["path"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    assert endpoints == {"metrics": "/metrics", "stats": "/stats/prometheus"}
    # `job` is the pod's name label: what the alerts and KEDA's query select on.
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    for name, pod in pods(documents).items():
        assert selects(monitor["spec"]["selector"], pod.labels), name
        assert set(pod.ports) & set(endpoints), f"{name} has no port the PodMonitor scrapes"
        assert pod.labels["app.kubernetes.io/name"] == name
    assert "PodMonitor" not in {document["kind"] for document in rendered["dev"]}


def test_prod_overlay_images_can_be_pinned_to_build_digests(tmp_path: Path) -> None:
    k8s = tmp_path / "k8s"
    shutil.copytree(ROOT / "deploy" / "k8s", k8s)
    metadata = tmp_path / "images"
    metadata.mkdir()
    digests = {}
    targets = ["envoy", "task-service", "dispatcher", "provider-volcengine", "provider-openai", "openai-door"]
    for number, target in enumerate(targets):
        digests[target] = f"sha256:{number:064x}"
        (metadata / f"{target}.json").write_text(json.dumps({"containerimage.digest": digests[target]}))
    kustomization = k8s / "overlays" / "prod" / "kustomization.yaml"
    before = kustomization.read_text()
    assert pin_images.main([str(metadata), str(kustomization)]) == 0
    pinned = kustomization.read_text()
    # Comments stay; running it again replaces the digests instead of adding lines.
    assert [line for line in before.splitlines() if line.lstrip().startswith("#")] == [
        line for line in pinned.splitlines() if line.lstrip().startswith("#")
    ]
    assert pin_images.main([str(metadata), str(kustomization)]) == 0
    assert kustomization.read_text() == pinned
    for name, _, container in containers(kustomize_build(k8s / "overlays" / "prod")):
        assert container["image"] == f"registry.example.com/aitask-{name}:0.1.0@{digests[name]}"
